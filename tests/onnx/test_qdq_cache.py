"""Cache -> Q/DQ conversion (``int8batch qdq``) with caches shaped like TensorRT 5-10 wrote them.

Fixtures: tests/fixtures/trt_caches (see its README); model: the bundled LeNet.
"""
import math
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

import int8batch
import qdq_models as Q
from int8batch.calib.cache import read_trt_cache
from int8batch.cli.main import main
from int8batch.errors import CacheError, ModelError
from int8batch.calib.convert import qdq_from_cache
from int8batch.onnx import insert_qdq
from int8batch.onnx.qdq import MIN_SCALE

TRT_CACHES = Path(__file__).resolve().parents[1] / "fixtures" / "trt_caches"
LENET = os.path.join(os.path.dirname(int8batch.__file__), "data", "lenet.onnx")
LENET_CACHES = sorted(p.name for p in TRT_CACHES.glob("*lenet*.cache"))
#: the tensors the placement quantizes in LeNet (inputs of its Conv/Gemm layers)
WANTED = {"data", "/conv1/Conv_output_0", "/pool1/MaxPool_output_0", "/Flatten_output_0",
          "/relu1/Relu_output_0"}


def decode(h):
    return struct.unpack(">f", bytes.fromhex(h.zfill(8)))[0]


def quantized_inputs(qm):
    """Float tensors that feed a QuantizeLinear."""
    return {n.input[0] for n in qm.graph.node if n.op_type == "QuantizeLinear"}


def test_lenet_fixtures_are_there():
    assert len(LENET_CACHES) == 4
    names = {o for n in onnx.load(LENET).graph.node for o in n.output} | {"data"}
    assert WANTED <= names


@pytest.mark.parametrize("fixture", LENET_CACHES)
def test_each_lenet_cache_converts(tmp_path, fixture):
    src = TRT_CACHES / fixture
    data = read_trt_cache(src)
    out = tmp_path / "lenet.int8.onnx"
    rep = qdq_from_cache(LENET, src, out)
    qm = onnx.load(out)
    onnx.checker.check_model(qm, full_check=True)
    s = Q.qdq_summary(qm)
    bad = set(data.unusable) & WANTED
    # every usable scale is used bit for bit, zero scales become MIN_SCALE
    for t in WANTED - bad:
        want = np.float32(MIN_SCALE) if t in data.zero else np.float32(decode(data.hex[t]))
        assert s[t]["scale"] == want and rep.activations[t] == float(want), t
    # tensors whose cache scale is inf / NaN stay float and are reported by name
    assert quantized_inputs(qm) & bad == set()
    assert set(rep.activations) == WANTED - bad
    assert rep.unusable == data.unusable
    assert {t for t, _ in rep.skipped if t in data.unusable} == bad
    for t in bad:
        why = dict(rep.skipped)[t]
        assert "cache scale is" in why and "kept float" in why
    assert rep.zero_scale == data.zero and rep.missing == []
    # ONNXTRT_* and other names LeNet lacks are unknown, not errors
    names = {o for n in onnx.load(LENET).graph.node for o in n.output} | {"data"}
    assert rep.extra == sorted(set(data.scales) - names)
    text = "\n".join([rep.summary()] + rep.details())
    for name in list(data.unusable) + data.zero + rep.extra:
        assert name in text


def test_inf_and_nan_entries_leave_lenet_tensors_float(tmp_path, caplog):
    rep = qdq_from_cache(LENET, TRT_CACHES / "trt101303_lenet_minmax.cache", tmp_path / "a.onnx")
    assert "/pool1/MaxPool_output_0" not in rep.activations and "/Flatten_output_0" not in rep.activations
    assert rep.unusable["/pool1/MaxPool_output_0"] == "cache scale is -inf (ff800000)"
    assert rep.unusable["/Flatten_output_0"] == "cache scale is NaN (7fc00000)"
    assert "ONNXTRT_Broadcast_1855_output" in rep.unusable and "ONNXTRT_Broadcast_1855_output" in rep.extra
    assert "3 unusable scales" in rep.summary()
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "/pool1/MaxPool_output_0" in warned and "/Flatten_output_0" in warned
    rep = qdq_from_cache(LENET, TRT_CACHES / "trt100300_lenet_entropy2.cache", tmp_path / "b.onnx")
    assert "/relu1/Relu_output_0" not in quantized_inputs(onnx.load(tmp_path / "b.onnx"))
    assert rep.zero_scale == ["ONNXTRT_ShapeTensorFromDims_27_output"]


def test_cli_reports_unusable_zero_and_unknown_by_name(tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["qdq", LENET, "--cache", str(TRT_CACHES / "trt100300_lenet_entropy2.cache"),
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("entries whose cache scale is +inf (left float): /relu1/Relu_output_0, "
            "ONNXTRT_unsqueezeTensor_3_output") in printed
    assert "entries with scale 0 (quantized with scale 1e-08 where the model has the tensor): " \
           "ONNXTRT_ShapeTensorFromDims_27_output" in printed
    assert "ONNXTRT_Broadcast_1855_output" in printed and f"wrote {out}" in printed
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.mark.parametrize("fixture", ["trt5100_sampleINT8_README.cache", "trt7000_sampleINT8_README.cache"])
def test_readme_caches_need_allow_missing_for_lenet(tmp_path, fixture, capsys):
    # Caffe names: only "data" matches an ONNX LeNet tensor
    with pytest.raises(ModelError, match="needs? an amax"):
        qdq_from_cache(LENET, TRT_CACHES / fixture, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    assert main(["qdq", LENET, "--cache", str(TRT_CACHES / fixture), "-o", str(tmp_path / "x.onnx")]) == 1
    rep = qdq_from_cache(LENET, TRT_CACHES / fixture, tmp_path / "y.onnx", on_missing="skip")
    assert set(rep.activations) == {"data"} and set(rep.missing) == WANTED - {"data"}
    assert rep.extra == sorted(["conv1", "pool1", "conv2", "pool2", "ip1", "ip2"])   # "prob" is LeNet's output


def test_a_tensor_missing_from_the_cache_is_still_an_error(tmp_path):
    lines = (TRT_CACHES / "trt9200_lenet_entropy2.cache").read_text().splitlines(keepends=True)
    (tmp_path / "c.cache").write_text("".join(ln for ln in lines if not ln.startswith("/Flatten")))
    with pytest.raises(ModelError, match="/Flatten_output_0"):
        qdq_from_cache(LENET, tmp_path / "c.cache", tmp_path / "x.onnx")
    rep = qdq_from_cache(LENET, tmp_path / "c.cache", tmp_path / "x.onnx", on_missing="skip")
    assert rep.missing == ["/Flatten_output_0"] and "no scale given, kept float: /Flatten_output_0" in rep.details()


def test_unusable_tensor_is_not_missing_even_without_allow_missing(tmp_path):
    (tmp_path / "c.cache").write_text("TRT-100300-EntropyCalibration2\n" + "".join(
        f"{t}: {'7fc00000' if t == 'data' else '3c010204'}\n" for t in sorted(WANTED)))
    rep = qdq_from_cache(LENET, tmp_path / "c.cache", tmp_path / "x.onnx")
    assert rep.missing == [] and "data" not in rep.activations and rep.unusable == {
        "data": "cache scale is NaN (7fc00000)"}


def test_dynamic_range_amax_that_overflows_is_refused(tmp_path, capsys):
    p = tmp_path / "ranges.txt"
    p.write_text("data:1.0\n/conv1/Conv_output_0:5e40\n")
    with pytest.raises(CacheError, match=r"ranges.txt:2: .*overflows float32") as e:
        qdq_from_cache(LENET, p, tmp_path / "x.onnx")
    assert e.value.path == str(p) and not (tmp_path / "x.onnx").exists()
    assert main(["qdq", LENET, "--cache", str(p), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "overflows float32" in capsys.readouterr().err
    # the same through the Python API: no model with an infinite scale
    with pytest.raises(ModelError, match="overflows float32"):
        insert_qdq(Q.residual(), {"x": 5e40, "a": 1.0})
    with pytest.raises(ModelError, match="finite"):
        insert_qdq(Q.residual(), act_scales={"x": 1e39, "a": 1.0})
    assert math.isfinite(np.float32(4.3e40 / 127))


def test_dynamic_range_zero_amax_is_reported(tmp_path):
    p = tmp_path / "ranges.txt"
    p.write_text("".join(f"{t}:{0 if t == 'data' else 2.5}\n" for t in sorted(WANTED)))
    rep = qdq_from_cache(LENET, p, tmp_path / "x.onnx")
    assert rep.zero_scale == ["data"] and rep.activations["data"] == float(np.float32(MIN_SCALE))


def test_missing_cache_file(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        qdq_from_cache(LENET, tmp_path / "nope.cache", tmp_path / "x.onnx")


def test_qdq_command_does_not_replace_an_existing_file_without_force(tmp_path, capsys):
    cache = str(TRT_CACHES / "trt100300_lenet_entropy2.cache")
    out = tmp_path / "mine.onnx"
    out.write_text("someone's model\n")
    assert main(["qdq", LENET, "--cache", cache, "-o", str(out)]) == 1
    assert "already exists; choose another -o or pass --force" in capsys.readouterr().err
    assert out.read_text() == "someone's model\n"
    assert main(["qdq", LENET, "--cache", cache, "-o", str(out), "--force"]) == 0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_files_that_are_not_this_models_scales_say_so(tmp_path, caplog):
    """Found as a new user: an empty file said '50 tensors need an amax', calibration.json 'malformed line {',
    and another model's scales with --allow-missing passed without a word."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CacheError, match="holds no scales"):
        qdq_from_cache(LENET, empty, tmp_path / "a.onnx")
    js = tmp_path / "calibration.json"
    js.write_text('{\n  "method": "auto"\n}\n')
    with pytest.raises(CacheError, match="looks like JSON.*calibration.cache"):
        qdq_from_cache(LENET, js, tmp_path / "b.onnx")
    foreign = tmp_path / "other.txt"
    foreign.write_text("data:1.0\nconv_a:2.0\nconv_b:3.0\nfc_z:4.0\n")   # one name of LeNet, three of another
    with caplog.at_level("WARNING", logger="int8batch"):
        rep = qdq_from_cache(LENET, foreign, tmp_path / "c.onnx", on_missing="skip")
    assert len(rep.activations) == 1 and len(rep.extra) == 3
    assert "is it the cache of another model?" in caplog.text
    caplog.clear()
    from int8batch.calib.api import calibrate
    own = calibrate(LENET, int8batch.pack("mnist-test", tmp_path / "p", limit=20).folder,
                              tmp_path / "cal", method="minmax")
    with caplog.at_level("WARNING", logger="int8batch"):
        qdq_from_cache(LENET, own.paths["cache"], tmp_path / "d.onnx")
    assert "another model" not in caplog.text
