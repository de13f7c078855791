"""Atomic writes of a set of files (:class:`StagedSet`, :func:`atomic_output_set`), e.g. a pack's
batch files and manifest or calibrate's artefacts, in folder ``F``:

1. every new file is written completely into a staging folder
   ``F/.int8batch-tmp-<token>/`` under its final name;
2. commit: a journal ``F/.int8batch-journal-<token>.json`` records the new
   names and the old names about to be moved aside, each with its inode,
   the commit name and the marker; it is written atomically and fsynced.
   From here on the swap can be finished or undone from the disk alone;
3. the marker (packs: ``.int8batch-incomplete``) is created: readers refuse
   the folder while it exists;
4. every old file that is replaced or removed (the caller's ``replace`` names
   first: a pack's manifest) is renamed into ``F/.int8batch-old-<token>/``;
5. every new file is renamed into ``F``, the commit name last: that rename
   is the commit point;
6. the marker, the old files, the staging folder and the journal are removed.

Every step is a rename of a complete file within one file system, so each
name always holds a complete old file or a complete new one, and between
steps 3 and 6 the marker says the folder is mid-swap.  A failure during steps
3-5 undoes the swap at once (new files back into staging, old files back in
place) and raises a typed error.  After a crash (kill -9, power cut) the
journal remains, and :func:`clean_leftovers` (which every pack runs first)
finishes the swap if the commit rename had happened (the commit file has left
staging and the final name holds its inode) and undoes it otherwise; a set
without a commit name is always finished (all its new files were complete
before the journal was written).  Recovery only moves or deletes a file whose
inode the journal recorded.

One file at a time, the temporaries' names and who may remove them: :mod:`int8batch._atomic`.
"""
import json
import logging
import os
import secrets
import stat
from contextlib import contextmanager

from ._atomic import (JOURNAL_TAG, MAX_JOURNAL_BYTES, OLD_TAG, TMP_TAG, _HOST, _NAME, _finished_tokens, _ident,
                      _lstat, _makedirs, _plain_name, _remove_tree, _stale, _tokens_lock, _unlink_missing_ok,
                      _write_marker, fsync_dir, pid_alive, unlink_quietly, write_bytes_atomic, write_error)
from .errors import Int8BatchError, OutputExistsError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- a set of files
class StagedSet:
    """New files written into a hidden staging folder inside ``folder``, swapped in together.

    See the module docstring for the protocol.  Write each file to
    :meth:`path` (any writer: plain, atomic, ``onnx.save`` with external
    data), then call :meth:`commit` once, or :meth:`discard`.

    Parameters
    ----------
    folder : str or PathLike
        Where the files go; created if needed.
    lock_held : bool
        The caller holds ``folder``'s :class:`int8batch._lock.FolderLock`:
        leftovers of other hosts count as stale too.
    durable : bool
        fsync the staging folder before the journal (the caller fsyncs the
        files it writes).
    clean : bool
        Run :func:`clean_leftovers` first (recover interrupted swaps, remove
        dead processes' temporaries).
    """

    def __init__(self, folder, *, lock_held=False, durable=False, clean=True):
        self.folder = os.fspath(folder)
        _makedirs(self.folder)
        if clean:
            clean_leftovers(self.folder, lock_held=lock_held)
        self.token = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        self.staging = os.path.join(self.folder, TMP_TAG + self.token)
        self.backup = os.path.join(self.folder, OLD_TAG + self.token)
        self.journal_path = os.path.join(self.folder, f"{JOURNAL_TAG}{self.token}.json")
        self.durable = durable
        self.committed = None   # final paths, once committed
        self._over = False
        try:
            os.mkdir(self.staging)
        except OSError as exc:
            self._end()
            raise write_error(exc, self.folder, "creating a staging folder") from exc

    def path(self, name):
        """Where to write the file that will be ``folder/<basename of name>``."""
        base = os.path.basename(os.fspath(name))
        if not _plain_name(base):
            raise ValueError(f"not a plain file name: {name!r}")
        return os.path.join(self.staging, base)

    def commit(self, replace=(), marker=None, commit_name=None):
        """Swap every staged file in; move ``replace`` names (old files) out.

        ``replace`` names that exist and are not in the new set are removed;
        ``marker`` (a file name) exists in the folder while the swap runs;
        ``commit_name`` (a staged file, moved last) is the commit point.
        Returns the final paths.  On failure the swap is undone (or, if even
        that fails, left to the next :func:`clean_leftovers`) and a typed
        error is raised.
        """
        if self._over:
            raise RuntimeError("this staged set is already committed or discarded")
        try:
            new = sorted(os.listdir(self.staging))
        except OSError as exc:
            raise write_error(exc, self.staging, "listing the staged files") from exc
        if commit_name is not None:
            if commit_name not in new:
                raise ValueError(f"commit file {commit_name!r} was not staged")
            new.remove(commit_name)
            new.append(commit_name)
        old = []
        for name in dict.fromkeys(list(replace) + new):
            if not _plain_name(name):
                raise ValueError(f"not a plain file name: {name!r}")
            st = _lstat(os.path.join(self.folder, name))
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                raise OutputExistsError(f"{os.path.join(self.folder, name)}: is a folder where int8batch writes a "
                                        "file; move it away", os.path.join(self.folder, name))
            old.append([name, _ident(st)])
        journal = {"int8batch_journal": 1, "token": self.token, "pid": os.getpid(),
                   "new": [[n, _ident(_lstat(os.path.join(self.staging, n)))] for n in new],
                   "old": old, "commit": commit_name, "marker": marker,
                   "marker_existed": bool(marker and os.path.lexists(os.path.join(self.folder, marker)))}
        try:
            if self.durable:
                fsync_dir(self.staging)
            write_bytes_atomic(self.journal_path, json.dumps(journal).encode("utf-8"), fsync=True)
            fsync_dir(self.folder)
        except BaseException as exc:
            unlink_quietly(self.journal_path)
            if isinstance(exc, OSError) and not isinstance(exc, Int8BatchError):
                raise write_error(exc, self.folder, "writing the swap journal") from exc
            raise
        try:
            if marker and not journal["marker_existed"]:
                _write_marker(os.path.join(self.folder, marker))
            if old:
                os.mkdir(self.backup)
            for name, _ in old:
                os.replace(os.path.join(self.folder, name), os.path.join(self.backup, name))
            for name, _ in journal["new"]:
                os.replace(os.path.join(self.staging, name), os.path.join(self.folder, name))
        except BaseException as exc:
            try:
                _undo(self.folder, journal)
                how = "the previous files were put back"
            except BaseException as again:  # noqa: BLE001 - anything: the journal stays for the next run
                log.error("%s: could not undo the interrupted swap (%s); the next int8batch run into this folder "
                          "restores it", self.folder, again)
                how = ("the folder is left marked unfinished and the next pack into it restores the previous "
                       "files (or call int8batch.packing.writer.recover)")
            self._end()
            if isinstance(exc, OSError) and not isinstance(exc, Int8BatchError):
                raise write_error(exc, self.folder, f"swapping the new files in ({how})") from exc
            raise
        self._end()
        self.committed = [os.path.join(self.folder, n) for n, _ in journal["new"]]
        _finish(self.folder, journal)
        return self.committed

    def discard(self):
        """Remove the staging folder and everything in it (never raises; failures are logged).

        A swap that failed and could not be undone keeps its journal: then the
        staging folder is left for the next :func:`clean_leftovers`, which needs it.
        """
        if not os.path.lexists(self.journal_path):
            _remove_tree(self.staging)
        self._end()

    def _end(self):
        self._over = True
        with _tokens_lock:
            _finished_tokens.add(self.token)


@contextmanager
def atomic_output_set(folder, stale=(), *, lock_held=False, durable=False):
    """Write several output files so that they appear together or not at all.

    ::

        with atomic_output_set(out, stale=["model.qdq.onnx"]) as s:
            write_trt_cache(s.path("calibration.cache"), ...)
            save_model_atomic(model, s.path("model.qdq.onnx"))
        s.committed   # the final paths

    Every file written under :meth:`StagedSet.path` (and any file a writer
    puts beside it, such as ONNX external data) lands in ``folder`` in one
    swap when the block ends; ``stale`` names the block did not write are
    removed in the same swap (so no old artefact is left beside new ones).
    An exception in the block, or a failed swap, leaves ``folder`` as it was
    and removes the temporaries.
    """
    s = StagedSet(folder, lock_held=lock_held, durable=durable)
    try:
        yield s
        s.commit(replace=stale)
    except BaseException:
        s.discard()
        raise


def refuse_foreign_files(folder, names, ours, what, force=False):
    """Before a writer replaces ``names`` in ``folder``: the ones present, or OutputExistsError.

    ``ours()`` tells whether the folder's files are int8batch's (a marker file
    it wrote beside them, read as valid): None when they are, else the reason
    they are not.  Files of those names that are not ours stop the writer,
    naming them, unless ``force``.
    """
    if folder is None or not os.path.isdir(folder):
        return []
    present = [n for n in names if os.path.lexists(os.path.join(folder, n))]
    if not present or force:
        return present
    why = ours()
    if why is not None:
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise OutputExistsError(f"{folder}: {shown} already there and not from {what} ({why}); choose another "
                                "output folder, move them away, or pass --force to replace them", folder)
    return present


# --------------------------------------------------------------------------- recovery
def clean_leftovers(folder, lock_held=False, legacy=None):
    """Recover interrupted swaps and remove temporaries of int8batch processes that are gone.

    ``legacy`` (a compiled regex whose group ``pid`` is the writer's pid)
    also matches temporaries of older int8batch versions.  Logs one line
    naming what was removed; returns the names.
    """
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    done = []
    for name in names:
        m = _NAME.match(name)
        if m and m.group(1) == "journal" and m.group(5) == "json" and _stale(m, lock_held):
            if _recover_journal(folder, name, m):
                done.append(name)
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    pending = {_NAME.match(n).group(2, 3, 4) for n in names
               if _NAME.match(n) and _NAME.match(n).group(1) == "journal"}
    removed, size = [], 0
    for name in names:
        m = _NAME.match(name)
        if m and m.group(1) in ("tmp", "old") and m.group(2, 3, 4) not in pending and _stale(m, lock_held):
            size += _remove_tree(os.path.join(folder, name))
            removed.append(name)
        elif legacy is not None and lock_held:
            lm = legacy.match(name)
            if lm and not pid_alive(int(lm.group("pid"))):
                size += _remove_tree(os.path.join(folder, name))
                removed.append(name)
    if removed:
        shown = ", ".join(sorted(removed)[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        log.warning("%s: removed %d leftover(s) of interrupted int8batch runs (%.1f MB): %s",
                    folder, len(removed), size / 1e6, shown)
    return done + removed

def _recover_journal(folder, name, m):
    path = os.path.join(folder, name)
    journal = _read_journal(path, "-".join(m.group(2, 3, 4)))
    if journal is None:
        log.warning("%s: not a valid int8batch swap journal; left alone (remove it and the matching "
                    ".int8batch-tmp-/.int8batch-old- entries by hand once you have checked the folder)", path)
        return False
    token = journal["token"]
    staging = os.path.join(folder, TMP_TAG + token)
    commit = journal["commit"]
    new_ids = dict((n, i) for n, i in journal["new"])
    committed = commit is None or (not os.path.lexists(os.path.join(staging, commit))
                                   and _ident(_lstat(os.path.join(folder, commit))) == new_ids[commit])
    try:
        if committed:
            _finish(folder, journal)
        else:
            _undo(folder, journal)
        _remove_tree(staging)
    except OSError as exc:
        log.error("%s: recovering an interrupted swap failed (%s); it is tried again by the next run", folder,
                  exc.strerror or exc)
        return False
    log.warning("%s: an interrupted int8batch write (process %d) was %s", folder, journal["pid"],
                "finished: the new files are in place" if committed
                else "undone: the previous files are back in place")
    return True


def _read_journal(path, token):
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JOURNAL_BYTES:
            return None
        with open(path, "rb") as f:
            j = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None

    def pairs(v):
        return isinstance(v, list) and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _plain_name(p[0])
            and isinstance(p[1], list) and len(p[1]) == 2 and all(type(x) is int for x in p[1]) for p in v)

    if not (isinstance(j, dict) and j.get("int8batch_journal") == 1 and j.get("token") == token
            and type(j.get("pid")) is int and pairs(j.get("new")) and pairs(j.get("old"))
            and (j.get("commit") is None or j.get("commit") in {n for n, _ in j["new"]})
            and (j.get("marker") is None or (isinstance(j["marker"], str) and _plain_name(j["marker"])))
            and isinstance(j.get("marker_existed"), bool)):
        return None
    return j


def _undo(folder, j):
    """Put the old files back, the new ones back into staging; remove the marker and the journal."""
    staging = os.path.join(folder, TMP_TAG + j["token"])
    backup = os.path.join(folder, OLD_TAG + j["token"])
    for name, ident in reversed(j["new"]):
        p = os.path.join(folder, name)
        if _ident(_lstat(p)) == ident:
            if not os.path.isdir(staging):
                os.mkdir(staging)
            os.replace(p, os.path.join(staging, name))
    for name, ident in j["old"]:
        b = os.path.join(backup, name)
        if _ident(_lstat(b)) == ident:
            os.replace(b, os.path.join(folder, name))
    if j["marker"] and not j["marker_existed"]:
        _unlink_missing_ok(os.path.join(folder, j["marker"]))
    _remove_tree(backup)
    _unlink_missing_ok(os.path.join(folder, f"{JOURNAL_TAG}{j['token']}.json"))


def _finish(folder, j):
    """Complete a committed swap: new files in place, old ones gone, marker and journal removed."""
    staging = os.path.join(folder, TMP_TAG + j["token"])
    backup = os.path.join(folder, OLD_TAG + j["token"])
    for name, ident in j["new"]:
        s = os.path.join(staging, name)
        if _ident(_lstat(s)) == ident:
            os.replace(s, os.path.join(folder, name))
    new_names = {n for n, _ in j["new"]}
    for name, ident in j["old"]:
        p = os.path.join(folder, name)
        if name not in new_names and _ident(_lstat(p)) == ident:
            _unlink_missing_ok(p)
    if j["marker"]:   # also one an earlier failed run left: the folder now holds a complete new set
        try:
            _unlink_missing_ok(os.path.join(folder, j["marker"]))
        except OSError as exc:
            raise write_error(exc, os.path.join(folder, j["marker"]),
                              "removing the unfinished marker after the new files were put in place "
                              "(the next int8batch run into this folder removes it)") from exc
    _remove_tree(backup)
    _remove_tree(staging)
    unlink_quietly(os.path.join(folder, f"{JOURNAL_TAG}{j['token']}.json"))

