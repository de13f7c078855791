"""calibrate(): the streaming pass, the artefacts and their agreement, against independent references."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import int8batch
from int8batch.calib import api, passes
from int8batch.calib.cache import read_dynamic_range, read_trt_cache
from int8batch.cli.main import main
from int8batch.errors import CalibrationError, ConfigError, ModelError
from int8batch.packing.sources import DATA_DIR

LENET = os.path.join(DATA_DIR, "lenet.onnx")


def _all_outputs(model_path, names, data):
    """Independent reference: every named tensor as a graph output, one plain ORT session."""
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have and n != m.graph.input[0].name:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": data})))
    outs["data"] = data
    return outs


def test_minmax_is_the_observed_max_and_artefacts_agree(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path, method="minmax", batch_size=50, max_batches=4)
    assert res.batches == 4 and res.images == 200
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 200)[0])
    ref = _all_outputs(LENET, list(res.amax), data)
    for name, amax in res.amax.items():
        assert amax == pytest.approx(float(np.abs(ref[name]).max()), rel=1e-6), name
    cache = read_trt_cache(res.paths["cache"])
    assert cache.algorithm == "MinMaxCalibration" and list(cache.scales) == list(res.amax)
    for name, amax in res.amax.items():
        assert cache.scales[name] == np.float32(amax / 127)
    dr = read_dynamic_range(res.paths["dynamic_range"])
    assert dr == pytest.approx(res.amax)
    doc = json.loads(open(res.paths["json"]).read())
    assert doc["tensors"]["data"]["method"] == "minmax" and doc["tensors"]["data"]["saturation"] == 0.0
    onnx.checker.check_model(onnx.load(res.paths["qdq"]), full_check=True)


def test_qdq_model_tracks_fp32_and_cli_conversion_reuses_scales(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path / "c", batch_size=50, max_batches=6)
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 100)[0])
    y32 = ort.InferenceSession(LENET).run(None, {"data": data})[0]
    y8 = ort.InferenceSession(res.paths["qdq"]).run(None, {"data": data})[0]
    assert (y32.argmax(1) == y8.argmax(1)).mean() >= 0.97
    assert np.abs(y32 - y8).max() < 0.25
    # int8batch qdq: cache -> Q/DQ with the very same scales
    out = tmp_path / "from_cache.onnx"
    assert main(["qdq", LENET, "--cache", res.paths["cache"], "-o", str(out)]) == 0

    def scales(path):
        m = onnx.load(path)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        return sorted(float(inits[n.input[1]]) for n in m.graph.node
                      if n.op_type == "QuantizeLinear" and inits[n.input[1]].ndim == 0)
    assert scales(out) == scales(res.paths["qdq"])


def test_sub_batches_give_identical_histograms(mnist, monkeypatch):
    big = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=4)
    monkeypatch.setattr(passes, "ACTIVATION_BUDGET", 1)  # one image per ONNX Runtime call
    small = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=4)
    for name in big.stats:
        np.testing.assert_array_equal(big.stats[name].hist, small.stats[name].hist)
        assert big.amax[name] == small.amax[name]


def _run_sizes(monkeypatch):
    from int8batch.calib.ort_exec import ActivationRunner
    sizes, run0 = [], ActivationRunner.run

    def run(self, data):
        sizes.append(len(data))
        return run0(self, data)
    monkeypatch.setattr(ActivationRunner, "run", run)
    return sizes


def test_sub_batches_sized_from_the_inferred_shapes(mnist, monkeypatch):
    from int8batch.calib.ort_exec import ActivationRunner
    from int8batch.onnx.facts import ModelFacts
    facts = ModelFacts.of(LENET)
    runner = ActivationRunner(facts.model, facts.quantizable)
    with int8batch.BatchSet(mnist) as bs:
        one = runner.run(np.ascontiguousarray(bs.images(0, 1)[0]))
    runner.close()
    measured = sum(a.nbytes for a in one.values())       # what ONNX Runtime returns for one image
    assert facts.bytes_per_image(runner.tensor_names) == measured
    big = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    monkeypatch.setattr(passes, "ACTIVATION_BUDGET", 3 * measured + 1)
    sizes = _run_sizes(monkeypatch)
    small = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    assert sizes == ([3] * 16 + [2]) * 2                  # no probe run
    for name in big.stats:
        np.testing.assert_array_equal(big.stats[name].hist, small.stats[name].hist)


def test_a_probe_run_sizes_sub_batches_when_shapes_are_unknown(mnist, monkeypatch):
    from int8batch.onnx.facts import ModelFacts
    big = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    facts = ModelFacts.of(LENET)
    per_image = facts.bytes_per_image([facts.input.name] + list(facts.quantizable))
    monkeypatch.setattr(ModelFacts, "bytes_per_image", lambda self, names: None)
    monkeypatch.setattr(passes, "ACTIVATION_BUDGET", 3 * per_image + 1)
    sizes = _run_sizes(monkeypatch)
    small = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    assert sizes == [1] + ([3] * 16 + [2]) * 2
    # the probe's activations are not collected: image 0 counts once
    for name in big.stats:
        np.testing.assert_array_equal(big.stats[name].hist, small.stats[name].hist)


def test_two_pass_and_methods(mnist):
    one = api.calibrate(LENET, mnist, None, method="minmax", batch_size=50, max_batches=3)
    two = api.calibrate(LENET, mnist, None, method="minmax", batch_size=50, max_batches=3, two_pass=True)
    assert one.amax == pytest.approx(two.amax)
    auto = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=3)
    # LeNet's only finitely bounded tensor is the softmax output (0, 1): minmax there, mse elsewhere
    assert auto.methods.pop("prob") == "minmax" and set(auto.methods.values()) == {"mse"}


def test_keep_float_leaves_the_most_sensitive_tensor_unquantized(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path, batch_size=50, max_batches=2, keep_float=1)
    assert len(res.kept_float) == 1
    m = onnx.load(res.paths["qdq"])
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert res.kept_float[0] not in quantized and len(quantized) >= 3
    assert json.load(open(res.paths["json"]))["metadata"]["qdq_kept_float"] == res.kept_float


def test_errors(mnist, tmp_path):
    with pytest.raises(ConfigError, match="unknown calibration method"):
        api.calibrate(LENET, mnist, None, method="kl")
    with pytest.raises(CalibrationError, match="no full batch"):
        api.calibrate(LENET, mnist, None, batch_size=400)
    wrong = tmp_path / "rgb"
    int8batch.pack("mnist-test", wrong, batch_size=10, limit=10, channels="rgb")
    with pytest.raises(ModelError, match="data"):
        api.calibrate(LENET, wrong, None)
    assert main(["calibrate", LENET, "--batches", str(wrong), "--out", str(tmp_path / "x")]) == 1


# ------------------------------------------------------------ pixel-step input scale
def test_pixel_step_from_the_manifest_recipe():
    from int8batch.manifest import recipe

    def man(scale, mean, std):
        return recipe({"preprocess": {"scale": scale, "mean": mean, "std": std}})
    assert api.pixel_step(man(1.0, [127.0] * 3, [128.0] * 3)) == 1 / 128      # efficientnet-lite
    assert api.pixel_step(man(1.0, [104.0, 117.0, 123.0], [1.0])) == 1.0      # caffe: whole-number means
    assert api.pixel_step(man(1 / 255, [0.0], [1.0])) == pytest.approx(1 / 255)  # mnist
    assert api.pixel_step(man(1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])) is None  # torch
    assert api.pixel_step(man(1.0, [127.5] * 3, [128.0] * 3)) is None        # half-pixel offset
    assert api.pixel_step(None) is None and api.pixel_step(recipe({"preprocess": {}}, strict=False)) is None


def _tiny_rgb_model(path, size):
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(0)
    w = r.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                     ["N", 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("deep", [False, True])
def test_auto_gives_an_8bit_input_the_pixel_step_and_quantizes_it_exactly(tmp_path, deep):
    import cv2
    root = tmp_path / "imgs"
    root.mkdir()
    r = np.random.default_rng(1)
    for i in range(8):
        img = r.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        if deep:  # a 16-bit PNG: pixel / 257 leaves the 8-bit lattice
            cv2.imwrite(str(root / f"{i}.png"), img.astype(np.uint16) * 257 + 77)
        else:
            cv2.imwrite(str(root / f"{i}.png"), img)
    int8batch.pack(root, tmp_path / "b", preset="efficientnet-lite", size=32, resize="direct",
                   resize_size=(32, 32), crop="none", batch_size=4)
    model = _tiny_rgb_model(str(tmp_path / "m.onnx"), 32)
    res = api.calibrate(model, tmp_path / "b", tmp_path / "c")
    with int8batch.BatchSet(tmp_path / "b") as bs:
        x = np.ascontiguousarray(bs.images(0, 8)[0])
    if deep:
        assert res.methods["input"] == "mse"
        return
    assert res.methods["input"] == "pixel-step" and res.amax["input"] == 127 / 128
    # the Q/DQ model's input scale is exactly 1/128: every value but pixel 255 round-trips bit for bit
    q = onnx.load(res.paths["qdq"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    qnode = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"][0]
    s = np.float32(inits[qnode.input[1]])
    assert s == np.float32(1 / 128)
    back = np.clip(np.rint(x / s), -128, 127) * s
    inside = x < 1.0
    assert inside.mean() > 0.99
    np.testing.assert_array_equal(back[inside], x[inside])
    assert np.all(back[~inside] == np.float32(127 / 128))
    # other methods keep their own rule for the input
    assert api.calibrate(model, tmp_path / "b", None, method="minmax").amax["input"] == float(np.abs(x).max())


def test_tensor_names_with_colons_calibrate_and_stay_out_of_the_dynamic_range_file(tmp_path, caplog):
    """TensorFlow exports name tensors like 'conv:0'; sampleINT8API's range file cannot hold them."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(2).normal(size=(4, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["data", "w"], ["conv:0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv:0"], ["relu:0"]),
             helper.make_node("Conv", ["relu:0", "w2"], ["y"])]
    w2 = np.random.default_rng(3).normal(size=(2, 4, 1, 1)).astype(np.float32)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 28, 28])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(tmp_path / "tf.onnx")
    onnx.save(m, path)
    batches = tmp_path / "b"
    int8batch.pack("mnist", batches, batch_size=50, limit=100)
    res = api.calibrate(path, batches, tmp_path / "c", method="minmax")
    assert {"conv:0", "relu:0", "data", "y"} <= set(res.amax)
    dr = read_dynamic_range(res.paths["dynamic_range"])
    assert "relu:0" not in dr and "conv:0" not in dr and dr["data"] == pytest.approx(res.amax["data"])
    cache = read_trt_cache(res.paths["cache"])
    assert cache.scales["relu:0"] == np.float32(res.amax["relu:0"] / 127)
    meta = json.loads(open(res.paths["json"]).read())["metadata"]
    assert sorted(meta["dynamic_range_left_out"]) == ["conv:0", "relu:0"]
    q = onnx.load(res.paths["qdq"])
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "relu:0" for n in q.graph.node)
    assert any("':' in the name" in r.getMessage() for r in caplog.records)


def test_window_follows_batchstream_skip(mnist, tmp_path):
    # Files of 50, batches of 30 (not a multiple of N): TensorRT's BatchStream skips by reading
    # and stops at max_batches, so first=5 with max_batches=2 skips 2 batches -> images 60..119.
    res = api.calibrate(LENET, mnist, tmp_path, method="minmax", batch_size=30, first=5, max_batches=2,
                        bias_correction=False, write_qdq=False)
    meta = json.load(open(res.paths["json"]))["metadata"]
    assert (meta["first_batch"], meta["first_image"], res.images) == (2, 60, 60)
    with int8batch.BatchSet(mnist) as bs:
        want = float(np.abs(bs.images(60, 60)[0]).max())
    assert res.amax["data"] == want
    # a multiple of N takes the fast path: every skipped batch counts
    res = api.calibrate(LENET, mnist, tmp_path / "b", method="minmax", batch_size=50, first=3, max_batches=2,
                        bias_correction=False, write_qdq=False)
    assert json.load(open(res.paths["json"]))["metadata"]["first_image"] == 150


def test_cache_header_choice(mnist, tmp_path, monkeypatch):
    from int8batch.trt import vocab
    monkeypatch.setattr(vocab, "installed_version", lambda: None)
    res = api.calibrate(LENET, mnist, tmp_path / "a", method="minmax", max_batches=1, bias_correction=False,
                        write_qdq=False)
    first = open(res.paths["cache"]).readline().strip()
    assert first == res.cache_header == "TRT-101600-MinMaxCalibration"
    assert any("assumed" in n for n in res.notes) and any("entropy2" in n for n in res.notes)
    monkeypatch.setattr(vocab, "installed_version", lambda: "8.6.1.6")
    res = api.calibrate(LENET, mnist, tmp_path / "b", method="mse", max_batches=1, bias_correction=False,
                        write_qdq=False)
    assert res.cache_header == "TRT-8601-EntropyCalibration2" and res.notes == []
    res = api.calibrate(LENET, mnist, tmp_path / "c", method="minmax", max_batches=1, bias_correction=False,
                        write_qdq=False, trt_version="10.13.3", cache_algorithm="entropy2")
    assert open(res.paths["cache"]).readline().strip() == "TRT-101303-EntropyCalibration2"


def test_progress_reports_every_pass_and_plain_callables_keep_theirs(mnist, tmp_path):
    phased, plain = [], []
    res = api.calibrate(LENET, mnist, tmp_path / "a", batch_size=50, max_batches=3, two_pass=True,
                        progress=lambda done, total, phase=None, unit=None: phased.append((phase, unit, done, total)))
    passes = {}
    for phase, unit, done, total in phased:
        passes.setdefault((phase, unit), []).append((done, total))
    n_files = len(res.paths)
    sens = len(passes[("sensitivity", "tensors")])
    assert list(passes) == [("max pass", "batches"), ("histograms and bias sums", "batches"),
                            ("sensitivity", "tensors"), ("writing artefacts", "files")]
    assert passes[("max pass", "batches")] == [(1, 3), (2, 3), (3, 3)]
    assert passes[("histograms and bias sums", "batches")] == [(1, 3), (2, 3), (3, 3)]
    assert passes[("sensitivity", "tensors")] == [(k, sens) for k in range(1, sens + 1)] and sens >= 4
    assert passes[("writing artefacts", "files")] == [(k, n_files) for k in range(1, n_files + 1)]
    assert n_files == 5 and "corrected" in res.paths
    # a (done, total) callable hears the batch loops only, as before phases existed
    api.calibrate(LENET, mnist, tmp_path / "b", batch_size=50, max_batches=3,
                  progress=lambda done, total: plain.append((done, total)))
    assert plain == [(1, 3), (2, 3), (3, 3)]


def test_summary_has_one_clear_line_per_artefact(mnist, tmp_path, capsys):
    assert main(["calibrate", LENET, "--batches", str(mnist), "--out", str(tmp_path), "--max-batches", "2",
                 "--batch-size", "50"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0].startswith("calibrated 10 tensors on 2 batches (100 images)") and "wrote" not in lines[0]
    rows = {os.path.basename(line.split()[0]): line for line in lines[1:] if line.startswith("  ")}
    assert list(rows) == ["calibration.cache", "dynamic_range.txt", "calibration.json", "model.qdq.onnx",
                          "model.corrected.onnx"]
    assert "10 scales, header TRT-" in rows["calibration.cache"]
    assert "10 name:amax lines" in rows["dynamic_range.txt"]
    assert "Q/DQ model" in rows["model.qdq.onnx"] and "5 activations and 4 weights int8" in rows["model.qdq.onnx"]
    corrected = rows["model.corrected.onnx"]
    assert corrected.split(None, 1)[1].startswith("FP32 model for TensorRT 10 with the cache: 4 weights on the "
                                                  "int8 grid, 4 biases corrected")
    assert "missing" not in cap.out + cap.err and "Q/DQ:" not in cap.out + cap.err   # no failure-like log line
    # the numbers match the artefacts themselves
    assert len(read_dynamic_range(str(tmp_path / "dynamic_range.txt"))) == 10
    q = onnx.load(str(tmp_path / "model.corrected.onnx"))
    assert not [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_config_refuses_what_it_cannot_use(mnist, tmp_path):
    from int8batch.calib.settings import CalibrationConfig
    for bad in ({"batch_size": 0}, {"keep_float": -1}, {"method": "kl"}, {"num_bins": 7}, {"first": -1},
                {"max_batches": 0}, {"percentile": 120.0}):
        with pytest.raises(ConfigError):
            api.calibrate(LENET, mnist, None, **bad)
    with pytest.raises(ConfigError, match="unknown calibration option"):
        CalibrationConfig().replace(batchsize=5)
    cfg = CalibrationConfig(method="minmax")
    assert (cfg.resolved_keep_float, cfg.cache_calibrator) == (0, "minmax")
    assert CalibrationConfig().resolved_keep_float == "auto"


def test_second_writer_of_an_output_folder_is_refused(mnist, tmp_path):
    from int8batch._lock import FolderLock
    from int8batch.errors import OutputLockedError
    out = tmp_path / "cal"
    with FolderLock(out, "calibrate"):
        with pytest.raises(OutputLockedError, match=str(out.name)):
            api.calibrate(LENET, mnist, out, method="minmax", max_batches=1)
    api.calibrate(LENET, mnist, out, method="minmax", max_batches=1)   # released: works


def test_artefacts_appear_as_one_set(mnist, tmp_path, monkeypatch):
    out = tmp_path / "cal"
    api.calibrate(LENET, mnist, out, method="mse", max_batches=2)
    names = sorted(os.listdir(out))
    assert "model.corrected.onnx" in names and "model.qdq.onnx" in names
    before = {n: (out / n).read_bytes() for n in names}
    # a failure while writing the set leaves the previous run's files exactly as they were
    from int8batch.calib import cache as cache_io

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache_io, "write_calibration_json", boom)
    with pytest.raises(OSError):
        api.calibrate(LENET, mnist, out, method="minmax", max_batches=2)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == names and all((out / n).read_bytes() == b for n, b in before.items())
    # a run that writes fewer artefacts removes the earlier run's others (no mixed set)
    api.calibrate(LENET, mnist, out, method="minmax", max_batches=2, write_qdq=False)
    assert sorted(os.listdir(out)) == ["calibration.cache", "calibration.json", "dynamic_range.txt"]


def test_model_is_analysed_once(mnist, tmp_path, monkeypatch):
    import onnx.shape_inference as si
    calls = []
    real = si.infer_shapes
    monkeypatch.setattr(si, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    api.calibrate(LENET, mnist, tmp_path / "a", method="mse", max_batches=1)
    # one analysis for the whole run (ModelFacts), one for the Q/DQ model's own check
    assert len(calls) <= 2


def test_an_underestimate_of_the_activations_resizes_the_sub_batches(mnist, monkeypatch, caplog):
    from int8batch.onnx.facts import ModelFacts
    big = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    facts = ModelFacts.of(LENET)
    per_image = facts.bytes_per_image([facts.input.name] + list(facts.quantizable))
    monkeypatch.setattr(ModelFacts, "bytes_per_image", lambda self, names: per_image // 4)   # 4x too few
    monkeypatch.setattr(passes, "ACTIVATION_BUDGET", 3 * per_image + 1)
    sizes = _run_sizes(monkeypatch)
    with caplog.at_level("WARNING"):
        small = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=2)
    # the first run used the estimate (12 images); the real size brought the rest to 3
    assert sizes == [12] + [3] * 12 + [2] + [3] * 16 + [2]
    assert "shape inference gave" in caplog.text
    for name in big.stats:
        np.testing.assert_array_equal(big.stats[name].hist, small.stats[name].hist)


def test_files_int8batch_did_not_write_are_not_replaced(mnist, tmp_path, capsys):
    from int8batch.errors import OutputExistsError
    out = tmp_path / "out"
    out.mkdir()
    (out / "calibration.cache").write_text("someone's cache\n")
    (out / "model.qdq.onnx.data").write_text("someone's weights\n")
    with pytest.raises(OutputExistsError, match="calibration.cache, model.qdq.onnx.data already there"):
        api.calibrate(LENET, mnist, out, batch_size=50, max_batches=2)
    assert (out / "calibration.cache").read_text() == "someone's cache\n"
    assert sorted(os.listdir(out)) == ["calibration.cache", "model.qdq.onnx.data"]
    assert main(["calibrate", LENET, "--batches", str(mnist), "--out", str(out), "--max-batches", "2", "-q"]) == 1
    assert "pass --force to replace them" in capsys.readouterr().err
    # --force replaces them as a set (the stale .data file goes too)
    assert main(["calibrate", LENET, "--batches", str(mnist), "--out", str(out), "--max-batches", "2", "-q",
                 "--force"]) == 0
    assert read_trt_cache(out / "calibration.cache").scales
    assert not (out / "model.qdq.onnx.data").exists()


def test_a_previous_calibration_is_replaced_by_a_new_run(mnist, tmp_path):
    out = tmp_path / "out"
    a = api.calibrate(LENET, mnist, out, method="minmax", batch_size=50, max_batches=2)
    b = api.calibrate(LENET, mnist, out, method="mse", batch_size=50, max_batches=2)
    assert a.paths["cache"] == b.paths["cache"]
    doc = json.load(open(out / "calibration.json"))
    assert doc["metadata"]["method"] == "mse"


def test_calibrating_a_model_of_the_output_folder_never_replaces_it(mnist, tmp_path):
    """Found as a new user: `calibrate cc/model.corrected.onnx -o cc` replaced the model it calibrated (and
    calibration.json then named a file that had changed); int8batch qdq refused the like."""
    import hashlib

    from int8batch.errors import OutputExistsError
    out = tmp_path / "out"
    a = api.calibrate(LENET, mnist, out, method="minmax", batch_size=50, max_batches=2, bias_correction=True)
    model = out / "model.corrected.onnx"
    assert model.exists()
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    for force in (False, True):
        with pytest.raises(OutputExistsError, match="is the model being calibrated"):
            api.calibrate(str(model), mnist, out, batch_size=50, max_batches=2, force=force)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    assert json.load(open(out / "calibration.json"))["metadata"]["method"] == "minmax"
    b = api.calibrate(str(model), mnist, tmp_path / "other", batch_size=50, max_batches=2)   # elsewhere: fine
    assert os.path.exists(b.paths["cache"]) and a.paths["cache"] != b.paths["cache"]


def test_damaged_images_are_refused_naming_where(mnist, tmp_path):
    """NaN/inf written into a batch file (a damaged pack) stops calibrate and eval with the file and image,
    instead of 95 warnings and a cache computed around them (found as a new user)."""
    import shutil

    from int8batch.calib.evaluate import evaluate
    from int8batch.errors import BatchFormatError
    bad = tmp_path / "bad"
    shutil.copytree(mnist, bad)
    n, c, h, w = 50, 1, 28, 28
    with open(bad / "batch1", "r+b") as f:     # image 3 of file 1 = image 53 of the set
        f.seek(16 + 4 * (3 * c * h * w + 100))
        f.write(np.array([np.inf, -np.inf, np.nan], "<f4").tobytes())
    model = LENET
    with pytest.raises(CalibrationError) as ei:
        api.calibrate(model, bad, tmp_path / "cal", max_batches=3)
    msg = str(ei.value)
    assert "1 NaN and 2 inf values" in msg and "batch1, image 3 of the file (image 53 of the set)" in msg
    assert "int8batch inspect" in msg and not (tmp_path / "cal" / "calibration.cache").exists()
    good = api.calibrate(model, mnist, tmp_path / "ok", max_batches=3)
    with pytest.raises(BatchFormatError, match=r"batch1, image 3 of the file .*1 NaN and 2 inf values"):
        evaluate(model, good.paths["qdq"], str(bad), batch_size=50, device="cpu")
    # the window decides: calibrating on file 0 only is not affected
    api.calibrate(model, bad, tmp_path / "first", max_batches=1)


def test_a_new_calibration_replaces_only_the_files_the_old_one_wrote(mnist, tmp_path, caplog):
    """Found by a new user: after a --no-qdq calibration, their own model.qdq.onnx and report.png beside it
    were deleted by the next run. calibration.json now lists the files its run wrote, and the settings."""
    from int8batch.errors import OutputExistsError
    out = tmp_path / "cal"
    api.calibrate(LENET, mnist, out, write_qdq=False, max_batches=2)
    meta = json.loads((out / "calibration.json").read_text())["metadata"]
    assert meta["files"] == ["calibration.cache", "calibration.json", "dynamic_range.txt"]
    assert meta["settings"]["write_qdq"] is False and meta["settings"]["weight_rounding"] == "gptq"
    (out / "model.qdq.onnx").write_bytes(b"mine")
    (out / "report.png").write_bytes(b"mine too")
    with pytest.raises(OutputExistsError, match="model.qdq.onnx, report.png are not among the files the "
                                                "calibration there wrote"):
        api.calibrate(LENET, mnist, out, max_batches=2)
    assert (out / "model.qdq.onnx").read_bytes() == b"mine"
    with caplog.at_level("INFO", logger="int8batch"):
        res = api.calibrate(LENET, mnist, out, max_batches=2, method="minmax", force=True, report=True)
    # the log names the plot where it is, not the staging folder it was drawn in (found as a new user)
    assert [m for m in caplog.messages if m.startswith("report:")][0].endswith(f"-> {out / 'report.png'}")
    meta = json.loads((out / "calibration.json").read_text())["metadata"]
    assert "model.qdq.onnx" in meta["files"] and "report.png" in meta["files"]
    assert meta["settings"]["method"] == "minmax" and meta["settings"]["weight_rounding"] == "nearest"
    assert os.path.exists(res.paths["report"])
    api.calibrate(LENET, mnist, out, max_batches=2)          # its own files: replaced without --force
    assert not (out / "report.png").exists()                 # the old plot went with the old set


def _relu6_block_model(path, size, k2=1):
    """input -> Conv 3x3 (padded) -> Clip(0, 6) -> Conv k2 x k2 (padded) -> GlobalAveragePool: one ReLU6."""
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(2)
    inits = [numpy_helper.from_array(r.normal(size=(6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(r.normal(size=6).astype(np.float32) + 1, "b1"),
             numpy_helper.from_array(r.normal(size=(4, 6, k2, k2)).astype(np.float32), "w2"),
             numpy_helper.from_array(r.normal(size=4).astype(np.float32), "b2"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["p"], pads=[k2 // 2] * 4),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _random_photos_packed(tmp_path, count=8, side=40, size=32, batch_size=4, seed=3):
    """``count`` random-pixel PNGs of ``side`` pixels packed into ``tmp_path/b`` at ``size`` (efficientnet-lite)."""
    import cv2
    root = tmp_path / "imgs"
    root.mkdir()
    r = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(root / f"{i:03d}.png"), r.integers(0, 256, size=(side, side, 3), dtype=np.uint8))
    int8batch.pack(root, tmp_path / "b", preset="efficientnet-lite", size=size, resize="direct",
                   resize_size=(size, size), crop="none", batch_size=batch_size)


def test_centre_padded_pads_with_the_shifted_zero_on_the_int8_grid(tmp_path, capsys):
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32, k2=3)
    assert api.calibrate(model, tmp_path / "b", tmp_path / "plain").centred == []    # padded: not by default
    res = api.calibrate(model, tmp_path / "b", tmp_path / "c", centre_padded=True, weight_rounding="nearest")
    assert [t.original for t in res.centred] == ["r"]
    pad_out = "r_centred_pad"
    assert res.amax[pad_out] == 3.0 and res.methods[pad_out] == "minmax"
    q = onnx.load(res.paths["qdq"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    pad = next(n for n in q.graph.node if n.op_type == "Pad")
    assert float(inits[pad.input[2]]) == -3.0
    qn = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pad_out)
    s = np.float32(inits[qn.input[1]])
    assert s == np.float32(3 / 127) and np.float32(-3.0) / s == -127     # the padding is an exact int8 code
    with int8batch.BatchSet(tmp_path / "b") as bs:
        x = np.ascontiguousarray(bs.images(0, 8)[0])
    run = lambda p: ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    y32 = run(model)
    assert np.abs(run(res.paths["qdq"]) - y32).max() < 0.05 * np.abs(y32).max()
    doc = json.loads(open(res.paths["json"]).read())
    assert doc["metadata"]["settings"]["centre_padded"] is True
    with pytest.raises(ConfigError, match="centring on"):
        api.calibrate(model, tmp_path / "b", tmp_path / "x", centre_padded=True, centre=False)
    with pytest.raises(ConfigError, match="method auto"):
        api.calibrate(model, tmp_path / "b", tmp_path / "x", centre_padded=True, method="mse")
    assert main(["calibrate", model, "--batches", str(tmp_path / "b"), "-o", str(tmp_path / "x"),
                 "--centre-padded", "--no-centre"]) == 1
    assert "--centre-padded" in capsys.readouterr().err
    assert main(["calibrate", model, "--batches", str(tmp_path / "b"), "-o", str(tmp_path / "x"),
                 "--no-centre", "--method", "mse"]) == 1
    assert "--no-centre" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_auto_centres_a_relu6_and_the_cache_serves_both_models(tmp_path):
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    # classic bias correction (FP32 input means): the two corrected models below must compute one function,
    # which biases fitted to each Q/DQ model's own inputs would not
    on = api.calibrate(model, tmp_path / "b", tmp_path / "on", weight_rounding="nearest", bias_inputs="fp32")
    off = api.calibrate(model, tmp_path / "b", tmp_path / "off", weight_rounding="nearest", centre=False,
                        bias_inputs="fp32")
    assert [(t.original, t.name, t.pre, t.shift) for t in on.centred] == [("r", "r_centred", "c", 3.0)]
    assert off.centred == [] and "r" in off.amax and "r_centred" not in off.amax
    assert on.amax["r_centred"] == 3.0 and off.amax["r"] == 6.0        # the bound, half of it when centred
    # the cache: the centred names for model.corrected.onnx, and the original names with the uncentred
    # bound for the original model (quantizing c on that grid and clipping = quantizing r)
    cache_on, cache_off = read_trt_cache(on.paths["cache"]), read_trt_cache(off.paths["cache"])
    assert cache_on.scales["r_centred"] == np.float32(3 / 127)
    assert cache_on.scales["r"] == cache_off.scales["r"] == np.float32(6 / 127)
    assert cache_on.scales["c"] == np.float32(6 / 127) and "c_centred" in cache_on.scales
    for name in ("input", "p", "y"):    # tensors the centring does not touch keep their scales
        assert cache_on.scales[name] == pytest.approx(cache_off.scales[name], rel=1e-3), name
    dr = read_dynamic_range(on.paths["dynamic_range"])
    assert dr["r"] == 6.0 and dr["r_centred"] == 3.0
    doc = json.loads(open(on.paths["json"]).read())
    assert doc["metadata"]["centred"][0]["tensor"] == "r" and doc["metadata"]["settings"]["centre"] is True
    # second path: the two corrected FP32 models (weights snapped, biases corrected for the same images)
    # compute the same function, the centred one with the shift folded into its biases
    with int8batch.BatchSet(tmp_path / "b") as bs:
        x = np.ascontiguousarray(bs.images(0, 8)[0])
    run = lambda p: ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    y_on, y_off, y32 = run(on.paths["corrected"]), run(off.paths["corrected"]), run(model)
    np.testing.assert_allclose(y_on, y_off, rtol=0, atol=2e-5 * np.abs(y32).max())
    clip = next(n for n in onnx.load(on.paths["corrected"]).graph.node if n.op_type == "Clip")
    assert clip.output[0] == "r_centred"
    # the Q/DQ model quantizes the centred tensor on the finer grid and stays close to FP32
    q = onnx.load(on.paths["qdq"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    qn = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r_centred")
    assert np.float32(inits[qn.input[1]]) == np.float32(3 / 127)
    err_on = np.abs(run(on.paths["qdq"]) - y32).max()
    assert err_on < 0.05 * np.abs(y32).max()
    # int8batch qdq: the cache with either form of the model; the other form's names are expected, not unknown
    from int8batch.onnx.qdq import qdq_from_scales
    for src, other, scale in ((model, ["c_centred", "r_centred"], 6 / 127),
                              (on.paths["corrected"], ["c", "r"], 3 / 127)):
        rep = qdq_from_scales(src, None, str(tmp_path / "q.onnx"), act_scales=cache_on.scales)
        assert rep.extra == [] and rep.other_form == other
        qm = onnx.load(str(tmp_path / "q.onnx"))
        qi = {t.name: onnx.numpy_helper.to_array(t) for t in qm.graph.initializer}
        qn = next(n for n in qm.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("r"))
        assert np.float32(qi[qn.input[1]]) == np.float32(scale)
    # other methods never centre; asking them to is an error
    assert api.calibrate(model, tmp_path / "b", tmp_path / "mm", method="minmax").centred == []
    with pytest.raises(ConfigError, match="method auto"):
        api.calibrate(model, tmp_path / "b", tmp_path / "x", method="mse", centre=True)


def test_centring_options_are_checked_and_a_model_without_relu6_says_so(mnist, tmp_path, caplog):
    for bad in (dict(centre="yes"), dict(centre_padded="no"), dict(centre_padded=True, write_qdq=False)):
        with pytest.raises(ConfigError):
            api.calibrate(LENET, mnist, tmp_path / "x", batch_size=50, max_batches=1, **bad)
    assert not (tmp_path / "x").exists()
    res = api.calibrate(LENET, mnist, tmp_path / "c", batch_size=50, max_batches=1, centre_padded=True)
    assert res.centred == [] and any("nothing to centre" in m for m in caplog.messages)
    doc = json.loads(open(res.paths["json"]).read())
    # --no-qdq: nothing is centred, and the settings say so
    res = api.calibrate(LENET, mnist, tmp_path / "n", batch_size=50, max_batches=1, write_qdq=False)
    assert json.loads(open(res.paths["json"]).read())["metadata"]["settings"]["centre"] is False
    assert doc["metadata"]["settings"]["centre"] is True


def test_rounded_weights_alone_still_write_the_corrected_model(tmp_path):
    """Error-compensating rounding without bias correction or centring: TensorRT 10 still needs the
    corrected model to get those integers (it rounds the original weights to nearest itself)."""
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    res = api.calibrate(model, tmp_path / "b", tmp_path / "c", centre=False, bias_correction=False)
    assert "corrected" in res.paths
    # second reader: each corrected weight equals the Q/DQ model's int8 weight times its scale
    from onnx import numpy_helper
    q, cm = onnx.load(res.paths["qdq"]), onnx.load(res.paths["corrected"])
    qi = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    ci = {t.name: numpy_helper.to_array(t) for t in cm.graph.initializer}
    dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in qi}
    convs = {n.name or n.output[0]: n for n in q.graph.node if n.op_type == "Conv"}
    for n in cm.graph.node:
        if n.op_type != "Conv":
            continue
        d = dq[convs[n.name or n.output[0]].input[1]]
        w8, s = qi[d.input[0]].astype(np.float32), qi[d.input[1]]
        np.testing.assert_allclose(ci[n.input[1]], w8 * s.reshape(-1, 1, 1, 1), rtol=1e-6)


def test_qdq_names_a_cache_without_the_centred_tensors(tmp_path):
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    on = api.calibrate(model, tmp_path / "b", tmp_path / "on")
    off = api.calibrate(model, tmp_path / "b", tmp_path / "off", centre=False)
    from int8batch.onnx.qdq import qdq_from_scales
    with pytest.raises(ModelError, match="centred in this model: use the calibration.cache written with it"):
        qdq_from_scales(on.paths["corrected"], None, str(tmp_path / "q.onnx"),
                        act_scales=read_trt_cache(off.paths["cache"]).scales)


def test_cache_keep_float_leaves_the_float_tensors_out_for_tensorrt_10(tmp_path):
    """--cache-keep-float: TensorRT 10 falls back to higher precision for a tensor without a scale, so the
    cache leaves out what the Q/DQ model keeps float; int8batch qdq then rebuilds the same Q/DQ model."""
    import shutil
    from int8batch.calib.convert import qdq_from_cache
    from int8batch.onnx.qdq import qdq_from_scales  # noqa: F401 - the path qdq_from_cache takes
    _random_photos_packed(tmp_path)
    model = _relu6_block_model(str(tmp_path / "m.onnx"), 32)
    res = api.calibrate(model, tmp_path / "b", tmp_path / "c", keep_float=1, cache_keep_float=True)
    (kept,) = res.kept_float
    cache = read_trt_cache(res.paths["cache"]).scales
    assert kept not in cache and kept not in read_dynamic_range(res.paths["dynamic_range"])
    assert set(cache) == set(res.cache_scales()) - set(res.left_out())
    doc = json.loads(open(res.paths["json"]).read())
    assert doc["metadata"]["cache_left_out_float"] == res.left_out()
    # second path: the corrected model + this cache -> the same activations quantized, with the same scales
    rep = qdq_from_cache(res.paths["corrected"], res.paths["cache"], str(tmp_path / "q.onnx"))
    assert sorted(rep.activations) == sorted(res.qdq_report.activations) and rep.missing == []
    # the cache alone, away from its calibration.json: the left-out tensor is missing, and said so
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(res.paths["cache"], alone / "calibration.cache")
    with pytest.raises(ModelError, match="needs? an amax") as err:
        qdq_from_cache(res.paths["corrected"], alone / "calibration.cache", str(tmp_path / "q2.onnx"))
    assert kept in str(err.value) and "keep its calibration.json beside it" in str(err.value)
    rep = qdq_from_cache(res.paths["corrected"], alone / "calibration.cache", str(tmp_path / "q2.onnx"),
                         on_missing="skip")          # --allow-missing: the same activations quantized
    assert sorted(rep.activations) == sorted(res.qdq_report.activations) and rep.missing == [kept]
    # nothing kept float, nothing to leave out: refused rather than ignored
    with pytest.raises(ConfigError, match="kept float"):
        api.calibrate(model, tmp_path / "b", tmp_path / "x", method="mse", cache_keep_float=True)


def test_cache_keep_float_when_auto_keeps_nothing_says_so(mnist, tmp_path, caplog):
    res = api.calibrate(LENET, mnist, tmp_path / "c", batch_size=50, max_batches=2, cache_keep_float=True)
    assert res.kept_float == []
    assert any("no activation was kept float" in m for m in caplog.messages)
    assert set(read_trt_cache(res.paths["cache"]).scales) == set(res.amax)


def test_a_scale_that_clips_most_of_a_tensor_is_warned_about(mnist, tmp_path, caplog):
    """Found as a new user: entropy on a mixed JPEG/PNG folder clipped 93 % of the network input, and only
    calibration.json said so.  A percentile of p clips about 1 - p/100 of a tensor's |x| (by definition)."""
    import re
    with caplog.at_level("WARNING", logger="int8batch"):
        api.calibrate(LENET, mnist, tmp_path / "a", method="percentile", percentile=50.0)
    (line,) = [m for m in caplog.messages if "clips" in m]
    frac = float(re.search(r"clips ([0-9.]+) %", line).group(1))
    assert 45 <= frac <= 55 and "check it with int8batch eval, or try --method auto" in line
    name = re.search(r"of the values of '([^']+)'", line).group(1)
    doc = json.load(open(tmp_path / "a" / "calibration.json"))
    assert doc["tensors"][name]["saturation"] == pytest.approx(frac / 100, abs=0.0005)
    # a clip of one step is not named, however many values it touches (found as a new user: white pages
    # packed with (pixel - 127) / 128 have 80 % of their input at 1.0, which auto's input scale stores as 127/128)
    from types import SimpleNamespace

    from int8batch.calib.api import _warn_saturated
    from int8batch.calib.collector import TensorStats
    from int8batch.calib.thresholds import saturation
    hist = np.zeros(1000, np.int64)
    hist[:200] = 1                                         # 20 % spread over [0, 0.2), 80 % at 1.0
    hist[-1] = 800
    page = {n: TensorStats.from_histogram(hist, 0.001, amax=1.0, name=n) for n in ("page", "clipped")}
    res = SimpleNamespace(amax={"page": 1 - 1 / 128, "clipped": 0.5}, stats=page)
    assert saturation(page["page"], res.amax["page"]) == pytest.approx(0.8) == saturation(page["clipped"], 0.5)
    caplog.clear()
    with caplog.at_level("WARNING", logger="int8batch"):
        _warn_saturated(res, "auto")
    assert len(caplog.messages) == 1 and "80.0 % of the values of 'clipped'" in caplog.messages[0]
    assert "'page'" not in caplog.messages[0] and "other tensor" not in caplog.messages[0]
    for method, kw in (("percentile", {"percentile": 99.0}), ("auto", {})):
        caplog.clear()
        with caplog.at_level("WARNING", logger="int8batch"):
            api.calibrate(LENET, mnist, tmp_path / method, method=method, **kw)
        assert not [m for m in caplog.messages if "clips" in m]


def test_errors_name_the_model_file_when_it_is_centred(tmp_path, caplog):
    """Found as a new user: with a model whose activations are centred, a batch shape the model cannot take
    was reported for '<model>' (the centred copy) instead of the file given."""
    _random_photos_packed(tmp_path)                     # 3x32x32 images
    path = _relu6_block_model(str(tmp_path / "m48.onnx"), 48)     # fixed 48x48: the batches are 32x32
    with caplog.at_level("INFO", logger="int8batch"), pytest.raises(ModelError) as err:
        api.calibrate(path, tmp_path / "b", tmp_path / "c")
    assert path in str(err.value) and "<model>" not in str(err.value)
    assert not [m for m in caplog.messages if "centring" in m]      # refused before centring says anything


def test_a_keep_float_count_above_what_the_pass_ranks_is_said(mnist, tmp_path, caplog):
    """Found as a new user: --keep-float 999 kept 23 activations without a word (README: a value given is
    used or refused, never silently replaced)."""
    every = api.calibrate(LENET, mnist, tmp_path / "q", batch_size=50, max_batches=2, keep_float=0)
    n = len(every.qdq_report.activations)                 # what a pure-INT8 model quantizes
    with caplog.at_level("WARNING", logger="int8batch"):
        res = api.calibrate(LENET, mnist, tmp_path / "c", batch_size=50, max_batches=2, keep_float=999)
    assert len(res.kept_float) == n and res.qdq_report.activations == {}
    assert f"--keep-float 999: the sensitivity pass ranked {n} of the {n} quantized activations (every one)" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="int8batch"):
        api.calibrate(LENET, mnist, tmp_path / "d", batch_size=50, max_batches=2, keep_float=n)
    assert "--keep-float" not in caplog.text


def test_a_qdq_model_is_not_calibrated_again(mnist, tmp_path):
    """Found as a new user: calibrate model.qdq.onnx ran and wrote a second set of Q/DQ pairs, without a word."""
    first = api.calibrate(LENET, mnist, tmp_path / "a", batch_size=50, max_batches=2, method="minmax")
    n = sum(nd.op_type in ("QuantizeLinear", "DequantizeLinear") for nd in onnx.load(first.paths["qdq"]).graph.node)
    with pytest.raises(ModelError, match=f"already holds {n} QuantizeLinear/DequantizeLinear nodes") as err:
        api.calibrate(first.paths["qdq"], mnist, tmp_path / "b", batch_size=50, max_batches=2)
    assert first.paths["qdq"] in str(err.value) and not (tmp_path / "b").exists()
