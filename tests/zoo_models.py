"""Small structural versions of the model-zoo families (``tools/make_zoo.py``), built with onnx.helper.

No torch: each family is written node by node the way its exported,
ONNX-Runtime-optimized big brother looks (BatchNorm folded into the
convolution before it, GELU as Erf, SiLU as ``x * Sigmoid(x)``, attention as
MatMul / Softmax / MatMul, nearest Resize for the upsampling), with seeded
NumPy weights scaled so that activations stay O(1) through the network.

Every model: opset 17, one input ``x`` float32 N x 3 x 32 x 32 (64 x 64 for
the YOLO: its heads at strides 4, 8 and 16 then see 16 x 16, 8 x 8 and 4 x 4
positions) with a dynamic N, and outputs with the same dynamic N.
:data:`FAMILIES` maps a family name to ``(builder, packing recipe,
expectations)``; the expectations name, per residual ``Add`` node, the input
that comes straight from a convolution (TensorRT fuses it: no Q/DQ, the other
input is quantized), following the rules of :mod:`int8batch.onnx.placement`.
"""
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SIZE = 32
N = "N"
YOLO_SIZE = 64  # its stride-16 head then sees 4 x 4 positions


class Builder:
    """Appends nodes and seeded initializers; every helper returns its output tensor name."""

    def __init__(self, seed):
        self.r = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], {}

    def fresh(self, base):
        k = self.count.get(base, 0)
        self.count[base] = k + 1
        return f"{base}{k}"

    def const(self, arr, base="c"):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, out=None, name=None, **attrs):
        out = out or self.fresh(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name or self.fresh(op), **attrs))
        return out

    # -- layers
    def conv(self, x, cin, cout, k, stride=1, group=1, bias=True, out=None, name=None, gain=2.0):
        fan_in = cin // group * k * k
        w = self.r.normal(0, math.sqrt(gain / fan_in), size=(cout, cin // group, k, k)).astype(np.float32)
        ins = [x, self.const(w, "w")]
        if bias:
            ins.append(self.const(self.r.normal(0, 0.1, size=cout).astype(np.float32), "b"))
        p = (k - 1) // 2 if stride == 1 or k % 2 else 0
        return self.node("Conv", ins, out, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=group)

    def bn(self, x, c, out=None, name=None):
        r = self.r
        gamma = r.uniform(0.6, 1.4, c).astype(np.float32)
        beta = r.normal(0, 0.1, c).astype(np.float32)
        mean = r.normal(0, 0.1, c).astype(np.float32)
        var = r.uniform(0.6, 1.4, c).astype(np.float32)
        return self.node("BatchNormalization", [x] + [self.const(v, "bn") for v in (gamma, beta, mean, var)],
                         out, name, epsilon=1e-5)

    def relu(self, x, out=None):
        return self.node("Relu", [x], out)

    def relu6(self, x, out=None):
        return self.node("Clip", [x, self.const(np.float32(0), "lo"), self.const(np.float32(6), "hi")], out)

    def silu(self, x, out=None):
        return self.node("Mul", [x, self.node("Sigmoid", [x])], out)

    def hardswish(self, x, out=None):   # what torch exports for nn.Hardswish at opset 17
        return self.node("Mul", [x, self.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)], out)

    def gelu(self, x):                  # torch's exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))
        e = self.node("Erf", [self.node("Div", [x, self.const(np.float32(math.sqrt(2)))])])
        h = self.node("Mul", [x, self.node("Add", [e, self.const(np.float32(1))])])
        return self.node("Mul", [h, self.const(np.float32(0.5))])

    def layernorm(self, x, d, axis=-1):
        g = self.r.uniform(0.8, 1.2, d).astype(np.float32)
        b = self.r.normal(0, 0.05, d).astype(np.float32)
        return self.node("LayerNormalization", [x, self.const(g, "ln"), self.const(b, "ln")], axis=axis,
                         epsilon=1e-6)

    def linear(self, x, din, dout, gain=1.0):  # torch Linear on a >2-D tensor: MatMul + Add
        w = self.r.normal(0, math.sqrt(gain / din), size=(din, dout)).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w, "W")])
        return self.node("Add", [y, self.const(self.r.normal(0, 0.05, dout).astype(np.float32), "B")])

    def gemm(self, x, din, dout, out):
        w = self.r.normal(0, math.sqrt(1 / din), size=(dout, din)).astype(np.float32)
        c = self.r.normal(0, 0.05, dout).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, "fc"), self.const(c, "fc")], out, transB=1)

    def head(self, x, c, classes=10, out="logits"):
        f = self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)
        return self.gemm(f, c, classes, out)

    def model(self, outputs, name, size=SIZE):
        g = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 3, size, size])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [N] + list(s)) for o, s in outputs],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


# --------------------------------------------------------------------------- families
def resnet(seed=0):
    """ResNet bottlenecks (BatchNorm folded): Conv-Relu-Conv-Relu-Conv, Add with the skip, Relu.

    Block 1 has an identity skip; block 2 downsamples, keeps one unfolded
    BatchNormalization on its main branch and has a projection Conv on the
    skip that runs after the main branch (as torchvision computes it), so
    both Add inputs come from a weighted op.
    """
    b = Builder(seed)
    s = b.relu(b.conv("x", 3, 16, 3))
    s = b.node("MaxPool", [s], "pool", kernel_shape=[2, 2], strides=[2, 2])                 # 16 x 16
    h = b.relu(b.conv(s, 16, 8, 1))
    h = b.relu(b.conv(h, 8, 8, 3))
    h = b.conv(h, 8, 16, 1, out="b1_conv3", gain=1.0)
    s = b.relu(b.node("Add", ["b1_conv3", s], name="b1_add"), "b1_out")
    h = b.relu(b.conv(s, 16, 8, 1))
    h = b.relu(b.conv(h, 8, 8, 3, stride=2))                                               # 8 x 8
    h = b.bn(b.conv(h, 8, 32, 1, bias=False, gain=1.0), 32, out="b2_bn3")
    p = b.conv(s, 16, 32, 1, stride=2, out="b2_proj", gain=1.0)
    s = b.relu(b.node("Add", ["b2_bn3", p], name="b2_add"))
    b.head(s, 32)
    return b.model([("logits", [10])], "tiny_resnet")


def densenet(seed=1):
    """DenseNet: dense layers BN-Relu-Conv1x1(-BN folded)-Relu-Conv3x3 on the Concat of all earlier features,
    a transition BN-Relu-Conv1x1-AveragePool, a second dense block, BN-Relu-GlobalAveragePool-Gemm."""
    b = Builder(seed)
    s = b.node("MaxPool", [b.relu(b.conv("x", 3, 16, 3))], kernel_shape=[2, 2], strides=[2, 2])  # 16 x 16

    def block(feats, c, layers, growth=8):
        for i in range(layers):
            cat = b.node("Concat", feats, axis=1) if len(feats) > 1 else feats[0]
            h = b.relu(b.bn(cat, c + i * growth))
            h = b.relu(b.conv(h, c + i * growth, 2 * growth, 1))
            feats = feats + [b.conv(h, 2 * growth, growth, 3, bias=False)]
        return b.node("Concat", feats, axis=1), c + layers * growth

    cat, c = block([s], 16, 3)                                                              # 40 channels
    t = b.conv(b.relu(b.bn(cat, c)), c, c // 2, 1, bias=False)
    t = b.node("AveragePool", [t], kernel_shape=[2, 2], strides=[2, 2])                     # 8 x 8
    cat, c = block([t], c // 2, 2)                                                          # 36 channels
    b.head(b.relu(b.bn(cat, c)), c)
    return b.model([("logits", [10])], "tiny_densenet")


def mobilenet(seed=2):
    """MobileNetV3 / EfficientNet-Lite blocks: Hardswish stem, depthwise-separable blocks with ReLU6 (Clip),
    squeeze-excite (GlobalAveragePool-Conv-Relu-Conv-Sigmoid / HardSigmoid, Mul), projection Conv + skip Add."""
    b = Builder(seed)
    s = b.hardswish(b.conv("x", 3, 16, 3, stride=2), "m_stem")                             # 16 x 16

    def se(x, c, gate):
        g = b.node("GlobalAveragePool", [x])
        g = b.conv(b.relu(b.conv(g, c, c // 4, 1)), c // 4, c, 1)
        g = b.node(gate, [g], **({"alpha": 1 / 6, "beta": 0.5} if gate == "HardSigmoid" else {}))
        return b.node("Mul", [x, g])

    # block 1: expansion 1, depthwise 3x3, Relu, SE (HardSigmoid), project, residual
    h = b.relu(b.conv(s, 16, 16, 3, group=16))
    h = b.conv(se(h, 16, "HardSigmoid"), 16, 16, 1, out="m1_project", gain=1.0)
    s = b.node("Add", ["m1_project", s], "m1_out", name="m1_add")
    # block 2: expansion 3, ReLU6, SE (Sigmoid), residual
    h = b.relu6(b.conv(s, 16, 48, 1))
    h = b.relu6(b.conv(h, 48, 48, 3, group=48))
    h = b.conv(se(h, 48, "Sigmoid"), 48, 16, 1, out="m2_project", gain=1.0)
    s = b.node("Add", [s, "m2_project"], name="m2_add")
    # block 3: stride 2, no residual; head conv
    h = b.relu6(b.conv(s, 16, 64, 1))
    h = b.relu6(b.conv(h, 64, 64, 3, stride=2, group=64))                                  # 8 x 8
    h = b.conv(h, 64, 24, 1, gain=1.0)
    b.head(b.relu6(b.conv(h, 24, 64, 1)), 64)
    return b.model([("logits", [10])], "tiny_mobilenet")


def convnext(seed=3):
    """ConvNeXt (torchvision export): patchify Conv 4x4/4, LayerNorm over channels between two Transposes,
    blocks dwConv 7x7 - NHWC LayerNorm - MatMul 4x - GELU (Erf) - MatMul - layer-scale Mul - NCHW - residual Add,
    a downsampling LayerNorm + Conv 2x2/2, head GlobalAveragePool-Flatten-LayerNorm-Gemm."""
    b = Builder(seed)

    def ln2d(x, c):
        return b.node("Transpose", [b.layernorm(b.node("Transpose", [x], perm=[0, 2, 3, 1]), c)], perm=[0, 3, 1, 2])

    def block(x, c, k):
        h = b.conv(x, c, c, 7, group=c, gain=1.0)
        h = b.layernorm(b.node("Transpose", [h], perm=[0, 2, 3, 1]), c)
        h = b.linear(b.gelu(b.linear(h, c, 4 * c, gain=2.0)), 4 * c, c)
        h = b.node("Mul", [h, b.const(b.r.uniform(0.3, 0.8, c).astype(np.float32), "gamma")])
        h = b.node("Transpose", [h], f"cx{k}_branch", perm=[0, 3, 1, 2])
        return b.node("Add", [h, x], name=f"cx{k}_add")

    s = ln2d(b.conv("x", 3, 16, 4, stride=4, gain=1.0), 16)                                # 8 x 8
    s = block(block(s, 16, 0), 16, 1)
    s = b.conv(ln2d(s, 16), 16, 32, 2, stride=2, gain=1.0)                                 # 4 x 4
    s = block(s, 32, 2)
    f = b.node("Flatten", [b.node("GlobalAveragePool", [s])], axis=1)
    b.gemm(b.layernorm(f, 32), 32, 10, "logits")
    return b.model([("logits", [10])], "tiny_convnext")


def vit(seed=4, dim=32, heads=2, depth=2):
    """ViT (timm export, explicit attention): patch-embed Conv 8x8/8, Reshape/Transpose to tokens, a class
    token expanded to the batch (Shape/Gather/Expand) and Concat, position Add, pre-LN blocks with
    MatMul qkv, Reshape/Transpose/Split, scaled q @ k^T, Softmax, @ v, projection, residual Add, MLP with GELU,
    final LayerNorm, class token (Gather) -> Gemm."""
    b = Builder(seed)
    dh, tokens = dim // heads, (SIZE // 8) ** 2 + 1
    p = b.conv("x", 3, dim, 8, stride=8, gain=1.0)                                         # N x D x 4 x 4
    p = b.node("Transpose", [b.node("Reshape", [p, b.const(np.array([0, dim, -1], np.int64), "shape")])],
               perm=[0, 2, 1])                                                             # N x 16 x D
    batch = b.node("Gather", [b.node("Shape", [p]), b.const(np.array([0], np.int64), "idx")], axis=0)
    shape = b.node("Concat", [batch, b.const(np.array([1, dim], np.int64), "shape")], axis=0)
    cls = b.node("Expand", [b.const(b.r.normal(0, 0.5, (1, 1, dim)).astype(np.float32), "cls"), shape])
    t = b.node("Concat", [cls, p], axis=1)
    t = b.node("Add", [t, b.const(b.r.normal(0, 0.3, (1, tokens, dim)).astype(np.float32), "pos")])
    for k in range(depth):
        qkv = b.linear(b.layernorm(t, dim), dim, 3 * dim)
        qkv = b.node("Reshape", [qkv, b.const(np.array([0, tokens, 3, heads, dh], np.int64), "shape")])
        qkv = b.node("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                             # 3 x N x H x T x dh
        parts = [b.fresh("qkv") for _ in range(3)]
        b.nodes.append(helper.make_node("Split", [qkv], parts, name=b.fresh("Split"), axis=0, num_outputs=3)
                       if OPSET >= 18 else
                       helper.make_node("Split", [qkv, b.const(np.array([1, 1, 1], np.int64), "split")], parts,
                                        name=b.fresh("Split"), axis=0))
        q, kk, v = (b.node("Squeeze", [x, b.const(np.array([0], np.int64), "axes")]) for x in parts)
        q = b.node("Mul", [q, b.const(np.float32(dh ** -0.5))])
        att = b.node("MatMul", [q, b.node("Transpose", [kk], perm=[0, 1, 3, 2])])
        att = b.node("Softmax", [att], f"attn{k}", axis=-1)
        o = b.node("Transpose", [b.node("MatMul", [att, v])], perm=[0, 2, 1, 3])
        o = b.node("Reshape", [o, b.const(np.array([0, tokens, dim], np.int64), "shape")])
        t = b.node("Add", [t, b.linear(o, dim, dim)], name=f"vit{k}_add1")
        h = b.linear(b.gelu(b.linear(b.layernorm(t, dim), dim, 2 * dim, gain=2.0)), 2 * dim, dim)
        t = b.node("Add", [t, h], name=f"vit{k}_add2")
    c = b.node("Gather", [b.layernorm(t, dim), b.const(np.array(0, np.int64), "idx")], axis=1)
    b.gemm(c, dim, 10, "logits")
    return b.model([("logits", [10])], "tiny_vit")


def yolo(seed=5, size=YOLO_SIZE):
    """YOLO (v8-like): Conv-SiLU (x * Sigmoid(x)) backbone with a C2f (1x1 Conv, Split, a bottleneck with a
    shortcut Add, Concat, 1x1 Conv), SPPF (three MaxPool 5x5/1, Concat), FPN top-down (nearest Resize x2,
    Concat), PAN bottom-up (Conv 3x3/2, Concat), three 1x1 head convs: outputs p3, p4, p5."""
    b = Builder(seed)

    def cbs(x, cin, cout, k=1, s=1, out=None):
        return b.silu(b.conv(x, cin, cout, k, stride=s, gain=3.0), out)

    def up(x):
        return b.node("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    s = cbs(cbs("x", 3, 8, 3, 2), 8, 16, 3, 2)                                             # stride 4
    y = cbs(s, 16, 16)
    b.nodes.append(helper.make_node("Split", [y, b.const(np.array([8, 8], np.int64), "split")], ["c2f_a", "c2f_b"],
                                    name="c2f_split", axis=1))
    m = cbs(cbs("c2f_b", 8, 8, 3), 8, 8, 3, out="c2f_m")
    m = b.node("Add", ["c2f_b", m], name="c2f_add")
    p3 = cbs(b.node("Concat", ["c2f_a", "c2f_b", m], axis=1), 24, 16, out="p3_feat")       # stride 4
    p4 = cbs(p3, 16, 32, 3, 2, out="p4_feat")                                              # stride 8
    c = cbs(cbs(p4, 32, 32, 3, 2), 32, 16)                                                 # stride 16, SPPF
    pools = [c]
    for _ in range(3):
        pools.append(b.node("MaxPool", [pools[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
    p5 = cbs(b.node("Concat", pools, axis=1), 64, 32, out="p5_feat")
    t4 = cbs(b.node("Concat", [up(p5), p4], axis=1), 64, 32)                              # FPN, stride 8
    o3 = cbs(b.node("Concat", [up(t4), p3], axis=1), 48, 16)                              # stride 4
    o4 = cbs(b.node("Concat", [cbs(o3, 16, 16, 3, 2), t4], axis=1), 48, 32)               # PAN, stride 8
    o5 = cbs(b.node("Concat", [cbs(o4, 32, 32, 3, 2), p5], axis=1), 64, 32)               # stride 16
    for name, x, cin in (("p3", o3, 16), ("p4", o4, 32), ("p5", o5, 32)):
        b.conv(x, cin, 12, 1, out=name, gain=1.0)
    return b.model([("p3", [12, size // 4, size // 4]), ("p4", [12, size // 8, size // 8]),
                    ("p5", [12, size // 16, size // 16])], "tiny_yolo", size)


#: family -> (builder, packing recipe for int8batch.pack, expectations).
#: ``residual``: residual Add node -> the input TensorRT fuses into the Conv producing it (it gets no Q/DQ;
#: the other input is quantized), or None when neither input comes straight from a weighted op (both are
#: quantized).  ``concat_groups``: whether some Concat output is quantized (its inputs then share a scale).
FAMILIES = {
    "resnet": (resnet, {"preset": "imagenet-torch"},
               {"residual": {"b1_add": "b1_conv3", "b2_add": "b2_proj"}, "concat_groups": False}),
    "densenet": (densenet, {"preset": "imagenet-torch"}, {"residual": {}, "concat_groups": False}),
    "mobilenet": (mobilenet, {"preset": "efficientnet-lite"},
                  {"residual": {"m1_add": "m1_project", "m2_add": "m2_project"}, "concat_groups": False}),
    "convnext": (convnext, {"preset": "imagenet-torch"},
                 {"residual": {"cx0_add": None, "cx1_add": None, "cx2_add": None}, "concat_groups": False}),
    "vit": (vit, {"preset": "inception"},
            {"residual": {f"vit{k}_add{j}": None for k in range(2) for j in (1, 2)}, "concat_groups": False}),
    "yolo": (yolo, {"scale": 1 / 255, "mean": (0.0,), "std": (1.0,), "resize": "direct", "crop": "none",
                    "size": (YOLO_SIZE, YOLO_SIZE), "resize_size": (YOLO_SIZE, YOLO_SIZE)},
             {"residual": {"c2f_add": None}, "concat_groups": True}),
}
