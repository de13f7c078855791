"""The manifest (``manifest.json``): what a pack is, for everything that reads it.

The sampleINT8 batch layout (:mod:`int8batch.format`) has no version field and
says nothing about the images, so the packer writes a manifest beside the batch
files, last and atomically.  This module owns it:

* the schema: its file name, format tag, version, the fixed fields, and the
  marker of an unfinished pack (:data:`INCOMPLETE_MARKER`);
* building it (:func:`build_manifest`) and its text (:func:`manifest_text`);
* the one reader (:func:`read_manifest`), the strict check against the batch
  files that every :class:`~int8batch.reader.BatchSet` runs
  (:func:`check_manifest`), the check before a pack is replaced
  (:func:`replaceable_manifest`) and the findings ``inspect`` reports
  (:func:`audit_manifest`);
* the typed views of its fields: the preprocessing recipe
  (:func:`recipe` -> :class:`~int8batch.preprocess.PreprocessConfig`), the
  labels (:func:`labels` -> :class:`Labels`) and the labels it expects in the
  files (:func:`expected_labels`).

All of it stays in one module (about 580 lines) on purpose: the manifest had
copies in five modules that drifted apart; here one change covers them all.

Layout (``"padded"`` etc. are written one entry per line)::

    {"format": "sampleINT8-batch", "manifest_version": 1, "int8batch_version": ..., "created": ...,
     "dims": [N, C, H, W], "files": K, "images": K*N, "prefix": "batch", "suffix": "",
     "dtype": "float32", "byte_order": "little", "layout": "NCHW",
     "labels": {"source": ..., "classes": [...] or null, "unlabelled_value": ... or null},
     "preprocess": PreprocessConfig.to_dict() + {"preset_defaulted": bool},
     "source": {...}, "images_list": [[path, label], ...], "padded": [...], "dropped": [...],
     "skipped": [{"file": ..., "reason": ...}], "checksums": {"algorithm": "crc32", "files": [...]}}
"""
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field

import numpy as np

from . import format as fmt
from ._version import __version__
from .errors import ConfigError, ManifestError
from .preprocess import PreprocessConfig

#: the manifest's file name, beside the batch files
MANIFEST_NAME = "manifest.json"
#: present in a pack folder only while a pack is being swapped in (see :mod:`int8batch.packing.writer`)
INCOMPLETE_MARKER = ".int8batch-incomplete"
#: ``int8batch inspect --show``'s grid of a pack, written inside it: removed when the pack is replaced
PREVIEW_NAME = "preview.png"
#: the ``format`` tag of every int8batch manifest
FORMAT = "sampleINT8-batch"
#: the manifest version this int8batch writes and reads up to (``manifest_version``)
MANIFEST_VERSION = 1
#: fields whose value is fixed by the batch format
FIXED_FIELDS = {"format": FORMAT, "dtype": "float32", "byte_order": "little", "layout": "NCHW"}
#: the per-image lists, written one entry per line
LONG_LISTS = ("images_list", "padded", "dropped", "skipped")
#: a manifest larger than this is refused before it is read (ImageNet's 1.28 M training images
#: make about 80 MB); ``read_manifest(max_bytes=...)`` overrides it
MAX_MANIFEST_BYTES = 1 << 30
#: files a manifest may claim (the header's k is an int32 in practice)
MAX_MANIFEST_FILES = 2 ** 31 - 1
#: the fields of the recipe a manifest must give for :func:`recipe` (the formula's terms)
RECIPE_FIELDS = ("scale", "mean", "std")

_HEX8 = re.compile(r"[0-9a-f]{8}\Z")


# ------------------------------------------------------------------ building
def build_manifest(dims, prefix, suffix, checksums, *, recipe, preset_defaulted, label_source, classes,
                   unlabelled_value, source, images_list, padded, dropped, skipped):
    """The manifest of a finished pack, as a dict (write it with :func:`manifest_text`).

    Parameters
    ----------
    dims : (N, C, H, W)
    prefix, suffix : str
    checksums : list of str
        CRC-32 of each file, 8 hex digits; their number is the file count.
    recipe : PreprocessConfig
    preset_defaulted : bool
        No recipe was given: the packer chose the preset.
    label_source : str
        ``"folders"``, ``"file"``, ``"idx"`` or ``"none"``.
    classes : list of str or None
    unlabelled_value : float or None
        The label stored for images without one (None when every image has one).
    source : dict
        Where the images came from (kind, paths, shuffle, seed, limit).
    images_list : list of (str, int or None)
        Every packed image with its label, in file order.
    padded : list of int
        Positions in the pack filled by repetition.
    dropped : list of str
        Images left over after the last full file.
    skipped : list of (str, str)
        Unreadable images and why.
    """
    n, files = dims[0], len(checksums)
    preprocess = recipe.to_dict()
    preprocess["preset_defaulted"] = bool(preset_defaulted)
    return {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "int8batch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dims": list(dims),
        "files": files,
        "images": files * n,
        "prefix": prefix,
        "suffix": suffix,
        "dtype": FIXED_FIELDS["dtype"],
        "byte_order": FIXED_FIELDS["byte_order"],
        "layout": FIXED_FIELDS["layout"],
        "labels": {"source": label_source, "classes": classes, "unlabelled_value": unlabelled_value},
        "preprocess": preprocess,
        "source": source,
        "images_list": [list(pair) for pair in images_list],
        "padded": padded,
        "dropped": dropped,
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "checksums": {"algorithm": fmt.CHECKSUM_ALGO, "files": list(checksums)},
    }


def manifest_text(manifest, long_lists=LONG_LISTS):
    """The manifest as indented JSON, with its per-image lists one entry per line.

    An indented ``json.dumps`` of 60000 entries goes through the pure-Python
    encoder and costs more than packing MNIST itself, so the ``[name, label]``
    pairs of ``images_list`` are encoded with the C string encoder directly.

    Raises
    ------
    ManifestError
        A value JSON cannot express (NaN, inf); nothing is written then.
    """
    try:
        return _manifest_text(manifest, long_lists)
    except ValueError as exc:   # NaN or inf: never written (the recipe checks refuse them earlier)
        raise ManifestError(f"the manifest would hold a value JSON cannot express ({exc}); nothing written")


def _manifest_text(manifest, long_lists):
    enc = json.encoder.encode_basestring_ascii
    head = {k: v for k, v in manifest.items() if k not in long_lists}
    text = json.dumps(head, indent=1, allow_nan=False)[:-2]
    for key in long_lists:
        if key not in manifest:
            continue
        items = manifest[key]
        if key == "images_list":
            lines = [f"[{enc(n)},{'null' if lab is None else int(lab)}]" for n, lab in items]
        else:
            lines = [json.dumps(v, separators=(",", ":"), allow_nan=False) for v in items]
        body = "[\n  " + ",\n  ".join(lines) + "\n ]" if lines else "[]"
        text += f",\n {json.dumps(key)}: {body}"
    return text + "\n}\n"


def manifest_size_hint(names, extra_entries=0):
    """An estimate of the manifest's size in bytes: ``names`` are the images' relative paths."""
    enc = json.encoder.encode_basestring_ascii
    return 64 * 1024 + sum(len(enc(n)) + 24 for n in names) + 16 * int(extra_entries)


# ------------------------------------------------------------------- reading
def read_manifest(path, max_bytes=None):
    """Read a manifest file: a JSON object, strictly parsed.

    Refused with :class:`ManifestError` naming the path: anything but a
    regular file (a FIFO is never opened for a blocking read), a file over
    ``max_bytes`` (default :data:`MAX_MANIFEST_BYTES`), bytes that are not
    UTF-8 JSON, the non-standard constants ``NaN``/``Infinity`` (a manifest
    never holds them), nesting too deep to parse, and any JSON value that is
    not an object.  A leading UTF-8 byte order mark is accepted.  The
    error's ``reason`` attribute holds what is wrong without the path and
    the advice.

    Returns
    -------
    dict
    """
    path = os.fspath(path)
    limit = MAX_MANIFEST_BYTES if max_bytes is None else int(max_bytes)
    again = "pack again, or delete it to read the batch files as foreign files"
    fd, st = fmt.open_regular(path, "manifest", ManifestError)
    try:
        if st.st_size > limit:
            raise _error(path, f"manifest is {st.st_size} bytes, more than the {limit}-byte limit",
                         "it is not an int8batch manifest, or raise the limit (read_manifest(max_bytes=...))")
        chunks, total = [], 0
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            total += len(block)
            if total > limit:
                raise _error(path, f"manifest grew past the {limit}-byte limit while being read")
            chunks.append(block)
    except OSError as exc:
        raise _error(path, f"cannot read the manifest ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    try:
        man = json.loads(b"".join(chunks).decode("utf-8-sig"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _error(path, f"unreadable manifest ({type(exc).__name__}: {str(exc)[:200]})", again) from None
    if not isinstance(man, dict):
        raise _error(path, f"the manifest is a JSON {_json_type(man)}, not an object", again)
    return man


def read_pack_manifest(folder, max_bytes=None):
    """The manifest of the pack in ``folder`` (:func:`read_manifest`), or None when there is none."""
    path = os.path.join(os.fspath(folder), MANIFEST_NAME)
    if not os.path.lexists(path):
        return None
    return read_manifest(path, max_bytes)


def _error(path, why, hint=None):
    exc = ManifestError(f"{path}: {why}" + (f"; {hint}" if hint else ""), path)
    exc.reason = why
    return exc


def _json_type(v):
    """The JSON name of a parsed value's type: object, array, string, number, boolean or null."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_hex(text):
    try:
        int(text, 16)
    except ValueError:
        return False
    return text.strip() == text and "_" not in text


# ------------------------------------------------------------------ checking
def check_manifest(man, dims, files, prefix="batch", suffix="", path="manifest"):
    """Check a manifest against the batch files it describes; raise :class:`ManifestError` if they disagree.

    Checked: ``files``, ``dims`` and (when present) ``images`` against the
    files; ``format``, ``dtype``, ``byte_order``, ``layout``, ``prefix``,
    ``suffix`` and ``manifest_version``; and the types of the lists a reader
    relies on (``images_list`` one ``[path, label]`` pair per image,
    ``checksums`` one 8-digit hex string per file, ``labels``,
    ``preprocess``).  Checksums themselves are compared only by
    :meth:`BatchSet.verify <int8batch.reader.BatchSet.verify>`.
    """
    n, c, h, w = (int(d) for d in dims)
    images = files * n

    def bad(what):
        return ManifestError(f"{path}: {what}; the folder or the manifest was changed after packing: pack again "
                             "(or open with manifest='ignore' to read the batch files alone)", path)

    if man.get("files") != files or not _is_int(man.get("files")) or man.get("dims") != [n, c, h, w]:
        raise bad(f"manifest says {man.get('files')!r} files of dims {man.get('dims')!r} but the folder holds "
                  f"{files} files of dims {[n, c, h, w]}")
    if "images" in man and (man["images"] != images or not _is_int(man["images"])):
        raise bad(f"manifest says {man['images']!r} images but {files} files of {n} hold {images}")
    version = man.get("manifest_version", MANIFEST_VERSION)
    if not _is_int(version) or version < 1:
        raise bad(f"manifest_version {version!r} is not a version number")
    if version > MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest_version {version} was written by a newer int8batch (this one "
                            f"reads up to {MANIFEST_VERSION}); upgrade int8batch", path)
    for key, want in dict(FIXED_FIELDS, prefix=prefix, suffix=suffix).items():
        if key in man and man[key] != want:
            raise bad(f"manifest {key} is {man[key]!r}, expected {want!r}")
    listing = man.get("images_list")
    if listing is not None:
        if not isinstance(listing, list) or len(listing) != images:
            got = f"{len(listing)} entries" if isinstance(listing, list) else f"a JSON {_json_type(listing)}"
            raise bad(f"manifest images_list is {got}, expected one [path, label] pair per image ({images})")
        for i, e in enumerate(listing):
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                    and (e[1] is None or _is_int(e[1]))):
                raise bad(f"manifest images_list entry {i} is {str(e)[:80]}, expected [path, integer label or null]")
    sums = man.get("checksums")
    if sums is not None:
        hexes = sums.get("files") if isinstance(sums, dict) else None
        if (not isinstance(sums, dict) or sums.get("algorithm") != fmt.CHECKSUM_ALGO or not isinstance(hexes, list)
                or len(hexes) != files or not all(isinstance(x, str) and len(x) == 8 and _is_hex(x) for x in hexes)):
            raise bad(f"manifest checksums are malformed (want algorithm {fmt.CHECKSUM_ALGO!r} and one 8-digit hex "
                      f"string per file, {files})")
    labels_ = man.get("labels")
    if labels_ is not None:
        classes = labels_.get("classes") if isinstance(labels_, dict) else None
        value = labels_.get("unlabelled_value") if isinstance(labels_, dict) else None
        if (not isinstance(labels_, dict) or not (classes is None or (isinstance(classes, list)
                                                                      and all(isinstance(x, str) for x in classes)))
                or not (value is None or _is_number(value))):
            raise bad("manifest labels are malformed (want source, classes: list of names or null, "
                      "unlabelled_value: a number or null)")
    pre = man.get("preprocess")
    if pre is not None:
        ok = isinstance(pre, dict) and _is_number(pre.get("scale", 1.0)) and all(
            isinstance(pre.get(k, [1.0]), list) and pre.get(k, [1.0]) and all(_is_number(v) for v in pre.get(k, [1.0]))
            for k in ("mean", "std"))
        if not ok:
            raise bad("manifest preprocess is malformed (want an object with a number scale and lists of numbers "
                      "mean and std)")
    for key in ("padded", "dropped", "skipped"):
        if key in man and not isinstance(man[key], list):
            raise bad(f"manifest {key} is a JSON {_json_type(man[key])}, expected an array")


def replaceable_manifest(path):
    """Whether the manifest at ``path`` is one a new pack may replace (``pack --force``).

    Returns ``(fields, None)`` for a valid int8batch manifest, ``(None, None)``
    when there is none, else ``(None, why)``.  ``fields`` holds only what
    replacing a pack needs, validated: ``files`` (an int), ``prefix`` and
    ``suffix`` (plain strings), ``dims`` (four positive ints: each old file's
    header and size are checked against them).  Read by :func:`read_manifest` (so bounded by
    :data:`MAX_MANIFEST_BYTES`); a symbolic link or anything else but a
    regular file is refused without being opened.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    try:
        man = read_manifest(path)
    except ManifestError as exc:
        return None, getattr(exc, "reason", None) or str(exc)
    if man.get("format") != FORMAT:
        return None, f"no \"format\": \"{FORMAT}\""
    files, prefix, suffix = man.get("files"), man.get("prefix", "batch"), man.get("suffix", "")
    if type(files) is not int or not 0 <= files <= MAX_MANIFEST_FILES:
        return None, f"\"files\" is {json.dumps(files)[:40]}, not a count of files"
    try:
        fmt.check_name_parts(prefix, suffix, where="the manifest")
    except ConfigError as exc:
        return None, str(exc)
    if len(prefix) > 200 or len(suffix) > 200:
        return None, "\"prefix\" or \"suffix\" is longer than 200 characters, not a file name part"
    dims = man.get("dims")
    if not (isinstance(dims, list) and len(dims) == 4 and all(type(d) is int and d > 0 for d in dims)):
        return None, f"\"dims\" is {json.dumps(dims)[:40]}, not N, C, H, W"
    return {"files": files, "prefix": prefix, "suffix": suffix, "dims": dims}, None


@dataclass
class Audit:
    """What :func:`audit_manifest` found (``inspect`` reports it).

    Attributes
    ----------
    problems, notes : list of str
    checksums : str
        ``"ok"``, ``"mismatch"``, ``"not verified"`` or ``"absent"``.
    recipe : PreprocessConfig or None
        The manifest's recipe when it is valid.
    """

    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    checksums: str = "absent"
    recipe: PreprocessConfig = None


def audit_manifest(man, dims, files, labels=None, file_names=None, checksum=None):
    """Every disagreement between a manifest and its batch files, as findings (never raises).

    Unlike :func:`check_manifest`, which refuses a manifest at the first
    disagreement, this lists them all for a person to read.

    Parameters
    ----------
    man : dict
    dims : (N, C, H, W)
        Of the files.
    files : int
        Number of batch files.
    labels : ndarray, shape (files * N,), optional
        The labels stored in the files, in order; compared with ``images_list``.
    file_names : list of str, optional
        The files' names, for the messages (default ``batch0``, ``batch1``, ...).
    checksum : callable(k) -> int, optional
        The CRC-32 of file ``k``; None: checksums are not verified.
    """
    out = Audit()
    problems = out.problems
    n, c, h, w = dims
    images = files * n
    names = file_names or [fmt.batch_name(k) for k in range(files)]
    for key, want in FIXED_FIELDS.items():
        if key in man and man[key] != want:
            problems.append(f"manifest {key} is {man[key]!r}, expected {want!r}")
    if list(man.get("dims") or []) != [n, c, h, w]:
        problems.append(f"manifest dims {man.get('dims')} but the files hold {[n, c, h, w]}")
    if man.get("files") != files:
        problems.append(f"manifest says {man.get('files')} files but the folder holds {files}")
    if man.get("images") != images:
        problems.append(f"manifest says {man.get('images')} images but the files hold {images}")
    if labels is not None:
        _audit_labels(man, images, n, labels, names, problems)
    _audit_recipe(man, c, out)
    for key in ("padded", "dropped", "skipped"):
        if man.get(key):
            out.notes.append(f"{len(man[key])} image(s) {key} (listed in the manifest)")
    _audit_checksums(man, files, names, checksum, out)
    return out


def _audit_labels(man, images, n, got, names, problems):
    listing = man.get("images_list")
    if listing is None:
        return
    if not isinstance(listing, list) or not all(isinstance(e, list) and len(e) == 2 for e in listing):
        problems.append("manifest images_list is malformed (want [[path, label], ...])")
        return
    if len(listing) != images:
        problems.append(f"manifest images_list has {len(listing)} entries for {images} images")
        return
    want = expected_labels(man)
    got = np.asarray(got, dtype=np.float64)
    bad = np.flatnonzero(~np.isnan(want) & (want != got))
    if bad.size:
        i = int(bad[0])
        problems.append(f"{bad.size} label(s) in the files differ from the manifest's images_list; first: "
                        f"image {i} ({listing[i][0]}) has {got[i]:g} in {names[i // n]}, manifest says {want[i]:g}")


def _audit_recipe(man, c, out):
    if not isinstance(man.get("preprocess"), dict):
        return
    try:
        out.recipe = recipe(man)
    except ManifestError as exc:
        out.problems.append(f"manifest preprocess is not a valid recipe ({exc.reason})")
        return
    if out.recipe.num_channels != c:
        out.problems.append(f"manifest preprocess channels {out.recipe.channels!r} does not fit C={c}")


def _audit_checksums(man, files, names, checksum, out):
    sums = man.get("checksums")
    if not isinstance(sums, dict) or not sums:
        out.checksums = "absent"
        out.notes.append("manifest records no checksums")
        return
    if sums.get("algorithm") != fmt.CHECKSUM_ALGO:
        out.checksums = "absent"
        out.problems.append(f"manifest checksum algorithm {sums.get('algorithm')!r} is not "
                            f"{fmt.CHECKSUM_ALGO!r}; cannot verify")
        return
    recorded = sums.get("files") or []
    if len(recorded) != files:
        out.problems.append(f"manifest has {len(recorded)} checksums for {files} files")
    malformed = [r for r in recorded if not (isinstance(r, str) and _HEX8.match(r))]
    if malformed:
        out.problems.append(f"manifest checksums must be 8 lowercase hex digits; got {malformed[0]!r}")
    if checksum is None:
        out.checksums = "not verified"
        return
    bad = []
    for k, want in enumerate(recorded[:files]):
        got = f"{checksum(k):08x}"
        if not isinstance(want, str) or got != want.lower():
            bad.append(f"{names[k]} (crc32 {got}, manifest {want})")
    if bad:
        out.checksums = "mismatch"
        out.problems.append(f"checksum mismatch in {len(bad)} file(s): {', '.join(bad[:5])}"
                            f"{' ...' if len(bad) > 5 else ''}; the files changed after packing")
    else:
        out.checksums = "ok" if len(recorded) == files and not malformed else "mismatch"


# -------------------------------------------------------------- typed views
def recipe(man, path=None, strict=True):
    """The preprocessing recipe a manifest records, as a :class:`~int8batch.preprocess.PreprocessConfig`.

    Parameters
    ----------
    man : dict or None
        A manifest (None: no manifest).
    path : str, optional
        Named in errors.
    strict : bool
        False returns None instead of raising for a recipe that is not valid.

    Returns
    -------
    PreprocessConfig or None
        None when there is no manifest or it has no ``preprocess`` object.
        Fields the manifest leaves out take :class:`PreprocessConfig`'s
        defaults; :data:`RECIPE_FIELDS` (``scale``, ``mean``, ``std``) must be
        there.

    Raises
    ------
    ManifestError
        (``strict``) A recipe that lacks one of :data:`RECIPE_FIELDS` or that
        :class:`PreprocessConfig` refuses (e.g. a zero scale or std, or a
        mean with another number of values than the channels).
    """
    pre = (man or {}).get("preprocess")
    if not isinstance(pre, dict):
        return None
    where = path or MANIFEST_NAME
    missing = [k for k in RECIPE_FIELDS if k not in pre]
    try:
        if missing:
            raise _error(where, f"manifest preprocess lacks {', '.join(missing)}", "pack again")
        try:
            return PreprocessConfig.from_dict(pre)
        except (ConfigError, TypeError, ValueError) as exc:
            raise _error(where, f"manifest preprocess: {exc}", "pack again") from None
    except ManifestError:
        if strict:
            raise
        return None


@dataclass(frozen=True)
class Labels:
    """The ``labels`` of a manifest.

    Attributes
    ----------
    source : str or None
        ``"folders"``, ``"file"``, ``"idx"`` or ``"none"``; None when the manifest does not say.
    classes : list of str or None
        Class names by label (class folders), else None.
    unlabelled_value : float or None
        The label stored for images without one; None when every image has one.
    """

    source: str = None
    classes: list = None
    unlabelled_value: float = None

    @property
    def labelled(self):
        """False only when the manifest says the images have no labels (``source`` ``"none"``)."""
        return self.source != "none"

    def class_name(self, label):
        """The name of class ``label`` (a float label), or ``""``."""
        classes = self.classes or []
        if classes and float(label).is_integer() and 0 <= int(label) < len(classes):
            return str(classes[int(label)])
        return ""


def labels(man):
    """The :class:`Labels` of a manifest (all None for no manifest or no ``labels`` object)."""
    lab = (man or {}).get("labels")
    if not isinstance(lab, dict):
        return Labels()
    return Labels(lab.get("source"), lab.get("classes"), lab.get("unlabelled_value"))


def pack_naming(man):
    """``(prefix, suffix)`` of the batch files a manifest describes (``("batch", "")`` when it does not say)."""
    man = man or {}
    return man.get("prefix", "batch"), man.get("suffix", "")


def expected_labels(man):
    """The label ``images_list`` gives each image (``unlabelled_value`` for null), float64; NaN where unknown.

    None when the manifest has no ``images_list``.
    """
    listing = (man or {}).get("images_list")
    if listing is None:
        return None
    fallback = labels(man).unlabelled_value
    return np.array([np.nan if (e[1] is None and fallback is None) else (fallback if e[1] is None else e[1])
                     for e in listing], dtype=np.float64)
