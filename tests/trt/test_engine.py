"""TensorRT engines (trt/engine.py) and the TensorRT backend of ``int8batch run``, on the CPU: fake engines.

The fake engine reads its input from the fake cudart's "device" memory, runs
the ONNX model with ONNX Runtime and writes the output back there, in stream
order; so the backend's buffers, copies, chunking and scoring arithmetic are
checked against :func:`int8batch.calib.evaluate.evaluate` on the same batches.
Real TensorRT is not exercised here (none is installed).
"""
import ctypes
import json
import sys
import types

import numpy as np
import onnx
import pytest

import fake_cudart
import trt_fakes
from int8batch import format as fmt
from int8batch.runner import protocol

C, H, W, CLASSES = 1, 6, 6, 10


def classifier(path, seed):
    """Flatten + Gemm to 10 logits; dynamic batch ``N``."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((C * H * W, CLASSES)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "b")
    nodes = [helper.make_node("Flatten", ["data"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["prob"])]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", C, H, W])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def add_engines(trt, cuda, int8_model):
    """Extend a trt_fakes module: FP32 builds, serialized 'engines' and a Runtime running ONNX Runtime."""
    import onnxruntime as ort

    base_builder, base_parser = trt.Builder, trt.OnnxParser
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class OnnxParser(base_parser):
        def parse_from_file(self, path):
            self.network.onnx_path = path
            return super().parse_from_file(path)

    class Builder(base_builder):
        def build_serialized_network(self, network, config):
            int8 = "INT8" in config.flags
            if int8:
                super().build_serialized_network(network, config)   # drives the calibrator
            shape = config.profiles[0].shapes[2] if config.profiles else network.get_input(0).shape
            path = int8_model if int8 else network.onnx_path
            return json.dumps({"onnx": path, "shape": list(shape)}).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.addr, self.shape = engine, {}, None

        def set_input_shape(self, name, shape):
            if list(shape) != self.engine.spec["shape"]:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape if name == "data" else (self.shape[0], self.engine.classes)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            n_in, n_out = int(np.prod(self.shape)) * 4, self.shape[0] * self.engine.classes * 4
            src, dst = self.addr["data"], self.addr["prob"]
            cuda._check_device(src, n_in)
            cuda._check_device(dst, n_out)

            def op():
                x = np.frombuffer(ctypes.string_at(src, n_in), np.float32).reshape(self.shape)
                y = np.ascontiguousarray(self.engine.session.run(None, {"data": x})[0], np.float32)
                ctypes.memmove(dst, y.ctypes.data, n_out)
            cuda._stream(stream).queue.append(op)   # runs in stream order, after the input copy
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, blob):
            self.spec = json.loads(bytes(blob))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self.session = ort.InferenceSession(self.spec["onnx"], opts, providers=["CPUExecutionProvider"])
            self.classes = self.session.get_outputs()[0].shape[-1]

        def get_tensor_name(self, i):
            return ("data", "prob")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "data" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.float32

        def get_tensor_shape(self, name):
            return (-1, *self.spec["shape"][1:]) if name == "data" else (-1, self.classes)

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine(blob)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def setup(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    folder = tmp_path / "batches"
    folder.mkdir()
    for k in range(5):  # 5 files of 8 images, labels 0..9 (some -1: unlabelled)
        labels = rng.integers(-1, CLASSES, 8).astype(np.float32)
        fmt.write_batch_file(folder / fmt.batch_name(k), rng.random((8, C, H, W), dtype=np.float32), labels)
    fp32 = classifier(tmp_path / "fp32.onnx", 0)
    int8 = classifier(tmp_path / "int8.onnx", 1)
    cuda = fake_cudart.FakeCuda().install(monkeypatch)
    trt = add_engines(trt_fakes.fake_tensorrt("10.3.0"), cuda, int8)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("int8batch.trt.calibrator.DeviceFeeder", trt_fakes.HostFeeder)
    return folder, fp32, int8, cuda, tmp_path


def test_trt_scores_match_evaluate(setup):
    from int8batch.calib.evaluate import evaluate
    from int8batch.reader import BatchSet
    from int8batch.runner.run import describe
    from int8batch.trt.engine import evaluate_engines
    folder, fp32, int8, cuda, tmp = setup
    with BatchSet(folder) as bs:
        cal = protocol.window(bs.num_images, 4, 0, 2, "calibration")    # INT8 engine batch 4
        win = protocol.window(bs.num_images, 10, 1, 3, "scoring")       # FP32 batch 10; INT8 in chunks 4+4+2
        got = evaluate_engines(fp32, bs, cal, bs, win, tmp / "engines", keep=12)
        want = evaluate(fp32, int8, bs, 10, 3, first=1, keep=12, intra_op_threads=1)
    assert got.images == want.images == 30 and got.labelled == want.labelled > 0
    for k in ("top1_hits_fp32", "top5_hits_fp32", "top1_hits_int8", "top5_hits_int8", "agreed",
              "labels", "fp32_pred", "int8_pred", "disagreements"):
        assert getattr(got, k) == getattr(want, k), k
    assert got.agreed < 30  # the two models differ, so agreement is really checked
    assert got.mean_kl == pytest.approx(want.mean_kl, rel=1e-5)
    assert got.max_abs_diff == pytest.approx(want.max_abs_diff, rel=1e-5)
    assert [i for i, _ in got.largest] == [i for i, _ in want.largest]
    assert got.engines["fp32_batch"] == 10 and got.engines["int8_batch"] == 4 and got.engines["calibrated"]
    assert (tmp / "engines" / "int8.cache").read_bytes().startswith(b"TRT-100300-EntropyCalibration2")
    assert cuda.live()[0] == 0   # every device buffer freed
    assert "chunks of 4" in describe(got)


def test_pick_backend(setup, monkeypatch):
    from int8batch.errors import CalibrationError
    from int8batch.runner.run import pick_backend
    assert pick_backend("auto") == "tensorrt" and pick_backend("onnxruntime") == "onnxruntime"
    monkeypatch.setitem(sys.modules, "tensorrt", trt_fakes.fake_tensorrt("11.0.0", with_int8=False))
    assert pick_backend("auto") == "onnxruntime"
    with pytest.raises(CalibrationError, match="TensorRT 11"):
        pick_backend("tensorrt")


def test_cli_backend_tensorrt_without_tensorrt(monkeypatch, tmp_path, capsys):
    from int8batch.cli.main import main
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import fails
    assert main(["run", "mnist", "--backend", "tensorrt", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorrt" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_run_mnist_tensorrt_backend(setup, monkeypatch, capsys):
    """The whole ``run mnist --backend tensorrt`` path on the fakes (INT8 'engine' = another classifier)."""
    import json as _json
    from int8batch.cli.main import main
    from int8batch.runner.mnist import MODEL
    folder, fp32, int8, cuda, tmp = setup
    trt = sys.modules["tensorrt"]
    add_engines(trt, cuda, MODEL)          # the INT8 engine runs LeNet too: figures equal FP32's
    out = tmp / "mnist"
    rc = main(["run", "mnist", "--backend", "tensorrt", "--calib-batches", "2", "--score-batches", "2",
               "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "Backend: TensorRT 10.3.0 on the GPU" in text and "&&&& PASSED int8batch run mnist" in text
    d = _json.loads((out / "report.json").read_text())
    assert d["backend"] == "tensorrt" and d["settings"]["backend"] == "tensorrt"
    assert d["scoring"]["fp32"]["images"] == 200 and d["scoring"]["agreed"] == 200
    assert d["first_predictions"]["labels"][:10] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert d["scoring"]["fp32"]["top1_count"] >= 195
    assert (out / "tensorrt" / "int8.engine").exists() and cuda.live()[0] == 0
