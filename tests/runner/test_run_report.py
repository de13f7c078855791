"""The verdict of a run (runner/report.py)."""
from int8batch.calib.evaluate import EvalResult
from int8batch.runner.report import verdict


def test_verdict_rules():
    lab = EvalResult(images=100, labelled=100, top1_fp32=0.80, top1_int8=0.79, top1_agreement=0.5)
    assert verdict(lab)[0] and "within 1 point" in verdict(lab)[1]
    lab.top1_int8 = 0.7899
    assert not verdict(lab)[0]
    assert verdict(lab, tolerance=0.02)[0]
    unl = EvalResult(images=100, labelled=0, top1_agreement=0.95)
    assert verdict(unl)[0] and "agreement >= 95 %" in verdict(unl)[1]
    unl.top1_agreement = 0.9499
    assert not verdict(unl)[0]

