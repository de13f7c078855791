"""ActivationRunner and run_model against NumPy on tiny graphs."""
import os
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8batch.calib import ort_exec
from int8batch.calib.ort_exec import ActivationRunner, run_model
from int8batch.errors import ModelError
from int8batch.reader import Batch

W = np.array([1.5, -2.0], np.float32).reshape(1, 2, 1, 1)
B = np.array([0.25, -0.5], np.float32).reshape(1, 2, 1, 1)


def tiny(batch="N", extra_input=False):
    """x -> Mul(W) -> m -> Add(B) -> a -> Relu -> r -> Sigmoid -> y (an output)."""
    nodes = [helper.make_node("Mul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 3, 3])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Identity", ["z"], ["zz"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 3, 3])]
    if extra_input:
        outputs.append(helper.make_tensor_value_info("zz", TensorProto.FLOAT, [1]))
    g = helper.make_graph(nodes, "tiny", inputs, outputs,
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def reference(x):
    a = x * W + B
    r = np.maximum(a, 0)
    return {"x": x, "a": a, "r": r, "y": 1 / (1 + np.exp(-r))}


def test_exposed_tensors_equal_numpy():
    m = tiny()
    before = m.SerializeToString()
    runner = ActivationRunner(m, ["x", "a", "r", "y", "a"], intra_op_threads=1)
    assert m.SerializeToString() == before          # caller's model untouched
    assert runner.input_name == "x" and runner.input_shape == ("N", 2, 3, 3)
    assert runner.tensor_names == ["x", "a", "r", "y"]
    assert [o.name for o in runner._session.get_outputs()] == ["y", "a", "r"]  # y not duplicated
    for n in (1, 4):
        x = np.random.default_rng(n).normal(size=(n, 2, 3, 3)).astype(np.float32)
        out = runner.run(x)
        assert list(out) == ["x", "a", "r", "y"]
        want = reference(x)
        for k in out:
            np.testing.assert_allclose(out[k], want[k], rtol=1e-6, atol=1e-7)


def test_float64_batch_is_cast():
    runner = ActivationRunner(tiny(), ["r"])
    x = np.ones((2, 2, 3, 3))
    np.testing.assert_allclose(runner.run(x)["r"], reference(x.astype(np.float32))["r"], rtol=1e-6)


def test_fixed_batch_mismatch_names_input_shapes_and_fix():
    runner = ActivationRunner(tiny(batch=8), ["a"])
    runner.run(np.zeros((8, 2, 3, 3), np.float32))
    with pytest.raises(ModelError) as ei:
        runner.run(np.zeros((4, 2, 3, 3), np.float32))
    msg = str(ei.value)
    assert "'x'" in msg and "[8, 2, 3, 3]" in msg and "[4, 2, 3, 3]" in msg
    assert "--batch-size 8" in msg and "repack" in msg
    with pytest.raises(ModelError, match=r"\[8, 2, 3, 3\].*\[8, 3, 3, 3\].*repack"):
        ActivationRunner(tiny(batch=8), ["a"], batch_dims=(8, 3, 3, 3))
    with pytest.raises(ModelError, match="rank 4"):
        runner.check((8, 18))


def test_dynamic_batch_accepts_any_size_but_checks_chw():
    runner = ActivationRunner(tiny(), ["a"], batch_dims=(7, 2, 3, 3))
    with pytest.raises(ModelError, match=r"\['N', 2, 3, 3\].*\[7, 2, 4, 4\]"):
        runner.check((7, 2, 4, 4))


def test_bad_models_and_names():
    with pytest.raises(ModelError, match="2 inputs"):
        ActivationRunner(tiny(extra_input=True), ["a"])
    with pytest.raises(ModelError, match="not activations.*nope, W"):
        ActivationRunner(tiny(), ["a", "nope", "W"])
    with pytest.raises(ModelError, match="no graph output"):
        next(run_model(tiny(), [np.zeros((1, 2, 3, 3), np.float32)], output="zzz"))


def test_run_model_yields_per_batch():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 2, 3, 3)).astype(np.float32) for _ in range(3)]
    batches = [xs[0], Batch(xs[1], np.zeros(3, np.float32), 1, 3, True), xs[2]]
    outs = list(run_model(tiny(), batches, intra_op_threads=1))
    assert len(outs) == 3
    for x, y in zip(xs, outs):
        np.testing.assert_allclose(y, reference(x)["y"], rtol=1e-6)
    with pytest.raises(ModelError, match="--batch-size 5"):
        list(run_model(tiny(batch=5), [xs[0]]))


def test_model_from_path_and_large_model_path(tmp_path, monkeypatch):
    p = tmp_path / "tiny.onnx"
    onnx.save(tiny(), p)
    made = []
    real = tempfile.mkdtemp

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    # pretend the model is over 2 GB: it goes through a temporary external-data copy
    monkeypatch.setattr(ort_exec, "_TWO_GB", 0)
    monkeypatch.setattr(ort_exec.tempfile, "mkdtemp", spy)
    x = np.ones((2, 2, 3, 3), np.float32)
    out = ActivationRunner(str(p), ["a"]).run(x)
    np.testing.assert_allclose(out["a"], reference(x)["a"], rtol=1e-6)
    assert made and not any(os.path.exists(d) for d in made)


def test_a_model_that_cannot_run_at_the_images_size_is_named_not_a_traceback(tmp_path):
    """Found as a new user: PP-OCR's detector on images packed at 600 (not a multiple of 32) ended calibrate and
    eval in ONNX Runtime's traceback.  Here: x + upsample(pool(x)) needs an even size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from int8batch.calib.ort_exec import ActivationRunner, ModelRunner
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Add", ["x", "u"], ["y"])]
    g = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                          [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(tmp_path / "fpn.onnx")
    onnx.save(m, path)
    even = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    run = ModelRunner(path)
    np.testing.assert_array_equal(run.run(even), even + even.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))
                                  .repeat(2, axis=2).repeat(2, axis=3).reshape(1, 1, 4, 4))
    for runner in (run, ActivationRunner(path, ["p", "y"])):
        with pytest.raises(ModelError) as err:
            runner.run(np.zeros((1, 1, 5, 5), np.float32))
        msg = str(err.value)
        assert msg.startswith(f"{path}: ONNX Runtime cannot run the model on images of shape [1, 1, 5, 5]")
        assert "int8batch pack --size" in msg and "Traceback" not in msg
