"""bench/bench_calibrate.py's zoo mode helpers, without running any benchmark."""
import json

import pytest
from script_loader import load


B = load("bench_calibrate", "bench", register=True)


def _row(name, seconds, n=256, rss=500.0, **kw):
    return dict(name=name, images_requested=n, seconds=seconds, rss_mb=rss, **kw)


def _checks(rows, size=256, rss_size=None):
    return {label: (ok, detail) for label, ok, detail in B.zoo_checks(rows, size, rss_size)}


def test_zoo_checks_pass_and_fail_on_each_target():
    rows = [_row("fp32", 10.0), _row("int8batch/mse", 29.0), _row("int8batch/minmax", 31.0),
            _row("int8batch/auto", 59.0, rss=1900.0), _row("ort/minmax-sym", 60.0),
            _row("ort/entropy", 580.0), _row("ort/percentile", 600.0),
            _row("int8batch/percentile", 5.0, error="boom"),           # errors are left out
            {"name": "modelopt/max", "images_requested": 256, "skipped": "not installable"}]
    c = _checks(rows)
    assert c["int8batch/mse <= 3x FP32 (256 images)"][0]
    assert not c["int8batch/minmax <= 3x FP32 (256 images)"][0]
    assert c["int8batch/auto <= 6x FP32 (256 images)"][0]
    assert not any(k.startswith("int8batch/percentile") for k in c)
    ok, detail = c["every int8batch row faster than ort/minmax-sym (256 images)"]
    assert ok and "int8batch/auto" in detail
    assert not c["ort/entropy >= 10x int8batch/auto (256 images)"][0]           # 580 / 59 = 9.8
    assert c["ort/percentile >= 10x int8batch/auto (256 images)"][0]
    assert c["int8batch peak RSS < 2000 MB"][0]
    assert not any("within" in k for k in c)                                    # no RSS check asked


def test_zoo_checks_rss_flatness_uses_the_worst_method():
    rows = [_row("int8batch/mse", 1.0, rss=1000.0), _row("int8batch/mse", 4.0, n=1024, rss=1050.0),
            _row("int8batch/auto", 2.0, rss=1000.0), _row("int8batch/auto", 8.0, n=1024, rss=1120.0)]
    ok, detail = _checks(rows, rss_size=1024)["int8batch peak RSS at 1024 within 10 % of 256 images"]
    assert not ok and "worst auto" in detail and "mse +5.0 %" in detail
    ok, _ = _checks(rows[:2], rss_size=1024)["int8batch peak RSS at 1024 within 10 % of 256 images"]
    assert ok
    big = rows + [_row("int8batch/minmax", 1.0, n=1024, rss=2100.0)]
    ok, detail = _checks(big)["int8batch peak RSS < 2000 MB"]
    assert not ok and "minmax at 1024" in detail


def test_ort_histogram_fit():
    assert B.ort_histogram_fit(40e6, 256, 12.0) == (True, pytest.approx(10.24))
    fits, est = B.ort_histogram_fit(106e6, 256, 12.0)
    assert not fits and est == pytest.approx(27.136)


def test_load_zoo_index_selects_in_the_given_order(tmp_path):
    (tmp_path / "zoo.json").write_text(json.dumps({"models": [
        {"name": "a", "onnx": "a.onnx"}, {"name": "b", "onnx": "b.onnx"}]}))
    assert [e["name"] for e in B.load_zoo_index(str(tmp_path))] == ["a", "b"]
    sel = B.load_zoo_index(str(tmp_path), ["b", "a", "b"])
    assert [e["name"] for e in sel] == ["b", "a"] and sel[0]["path"] == str(tmp_path / "b.onnx")
    with pytest.raises(SystemExit, match="holds: a, b"):
        B.load_zoo_index(str(tmp_path), ["c"])
    with pytest.raises(SystemExit, match="make_zoo"):
        B.load_zoo_index(str(tmp_path / "none"))


def test_pack_stamp_changes_with_the_files_taken(tmp_path):
    for i, size in enumerate((10, 20, 30)):
        (tmp_path / f"img{i}.jpg").write_bytes(b"x" * size)
    (tmp_path / "corpus.json").write_text("{}")
    files = B.list_images(str(tmp_path))
    assert files == ["img0.jpg", "img1.jpg", "img2.jpg"]
    two = B.pack_stamp(str(tmp_path), files, 2, "--preset imagenet-torch", 2)
    assert two == B.pack_stamp(str(tmp_path), files, 2, "--preset imagenet-torch", 2)
    (tmp_path / "img2.jpg").write_bytes(b"y" * 31)              # not among the first 2: same stamp
    assert two == B.pack_stamp(str(tmp_path), B.list_images(str(tmp_path)), 2, "--preset imagenet-torch", 2)
    (tmp_path / "img1.jpg").write_bytes(b"y" * 21)
    assert two != B.pack_stamp(str(tmp_path), files, 2, "--preset imagenet-torch", 2)
    assert two != B.pack_stamp(str(tmp_path), files, 2, "--preset inception", 2)


def test_ort_threads_patch_reaches_sessions_opened_without_options():
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    undo = B._ort_threads(1)
    try:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        assert s.get_session_options().intra_op_num_threads == 1
        assert s.run(None, {"x": np.array([-1.0], np.float32)})[0][0] == 0.0
    finally:
        undo()
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert s.get_session_options().intra_op_num_threads == 0
