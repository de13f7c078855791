"""Calibration report: where INT8 clips, as one PNG.

:func:`save_report` draws the ``|x|`` histogram (log counts) of the tensors
that a calibration saturates most, each with the chosen amax and the observed
max as vertical lines and the saturated fraction in its title.
:func:`most_saturated` is the ranking it uses.

matplotlib is an optional extra (``pip install 'int8batch[report]'``); it is
imported inside :func:`save_report` and only its Agg canvas is used (no
pyplot, so no global backend state is touched).
"""
import logging
import math
import os

import numpy as np

from .._atomic import make_temp
from .._optional import require
from ..errors import ConfigError
from .thresholds import saturation

log = logging.getLogger(__name__)

#: Subplot columns, size of one subplot in inches, and resolution of the PNG.
COLUMNS = 3
PANEL_INCHES = (5.0, 3.2)
DPI = 100


def most_saturated(result, top=12):
    """The ``top`` tensors whose chosen amax clips the largest fraction of values.

    Parameters
    ----------
    result : CalibrationResult
        Anything with ``amax`` ``{name: float}`` and ``stats`` ``{name: TensorStats}``.
    top : int
        How many tensors to return (fewer when the result has fewer).

    Returns
    -------
    list of (str, float)
        ``(name, saturated fraction)``, most saturated first.  Ties (e.g. the
        many tensors that are not clipped at all) are broken by the smaller
        ``amax / observed max`` (the harder clip) and then by name, so the
        order is deterministic.  Only tensors present in both ``amax`` and
        ``stats`` are ranked.
    """
    top = int(top)
    if top < 1:
        raise ConfigError(f"top must be >= 1, got {top}")
    ranked = []
    for name, amax in result.amax.items():
        s = result.stats.get(name)
        if s is None:
            continue
        frac = saturation(s, amax)
        ratio = float(amax) / s.amax if s.amax > 0 else 1.0
        ranked.append((-frac, ratio, name))
    ranked.sort()
    return [(name, -neg) for neg, _, name in ranked[:top]]


def figure_size(count, columns=COLUMNS, panel=PANEL_INCHES):
    """Figure size in inches for ``count`` panels: ``(width, height)``."""
    count = max(1, int(count))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    return panel[0] * cols, panel[1] * rows


def _short(name, limit=48):
    return name if len(name) <= limit else name[: limit // 2 - 1] + "..." + name[-(limit // 2 - 2):]


def _draw(ax, name, stats, amax, method, frac):
    ax.set_title(f"{_short(name)}\nsaturated {100.0 * frac:.3g} % ({method})", fontsize=8)
    ax.tick_params(labelsize=7)
    if not (stats.width > 0 and stats.amax > 0 and stats.count > 0):
        ax.text(0.5, 0.5, "no non-zero value seen", ha="center", va="center", transform=ax.transAxes)
        return
    hist = np.asarray(stats.hist, dtype=np.float64)
    right = max(float(stats.amax), float(amax))
    keep = min(hist.size, int(math.ceil(right / stats.width)) + 1)
    edges = np.arange(keep + 1, dtype=np.float64) * stats.width
    counts = hist[:keep]
    # Empty bins would be -inf on a log axis: draw them at the floor (0.5).
    ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="tab:blue", alpha=0.6, baseline=0.5)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(1.0, counts.max()) * 2.0)
    ax.set_xlim(0.0, right * 1.04)
    ax.axvline(float(amax), color="tab:red", linewidth=1.4, label=f"amax {float(amax):.4g}")
    ax.axvline(float(stats.amax), color="black", linestyle="--", linewidth=1.0,
               label=f"observed max {float(stats.amax):.4g}")
    ax.set_xlabel("|x|", fontsize=7)
    ax.set_ylabel("count", fontsize=7)
    ax.legend(fontsize=6, loc="upper right")


def build_figure(result, top=12, dpi=DPI):
    """The report as a matplotlib ``Figure`` (Agg canvas) and the tensors shown.

    Returns
    -------
    (matplotlib.figure.Figure, list of (str, float))
        The figure (one subplot per tensor, in :func:`most_saturated` order)
        and that ranking.  See :func:`save_report` for the parameters.
    """
    chosen = most_saturated(result, top)
    if not chosen:
        raise ConfigError("the calibration result has no tensor with statistics to report; "
                          "calibrate a model with at least one quantizable tensor first")
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = figure_size(len(chosen))
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    cols = min(COLUMNS, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    methods = getattr(result, "methods", None) or {}
    for k, (name, frac) in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, k + 1)
        _draw(ax, name, result.stats[name], result.amax[name], methods.get(name, "?"), frac)
    fig.tight_layout()
    return fig, chosen


def save_report(result, path, top=12, dpi=DPI, shown_as=None):
    """Write a PNG of the ``|x|`` histograms of the most saturated tensors.

    Parameters
    ----------
    result : CalibrationResult
        From :func:`int8batch.calib.api.calibrate` (needs ``amax``, ``stats``
        and, optionally, ``methods``).
    path : str or PathLike
        Output PNG; its folder is created.  Written atomically.
    top : int
        Number of tensors shown (ranked by :func:`most_saturated`).
    dpi : int
        Resolution; the image is ``figure_size(n) * dpi`` pixels for n shown
        tensors (3 panels a row, 5 x 3.2 inches each).
    shown_as : str, optional
        The path the log line names (calibrate writes into a staging folder first).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ConfigError
        When the result has no calibrated tensor, or ``top < 1``.
    MissingDependencyError
        When matplotlib is not installed.
    """
    path = os.fspath(path)
    fig, chosen = build_figure(result, top, dpi)
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.info("report: %d tensors (most saturated %s at %.3g %%) -> %s", len(chosen), chosen[0][0],
             100.0 * chosen[0][1], shown_as or path)
    return path
