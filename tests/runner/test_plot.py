"""The prediction grid of ``--plot`` (runner/plot.py), on the synthetic set of ``imagenet_data``."""
import sys

import pytest

from int8batch.calib.evaluate import EvalResult
from int8batch.errors import MissingDependencyError
from int8batch.runner.plot import choose_tiles


def test_choose_tiles_adds_disagreements():
    r = EvalResult(labels=[0, 1, 2, 3], fp32_pred=[0, 1, 2, 3], int8_pred=[0, 1, 2, 3],
                   disagreements=[(7, 1, 1, 2), (9, None, 0, 4), (12, 2, 2, 0)])
    assert [t[0] for t in choose_tiles(r, 4)] == [0, 1, 7, 9]
    assert [t[0] for t in choose_tiles(r, 3)] == [0, 1, 7]
    assert choose_tiles(r, 3)[2] == (7, 1, 1, 2)
    r.disagreements = [(1, 1, 1, 2)] + r.disagreements[:1]
    r.int8_pred[1] = 2
    # image 1 is among the first shown already; only image 7 is added
    assert [t[0] for t in choose_tiles(r, 4)] == [0, 1, 2, 7]
    assert [t[0] for t in choose_tiles(r, 10)] == [0, 1, 2, 3, 7]


def test_plot_mismatch_is_red_and_needs_matplotlib(data, tmp_path, monkeypatch):
    from int8batch.reader import BatchSet
    from int8batch.runner.plot import plot_predictions
    from int8batch import pack
    pack(data["folders"], tmp_path / "b", preset="efficientnet-lite", batch_size=4, force=True)
    r = EvalResult(labels=[0, 0], fp32_pred=[0, 1], int8_pred=[0, 2], disagreements=[(1, 0, 1, 2)])
    with BatchSet(tmp_path / "b") as bs:
        path = plot_predictions(bs, 0, r, str(tmp_path / "p.png"), columns=2)
        import matplotlib.image as mpimg
        png = mpimg.imread(path)[..., :3]
        red = (png[..., 0] > 0.75) & (png[..., 1] < 0.3) & (png[..., 2] < 0.3)
        half = png.shape[1] // 2
        assert red[:, half:].sum() > 50 and red[:, :half].sum() == 0   # only the right tile is marked
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(MissingDependencyError, match="matplotlib"):
            plot_predictions(bs, 0, r, str(tmp_path / "q.png"))

