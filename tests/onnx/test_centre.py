"""centre_bounded (onnx/centre.py): Clip(0, 6) -> Clip(-3, 3) where it is exact, checked by running both models."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import qdq_models as Q
from int8batch.onnx.centre import SUFFIX, centre_bounded


def _run(m, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _same_outputs(m0, m1, seed=0, scale=3.0):
    x = (Q.input_of(m0, seed) * scale).astype(np.float32)
    y0, y1 = _run(m0, x), _run(m1, x)
    np.testing.assert_allclose(y1, y0, rtol=0, atol=2e-5 * max(1.0, float(np.abs(y0).max())))
    return x


def _block(pad_second=False, producer_bias=True, relu6=(0.0, 6.0), group=1, shared=False, out_is_clip=False):
    """x -> Conv(3x3, pad 1) -> Clip(lo, hi) -> Conv(1x1 or padded 3x3, groups) -> y."""
    r = Q.rng(3)
    w1 = r.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b1 = r.normal(size=4).astype(np.float32)
    k = 3 if pad_second else 1
    w2 = r.normal(size=(4, 4 // group, k, k)).astype(np.float32)
    b2 = r.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"] if producer_bias else ["x", "w1"], ["c1"], name="conv1",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", group=group,
                              pads=[1, 1, 1, 1] if pad_second else [0, 0, 0, 0])]
    outs = [("y", [2, 4, 8, 8])]
    if shared:       # the producer's output read by a second node too
        nodes.append(helper.make_node("Relu", ["c1"], ["z"], name="other"))
        outs.append(("z", [2, 4, 8, 8]))
    if out_is_clip:
        outs.append(("r1", [2, 4, 8, 8]))
    inits = [Q.init("w1", w1), Q.init("b1", b1), Q.init("w2", w2), Q.init("b2", b2),
             Q.init("lo", np.float32(relu6[0])), Q.init("hi", np.float32(relu6[1]))]
    return Q.model(nodes, [("x", [2, 3, 8, 8])], outs, inits)


def test_relu6_before_a_1x1_conv_is_centred_exactly():
    m = _block()
    before = m.SerializeToString()
    c, done = centre_bounded(m)
    assert m.SerializeToString() == before                     # the input model is left alone
    assert [(t.original, t.name, t.shift, t.bounds, t.pre, t.pre_name) for t in done] == \
        [("r1", "r1" + SUFFIX, 3.0, (0.0, 6.0), "c1", "c1" + SUFFIX)]
    assert done[0].half == 3.0 and done[0].original_names() == {"r1": 6.0, "c1": 6.0}
    _same_outputs(m, c)
    # hand-computed: the producer's bias loses 3, the consumer's gains 3 * sum of each filter
    i0, i1 = _inits(m), _inits(c)
    n1 = {n.name: n for n in c.graph.node}
    np.testing.assert_allclose(i1[n1["conv1"].input[2]], i0["b1"] - 3, rtol=1e-6)
    np.testing.assert_allclose(i1[n1["conv2"].input[2]], i0["b2"] + 3 * i0["w2"].reshape(4, -1).sum(axis=1),
                               rtol=1e-5)
    assert [float(i1[x]) for x in n1["relu6"].input[1:]] == [-3.0, 3.0]
    # same nodes, names and other tensors; only the Clip's output and input are renamed
    assert [n.name for n in c.graph.node] == [n.name for n in m.graph.node]
    assert n1["relu6"].output[0] == "r1" + SUFFIX and n1["conv2"].input[0] == "r1" + SUFFIX
    assert n1["conv1"].output[0] == "c1" + SUFFIX and n1["relu6"].input[0] == "c1" + SUFFIX
    assert i1["w1"].tobytes() == i0["w1"].tobytes() and i1["w2"].tobytes() == i0["w2"].tobytes()


@pytest.mark.parametrize("kw", [dict(producer_bias=False), dict(group=2), dict(group=4), dict(relu6=(-1.0, 3.0)),
                                dict(relu6=(0.5, 2.0))])
def test_variants_stay_exact(kw):
    m = _block(**kw)
    c, done = centre_bounded(m)
    lo, hi = kw.get("relu6", (0.0, 6.0))
    assert [(t.original, t.shift) for t in done] == [("r1", (lo + hi) / 2)]
    bounds = [float(v) for k, v in _inits(c).items() if k.startswith("r1" + SUFFIX)]
    assert sorted(bounds) == [-(hi - lo) / 2, (hi - lo) / 2]
    _same_outputs(m, c)


@pytest.mark.parametrize("kw", [dict(pad_second=True), dict(shared=True), dict(out_is_clip=True),
                                dict(relu6=(-6.0, 6.0))])
def test_left_alone_where_a_shift_would_not_be_exact(kw):
    # a padded consumer (its zeros would stand for 3), a producer read elsewhere, a graph output,
    # a Clip already symmetric
    m = _block(**kw)
    c, done = centre_bounded(m)
    assert done == [] and c is m


def test_gemm_with_alpha_beta_and_transposes():
    r = Q.rng(5)
    b1 = r.normal(size=(5, 6)).astype(np.float32)       # transB=1: (N, K)
    c1 = r.normal(size=5).astype(np.float32)
    b2 = r.normal(size=(5, 3)).astype(np.float32)       # transB=0: (K, N)
    nodes = [helper.make_node("Gemm", ["x", "B1", "C1"], ["g1"], name="gemm1", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Clip", ["g1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Gemm", ["r1", "B2"], ["y"], name="gemm2", alpha=1.5, beta=0.25)]
    m = Q.model(nodes, [("x", [4, 6])], [("y", [4, 3])],
                [Q.init("B1", b1), Q.init("C1", c1), Q.init("B2", b2), Q.init("lo", np.float32(0)),
                 Q.init("hi", np.float32(6))])
    c, done = centre_bounded(m)
    assert [t.original for t in done] == ["r1"]
    _same_outputs(m, c)


def test_opset_6_clip_attributes_and_a_chain_of_1x1_convs():
    # conv1 -> clip -> conv2 (1x1) -> clip -> conv3 (1x1): conv2 both absorbs one shift and takes the next
    r = Q.rng(7)
    w = [r.normal(size=s).astype(np.float32) for s in ((4, 3, 3, 3), (6, 4, 1, 1), (2, 6, 1, 1))]
    b = [r.normal(size=s[0]).astype(np.float32) for s in ((4,), (6,), (2,))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0"], ["r0"], name="clip0", min=0.0, max=6.0),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Clip", ["c1"], ["r1"], name="clip1", min=0.0, max=4.0),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    inits = [Q.init(f"w{k}", w[k]) for k in range(3)] + [Q.init(f"b{k}", b[k]) for k in range(3)]
    m = Q.model(nodes, [("x", [2, 3, 8, 8])], [("y", [2, 2, 8, 8])], inits, opset=6)
    c, done = centre_bounded(m)
    assert [(t.original, t.shift) for t in done] == [("r0", 3.0), ("r1", 2.0)]
    clips = {n.name: {a.name: a.f for a in n.attribute} for n in c.graph.node if n.op_type == "Clip"}
    assert clips == {"clip0": {"min": -3.0, "max": 3.0}, "clip1": {"min": -2.0, "max": 2.0}}
    _same_outputs(m, c)


def test_shared_bound_constants_are_not_changed_for_other_clips():
    # two Clips reading one pair of bound constants; only one can be centred (the other feeds a padded conv)
    r = Q.rng(9)
    w = {k: r.normal(size=s).astype(np.float32) for k, s in
         (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("w3", (4, 4, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1])]
    m = Q.model(nodes, [("x", [2, 3, 8, 8])], [("y", [2, 4, 8, 8])],
                [Q.init(k, v) for k, v in w.items()] + [Q.init("lo", np.float32(0)), Q.init("hi", np.float32(6))])
    c, done = centre_bounded(m)
    assert [t.original for t in done] == ["r1"]
    clip2 = next(n for n in c.graph.node if n.name == "clip2")
    assert list(clip2.input[1:]) == ["lo", "hi"] and float(_inits(c)["hi"]) == 6.0
    _same_outputs(m, c)


@pytest.mark.parametrize("bounds", [(0.0, 4.0), (-1.0, 3.0), (0.5, 2.5)])
def test_padded_other_bounds_pad_with_the_shifted_zero(bounds):
    # the padding stands for 0 of the original tensor, whatever the Clip's bounds: -c after the shift
    m = _block(pad_second=True, relu6=bounds)
    c, done = centre_bounded(m, padded=True)
    shift = (bounds[0] + bounds[1]) / 2
    pad = next(n for n in c.graph.node if n.op_type == "Pad")
    assert [t.shift for t in done] == [shift] and float(_inits(c)[pad.input[2]]) == -shift
    _same_outputs(m, c)


@pytest.mark.parametrize("group", [1, 4])
def test_padded_consumers_read_an_explicit_pad_of_the_shifted_zero(group):
    m = _block(pad_second=True, group=group)
    assert centre_bounded(m)[1] == []                           # not without padded=True
    c, done = centre_bounded(m, padded=True)
    assert [(t.original, t.shift) for t in done] == [("r1", 3.0)]
    _same_outputs(m, c)
    nodes = {n.name: n for n in c.graph.node}
    pad = nodes["conv2/centre_pad"]
    assert [n.name for n in c.graph.node] == ["conv1", "relu6", "conv2/centre_pad", "conv2"]
    i1 = _inits(c)
    assert pad.op_type == "Pad" and pad.input[0] == "r1" + SUFFIX and float(i1[pad.input[2]]) == -3.0
    assert list(i1[pad.input[1]]) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert nodes["conv2"].input[0] == pad.output[0]
    assert list(next(a for a in nodes["conv2"].attribute if a.name == "pads").ints) == [0, 0, 0, 0]
    # the Pad output keeps the centred bounds, so auto gives it amax 3 and -3 is the code -127 exactly
    from int8batch.onnx.graph import bounded_tensors
    assert bounded_tensors(c)[pad.output[0]] == (-3.0, 3.0)


def test_padded_consumers_before_opset_11_use_pad_attributes():
    r = Q.rng(11)
    w = {"w0": r.normal(size=(4, 3, 3, 3)), "b0": r.normal(size=4), "w1": r.normal(size=(4, 4, 3, 3))}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0"], ["r0"], name="clip0", min=0.0, max=6.0),
             helper.make_node("Conv", ["r0", "w1"], ["y"], name="conv1", pads=[2, 1, 0, 1])]
    m = Q.model(nodes, [("x", [2, 3, 8, 8])], [("y", [2, 4, 8, 8])],
                [Q.init(k, v.astype(np.float32)) for k, v in w.items()], opset=9)
    c, done = centre_bounded(m, padded=True)
    assert [t.original for t in done] == ["r0"]
    pad = next(n for n in c.graph.node if n.op_type == "Pad")
    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    assert attrs["pads"] == [0, 0, 2, 1, 0, 0, 0, 1] and attrs["value"] == -3.0
    _same_outputs(m, c)


def test_auto_pad_same_is_left_alone_even_when_padded():
    m = _block(pad_second=True)
    conv2 = next(n for n in m.graph.node if n.name == "conv2")
    for a in list(conv2.attribute):
        if a.name == "pads":
            conv2.attribute.remove(a)
    conv2.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    c, done = centre_bounded(m, padded=True)
    assert done == [] and c is m


def test_a_bias_computed_by_a_node_is_left_alone():
    # the producer's bias comes through an Identity (some exporters): no initializer to change, so no centring
    m = _block()
    conv1 = next(n for n in m.graph.node if n.name == "conv1")
    conv1.input[2] = "b1_id"
    m.graph.node.insert(0, helper.make_node("Identity", ["b1"], ["b1_id"], name="bias_id"))
    c, done = centre_bounded(m)
    assert done == [] and c is m


def test_a_gemm_reader_with_beta_zero_is_left_alone():
    # beta = 0: the Gemm ignores C, so there is no bias to take the shift; the Clip stays as it is
    r = Q.rng(13)
    nodes = [helper.make_node("Gemm", ["x", "B1", "C1"], ["g1"], name="gemm1", transB=1),
             helper.make_node("Clip", ["g1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Gemm", ["r1", "B2", "C2"], ["y"], name="gemm2", beta=0.0)]
    m = Q.model(nodes, [("x", [4, 6])], [("y", [4, 3])],
                [Q.init("B1", r.normal(size=(5, 6)).astype(np.float32)), Q.init("C1", np.zeros(5, np.float32)),
                 Q.init("B2", r.normal(size=(5, 3)).astype(np.float32)), Q.init("C2", np.ones(3, np.float32)),
                 Q.init("lo", np.float32(0)), Q.init("hi", np.float32(6))])
    c, done = centre_bounded(m)
    assert done == [] and c is m
