"""What to pack: image folders (with labels from class folders or a label file) and MNIST IDX files."""
import contextlib
import gzip
import logging
import os
import stat
from dataclasses import dataclass

import numpy as np

from .. import format as fmt
from ..errors import SourceError
from ..manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .ppm .pgm .pbm .pnm .tif .tiff .webp .jp2 .sr .ras .gif".split())
#: photo formats OpenCV does not decode: files named so are left out with a note (not silently)
UNDECODED_EXTENSIONS = frozenset(".heic .heif .avif .cr2 .cr3 .nef .arw .dng .raf .orf .rw2 .psd .svg".split())
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


def inside(path, folder):
    """True when ``path`` is ``folder`` or lies in it (symbolic links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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


@contextlib.contextmanager
def unlogged():
    """Scan without this module's log lines (a caller counting images that pack will scan, and report, again)."""
    before = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = before


def open_source(src, labels=None):
    """Resolve a pack source.

    ``src`` is a folder of images, an IDX image file (``*-images-idx3-ubyte``,
    plain or ``.gz``), or the name of bundled data (``mnist``, ``mnist-test``)
    when no such path exists.  ``labels`` is a label file, ``"folders"``,
    ``"none"`` or None (auto, see :func:`scan_folder`).
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
    if not os.path.isdir(src):
        _require_regular(src, "source")
        if "idx3" in os.path.basename(src) or _is_idx(src):
            return read_idx_source(src, labels if labels not in (None, "folders", "none") else
                                   (None if labels == "none" else _sibling_labels(src)))
        raise SourceError(f"{src}: a single file must be an IDX image file; give a folder for images", src)
    return scan_folder(src, labels)


# ------------------------------------------------------------------ folders
def walk_images(root):
    """Image files under ``root`` and its top-level folders, following symbolic links.

    Symbolic links to folders are followed like folders (a class folder may be
    a link); a link that leads back into a folder it lies in is refused
    (it would loop), and so is a folder that cannot be listed or a link that
    points nowhere (unless it is named like an image: decoding it then fails
    with the file's name).  Names starting with "." are skipped.

    Returns
    -------
    files : list of str
        Paths relative to ``root`` with "/" separators, sorted.
    folders : list of str
        The (non-hidden) folders directly in ``root``, sorted, whether or not
        they hold images.

    Raises
    ------
    SourceError
        Naming the folder or link and the fix.
    """
    root = os.fspath(root)
    files, folders, hidden, undecoded = [], [], [], []
    # (absolute path, relative path, real paths of the folders leading here)
    stack = [(root, "", frozenset([os.path.realpath(root)]))]
    while stack:
        path, rel, seen = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"{path}: cannot list this folder ({exc.strerror or exc}); its images would be "
                              "left out and the class numbering would shift: fix its permissions or move it away",
                              path) from exc
        for e in entries:
            if e.name.startswith("."):
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    hidden.append(f"{rel}/{e.name}" if rel else e.name)
                continue
            name = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()  # follows symbolic links
            except OSError as exc:  # e.g. a link loop (ELOOP)
                raise SourceError(f"{os.path.join(root, name)}: cannot follow this symbolic link "
                                  f"({exc.strerror or exc}); fix or remove it", name) from exc
            if is_dir:
                real = os.path.realpath(e.path)
                if real in seen:
                    raise SourceError(f"{os.path.join(root, name)}: symbolic link to {real}, a folder it lies in: "
                                      "following it would loop forever; remove the link", name)
                stack.append((e.path, name, seen | {real}))
                if not rel:
                    folders.append(e.name)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(name)
            elif os.path.splitext(e.name)[1].lower() in UNDECODED_EXTENSIONS:
                undecoded.append(name)
            elif e.is_symlink() and not os.path.exists(e.path):
                raise SourceError(f"{os.path.join(root, name)}: symbolic link to {os.readlink(e.path)}, which does "
                                  "not exist; if it was a class folder its images would be left out and the "
                                  "classes renumbered: fix or remove the link", name)
    files.sort()
    folders.sort()
    if undecoded:
        undecoded.sort()
        kinds = sorted({os.path.splitext(n)[1].lower() for n in undecoded})
        log.warning("%s: %d file(s) in formats OpenCV does not decode left out (%s, e.g. %s): convert them to "
                    "JPEG or PNG to include them", root, len(undecoded), " ".join(kinds), undecoded[0])
    if hidden:
        hidden.sort()
        log.info("%s: %d hidden file(s) named like images left out (names starting with '.', e.g. %s; macOS "
                 "writes ._NAME files that are no images): rename them to include them", root, len(hidden),
                 hidden[0])
    return files, folders


def scan_folder(root, labels=None):
    """Every image under ``root`` (recursive, sorted by relative path), with labels.

    ``labels``: a label file, ``"folders"`` (label = index of the top-level
    folder in the sorted list of every top-level folder, so a class folder
    without images keeps its number and shifts no other), ``"none"``, or
    None: ``"folders"`` when every image lies in a folder, ``"none"`` when
    none does, and an error when some do and some do not (one stray image
    must not silently turn every label into the unlabelled value).
    """
    files, folders = walk_images(root)
    _refuse_nested_packs(root, folders)
    if not files:
        raise SourceError(f"{root}: no image files found (looked recursively for "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})", root)
    loose = [f for f in files if "/" not in f]
    if labels is None:
        if loose and len(loose) < len(files):
            raise SourceError(
                f"{root}: {len(files) - len(loose)} image(s) lie in class folders ({_some(folders)}) but "
                f"{len(loose)} lie directly in the folder ({_some(loose)}); labels would be ambiguous: move the "
                "loose image(s) into their class folder (or out of the folder) for labels from class folders, "
                "or pass --labels none to pack every image unlabelled", root)
        labels = "none" if loose else "folders"
    if labels == "none":
        return ImageSource(root, files, None, "none")
    if labels == "folders":
        if loose:
            raise SourceError(f"{root}: labels from class folders, but {len(loose)} image(s) lie directly in the "
                              f"folder ({_some(loose)}); move them into a class folder or use --labels none", root)
        index = {c: i for i, c in enumerate(folders)}
        tops = [f.split("/", 1)[0] for f in files]
        empty = sorted(set(folders) - set(tops))
        if empty:
            log.warning("%s: %d class folder(s) hold no image (%s); they keep their class numbers (labels are "
                        "the positions in the sorted list of all %d folders)", root, len(empty), _some(empty),
                        len(folders))
        _check_labels_exact(len(folders) - 1, root)
        return ImageSource(root, files, np.array([index[t] for t in tops], dtype=np.int64), "folders", folders)
    return _apply_label_file(root, files, labels)


def _refuse_nested_packs(root, folders):
    """A pack folder in (or as) the images folder would give its preview.png and class-folder look to the next
    pack (found as a new user: 'out' was reported as a class folder); pack now refuses to write one there, and
    one written before is named here."""
    for sub in [""] + list(folders):
        if os.path.isfile(os.path.join(root, sub, MANIFEST_NAME)):
            where = os.path.join(root, sub) if sub else root
            raise SourceError(f"{where} holds an int8batch pack ({MANIFEST_NAME}): a pack in the images folder would "
                              f"be taken for images (its preview.png) or a class folder; move it out of {root}", where)


def nothing_packed_error(source, skipped, dropped, batch_size):
    """The error for a pack that would hold no file: every image skipped, or too few left for one file.

    Parameters
    ----------
    source : str
    skipped : list of (str, str)
        ``(image, reason)`` of the images skipped as unreadable.
    dropped : int
        Images decoded but left over (fewer than one file of ``batch_size``).

    Returns
    -------
    SourceError
        Listing the reasons (most frequent first, with an example image each).
    """
    by_reason = {}
    for name, reason in skipped:
        key = reason.split(": ", 1)[-1]  # "<path>: <why>" -> "<why>"
        by_reason.setdefault(key, []).append(name)
    reasons = "; ".join(f"{len(v)} x {k} (e.g. {v[0]})"
                        for k, v in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:5])
    if dropped:
        what = (f"{len(skipped)} image(s) were unreadable and skipped, and the {dropped} readable one(s) do not "
                f"fill one file of {batch_size}: lower --batch-size or use --pad")
    else:
        what = f"every one of the {len(skipped)} image(s) was unreadable and skipped (--skip-bad)"
    detail = f"; reasons: {reasons}" if reasons else ""
    return SourceError(f"{source}: nothing to pack: {what}{detail}; an empty pack is never written", source)


def _require_regular(path, what):
    """Refuse anything but a regular file (a FIFO would block the reader forever)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open the {what} ({exc.strerror or exc})", path) from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise SourceError(f"{path}: the {what} is {kind}; give a regular file", path)


def _some(names, k=3):
    """``"a, b, c and 4 more"``."""
    names = list(names)
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def _check_labels_exact(largest, where, line="", image=None):
    if largest > fmt.MAX_EXACT_LABEL:
        of = f" of {image}" if image else ""
        raise SourceError(f"{where}{line}: label {largest}{of} is above 2**24 = {fmt.MAX_EXACT_LABEL}; labels are "
                          f"stored as float32, which holds every integer only up to {fmt.MAX_EXACT_LABEL} "
                          f"({largest} would be stored as {int(np.float32(largest))}): renumber the classes", where)


def read_label_file(path):
    """Parse ``path label`` lines (Caffe ``val.txt`` style) into {path: int label}."""
    table = {}
    _require_regular(path, "label file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read label file ({exc.strerror or exc})", path) from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: label file is not UTF-8 text ({exc.reason} at byte {exc.start}); give a "
                          "text file of '<image path> <integer label>' lines", path) from None
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
        _check_labels_exact(value, path, f":{lineno}", name.strip())
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
    unlabelled = [f for f in files if f not in resolved]
    if missing and unlabelled:   # entries and images that do not meet: the file is not this folder's
        raise SourceError(f"{label_path}: {len(missing)} listed image(s) not found under {root}, e.g. "
                          f"{', '.join(missing[:3])}, and {len(unlabelled)} image(s) there have no label, e.g. "
                          f"{', '.join(unlabelled[:3])}", label_path)
    if unlabelled:
        raise SourceError(f"{root}: {len(unlabelled)} image(s) have no label in {label_path}, e.g. "
                          f"{', '.join(unlabelled[:3])}", root)
    if missing:   # every image is labelled: a subset of the file's images (ILSVRC2012 val.txt for part of val)
        log.warning("%s lists %d image(s) that are not under %s (e.g. %s): packing the %d that are", label_path,
                    len(missing), root, ", ".join(missing[:3]), len(files))
    return ImageSource(root, files, np.array([resolved[f] for f in files], dtype=np.int64), "file")


# ---------------------------------------------------------------------- IDX
def _open_maybe_gz(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def idx_count(path):
    """The first dimension (images) of an IDX file, read from its header (plain or gzipped)."""
    with _open_maybe_gz(path) as f:
        head = f.read(8)
    if len(head) < 8 or head[:2] != b"\0\0":
        raise SourceError(f"{path}: not an IDX file (bad magic)", path)
    return int.from_bytes(head[4:8], "big")


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
    _require_regular(path, "IDX file")
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
