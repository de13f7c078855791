"""snap_weights (onnx/snap.py): the FP32 model with int8-grid weights, checked against NumPy."""
import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

import qdq_models as Q
from int8batch.onnx.snap import snap_weights


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _run(m, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_weights_on_the_int8_grid_per_output_channel():
    m = Q.conv_relu_conv()
    before = m.SerializeToString()
    snapped, report = snap_weights(m)
    assert m.SerializeToString() == before                     # the input model is left alone
    w0, w1 = _inits(m), _inits(snapped)
    assert sorted(report.weights) == ["w1", "w2"] and report.biases == {}
    # the snapped weights are new initializers feeding the same layers
    fed = {n0.input[1]: n1.input[1] for n0, n1 in zip(m.graph.node, snapped.graph.node) if n0.op_type == "Conv"}
    assert sorted(fed) == ["w1", "w2"] and all(new in w1 for new in fed.values())
    for name in ("w1", "w2"):
        w = w0[name].astype(np.float64)
        s = np.abs(w).reshape(len(w), -1).max(axis=1) / 127    # TensorRT's rule: max|W| / 127 per channel
        s = s.astype(np.float32).astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
        want = (np.clip(np.rint(w / s), -127, 127) * s).astype(np.float32)
        np.testing.assert_allclose(w1[fed[name]], want, rtol=0, atol=1e-7)
        # each channel's largest weight stays 127 s, so TensorRT finds the same scale again
        np.testing.assert_allclose(np.abs(w1[fed[name]]).reshape(len(w), -1).max(axis=1), 127 * s.ravel(), rtol=1e-6)
    np.testing.assert_array_equal(w1["b1"], w0["b1"])          # no input means: biases kept
    ops = [n.op_type for n in snapped.graph.node]
    assert ops == ["Conv", "Relu", "Conv"]                      # no Q/DQ left, activation names kept
    assert [n.output[0] for n in snapped.graph.node] == [n.output[0] for n in m.graph.node]


def test_snapped_model_runs_close_to_fp32():
    m = Q.conv_relu_conv()
    x = Q.input_of(m)
    y0, y1 = _run(m, x), _run(snap_weights(m)[0], x)
    assert y0.shape == y1.shape
    assert 0 < np.abs(y1 - y0).max() < 0.05 * np.abs(y0).max()  # moved by the weight rounding only
