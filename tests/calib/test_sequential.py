"""int8batch.calib.sequential: bias correction on the Q/DQ model's own inputs, layer after layer."""
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import int8batch
from int8batch.calib import api, sequential
from int8batch.calib.biascorr import MeanCollector
from int8batch.calib.settings import CalibrationConfig
from int8batch.cli.main import main
from int8batch.errors import ConfigError, ModelError
from int8batch.onnx import insert_qdq_with_report
from int8batch.onnx.facts import ModelFacts
from int8batch.onnx.layers import MeanPair, bias_shift, layers_of
from int8batch.onnx.qdq import dequantize_weight, layer_bias, quantize_weight
from int8batch.onnx.snap import snap_weights

from test_api import _random_photos_packed, _relu6_block_model

CONVS = ("c1", "c2", "c3", "c4")


def _chain(size=16, seed=0):
    """Conv 3x3 -> ReLU6 -> Conv 1x1 -> ReLU6 -> depthwise 3x3 stride 2 -> Conv 1x1: every bias a constant."""
    r = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(r.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(r.normal(size=8).astype(np.float32), "b1"),
             numpy_helper.from_array(r.normal(size=(8, 8, 1, 1)).astype(np.float32) * 0.4, "w2"),
             numpy_helper.from_array(r.normal(size=8).astype(np.float32), "b2"),
             numpy_helper.from_array(r.normal(size=(8, 1, 3, 3)).astype(np.float32), "w3"),
             numpy_helper.from_array(r.normal(size=8).astype(np.float32), "b3"),
             numpy_helper.from_array(r.normal(size=(4, 8, 1, 1)).astype(np.float32), "w4"),
             numpy_helper.from_array(r.normal(size=4).astype(np.float32), "b4"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], group=8, strides=[2, 2]),
             helper.make_node("Conv", ["c3", "w4", "b4"], ["c4"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("c4", TensorProto.FLOAT, ["N", 4, size // 2, size // 2])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _outputs(m, x, names):
    """The tensors ``names`` of ``m`` on ``x`` (every one made a graph output: a second reader of the model)."""
    c = onnx.ModelProto()
    c.CopyFrom(m)
    have = {o.name for o in c.graph.output}
    c.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(c.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip(names, s.run(names, {"x": x})))


def _setup(n=40):
    m = _chain()
    x = np.random.default_rng(1).uniform(-1, 1, size=(n, 3, 16, 16)).astype(np.float32)
    layers = layers_of(m)
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    acts = _outputs(m, x, [ly.input for ly in layers if ly.input != "x"])
    acts["x"] = x
    mc = MeanCollector(layers, shapes)
    mc.collect_many(acts)
    means = mc.means()
    # coarse activation ranges: clipping and steps that make each layer's input mean drift from FP32's
    amax = {"x": 0.8, "r1": 4.0, "r2": 4.0, "c3": 3.0}
    q, report = insert_qdq_with_report(m, amax, input_means=means, on_missing="skip")
    return m, x, layers, means, q, report


def _channel_means(d):
    return {k: v.astype(np.float64).mean(axis=(0, 2, 3)) for k, v in d.items()}


def test_each_layer_mean_output_in_the_qdq_model_becomes_the_fp32_one():
    m, x, layers, means, q, report = _setup()
    fp32 = _channel_means(_outputs(m, x, list(CONVS)))
    before = _channel_means(_outputs(q, x, list(CONVS)))
    pairs, shifts = sequential.correct_in_sequence(q, ModelFacts.of(m), layers, means, x)
    after = _channel_means(_outputs(q, x, list(CONVS)))
    assert sorted(pairs) == sorted(CONVS) and sorted(shifts) == sorted(CONVS)
    for k in CONVS:
        scale = np.abs(fp32[k]).max()
        np.testing.assert_allclose(after[k], fp32[k], rtol=0, atol=2e-5 * scale, err_msg=k)
    # the classic correction leaves a drift the test can see (the first layer reads the same input in both
    # models up to the input's quantization, so it is the later ones that drift)
    drift = max(np.abs(before[k] - fp32[k]).max() / np.abs(fp32[k]).max() for k in CONVS[1:])
    assert drift > 100 * 2e-5
    # each pair: the FP32 means given, and the Q/DQ model's own input mean (hand-computed from its input)
    q_in = _outputs(q, x, [next(n for n in q.graph.node if n.output[0] == "c2").input[0]])
    assert np.allclose(pairs["c2"].int8.reshape(-1), next(iter(q_in.values())).mean(axis=(0, 2, 3)), atol=1e-6)
    assert pairs["c2"].fp32 is means["c2"]


def test_quantized_tensors_kept_as_int8_give_the_float_paths_values_bit_for_bit(monkeypatch):
    """The pass keeps a quantized activation crossing a cut as its int8 tensor and dequantizes it where it is
    read; run again with every tensor kept in float (the second reader), biases and means are identical."""
    m, x, layers, means, q, _ = _setup()
    q_float = onnx.ModelProto()
    q_float.CopyFrom(q)
    kept = {}
    real = sequential._keep_int8

    def spy(*a):
        segments, deq = real(*a)
        kept.update(deq)
        return segments, deq
    monkeypatch.setattr(sequential, "_keep_int8", spy)
    pairs, shifts = sequential.correct_in_sequence(q, ModelFacts.of(m), layers, means, x)
    # the inputs of c2 and c3 (ReLU6 outputs) and of c4 cross their cuts quantized
    readers = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "Conv"}
    assert {readers["c2"], readers["c3"], readers["c4"]} <= set(kept)
    monkeypatch.setattr(sequential, "_keep_int8", lambda segments, *a: (segments, {}))
    pairs_f, shifts_f = sequential.correct_in_sequence(q_float, ModelFacts.of(m), layers, means, x)
    assert shifts == shifts_f
    for k in CONVS:
        np.testing.assert_array_equal(pairs[k].int8, pairs_f[k].int8, err_msg=k)
    ia = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in q_float.graph.initializer}
    for name in ia:
        np.testing.assert_array_equal(ia[name], ib[name], err_msg=name)


def test_the_pass_takes_fewer_images_where_its_kept_tensors_would_exceed_the_budget(monkeypatch):
    facts = ModelFacts.of(_chain())
    # at most: the input (3x16x16) with r1 and r2 (8x16x16 each) while the second segment runs, float32
    per = (3 * 16 * 16 + 2 * 8 * 16 * 16) * 4
    assert sequential.kept_bytes_per_image(facts) == per
    assert sequential.pass_images(facts, 256) == 64
    monkeypatch.setattr(sequential, "SEQUENTIAL_BUDGET", 20 * per)
    assert sequential.pass_images(facts, 256) == 20
    monkeypatch.setattr(sequential, "SEQUENTIAL_BUDGET", per)
    assert sequential.pass_images(facts, 256) == sequential.SEQUENTIAL_MIN_IMAGES == 8
    assert sequential.pass_images(facts, 5) == 5
    # a spatial size unknown: no estimate, the images stay
    m = _chain()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    assert sequential.kept_bytes_per_image(ModelFacts.of(m)) == 0


def test_a_fixed_batch_model_runs_the_pass_one_batch_at_a_time():
    """A model whose batch is fixed at 8 runs its segments on 8 images at a time (the later ones written in
    place); it gets the biases of the same model with a dynamic batch, and a count of images that is not a
    whole number of batches is refused (the caller then keeps the classic correction)."""
    m, x, layers, means, q, _ = _setup()
    pairs, _ = sequential.correct_in_sequence(q, ModelFacts.of(m), layers, means, x)
    fixed, q8 = onnx.ModelProto(), onnx.ModelProto()
    fixed.CopyFrom(m)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 8
    _, _, _, _, q8, _ = _setup()
    pairs8, _ = sequential.correct_in_sequence(q8, ModelFacts.of(fixed), layers, means, x)
    for k in CONVS:
        np.testing.assert_allclose(pairs8[k].int8, pairs[k].int8, rtol=1e-6, atol=1e-7, err_msg=k)
    with pytest.raises(ModelError, match="whole number of the model's batches of 8, got 36"):
        sequential.correct_in_sequence(q8, ModelFacts.of(fixed), layers, means, x[:36])


def test_the_corrected_fp32_model_gets_the_same_biases():
    m, x, layers, means, q, report = _setup()
    pairs, _ = sequential.correct_in_sequence(q, ModelFacts.of(m), layers, means, x)
    corrected, _ = snap_weights(m, {k: pairs.get(k, v) for k, v in means.items()})
    qb = {n.output[0]: n.input[2] for n in q.graph.node if n.op_type == "Conv"}
    cb = {n.output[0]: n.input[2] for n in corrected.graph.node if n.op_type == "Conv"}
    qi = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    ci = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    for k in CONVS:
        np.testing.assert_array_equal(qi[qb[k]], ci[cb[k]], err_msg=k)


def test_layer_bias_with_equal_means_is_the_classic_correction():
    m = _chain()
    ly = {ly.key: ly for ly in layers_of(m)}["c3"]
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w3"))
    b = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "b3"))
    q, s = quantize_weight(w, 0)
    mean = np.random.default_rng(4).uniform(0, 6, size=(8, 3, 3))
    classic, _, shift = layer_bias(ly, w, q, s, 0, mean, b)
    paired, _, pshift = layer_bias(ly, w, q, s, 0, MeanPair(fp32=mean, int8=mean), b)
    np.testing.assert_allclose(pshift, shift, rtol=1e-9, atol=1e-12)
    dw = dequantize_weight(q, s, 0).astype(np.float64) - w
    np.testing.assert_allclose(classic, b - bias_shift(ly, dw, mean), rtol=1e-6)
    # an int8 input mean higher by d on channel c shifts the bias by Wq[c] . d
    up = mean.copy()
    up[2] += 0.5
    _, _, moved = layer_bias(ly, w, q, s, 0, MeanPair(fp32=mean, int8=up), b)
    wq = dequantize_weight(q, s, 0).astype(np.float64)
    assert moved[2] - shift[2] == pytest.approx(0.5 * wq[2].sum(), rel=1e-9)
    assert np.allclose(np.delete(moved - shift, 2), 0)


def test_early_layers_keeps_convs_at_most_8x_smaller_than_the_input():
    # 64 -> 32 -> 16 -> 8 -> 4 (strides 2), then a 1x1 Conv on 4x4 and a Gemm
    r = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(5):
        inits += [numpy_helper.from_array(r.normal(size=(2, 2, 3, 3)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(2, np.float32), f"b{i}")]
        stride = 2 if i < 4 else 1
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                      strides=[stride, stride]))
        prev = f"c{i}"
    inits += [numpy_helper.from_array(r.normal(size=(32, 3)).astype(np.float32), "wg"),
              numpy_helper.from_array(np.zeros(3, np.float32), "bg"),
              numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes += [helper.make_node("Reshape", [prev, "shape"], ["f"]), helper.make_node("Gemm", ["f", "wg", "bg"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    layers = layers_of(m)
    assert [ly.key for ly in layers] == ["c0", "c1", "c2", "c3", "c4", "y"]
    # inputs 64, 32, 16, 8 are kept (8 * 8 >= 64); c4 reads 4x4 and the Gemm a flat vector
    assert [ly.key for ly in sequential.early_layers(layers, ModelFacts.of(m))] == ["c0", "c1", "c2", "c3"]
    wider = sequential.early_layers(layers, ModelFacts.of(m), max_stride=16)
    assert [ly.key for ly in wider] == ["c0", "c1", "c2", "c3", "c4"]
    # spatial sizes unknown: nothing is taken (the classic correction stays)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"]))
    assert sequential.early_layers(layers_of(m), ModelFacts.of(m)) == []


def test_calibrate_auto_sets_the_biases_from_the_qdq_models_inputs(tmp_path, caplog):
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    with caplog.at_level(logging.INFO, logger="int8batch"):
        res = api.calibrate(model, tmp_path / "b", tmp_path / "int8", weight_rounding="nearest")
    assert "from the Q/DQ model's own input means on 8 image(s)" in caplog.text
    classic = api.calibrate(model, tmp_path / "b", tmp_path / "fp32", weight_rounding="nearest", bias_inputs="fp32")
    doc = json.loads(open(res.paths["json"]).read())["metadata"]
    assert doc["bias_inputs"] == "int8" and doc["settings"]["bias_inputs"] == "int8"
    assert json.loads(open(classic.paths["json"]).read())["metadata"]["bias_inputs"] == "fp32"

    def biases(path):
        g = onnx.load(path).graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        return {n.output[0]: inits[n.input[2]] for n in g.node if n.op_type == "Conv"}
    q, c, q0 = biases(res.paths["qdq"]), biases(res.paths["corrected"]), biases(classic.paths["qdq"])
    assert sorted(q) == sorted(c) == sorted(q0)
    for k in q:
        np.testing.assert_array_equal(q[k], c[k], err_msg=k)         # TensorRT 10 gets the same biases
    assert any(not np.array_equal(q[k], q0[k]) for k in q)           # and they are not the classic ones
    # mean output of the second Conv ("p") on the calibration images: now the FP32 one's
    with int8batch.BatchSet(tmp_path / "b") as bs:
        x = np.ascontiguousarray(bs.images(0, 8)[0])

    def p_mean(path):
        m = onnx.load(path)
        m.graph.output.append(onnx.ValueInfoProto(name="p"))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(["p"], {"input": x})[0].astype(np.float64).mean(axis=(0, 2, 3))
    want = p_mean(model)
    assert np.abs(p_mean(res.paths["qdq"]) - want).max() < 0.2 * np.abs(p_mean(classic.paths["qdq"]) - want).max()


def test_a_pass_that_cannot_run_keeps_the_classic_biases(tmp_path, monkeypatch, caplog):
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    classic = api.calibrate(model, tmp_path / "b", tmp_path / "fp32", weight_rounding="nearest", bias_inputs="fp32")

    def broken(*a, **k):
        raise ModelError("segment does not load")
    monkeypatch.setattr(sequential, "correct_in_sequence", broken)
    with caplog.at_level(logging.WARNING, logger="int8batch"):
        res = api.calibrate(model, tmp_path / "b", tmp_path / "int8", weight_rounding="nearest")
    assert "could not run (segment does not load)" in caplog.text
    assert json.loads(open(res.paths["json"]).read())["metadata"]["bias_inputs"] == "fp32"
    for a, b in ((res.paths["qdq"], classic.paths["qdq"]), (res.paths["corrected"], classic.paths["corrected"])):
        ia = {t.name: numpy_helper.to_array(t) for t in onnx.load(a).graph.initializer}
        ib = {t.name: numpy_helper.to_array(t) for t in onnx.load(b).graph.initializer}
        assert sorted(ia) == sorted(ib)
        for name in ia:
            np.testing.assert_array_equal(ia[name], ib[name], err_msg=name)


def test_the_early_layers_fp32_means_come_from_the_first_images_only(tmp_path, monkeypatch):
    """The layers the pass sets are summed on the pass's first 64 images only (not on all 256: that would be
    discarded), the others on every image; those 64 are also what a fallback's classic correction uses."""
    from int8batch.calib.biascorr import patch_sums
    _random_photos_packed(tmp_path, count=72, side=20, size=16, batch_size=8, seed=5)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 16)
    real_early = sequential.early_layers
    monkeypatch.setattr(sequential, "early_layers", lambda layers, facts: real_early(layers, facts)[:1])
    seen = {}
    real_apply = sequential.apply

    def spy(qmodel, report, facts, input_means, first_means, images, **kw):
        seen.update(input_means=dict(input_means), first=dict(first_means), images=len(images))
        return real_apply(qmodel, report, facts, input_means, first_means, images, **kw)
    monkeypatch.setattr(sequential, "apply", spy)
    api.calibrate(model, tmp_path / "b", tmp_path / "o", weight_rounding="nearest", centre=False)
    assert seen["images"] == sequential.SEQUENTIAL_IMAGES == 64
    assert sorted(seen["first"]) == ["c"] and sorted(seen["input_means"]) == ["c", "p"]
    with int8batch.BatchSet(tmp_path / "b") as bs:
        x = np.ascontiguousarray(bs.images(0, 72)[0])
    m = onnx.load(model)
    layers = {ly.key: ly for ly in layers_of(m)}
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    sums, count = patch_sums(x[:64], layers["c"], w["w1"].shape)       # first 64 images only
    np.testing.assert_allclose(seen["first"]["c"], sums / count, rtol=1e-6, atol=1e-7)
    assert seen["input_means"]["c"] is seen["first"]["c"]
    m.graph.output.append(onnx.ValueInfoProto(name="r"))
    rr = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["r"], {"input": x})[0]
    sums, count = patch_sums(rr, layers["p"], w["w2"].shape)           # every image for the late layer
    np.testing.assert_allclose(seen["input_means"]["p"], sums / count, rtol=1e-5, atol=1e-6)
    s64, c64 = patch_sums(rr[:64], layers["p"], w["w2"].shape)
    assert np.abs(seen["input_means"]["p"] - s64 / c64).max() > 1e-4    # which the first 64 alone would not give
    # both layers early, and a budget that 20 images fill: the pass and the FP32 means both take the first 20
    monkeypatch.setattr(sequential, "early_layers", real_early)
    per = sequential.kept_bytes_per_image(ModelFacts.of(model))
    assert per == (3 + 6) * 16 * 16 * 4           # the input and the ReLU6 output "r", float32
    monkeypatch.setattr(sequential, "SEQUENTIAL_BUDGET", 20 * per)
    api.calibrate(model, tmp_path / "b", tmp_path / "o20", weight_rounding="nearest", centre=False)
    assert seen["images"] == 20
    sums, count = patch_sums(x[:20], layers["c"], w["w1"].shape)
    np.testing.assert_allclose(seen["first"]["c"], sums / count, rtol=1e-6, atol=1e-7)


def test_config_and_cli_options(tmp_path, capsys):
    assert CalibrationConfig().resolved_bias_inputs == "int8"
    assert CalibrationConfig(method="mse").resolved_bias_inputs == "fp32"
    assert CalibrationConfig(bias_inputs="fp32").resolved_bias_inputs == "fp32"
    assert CalibrationConfig(bias_correction=False).resolved_bias_inputs is None
    with pytest.raises(ConfigError, match="bias inputs must be one of fp32, int8"):
        CalibrationConfig(bias_inputs="float")
    with pytest.raises(ConfigError, match="--no-bias-correction"):
        CalibrationConfig(bias_inputs="int8", bias_correction=False)
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    assert main(["calibrate", model, "--batches", str(tmp_path / "b"), "-o", str(tmp_path / "o"), "-q",
                 "--bias-inputs", "fp32"]) == 0
    doc = json.loads((tmp_path / "o" / "calibration.json").read_text())["metadata"]
    assert doc["bias_inputs"] == "fp32" and doc["settings"]["bias_inputs"] == "fp32"
    assert main(["calibrate", model, "--batches", str(tmp_path / "b"), "-o", str(tmp_path / "o2"), "-q",
                 "--bias-inputs", "int8", "--no-bias-correction"]) == 1
    assert "--bias-inputs" in capsys.readouterr().err and not (tmp_path / "o2").exists()
