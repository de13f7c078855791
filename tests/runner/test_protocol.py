"""Protocol arithmetic against hand-computed cases."""
import numpy as np
import pytest

from int8batch.errors import ConfigError
from int8batch.runner.protocol import Score, passed, topk_hits, window


def test_sampleint8_default_windows():
    # 60000 MNIST images in files of 100: calibration 10 x 50 from batch 0, scoring 400 x 100 from batch 100
    cal = window(60000, 50, 0, 10)
    assert (cal.start_image, cal.images) == (0, 500)
    score = window(60000, 100, 100, 400)
    assert (score.start_image, score.images) == (10000, 40000)
    assert score.describe() == "400 batches of size 100 starting at 100 (images 10000..49999)"
    # TensorRT 7/8: batch 32, first 16, 1800 batches -> images 512 .. 58111
    t = window(60000, 32, 16, 1800)
    assert (t.start_image, t.start_image + t.images) == (512, 58112)
    assert window(1000, 64).count == 15  # every full batch: 15 * 64 = 960


@pytest.mark.parametrize("args", [(60000, 100, 100, 501), (100, 50, 2, 1), (10, 0, 0, 1), (10, 20, 0, None)])
def test_windows_that_do_not_fit(args):
    with pytest.raises(ConfigError, match="batch"):
        window(*args)


def test_topk_by_hand():
    scores = np.array([[0.1, 0.7, 0.2],      # top1 = 1
                       [0.5, 0.5, 0.0],      # tie: class 0 wins top1 (lower index)
                       [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 0])
    assert topk_hits(scores, labels, 1).tolist() == [True, False, False]
    assert topk_hits(scores, labels, 2).tolist() == [True, True, True]
    assert topk_hits(scores, labels, 5).tolist() == [True, True, True]  # k capped at the class count


def test_score_accumulates():
    s = Score()
    s.add(np.eye(10)[[1, 2, 3, 4]], np.array([1, 2, 0, 4]), seconds=0.004)
    s.add(np.eye(10)[[5]], np.array([5]), seconds=0.001)
    assert (s.top1, s.images) == (4, 5) and s.top1_rate == 0.8
    assert s.ms_per_image == pytest.approx(1.0)
    # class 0 for row 3: the one-hot row [0,0,0,1,0...] ranks 0 second (first zero by index)
    assert s.top5 == 5


def test_verdict():
    assert passed(0.9912, 0.9850) and passed(0.99, 0.995)
    assert not passed(0.9912, 0.9811)
