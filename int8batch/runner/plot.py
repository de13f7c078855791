"""``--plot``: a PNG grid of scored images captioned with the FP32 and INT8 predictions.

The images are read back from the batch files and de-normalized with the
manifest's recipe (:func:`int8batch.preprocess.denormalize`:
``pixel = (out * std + mean) / scale``); a tile
whose FP32 and INT8 top-1 differ gets a red caption and border.  matplotlib
is imported inside :func:`plot_predictions` (Agg, no display needed).
"""
import logging

import numpy as np

from .._optional import require
from ..errors import ConfigError
from ..preprocess import denormalize

log = logging.getLogger(__name__)

MISMATCH = "#d62728"
MATCH = "#222222"


def choose_tiles(result, count=32):
    """Which scored images to show: ``[(image index, label, fp32, int8)]``.

    The first images of the scoring window, with up to half of the grid given
    to the first FP32/INT8 disagreements that are not among them (so a grid
    of a 99.9 %-agreement run still shows what changed).

    Parameters
    ----------
    result : EvalResult
        Of :func:`int8batch.calib.evaluate.evaluate` with ``keep > 0``.
    count : int
        Tiles wanted.
    """
    first = list(zip(range(len(result.labels)), result.labels, result.fp32_pred, result.int8_pred))
    dis = list(result.disagreements)
    count = max(0, int(count))
    for m in range(min(count // 2, len(dis)), -1, -1):
        shown = min(len(first), count - m)
        extra = [d for d in dis if d[0] >= shown][:m]
        if len(extra) == m:
            break
    return first[:shown] + extra

def plot_predictions(batchset, start, result, path, count=32, columns=8, title=None):
    """Write the prediction grid.

    Parameters
    ----------
    batchset : BatchSet
        The scored batch files (its manifest's recipe, ``batchset.recipe``, de-normalizes them).
    start : int
        Index in ``batchset`` of the first scored image (image 0 of ``result``).
    result : EvalResult
        Scoring result with ``keep > 0`` (labels and predictions of the first images).
    path : str or PathLike
        PNG to write.
    count, columns : int
        Tiles and tiles per row.
    title : str, optional

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    ConfigError
        ``result`` holds no predictions.
    """
    require("matplotlib")
    figure = require("matplotlib.figure")
    require("matplotlib.backends.backend_agg")
    tiles = choose_tiles(result, count)
    if not tiles:
        raise ConfigError("no predictions to plot: score with keep > 0 (evaluate(..., keep=N))")
    recipe = batchset.recipe
    if recipe is None:
        log.warning("%s: no manifest preprocessing; the plot stretches values to 0..255", batchset.folder)
    channels = recipe.channels if recipe is not None else "gray"
    cols = max(1, min(int(columns), len(tiles)))
    rows = -(-len(tiles) // cols)
    fig = figure.Figure(figsize=(1.6 * cols, 1.9 * rows + (0.4 if title else 0)), dpi=100)
    for k, (i, label, p32, p8) in enumerate(tiles):
        data, _ = batchset.images(start + i, 1)
        pix = denormalize(np.array(data), recipe)[0]
        ax = fig.add_subplot(rows, cols, k + 1)
        if pix.shape[0] == 3:
            img = pix.transpose(1, 2, 0)
            ax.imshow(img[..., ::-1] if channels == "bgr" else img)
        else:
            ax.imshow(pix[0], cmap="gray", vmin=0, vmax=255)
        bad = p32 != p8
        colour = MISMATCH if bad else MATCH
        head = f"#{i}" + ("" if label is None else f" label {label}")
        ax.set_title(f"{head}\nFP32 {p32} | INT8 {p8}", fontsize=7, color=colour,
                     fontweight="bold" if bad else "normal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(colour if bad else "#bbbbbb")
            spine.set_linewidth(3 if bad else 0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    log.info("wrote %s (%d images, %d FP32/INT8 mismatches shown)", path, len(tiles),
             sum(t[2] != t[3] for t in tiles))
    return str(path)
