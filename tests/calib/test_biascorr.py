"""Bias correction: tap means against a loop-by-loop reference, the shift against ONNX Runtime."""
import itertools
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8batch
from int8batch._kernels_calib import sum_rows
from int8batch.calib import api
from int8batch.calib.biascorr import MeanCollector, patch_sums
from int8batch.onnx.layers import Layer, bias_shift, corrected_bias, layers_of
from int8batch.cli.main import main
from int8batch.errors import CalibrationError
from int8batch.onnx import insert_qdq_with_report
from int8batch.onnx.qdq import dequantize_weight, quantize_weight
from int8batch.packing.sources import DATA_DIR

import qdq_models as Q
from reference_calib import sum_rows as ref_sum_rows

F = TensorProto.FLOAT


# ------------------------------------------------------------------ references
def ref_patch_sums(x, kernel, strides, dil, begin, end, group_in=None):
    """Loop-by-loop: for every image, output position and tap, the padded input value read."""
    n, c = x.shape[:2]
    sp = x.shape[2:]
    nd = len(sp)
    xp = np.zeros((n, c) + tuple(s + b + e for s, b, e in zip(sp, begin, end)), np.float64)
    xp[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(begin, sp))] = x
    out = [(xp.shape[2 + i] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    sums = np.zeros((c,) + tuple(kernel))
    for pos in itertools.product(*(range(o) for o in out)):
        for tap in itertools.product(*(range(k) for k in kernel)):
            idx = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dil))
            sums[(slice(None),) + tap] += xp[(slice(None), slice(None)) + idx].sum(axis=0)
    return sums, n * int(np.prod(out))


def conv_layer(kernel, strides=None, dil=None, pads=None, group=1, auto_pad="NOTSET"):
    nd = len(kernel)
    return Layer(key="y", op="Conv", input="x", weight="w", bias="b", group=group, kernel=tuple(kernel),
                 strides=tuple(strides or (1,) * nd), dilations=tuple(dil or (1,) * nd),
                 pads=tuple(pads or (0,) * 2 * nd), auto_pad=auto_pad)


def conv_model(x_shape, w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"], name="conv", **attrs)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, list(x_shape))],
                          [helper.make_tensor_value_info("y", F, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def run(m, x, name="x"):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {name: x})[0].astype(np.float64)


CONVS = {
    # name: (x shape, weight shape, attributes)
    "3x3 pad 1": ((3, 4, 9, 9), (5, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "depthwise stride 2 asymmetric pad": ((2, 6, 10, 11), (6, 1, 3, 3), dict(group=6, strides=[2, 2],
                                                                               pads=[0, 0, 1, 1])),
    "grouped 2, dilation 2": ((2, 4, 12, 10), (6, 2, 3, 2), dict(group=2, dilations=[2, 1], pads=[2, 1, 1, 0])),
    "5x5 depthwise stride 2": ((2, 3, 13, 13), (3, 1, 5, 5), dict(group=3, strides=[2, 2], pads=[2, 2, 2, 2])),
    "same_upper stride 2": ((2, 3, 7, 8), (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((2, 3, 6, 7), (4, 3, 2, 4), dict(auto_pad="SAME_LOWER")),
    "valid 1x1 stride 2": ((2, 5, 7, 7), (3, 5, 1, 1), dict(strides=[2, 2], auto_pad="VALID")),
    "1-d": ((3, 2, 17), (4, 2, 5), dict(strides=[3], pads=[2, 1])),
    "3-d": ((2, 2, 5, 4, 6), (3, 2, 3, 2, 3), dict(pads=[1, 0, 1, 1, 1, 0])),
}


def layer_for(m):
    return {ly.key: ly for ly in layers_of(m)}["y"]


@pytest.mark.parametrize("case", sorted(CONVS))
def test_patch_sums_match_the_loop_reference(case):
    x_shape, w_shape, attrs = CONVS[case]
    r = np.random.default_rng(0)
    x = r.normal(size=x_shape).astype(np.float32) + 0.5
    w = r.normal(size=w_shape).astype(np.float32)
    layer = layer_for(conv_model(x_shape, w, None, kernel_shape=list(w_shape[2:]), **attrs))
    got, count = patch_sums(x, layer, w_shape)
    nd = len(w_shape) - 2
    if attrs.get("auto_pad", "NOTSET").startswith("SAME"):
        # the ONNX rule: total padding so that out = ceil(in / stride), the odd pixel at the end (UPPER)
        begin, end = [], []
        for i in range(nd):
            s, k, size = attrs["strides"][i] if "strides" in attrs else 1, w_shape[2 + i], x_shape[2 + i]
            total = max((-(-size // s) - 1) * s + k - size, 0)
            lo, hi = total // 2, total - total // 2
            begin.append(lo if attrs["auto_pad"] == "SAME_UPPER" else hi)
            end.append(hi if attrs["auto_pad"] == "SAME_UPPER" else lo)
    else:
        pads = attrs.get("pads", [0] * 2 * nd)
        begin, end = pads[:nd], pads[nd:]
    want, want_count = ref_patch_sums(x.astype(np.float64), w_shape[2:], attrs.get("strides", [1] * nd),
                                      attrs.get("dilations", [1] * nd), begin, end)
    assert count == want_count
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CONVS))
def test_bias_shift_is_the_mean_output_change_onnx_runtime_measures(case):
    """Independent check: ORT runs the conv with W and with the int8-rounded W; the mean difference
    of the outputs per channel is what bias_shift predicts from the tap means."""
    x_shape, w_shape, attrs = CONVS[case]
    r = np.random.default_rng(1)
    x = np.abs(r.normal(size=x_shape)).astype(np.float32)   # ReLU-like inputs: the shift does not average out
    w = r.normal(size=w_shape).astype(np.float32) * 0.3
    b = r.normal(size=w_shape[0]).astype(np.float32)
    m = conv_model(x_shape, w, b, kernel_shape=list(w_shape[2:]), **attrs)
    q, s = quantize_weight(w, 0)
    wq = dequantize_weight(q, s, 0)
    mq = conv_model(x_shape, wq, b, kernel_shape=list(w_shape[2:]), **attrs)
    axes = (0,) + tuple(range(2, len(x_shape)))
    measured = (run(mq, x) - run(m, x)).mean(axis=axes)
    layer = layer_for(m)
    sums, count = patch_sums(x, layer, w_shape)
    predicted = bias_shift(layer, wq.astype(np.float64) - w, sums / count)
    np.testing.assert_allclose(predicted, measured, rtol=1e-3, atol=1e-6)
    assert np.abs(measured).max() > 1e-4  # the test would see a wrong shift


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_shift_and_corrected_c_with_alpha_beta(trans_b):
    r = np.random.default_rng(2)
    x = np.abs(r.normal(size=(7, 6))).astype(np.float32)
    bw = r.normal(size=(4, 6) if trans_b else (6, 4)).astype(np.float32)
    c = r.normal(size=(1, 4)).astype(np.float32)

    def gemm(bmat, cmat):
        node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=trans_b, alpha=0.7, beta=2.0)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [7, 6])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(bmat, "B"), numpy_helper.from_array(cmat, "C")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8     # what every ONNX Runtime in use reads (a newer onnx writes IR 14: ORT 1.31 refuses it)
        return m
    m = gemm(bw, c)
    layer = layers_of(m)[0]
    axis = 0 if trans_b else 1
    q, s = quantize_weight(bw, axis)
    bq = dequantize_weight(q, s, axis)
    sums, n = patch_sums(x, layer, bw.shape)
    shift = bias_shift(layer, bq.astype(np.float64) - bw, sums / n)
    new_c, why = corrected_bias(layer, c, shift)
    assert why == "" and new_c.shape == (1, 4)
    # with the corrected C the int8-weight Gemm has the float Gemm's mean output
    np.testing.assert_allclose(run(gemm(bq, new_c), x).mean(0), run(m, x).mean(0), atol=1e-5)
    assert np.abs(run(gemm(bq, c), x).mean(0) - run(m, x).mean(0)).max() > 1e-4


def test_corrected_bias_refuses_shapes_it_cannot_fold():
    gemm = Layer(key="y", op="Gemm", input="x", weight="B", bias="C")
    shift = np.array([1.0, 2.0])
    assert corrected_bias(gemm, np.zeros((3, 2), np.float32), shift)[0] is None
    np.testing.assert_array_equal(corrected_bias(gemm, np.float32(1.0).reshape(()), shift)[0], [0.0, -1.0])
    conv = conv_layer((1, 1))
    assert corrected_bias(conv, np.zeros(3, np.float32), shift)[0] is None
    new, _ = corrected_bias(conv, None, shift)
    np.testing.assert_array_equal(new, -shift)
    assert new.dtype == np.float32


def test_mean_collector_streams_like_one_pass_and_checks_shapes():
    r = np.random.default_rng(3)
    x_shape, w_shape, attrs = CONVS["depthwise stride 2 asymmetric pad"]
    x = r.normal(size=(10,) + x_shape[1:]).astype(np.float32)
    layer = layer_for(conv_model(x_shape, np.zeros(w_shape, np.float32), None, kernel_shape=[3, 3], **attrs))
    mc = MeanCollector([layer], {"w": w_shape}, num_threads=2)
    for part in (x[:3], x[3:4], x[4:]):
        mc.collect_many({"x": part, "other": part})
    sums, n = patch_sums(x, layer, w_shape)
    np.testing.assert_allclose(mc.means()["y"], sums / n, rtol=1e-6, atol=1e-7)
    with pytest.raises(CalibrationError, match="changed shape"):
        mc.collect_many({"x": x[:, :, :4]})
    assert MeanCollector([layer], {"w": w_shape}).means() == {}
    # max_images: exactly the first max_images images (a sub-batch crossing the cap is cut), then nothing
    # more (the sequential bias correction pairs these means with the Q/DQ model's on the same images)
    capped = MeanCollector([layer], {"w": w_shape}, max_images=4)
    for part in (x[:3], x[3:6], x[6:]):
        capped.collect_many({"x": part})
    sums, n = patch_sums(x[:4], layer, w_shape)
    np.testing.assert_allclose(capped.means()["y"], sums / n, rtol=1e-6, atol=1e-7)


def test_mean_collector_per_channel_path_for_pointwise_layers():
    """An input read only by 1x1 stride-1 convs and Gemms keeps channel sums; same means as the taps."""
    r = np.random.default_rng(7)
    x = r.normal(size=(6, 5, 4, 3)).astype(np.float32)
    one = layer_for(conv_model((6, 5, 4, 3), np.zeros((2, 5, 1, 1), np.float32), None, kernel_shape=[1, 1]))
    same = layer_for(conv_model((6, 5, 4, 3), np.zeros((2, 5, 1, 1), np.float32), None, kernel_shape=[1, 1],
                                auto_pad="SAME_UPPER"))
    gemm = Layer(key="g", op="Gemm", input="v", weight="B", bias="C", trans_b=1)
    v = r.normal(size=(6, 7)).astype(np.float32)
    mc = MeanCollector([one, gemm], {"w": (2, 5, 1, 1), "B": (3, 7)})
    assert mc._per_channel == {"x": True, "v": True}
    for part in (slice(0, 2), slice(2, 6)):
        mc.collect_many({"x": x[part], "v": v[part]})
    got = mc.means()
    sums, n = patch_sums(x, one, (2, 5, 1, 1))
    np.testing.assert_allclose(got["y"], sums / n, rtol=1e-6)
    np.testing.assert_allclose(got["g"], v.mean(axis=0), rtol=1e-6)
    # a strided or padded consumer of the same tensor needs the full plane
    strided = conv_layer((1, 1), strides=(2, 2))
    assert MeanCollector([same, strided], {"w": (2, 5, 1, 1)})._per_channel == {"x": False}
    assert MeanCollector([same], {"w": (2, 5, 1, 1)})._per_channel == {"x": True}


@pytest.mark.parametrize("shape", [(1, 5), (3, 1000), (7, 300001), (64, 70001)])
def test_sum_rows_kernel_matches_numpy_for_any_thread_count(shape):
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    want = ref_sum_rows(x, np.full(shape[1], 1.5))
    outs = []
    for nt in (1, 2, 3):
        acc = np.full(shape[1], 1.5)
        sum_rows(x, acc, nt)
        outs.append(acc)
        np.testing.assert_allclose(acc, want, rtol=1e-12, atol=1e-9)
    assert all(np.array_equal(outs[0], o) for o in outs)
    with pytest.raises(ValueError):
        sum_rows(x, np.zeros(shape[1] + 1), 1)


def test_insert_qdq_weights_only_model_keeps_the_float_mean_output():
    """conv -> relu -> conv: with every activation left float (weights-only int8), the corrected
    first conv has exactly the float model's mean output per channel on the calibration data."""
    m = Q.conv_relu_conv()
    x = np.abs(Q.input_of(m, seed=5))
    layers = {ly.key: ly for ly in layers_of(m)}
    assert sorted(layers) == ["c1", "y"]
    acts = {"x": x}
    acts["r1"] = np.maximum(run(Q.model([m.graph.node[0]], [("x", [2, 3, 8, 8])], [("c1", [2, 4, 8, 8])],
                                        list(m.graph.initializer)[:2]), x), 0).astype(np.float32)
    means = {}
    for key, ly in layers.items():
        s, n = patch_sums(acts[ly.input], ly, numpy_helper.to_array(
            {t.name: t for t in m.graph.initializer}[ly.weight]).shape)
        means[key] = s / n
    plain, _ = insert_qdq_with_report(m, {}, on_missing="skip")
    fixed, rep = insert_qdq_with_report(m, {}, on_missing="skip", input_means=means)
    assert sorted(rep.biases) == ["c1", "y"]
    inits = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    conv2 = [n for n in fixed.graph.node if n.output[0] == "y"][0]
    assert len(conv2.input) == 3 and conv2.input[2] in inits  # conv2 had no bias: one was added

    # mean of c1 (expose it) in the float, the plain int8-weight and the corrected model
    def c1_mean(model):
        mm = onnx.ModelProto()
        mm.CopyFrom(model)
        mm.graph.output.append(helper.make_tensor_value_info("c1", F, None))
        s = ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(["c1"], {"x": x})[0].mean(axis=(0, 2, 3))
    np.testing.assert_allclose(c1_mean(fixed), c1_mean(m), atol=2e-5)
    assert np.abs(c1_mean(plain) - c1_mean(m)).max() > 1e-4
    # the graph output's mean moves towards the float one too
    y32 = run(m, x).mean(axis=(0, 2, 3))
    assert np.abs(run(fixed, x).mean(axis=(0, 2, 3)) - y32).max() < np.abs(
        run(plain, x).mean(axis=(0, 2, 3)) - y32).max()


def test_non_constant_bias_is_reported_not_corrected():
    r = np.random.default_rng(6)
    w = r.normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["bvec"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("Slice", ["bvec", "st", "en"], ["b2"]),
             helper.make_node("Conv", ["x", "w", "b2"], ["y"], name="conv")]
    m = Q.model(nodes, [("x", [2, 3, 4, 4])], [("y", [2, 2, 4, 4])],
                [Q.init("w", w), Q.init("st", np.array([0])), Q.init("en", np.array([2]))])
    layers = layers_of(m)
    assert [ly.key for ly in layers] == ["y"]
    _, rep = insert_qdq_with_report(m, {}, on_missing="skip", input_means={"y": np.ones((3, 1, 1))})
    assert rep.biases == {} and any("not a constant" in why for _, why in rep.skipped)


# ------------------------------------------------------------------ calibrate()
LENET = os.path.join(DATA_DIR, "lenet.onnx")


def test_calibrate_corrects_every_conv_and_gemm_bias_by_the_reference_shift(mnist, tmp_path):
    on = api.calibrate(LENET, mnist, tmp_path / "on", method="minmax", batch_size=50, max_batches=4)
    off = api.calibrate(LENET, mnist, tmp_path / "off", method="minmax", batch_size=50, max_batches=4,
                        bias_correction=False)
    fp = onnx.load(LENET)
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 200)[0])
    # independent inputs of every layer: one plain ORT session with them as outputs
    layers = layers_of(fp)
    assert len(layers) == 4  # LeNet: 2 Conv + 2 Gemm
    m = onnx.ModelProto()
    m.CopyFrom(fp)
    for ly in layers:
        if ly.input != "data":
            m.graph.output.append(helper.make_tensor_value_info(ly.input, F, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    acts = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": data})))
    acts["data"] = data
    values = {t.name: numpy_helper.to_array(t) for t in fp.graph.initializer}
    q_on, q_off = onnx.load(on.paths["qdq"]), onnx.load(off.paths["qdq"])
    vals_on = {t.name: numpy_helper.to_array(t) for t in q_on.graph.initializer}
    node_on = {n.output[0]: n for n in q_on.graph.node}
    for ly in layers:
        w = values[ly.weight]
        axis = 0 if ly.op == "Conv" or ly.trans_b else 1
        # reference shift: im2col-free, from the loop reference for convs, the plain mean for Gemm
        if ly.op == "Conv":
            xs = acts[ly.input].astype(np.float64)
            sums, n = ref_patch_sums(xs, ly.kernel, ly.strides or (1, 1), ly.dilations or (1, 1),
                                     ly.pads[:2] if ly.pads else (0, 0), ly.pads[2:] if ly.pads else (0, 0))
        else:
            sums, n = acts[ly.input].reshape(len(data), -1).astype(np.float64).sum(0), len(data)
        q, sc = quantize_weight(w, axis)
        shift = bias_shift(ly, dequantize_weight(q, sc, axis).astype(np.float64) - w, sums / n)
        got = vals_on[node_on[ly.key].input[2]]
        np.testing.assert_allclose(got, values[ly.bias] - shift, rtol=1e-5, atol=1e-6)
    # without correction the biases are the model's own
    kept = {t.name for t in q_off.graph.initializer}
    assert all(ly.bias in kept for ly in layers)
    meta_on = json.loads(open(on.paths["json"]).read())["metadata"]
    meta_off = json.loads(open(off.paths["json"]).read())["metadata"]
    assert sorted(meta_on["qdq_bias_corrected"]) == sorted(ly.key for ly in layers)
    assert meta_off["qdq_bias_corrected"] == []
    # the scales are the same either way: only the Q/DQ model's biases move
    assert open(on.paths["cache"]).read() == open(off.paths["cache"]).read()


def test_cli_no_bias_correction(mnist, tmp_path):
    assert main(["calibrate", LENET, "--batches", str(mnist), "--out", str(tmp_path / "c"), "--method", "minmax",
                 "--max-batches", "2", "--no-bias-correction", "-q"]) == 0
    meta = json.loads(open(tmp_path / "c" / "calibration.json").read())["metadata"]
    assert meta["qdq_bias_corrected"] == []


def test_corrected_fp32_model_carries_the_q_dq_weights_and_biases_for_tensorrt_10(mnist, tmp_path):
    """model.corrected.onnx: TensorRT 10's own weight rule (per channel, max|W| / 127) must give back
    exactly the Q/DQ model's int8 weights, and its biases must be the corrected ones."""
    res = api.calibrate(LENET, mnist, tmp_path / "c", method="minmax", batch_size=50, max_batches=4)
    fixed = onnx.load(res.paths["corrected"])
    q = onnx.load(res.paths["qdq"])
    fp = onnx.load(LENET)
    assert [n.op_type for n in fixed.graph.node] == [n.op_type for n in fp.graph.node]  # graph untouched
    fv = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    qv = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qdq_of = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in qv}
    q_nodes = {n.output[0]: n for n in q.graph.node if n.op_type in ("Conv", "Gemm")}
    for n in fixed.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w = fv[n.input[1]]
        qn = q_nodes[n.output[0]]
        dq = qdq_of[qn.input[1]]
        q8, scale = qv[dq.input[0]], qv[dq.input[1]]
        axis = 0 if n.op_type == "Conv" or any(a.name == "transB" and a.i for a in n.attribute) else 1
        # TensorRT's implicit-INT8 weight quantization, done independently in NumPy
        moved = np.moveaxis(w.astype(np.float64), axis, 0)
        trt_scale = np.abs(moved).reshape(moved.shape[0], -1).max(axis=1) / 127
        np.testing.assert_allclose(trt_scale, scale.astype(np.float64), rtol=1e-6)
        shape = [1] * w.ndim
        shape[axis] = -1
        np.testing.assert_array_equal(np.rint(w / trt_scale.reshape(shape)).astype(np.int8), q8)
        np.testing.assert_array_equal(fv[n.input[2]], qv[qn.input[2]])      # the corrected bias
        assert not np.array_equal(fv[n.input[2]], {t.name: numpy_helper.to_array(t)
                                                   for t in fp.graph.initializer}[n.input[2].replace(
                                                       "_corrected", "")])
    # activations quantized alike, the two models compute the same thing
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 100)[0])
    again = insert_qdq_with_report(fixed, res.amax, on_missing="skip")[0]
    np.testing.assert_allclose(run(again, data, "data"), run(q, data, "data"), rtol=1e-5, atol=1e-5)
    # without bias correction there is nothing to carry: no such artefact
    off = api.calibrate(LENET, mnist, tmp_path / "off", method="minmax", batch_size=50, max_batches=2,
                        bias_correction=False)
    assert "corrected" not in off.paths and not (tmp_path / "off" / "model.corrected.onnx").exists()


def test_device_mean_collector_equals_the_host_one(monkeypatch):
    """DeviceMeanCollector (planes summed by a device kernel, per-channel reduced at the end) against
    MeanCollector, on the CPU stand-in of the CUDA runtime with a NumPy ``sum_rows`` in place of the kernel."""
    import ctypes
    from fake_cudart import FakeCuda
    from int8batch.calib.biascorr import DeviceMeanCollector, MeanCollector
    from int8batch.cuda.kernels import DeviceTensor
    from int8batch.onnx.layers import Layer

    fake = FakeCuda().install(monkeypatch)

    def view(ptr, n, dtype):
        return np.frombuffer((ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(ptr), dtype)

    class Kernels:
        def sum_rows(self, x, acc_ptr, rows, cols):
            acc = view(acc_ptr, cols, np.float64)
            acc += view(x.ptr, rows * cols, np.float32).reshape(rows, cols).sum(axis=0, dtype=np.float64)

        def synchronize(self):
            pass

    layers = [Layer(key="a", op="Conv", input="x", weight="wa", bias="", kernel=(3, 3), strides=(1, 1),
                    dilations=(1, 1), pads=(1, 1, 1, 1)),
              Layer(key="b", op="Conv", input="y", weight="wb", bias="", kernel=(1, 1), strides=(1, 1),
                    dilations=(1, 1), pads=(0, 0, 0, 0))]
    shapes = {"wa": (4, 3, 3, 3), "wb": (5, 3, 1, 1)}
    host, dev = MeanCollector(layers, shapes, max_images=5), DeviceMeanCollector(layers, shapes, Kernels(),
                                                                                 max_images=5)
    rng = np.random.default_rng(0)
    keep = []
    for _ in range(3):
        batch = {t: rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for t in ("x", "y")}
        host.collect_many(batch)
        on_dev = {}
        for t, a in batch.items():
            buf = (ctypes.c_char * a.nbytes).from_buffer_copy(a.tobytes())
            keep.append(buf)
            on_dev[t] = DeviceTensor(ctypes.addressof(buf), a.shape)
        dev.collect_many(on_dev)
    got, want = dev.means(), host.means()
    assert got.keys() == want.keys() == {"a", "b"}
    # "a" (3x3 taps) is the same float64 row-sum arithmetic; "b" (1x1, one sum per channel) is summed over
    # each plane in float32 on the host, in float64 on the device
    np.testing.assert_allclose(got["a"], want["a"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["b"], want["b"], rtol=1e-6, atol=1e-9)
    dev.close()
    assert not fake.device, "device buffers left allocated"
