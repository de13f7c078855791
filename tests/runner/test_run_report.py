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



def test_labels_that_are_not_the_models_classes_leave_the_verdict_to_agreement():
    """Found by a new user: 3 class folders against an ImageNet model gave 'PASSED ... INT8 top-1 0.00 % vs
    FP32 0.00 %' although agreement was 92 %."""
    odd = EvalResult(images=64, labelled=64, top1_fp32=0.0, top1_int8=0.0, top1_agreement=0.9219)
    ok, rule = verdict(odd)
    assert not ok and "FP32 top-1 is only 0.0 %" in rule and "agreement >= 95 %" in rule
    odd.top1_agreement = 0.96
    assert verdict(odd)[0]
    weak = EvalResult(images=64, labelled=64, top1_fp32=0.10, top1_int8=0.095, top1_agreement=0.5)
    assert verdict(weak)[0] and "within 1 point" in verdict(weak)[1]     # 10 %: the labels decide
