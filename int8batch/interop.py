"""Hand a calibration set to other tools: NumPy ``.npy`` / ``.npz`` files.

NVIDIA ModelOpt's ONNX quantizer takes ``--calibration_data`` as an ``.npy``
array or an ``.npz`` keyed by input name; Polygraphy takes any iterable of
``{name: array}`` (see :meth:`int8batch.reader.BatchSet.as_feed`).
"""
import logging
import os

import numpy as np

from ._atomic import atomic_file
from .errors import ConfigError, OutputExistsError, whole_number
from .reader import BatchSet

log = logging.getLogger(__name__)


def check_source(batches):
    """Refuse a source that is not a folder first, as every command does (BatchSet's error names it)."""
    if not isinstance(batches, BatchSet) and not os.path.isdir(batches):
        BatchSet(batches).close()


def export_numpy(batches, path, input_name=None, limit=None, first=0, force=False):
    """Write the images of a batch folder (in order) to ``path``.

    Parameters
    ----------
    batches : str, PathLike or BatchSet
    path : str or PathLike
        ``*.npz`` writes ``{input_name: data}`` (``input_name`` required);
        ``*.npy`` writes the bare ``(N, C, H, W)`` float32 array.
    limit : int, optional
        At most this many images, starting at image ``first``.
    force : bool
        Replace an existing file at ``path`` (otherwise :class:`OutputExistsError`).

    Returns
    -------
    int
        Number of images written.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    check_source(batches)
    if ext not in (".npy", ".npz"):
        raise ConfigError(f"{path}: the output must end in .npy or .npz")
    if ext == ".npz" and not input_name:
        raise ConfigError(f"{path}: an .npz file needs the model's input name (--input-name)")
    for name, value, low in (("first (--first)", first, 0), ("limit (--limit)", limit, 1)):
        if value is not None:
            whole_number(value, name, low)
    if os.path.isdir(path) or (os.path.lexists(path) and not force):
        raise OutputExistsError(f"{path} {'is a folder' if os.path.isdir(path) else 'already exists'}; give "
                                "another file name, or force=True (--force) to replace a file", path)
    bs = batches if isinstance(batches, BatchSet) else BatchSet(batches)
    try:
        count = bs.num_images - first if limit is None else min(int(limit), bs.num_images - first)
        if count <= 0:
            raise ConfigError(f"{bs.folder}: no images to export after image {first}")
        if limit is not None and count < int(limit):
            log.warning("%s: only %d image(s) from image %d on (of %d), fewer than --limit %d", bs.folder, count,
                        first, bs.num_images, int(limit))
        data = np.empty((count,) + tuple(bs.image_shape), dtype=np.float32)
        bs.images(first, count, out=data)
    finally:
        if bs is not batches:
            bs.close()
    # through a file object: np.save/np.savez append ".npy"/".npz" to a name that lacks it, so a
    # temporary *name* would not be the file written; the temporary is removed on any failure
    with atomic_file(path, "writing the export") as f:
        if ext == ".npz":
            np.savez(f, **{input_name: data})
        else:
            np.save(f, data)
    return count
