"""What to pack: image folders (with labels from class folders or a label file) and MNIST IDX files."""
import gzip
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .ppm .pgm .pbm .pnm .tif .tiff .webp .jp2 .sr .ras".split())
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
BUNDLED = {
    "mnist": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "mnist-train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "mnist-test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}


@dataclass
class ImageSource:
    """A list of image files with optional integer labels, in pack order."""

    root: str
    files: list            # paths relative to root
    labels: object         # np.int64 array or None
    label_source: str      # "folders", "file" or "none"
    classes: list = None   # class names for "folders"

    kind = "folder"

    def __len__(self):
        return len(self.files)


@dataclass
class IdxSource:
    """MNIST-style IDX images (uint8, count x rows x cols) with optional labels."""

    images_path: str
    labels_path: object
    images: np.ndarray     # uint8 (count, rows, cols)
    labels: object         # np.int64 array or None

    kind = "idx"
    label_source = "idx"
    classes = None

    def __len__(self):
        return self.images.shape[0]


def open_source(src, labels=None):
    """Resolve a pack source.

    ``src`` is a folder of images, an IDX image file (``*-images-idx3-ubyte``,
    plain or ``.gz``), or the name of bundled data (``mnist``, ``mnist-test``)
    when no such path exists.  ``labels`` is a label file, ``"folders"``,
    ``"none"`` or None (auto: class sub-folders when every image lies in one).
    """
    src = os.fspath(src)
    if not os.path.exists(src):
        if src in BUNDLED:
            img, lab = (os.path.join(DATA_DIR, p) for p in BUNDLED[src])
            if not os.path.exists(img):
                raise SourceError(f"bundled data {src!r} is missing from the installation ({img})", img)
            log.info("packing the bundled %s data (%s)", src, img)
            return read_idx_source(img, lab)
        raise SourceError(f"{src}: no such file or folder (bundled data names: {', '.join(BUNDLED)})", src)
    if os.path.isfile(src):
        if "idx3" in os.path.basename(src) or _is_idx(src):
            return read_idx_source(src, labels if labels not in (None, "folders", "none") else
                                   (None if labels == "none" else _sibling_labels(src)))
        raise SourceError(f"{src}: a single file must be an IDX image file; give a folder for images", src)
    return scan_folder(src, labels)


# ------------------------------------------------------------------ folders
def scan_folder(root, labels=None):
    """Every image under ``root`` (recursive, sorted by relative path), with labels."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    files.sort()
    if not files:
        raise SourceError(f"{root}: no image files found (looked recursively for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})", root)
    if labels is None:
        labels = "folders" if all("/" in f for f in files) else "none"
    if labels == "none":
        return ImageSource(root, files, None, "none")
    if labels == "folders":
        tops = [f.split("/", 1)[0] if "/" in f else None for f in files]
        loose = [f for f, t in zip(files, tops) if t is None]
        if loose:
            raise SourceError(f"{root}: labels from class folders, but {len(loose)} image(s) lie directly in the "
                              f"folder, e.g. {loose[0]}; move them into a class folder or use --labels none", root)
        classes = sorted(set(tops))
        index = {c: i for i, c in enumerate(classes)}
        return ImageSource(root, files, np.array([index[t] for t in tops], dtype=np.int64), "folders", classes)
    return _apply_label_file(root, files, labels)


def read_label_file(path):
    """Parse ``path label`` lines (Caffe ``val.txt`` style) into {path: int label}."""
    table = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read label file ({exc.strerror or exc})", path) from exc
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise SourceError(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}", path)
        name, lab = parts
        try:
            value = int(lab)
        except ValueError:
            raise SourceError(f"{path}:{lineno}: label {lab!r} is not an integer", path) from None
        if value < 0:
            raise SourceError(f"{path}:{lineno}: label {value} is negative", path)
        name = name.replace("\\", "/")
        if name.startswith("./"):
            name = name[2:]
        if name in table and table[name] != value:
            raise SourceError(f"{path}:{lineno}: {name} is listed twice with different labels", path)
        table[name] = value
    if not table:
        raise SourceError(f"{path}: label file has no entries", path)
    return table


def _apply_label_file(root, files, label_path):
    table = read_label_file(label_path)
    by_rel = set(files)
    by_base = {}
    for f in files:
        by_base.setdefault(f.rsplit("/", 1)[-1], []).append(f)
    resolved = {}
    missing = []
    for name, lab in table.items():
        if name in by_rel:
            resolved[name] = lab
        elif "/" not in name and len(by_base.get(name, [])) == 1:
            resolved[by_base[name][0]] = lab
        elif "/" not in name and len(by_base.get(name, [])) > 1:
            raise SourceError(f"{label_path}: {name} matches {len(by_base[name])} images under {root}; "
                              "use relative paths in the label file", label_path)
        else:
            missing.append(name)
    if missing:
        raise SourceError(f"{label_path}: {len(missing)} listed image(s) not found under {root}, e.g. "
                          f"{', '.join(missing[:3])}", label_path)
    unlabelled = [f for f in files if f not in resolved]
    if unlabelled:
        raise SourceError(f"{root}: {len(unlabelled)} image(s) have no label in {label_path}, e.g. "
                          f"{', '.join(unlabelled[:3])}", root)
    return ImageSource(root, files, np.array([resolved[f] for f in files], dtype=np.int64), "file")


# ---------------------------------------------------------------------- IDX
def _open_maybe_gz(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _is_idx(path):
    try:
        with _open_maybe_gz(path) as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] == 0x08


def _sibling_labels(images_path):
    d, name = os.path.split(images_path)
    cand = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if cand != name and os.path.exists(os.path.join(d, cand)):
        return os.path.join(d, cand)
    return None


def read_idx(path, expect_dims):
    """Read an IDX file of unsigned bytes (magic 0x0000080D with D dims) into an array."""
    try:
        with _open_maybe_gz(path) as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read IDX file ({exc})", path) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SourceError(f"{path}: not an IDX file (bad magic)", path)
    if raw[2] != 0x08:
        raise SourceError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned byte (0x08)", path)
    ndim = raw[3]
    if ndim != expect_dims:
        raise SourceError(f"{path}: IDX file has {ndim} dimensions, expected {expect_dims}", path)
    if len(raw) < 4 + 4 * ndim:
        raise SourceError(f"{path}: IDX header is truncated", path)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != need:
        raise SourceError(f"{path}: IDX file is {len(raw)} bytes but its header {dims} needs {need}; "
                          "it is truncated or corrupt", path)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_idx_source(images_path, labels_path=None):
    images = read_idx(images_path, 3)
    labels = None
    if labels_path:
        labels = read_idx(labels_path, 1).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise SourceError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
                              f"{images_path}", labels_path)
    return IdxSource(os.fspath(images_path), labels_path and os.fspath(labels_path), images, labels)
