"""evaluate(): top-k, agreement, KL and differences against hand-computed values."""
import re
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8batch.calib.evaluate import evaluate
from int8batch.errors import ConfigError, ModelError
from int8batch.format import write_batch_file


def sp_softmax(x):
    # plain NumPy reference (scipy is not a test dependency)
    e = np.exp(x - np.max(x))
    return e / e.sum()


def entropy(p, q):
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))

LOGITS = np.array([[5, 4, 3, 2, 1, 0],
                   [0, 1, 2, 3, 4, 5],
                   [1, 1, 0, 0, 0, 0],      # tie: class 0 wins top-1
                   [0, 0, 0, 0, 0, 9],
                   [2, 0, 0, 0, 0, 1],
                   [0, 3, 0, 0, 0, 0]], np.float32)
LABELS = np.array([0, 0, 1, -1, 5, 1], np.float32)   # image 3 unlabelled
SHIFT = np.array([0, 0, 0, 0, 0, 2.5], np.float32)   # the "INT8" model adds this


def flat_model(shift=None, softmax=False, n="N"):
    """x (N,1,1,6) -> Flatten [-> Add shift] [-> Softmax] -> y."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"])]
    inits, last = [], "f"
    if shift is not None:
        nodes.append(helper.make_node("Add", ["f", "d"], ["a"]))
        inits.append(numpy_helper.from_array(shift, "d"))
        last = "a"
    if softmax:
        nodes.append(helper.make_node("Softmax", [last], ["s"], axis=1))
        last = "s"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    g = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [n, 1, 1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def pairs(batch=3):
    x = LOGITS.reshape(6, 1, 1, 6)
    return [(x[k:k + batch], LABELS[k:k + batch]) for k in range(0, 6, batch)]


def ref_kl():
    return np.mean([entropy(sp_softmax(r.astype(np.float64)), sp_softmax(r + SHIFT.astype(np.float64)))
                    for r in LOGITS])


def check_hand_values(r):
    assert r.images == 6 and r.labelled == 5
    # FP32 top-1: images 0 and 5; top-5: 0, 2, 4, 5.  INT8 top-1: 0, 4, 5; top-5: 0, 2, 4, 5
    assert r.top1_fp32 == pytest.approx(0.4) and r.top5_fp32 == pytest.approx(0.8)
    assert r.top1_int8 == pytest.approx(0.6) and r.top5_int8 == pytest.approx(0.8)
    # top-1 FP32 [0,5,0,5,0,1] vs INT8 [0,5,5,5,5,1]
    assert r.top1_agreement == pytest.approx(4 / 6)
    assert r.max_abs_diff == pytest.approx(2.5) and r.mean_abs_diff == pytest.approx(2.5 / 6)
    assert r.mean_kl == pytest.approx(ref_kl(), rel=1e-6)
    assert r.largest == [(0, 2.5), (1, 2.5), (2, 2.5), (3, 2.5), (4, 2.5)]
    # every image's output moves by 2.5 in one value: sqrt(6 * 2.5^2 / sum of the squared logits)
    assert r.rel_error == pytest.approx(np.sqrt(6 * 2.5 ** 2 / np.square(LOGITS.astype(np.float64)).sum()))
    assert r.output == "y" and r.output_shape == (6,) and r.classifier


def test_hand_computed_from_pairs():
    check_hand_values(evaluate(flat_model(), flat_model(SHIFT), pairs(), intra_op_threads=1))


def test_probability_outputs_are_not_softmaxed_twice():
    r = evaluate(flat_model(softmax=True), flat_model(SHIFT, softmax=True), pairs())
    assert r.mean_kl == pytest.approx(ref_kl(), rel=1e-5)
    assert r.top1_agreement == pytest.approx(4 / 6)
    r2 = evaluate(flat_model(softmax=True), flat_model(SHIFT, softmax=True), pairs(),
                  outputs="logits")
    assert r2.mean_kl != pytest.approx(ref_kl(), rel=1e-3)
    # the same probability outputs: KL exactly 0 (found as a new user: 5.4e-9, one side renormalized only)
    assert evaluate(flat_model(softmax=True), flat_model(softmax=True), pairs()).mean_kl == 0.0


def test_batch_folder_rebatched_and_limited(tmp_path):
    x = LOGITS.reshape(6, 1, 1, 6)
    for k in range(2):
        write_batch_file(tmp_path / f"batch{k}", x[3 * k:3 * k + 3], LABELS[3 * k:3 * k + 3])
    check_hand_values(evaluate(flat_model(), flat_model(SHIFT), tmp_path, batch_size=2))
    r = evaluate(flat_model(), flat_model(SHIFT), tmp_path, batch_size=2, max_batches=1)
    assert r.images == 2 and r.labelled == 2 and r.top1_fp32 == 0.5 and r.top1_int8 == 0.5
    assert "top-1 agreement" in r.summary() and r.as_dict()["images"] == 2


def test_identical_models_and_errors():
    r = evaluate(flat_model(), flat_model(), pairs())
    assert r.top1_agreement == 1.0 and r.mean_kl == pytest.approx(0, abs=1e-12)
    assert r.max_abs_diff == 0.0
    unl = [(d, np.full(len(d), -1, np.float32)) for d, _ in pairs()]
    r = evaluate(flat_model(), flat_model(), unl)
    assert r.labelled == 0 and r.top1_fp32 is None and "n/a" in r.summary()
    with pytest.raises(ConfigError, match="no batch"):
        evaluate(flat_model(), flat_model(), [])
    with pytest.raises(ModelError, match="--batch-size 2"):
        evaluate(flat_model(), flat_model(n=2), pairs())
    with pytest.raises(ConfigError, match="outputs"):
        evaluate(flat_model(), flat_model(), pairs(), outputs="x")


def test_counts_first_predictions_disagreements_and_timing():
    # FP32 top-1 [0,5,0,5,0,1], INT8 [0,5,5,5,5,1]; labels [0,0,1,-,5,1]
    seen = []
    r = evaluate(flat_model(), flat_model(SHIFT), pairs(), keep=4,
                 progress=lambda done, total: seen.append((done, total)))
    assert (r.top1_hits_fp32, r.top5_hits_fp32, r.top1_hits_int8, r.top5_hits_int8) == (2, 4, 3, 4)
    assert r.agreed == 4
    assert r.labels == [0, 0, 1, None]
    assert r.fp32_pred == [0, 5, 0, 5] and r.int8_pred == [0, 5, 5, 5]
    # every disagreement (images 2 and 4), with its label, across the batch boundary
    assert r.disagreements == [(2, 1, 0, 5), (4, 5, 0, 5)]
    assert seen == [(1, None), (2, None)]
    assert r.seconds_fp32 > 0 and r.seconds_int8 > 0
    assert r.ms_per_image_fp32 == pytest.approx(1e3 * r.seconds_fp32 / 6)
    d = r.as_dict()
    assert d["ms_per_image_int8"] == pytest.approx(r.ms_per_image_int8) and d["agreed"] == 4
    assert "ms/image" in r.summary()
    # keep=1 keeps one of each; keep=0 (default) keeps nothing
    r1 = evaluate(flat_model(), flat_model(SHIFT), pairs(), keep=1)
    assert r1.labels == [0] and r1.disagreements == [(2, 1, 0, 5)]
    r0 = evaluate(flat_model(), flat_model(SHIFT), pairs())
    assert r0.labels == [] and r0.disagreements == []


def test_first_skips_batches_and_progress_total(tmp_path):
    x = LOGITS.reshape(6, 1, 1, 6)
    for k in range(3):
        write_batch_file(tmp_path / f"batch{k}", x[2 * k:2 * k + 2], LABELS[2 * k:2 * k + 2])
    seen = []
    r = evaluate(flat_model(), flat_model(SHIFT), tmp_path, batch_size=2, first=1, keep=10,
                 progress=lambda d, t: seen.append((d, t)))
    # images 2..5: labels [1,-,5,1]; FP32 [0,5,0,1], INT8 [5,5,5,1]
    assert r.images == 4 and r.labelled == 3 and seen == [(1, 2), (2, 2)]
    assert r.top1_hits_fp32 == 1 and r.top1_hits_int8 == 2 and r.agreed == 2
    assert r.labels == [1, None, 5, 1] and r.disagreements == [(0, 1, 0, 5), (2, 5, 0, 5)]
    r = evaluate(flat_model(), flat_model(SHIFT), pairs(batch=2), first=2)
    assert r.images == 2 and r.fp32_pred == [] and r.agreed == 1


def test_a_map_output_is_named_as_such_with_its_relative_error():
    """A detector-like output (N, C, H, W): the summary says top-1 and KL mean little; rel. error by hand."""
    from int8batch.calib.evaluate import Comparison
    rng = np.random.default_rng(3)
    y0 = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    y1 = (y0 + 0.1 * rng.standard_normal(y0.shape)).astype(np.float32)
    acc = Comparison()
    acc.add(y0[:2], y1[:2], np.full(2, -1.0))
    acc.add(y0[2:], y1[2:], np.full(2, -1.0))
    r = acc.finish()
    want = np.linalg.norm((y1 - y0).astype(np.float64)) / np.linalg.norm(y0.astype(np.float64))
    assert r.rel_error == pytest.approx(want, rel=1e-9)
    assert r.output_shape == (3, 5, 5) and not r.classifier
    assert "3x5x5 per image, not one row of class scores" in r.summary()
    z = Comparison()
    z.add(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(2))
    assert z.finish().rel_error == np.inf              # an all-zero reference: any difference is infinite


def two_output_model(scale, n_out=2, dynamic_second=False):
    """x (N,1,1,6) -> y = Flatten(x) (class scores) and m = x * scale (a map, N,1,1,6), both graph outputs."""
    nodes = [helper.make_node("Flatten", ["x"], ["y"]), helper.make_node("Mul", ["x", "s"], ["m"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, 1, 6])]
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s")]
    if dynamic_second:  # the second output's length depends on the data (as a detector's boxes after NMS)
        nodes.append(helper.make_node("NonZero", ["m"], ["nz"]))
        outs[1] = helper.make_tensor_value_info("nz", TensorProto.INT64, [4, "K"])
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 1, 6])],
                          outs[:n_out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_every_graph_output_is_compared():
    """A second output gets its own relative L2 error and largest difference, checked by hand."""
    scale = np.array([1, 1, 1, 1, 1, 1.5], np.float32)
    r = evaluate(two_output_model(np.ones(6)), two_output_model(scale), pairs(), device="cpu")
    assert r.output == "y" and r.top1_agreement == 1.0          # the first output is the same in both
    (o,) = r.other_outputs
    ref = LOGITS.astype(np.float64)
    want = np.linalg.norm(ref * scale - ref) / np.linalg.norm(ref)
    assert o["name"] == "m" and o["shape"] == (1, 1, 6) and o["problem"] is None
    assert o["rel_error"] == pytest.approx(want, rel=1e-9)
    assert o["max_abs_diff"] == pytest.approx(np.abs(ref * scale - ref).max())
    assert "output 'm' (1x1x6 per image): relative L2 error" in r.summary()


def test_outputs_that_cannot_be_compared_are_named_not_fatal():
    """Shapes that differ in a batch (data-dependent outputs) and a missing output: said, scoring goes on."""
    scale = np.array([1, 1, 1, 1, 1, 0], np.float32)    # zeroes the last column: NonZero finds fewer elements
    r = evaluate(two_output_model(np.ones(6), dynamic_second=True), two_output_model(scale, dynamic_second=True),
                 pairs(), device="cpu")
    assert r.images == 6 and r.top1_agreement == 1.0
    assert r.other_outputs[0]["name"] == "nz" and "shapes differ" in r.other_outputs[0]["problem"]
    r = evaluate(two_output_model(np.ones(6)), two_output_model(np.ones(6), n_out=1), pairs(), device="cpu")
    assert r.other_outputs[0]["name"] == "m" and "no output of that name" in r.other_outputs[0]["problem"]
    assert "output 'm': not compared (the INT8 model has no output of that name)" in r.summary()


def test_outputs_are_paired_by_name():
    """Found by a new user: the INT8 model listing the same outputs in another order failed, and one missing
    output made the later ones 'not compared'."""
    scale = np.array([1, 1, 1, 1, 1, 1.5], np.float32)
    fp, q = two_output_model(np.ones(6)), two_output_model(scale)
    q.graph.output.reverse()                                  # m first, then y
    r = evaluate(fp, q, pairs(), device="cpu")
    assert r.output == "y" and r.top1_agreement == 1.0 and r.rel_error == 0.0
    ref = LOGITS.astype(np.float64)
    assert r.other_outputs[0]["name"] == "m"
    assert r.other_outputs[0]["rel_error"] == pytest.approx(np.linalg.norm(ref * scale - ref) / np.linalg.norm(ref))


def test_bad_run_options_are_refused_and_a_fixed_batch_model_gets_its_n(tmp_path):
    """Found as a new user: --batch-size 0 silently meant the default, --threads -2 was accepted, and a
    model fixed to 2 images per run needed --batch-size although calibrate picks it up."""
    folder = tmp_path / "b"
    folder.mkdir()
    x = LOGITS.reshape(6, 1, 1, 6)
    for k in range(2):
        write_batch_file(folder / f"batch{k}", x[3 * k:3 * k + 3], LABELS[3 * k:3 * k + 3])
    for kw, needle in (({"batch_size": 0}, "batch_size (--batch-size) must be a whole number >= 1"),
                       ({"max_batches": 0}, "max_batches (--max-batches)"),
                       ({"intra_op_threads": -2}, "intra_op_threads (--threads)"),
                       ({"first": -1}, "first (--first)")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            evaluate(flat_model(), flat_model(SHIFT), str(folder), device="cpu", **kw)
    r = evaluate(flat_model(n=2), flat_model(SHIFT, n=2), str(folder), device="cpu")
    assert r.batch_size == 2 and r.images == 6
    check_hand_values(r)


def test_swapped_models_are_named(tmp_path, caplog):
    """Found as a new user: eval model.qdq.onnx model.onnx ran silently with FP32 and INT8 the wrong way round."""
    fp = flat_model()
    q = flat_model()
    g = q.graph
    g.node[-1].input[0] = "fd"                          # Flatten -> Q -> DQ -> Identity, by hand
    g.node.insert(1, helper.make_node("QuantizeLinear", ["f", "s", "z"], ["fq"]))
    g.node.insert(2, helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["fd"]))
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                          numpy_helper.from_array(np.array(0, np.int8), "z")])
    with caplog.at_level("WARNING", logger="int8batch"):
        evaluate(q, fp, pairs(), device="cpu")
    assert "are the two models swapped" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="int8batch"):
        r = evaluate(fp, q, pairs(), device="cpu")
    assert "swapped" not in caplog.text and "no QuantizeLinear" not in caplog.text
    assert "share only" not in caplog.text
    assert r.int8_quantized is True and r.int8_note() is None
    # found as a new user: a Q/DQ model of another network scored 0 % agreement without a hint
    other = onnx.ModelProto()
    other.CopyFrom(q)
    ren = {"f": "g_other", "fq": "gq_other", "fd": "gd_other"}
    for n in other.graph.node:
        n.input[:] = [ren.get(i, i) for i in n.input]
        n.output[:] = [ren.get(o, o) for o in n.output]
    caplog.clear()
    with caplog.at_level("WARNING", logger="int8batch"):
        evaluate(fp, other, pairs(), device="cpu")
    # fp makes f and y, other g_other, gq_other, gd_other and y: 1 of 2 shared, half: not warned (under half is)
    assert "share only" not in caplog.text
    fp2 = flat_model(SHIFT)                             # makes f, a, y: 1 of 3 in common with other
    with caplog.at_level("WARNING", logger="int8batch"):
        evaluate(fp2, other, pairs(), device="cpu")
    assert "the two models share only 1 of the FP32 model's 3 tensor names" in caplog.text


def test_a_float_model_given_as_int8_is_named(tmp_path, caplog):
    """Found as a new user: `eval model.onnx model.corrected.onnx` (a float model meant for TensorRT with its
    cache) printed "INT8" figures for what ONNX Runtime ran in float, without a word."""
    path = tmp_path / "model.corrected.onnx"
    onnx.save(flat_model(SHIFT), str(path))
    with caplog.at_level("WARNING", logger="int8batch"):
        r = evaluate(flat_model(), str(path), pairs(), device="cpu")
    assert r.int8_quantized is False
    assert str(path) in caplog.text and "ran it in float" in caplog.text
    assert "int8batch qdq model.corrected.onnx --cache calibration.cache" in r.int8_note()
    assert r.int8_note() in r.summary()
    check_hand_values(r)        # the figures themselves are still the comparison asked for
