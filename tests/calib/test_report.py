"""Calibration report: ranking by saturation (hand-computed) and the PNG it writes."""
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from int8batch.calib.collector import TensorStats
from int8batch.calib.report import figure_size, most_saturated
from int8batch.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _uniform(name, observed=10.0):
    # 10 bins of width 1, 10 values each: |x| spread uniformly over [0, 10).
    return TensorStats.from_histogram(np.full(10, 10), 1.0, amax=observed, name=name)


def hand_made():
    """Tensors with hand-computed saturated fractions (uniform within bins).

    a: amax 5   -> bins 5..9 above          = 50/100 = 0.5
    b: amax 8   -> bins 8, 9                = 20/100 = 0.2
    d: amax 9.5 -> half of bin 9            =  5/100 = 0.05
    g: amax 10 < observed 12, but no count above bin 9 -> 0.0, amax/observed 0.833
    c, e: amax = observed max                -> 0.0, ratio 1
    f: never held a non-zero value           -> 0.0, ratio 1
    x: amax without statistics (ignored)
    """
    stats = {n: _uniform(n) for n in "abcde"}
    stats["g"] = _uniform("g", observed=12.0)
    stats["f"] = TensorStats.from_histogram(np.zeros(10, np.int64), 0.0, amax=0.0, name="f")
    amax = {"a": 5.0, "b": 8.0, "c": 10.0, "d": 9.5, "e": 10.0, "f": 0.0, "g": 10.0, "x": 1.0}
    methods = {n: "mse" for n in amax}
    return SimpleNamespace(amax=amax, stats=stats, methods=methods)


EXPECTED = [("a", 0.5), ("b", 0.2), ("d", 0.05), ("g", 0.0), ("c", 0.0), ("e", 0.0), ("f", 0.0)]


def test_most_saturated_hand_made():
    got = most_saturated(hand_made(), top=3)
    assert [n for n, _ in got] == ["a", "b", "d"]
    np.testing.assert_allclose([f for _, f in got], [0.5, 0.2, 0.05], rtol=0, atol=1e-12)


def test_most_saturated_full_order_and_ties():
    got = most_saturated(hand_made(), top=100)
    assert [n for n, _ in got] == [n for n, _ in EXPECTED]       # x has no stats: left out
    np.testing.assert_allclose([f for _, f in got], [f for _, f in EXPECTED], atol=1e-12)


def test_most_saturated_rejects_bad_top():
    with pytest.raises(ConfigError):
        most_saturated(hand_made(), top=0)


def test_figure_size():
    assert figure_size(1) == (5.0, 3.2)
    assert figure_size(3) == (15.0, 3.2)
    assert figure_size(4) == (15.0, 6.4)
    assert figure_size(12) == (15.0, 12.8)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", head[16:24])


def test_save_report_png(tmp_path):
    pytest.importorskip("matplotlib")
    from int8batch.calib.report import save_report
    out = tmp_path / "sub" / "report.png"
    assert save_report(hand_made(), out, top=4) == str(out)
    assert out.is_file()
    assert _png_size(out) == (1500, 640)                          # 2 rows x 3 panels of 500 x 320
    assert [p.name for p in out.parent.iterdir()] == ["report.png"]   # no temp file left
    small = tmp_path / "small.png"
    save_report(hand_made(), small, top=2, dpi=50)
    assert _png_size(small) == (500, 160)                        # 1 row x 2 panels at 50 dpi


def test_figure_lines_and_titles():
    pytest.importorskip("matplotlib")
    from int8batch.calib.report import build_figure
    r = hand_made()
    fig, chosen = build_figure(r, top=4)
    assert [n for n, _ in chosen] == ["a", "b", "d", "g"]
    for ax, (name, frac) in zip(fig.axes, chosen):
        assert ax.get_title().startswith(name + "\n")
        assert f"saturated {100 * frac:.3g} %" in ax.get_title()
        xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
        assert xs == sorted([r.amax[name], r.stats[name].amax])
        assert ax.get_yscale() == "log"


def test_empty_tensor_panel_and_empty_result(tmp_path):
    pytest.importorskip("matplotlib")
    from int8batch.calib.report import build_figure, save_report
    r = hand_made()
    only_f = SimpleNamespace(amax={"f": 0.0}, stats={"f": r.stats["f"]}, methods={})
    fig, chosen = build_figure(only_f)
    assert chosen == [("f", 0.0)] and "no non-zero" in fig.axes[0].texts[0].get_text()
    with pytest.raises(ConfigError):
        save_report(SimpleNamespace(amax={}, stats={}, methods={}), tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_report_from_real_calibration(tmp_path):
    """LeNet on 100 bundled MNIST test images: the report shows the ranking's tensors."""
    pytest.importorskip("matplotlib")
    import os

    import int8batch
    from int8batch.calib.api import calibrate
    from int8batch.calib.report import build_figure, save_report
    from int8batch.calib.thresholds import saturation
    model = os.path.join(os.path.dirname(int8batch.__file__), "data", "lenet.onnx")
    int8batch.pack("mnist-test", tmp_path / "b", batch_size=50, limit=100, force=True)
    res = calibrate(model, tmp_path / "b", method="entropy", write_qdq=False, intra_op_threads=1)
    fracs = {n: saturation(res.stats[n], a) for n, a in res.amax.items()}
    fig, chosen = build_figure(res, top=3)
    assert len(chosen) == min(3, len(res.amax))
    best = sorted(fracs.values(), reverse=True)[:len(chosen)]
    np.testing.assert_allclose([f for _, f in chosen], best)
    path = save_report(res, tmp_path / "report.png", top=3)
    assert _png_size(path) == (1500, 320)
