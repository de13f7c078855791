"""tools/fetch_ppocr_det.py without the network: the model comes out of a wheel given with --wheel."""
import hashlib
import json
import shlex
import zipfile

import onnx
import pytest
from onnx import TensorProto, helper
from script_loader import load


def _tool():
    return load("fetch_ppocr_det")


def test_the_model_is_copied_out_of_the_wheel_with_its_digest_and_recipe(tmp_path, capsys):
    from int8batch.cli.main import build_parser
    from int8batch.cli.options import preprocess_overrides
    from int8batch.packing.packer import resolve_config
    tool = _tool()
    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "det",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    raw = m.SerializeToString()
    wheel = tmp_path / "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(tool.MEMBER, raw)
        z.writestr("rapidocr_onnxruntime/__init__.py", "")
    assert tool.main(["--out", str(tmp_path / "zoo"), "--wheel", str(wheel)]) == 0
    path = tmp_path / "zoo" / "ppocr_v4_det.onnx"
    assert path.read_bytes() == raw and onnx.load(str(path)).graph.node[0].op_type == "Sigmoid"
    meta = json.loads((tmp_path / "zoo" / "ppocr_v4_det.json").read_text())
    assert meta["sha256"] == hashlib.sha256(raw).hexdigest() and meta["input"]["shape"] == ["N", "3", "H", "W"]
    args = build_parser().parse_args(["pack", "SRC", "OUT", *shlex.split(meta["pack_args"])])
    assert resolve_config(args.preset, None, **preprocess_overrides(args)).chw == (3, 640, 640)
    assert not list((tmp_path / "zoo").glob("*.part"))
    assert "not the model the README's figures come from" in capsys.readouterr().err     # a stand-in model
    # a wheel without the model: one line naming it, nothing left behind
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(SystemExit, match="no rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx in it"):
        tool.main(["--out", str(tmp_path / "zoo2"), "--wheel", str(tmp_path / "empty.whl")])
    assert not list((tmp_path / "zoo2").glob("*"))
