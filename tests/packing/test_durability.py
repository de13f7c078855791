"""Output durability of ``pack``: faults at every write step, kill -9, two writers, hostile old manifests.

After any failure ``OUT`` must hold exactly the previous pack (byte for byte) or,
once the interruption is recovered, exactly the new one; never a mix, never a
leftover temporary.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import int8batch
from faultfs import FaultLayer
from int8batch import _atomic
from int8batch.errors import DiskSpaceError, Int8BatchError, OutputExistsError, OutputLockedError
from int8batch.manifest import INCOMPLETE_MARKER, MAX_MANIFEST_BYTES
from int8batch.packing import writer

MARKER = INCOMPLETE_MARKER


def _write_idx(path, arr, magic_dims):
    head = bytes([0, 0, 8, magic_dims]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    """400 random 28x28 MNIST-like images with labels (uncompressed: fast to open)."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(12)
    _write_idx(d / "t-images-idx3-ubyte", rng.integers(0, 256, (400, 28, 28)), 3)
    _write_idx(d / "t-labels-idx1-ubyte", rng.integers(0, 10, 400), 1)
    return d / "t-images-idx3-ubyte"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import cv2
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(4)
    for i in range(6):
        p = d / ("ab"[i % 2]) / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (12, 14, 3), dtype=np.uint8))
    return d


def snapshot(folder):
    """Every entry of ``folder`` (hidden ones included): file bytes, or None for a folder."""
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        out[name] = None if os.path.isdir(p) else open(p, "rb").read()
    return out


def restore(folder, snap):
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for name, data in snap.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def same_pack(a, b):
    """Equal snapshots, ignoring the manifest's creation time."""
    def norm(s):
        s = dict(s)
        if "manifest.json" in s:
            m = json.loads(s["manifest.json"])
            m.pop("created", None)
            s["manifest.json"] = m
        return s
    return norm(a) == norm(b)


def visible(snap):
    return {k: v for k, v in snap.items() if not k.startswith(".")}


# ------------------------------------------------------------------ a full disk at every step
CASES = {
    # source fixture, old pack, new pack (fewer files: stale ones go; more files: new names appear)
    "idx-fewer": ("idx", dict(batch_size=100, limit=300), dict(batch_size=100, limit=200, shuffle=True, seed=1)),
    "idx-more": ("idx", dict(batch_size=100, limit=200), dict(batch_size=100, limit=400, shuffle=True, seed=2)),
    "folder-mmap": ("photos", dict(batch_size=2, limit=4), dict(batch_size=2, shuffle=True, seed=3)),
}


def _pack(src, out, kw, **more):
    if src.name.endswith("idx3-ubyte"):
        return int8batch.pack(src, out, **kw, **more)
    return int8batch.pack(src, out, preset="imagenet-torch", size=8, resize_size=10, **kw, **more)


@pytest.mark.parametrize("persistent", [False, True], ids=["one-fault", "disk-stays-full"])
@pytest.mark.parametrize("case", list(CASES))
def test_fault_at_every_write_step_leaves_old_or_new_pack(case, persistent, request, tmp_path, monkeypatch):
    fixture, old_kw, new_kw = CASES[case]
    src = request.getfixturevalue(fixture)
    out = tmp_path / "o"
    _pack(src, out, old_kw)
    old = snapshot(out)
    assert not [n for n in old if n.startswith(".")]
    faults = FaultLayer(monkeypatch, out)
    faults.count()
    _pack(src, out, new_kw, force=True)
    new = snapshot(out)
    calls = list(faults.calls)
    # the commit point: the new manifest's rename out of the staging folder
    commit = next(i for i, (op, p) in enumerate(calls) if op == "replace" and p.endswith(os.sep + "manifest.json")
                  and os.path.basename(os.path.dirname(p)).startswith(".int8batch-tmp-"))
    assert len(calls) > 20 and not same_pack(old, new)
    for k in range(len(calls)):
        restore(out, old)
        faults.arm(k, persistent)
        try:
            _pack(src, out, new_kw, force=True)
            raised = False
        except Int8BatchError:   # typed: the command line prints one line, no traceback
            raised = True
        assert faults.failed, f"step {k} ({calls[k]}) was not reached"
        faults.disarm()
        # a failure up to the commit point keeps the old pack; a later one (or a fault the
        # writer can live with, such as the lock file's note of its holder) gives the new one
        want_old = raised and k <= commit
        now = snapshot(out)
        if MARKER not in now:
            # readable right away, without any recovery: exactly the old pack or exactly the new one
            assert visible(now) == old if want_old else same_pack(visible(now), new), (k, calls[k])
        else:
            assert persistent or k > commit, (k, calls[k])   # a single fault mid-swap is undone at once
        if not persistent and calls[k][0] not in ("unlink", "remove", "rmdir"):
            # the failed pack cleaned up after itself: no temporary (e.g. of a failed reservation), no lock
            assert not [n for n in now if n.startswith(".")], (k, calls[k], sorted(now))
        writer.recover(out)
        now = snapshot(out)   # and nothing else: no temporary, no journal, no marker, no lock file
        assert now == old if want_old else same_pack(now, new), (k, calls[k], sorted(now))


def test_space_check_counts_manifest_and_block_rounding(idx, tmp_path, monkeypatch):
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    exact = 3 * int8batch.format.file_size(100, 1, 28, 28)   # 313616 bytes each: not a multiple of 4096
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**12, 0, exact + 100))
    with pytest.raises(DiskSpaceError, match="manifest and block rounding"):
        int8batch.pack(idx, tmp_path / "o", batch_size=100, limit=300)
    assert not (tmp_path / "o").exists()          # the folder the failed pack made is gone again


def test_force_pack_needs_room_for_both_packs(idx, tmp_path, monkeypatch):
    from collections import namedtuple
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=300)
    old = snapshot(out)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**12, 0, 500_000))
    with pytest.raises(DiskSpaceError, match="previous pack stays"):
        int8batch.pack(idx, out, batch_size=100, limit=300, force=True)
    assert snapshot(out) == old


# ------------------------------------------------------------------ kill -9
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    sys.path.insert(0, {package_root!r})   # the int8batch the test imported (tree or installed): same data path
    import int8batch
    from faultfs import FaultLayer
    from _pytest.monkeypatch import MonkeyPatch
    out, kill_at = {out!r}, int(sys.argv[1])
    layer = FaultLayer(MonkeyPatch(), out)
    layer.count()
    for name in list(layer._real):
        wrapped = getattr(os, name)
        def hook(*a, _w=wrapped, **k):
            before = len(layer.calls)
            r = _w(*a, **k)
            if kill_at >= 0 and len(layer.calls) > kill_at:
                # right after the step that reached kill_at (some steps are counted where no hook
                # sits, e.g. in a helper thread's own path): no cleanup runs
                os.kill(os.getpid(), signal.SIGKILL)
            return r
        setattr(os, name, hook)
    int8batch.pack("mnist", out, batch_size=100, limit=1000, shuffle=True, seed=7, force=True)
    print(json.dumps(layer.calls))
""")


@pytest.mark.slow
def test_kill_9_at_seeded_points_then_recovery(tmp_path):
    out = tmp_path / "o"
    int8batch.pack("mnist", out, batch_size=100, limit=1000)
    old = snapshot(out)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), out=str(out),
                                   package_root=os.path.dirname(os.path.dirname(os.path.abspath(int8batch.__file__)))))

    def run(kill_at):
        return subprocess.run([sys.executable, str(script), str(kill_at)], capture_output=True, text=True,
                              timeout=120)

    done = run(-1)   # no kill: the steps of a pack, and the new pack
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout.splitlines()[-1])
    new = snapshot(out)
    swap = [i for i, (op, p) in enumerate(calls) if op == "replace" and ".int8batch-tmp-" not in p]
    commit = max(i for i, (op, p) in enumerate(calls) if op == "replace" and p.endswith("/manifest.json"))
    rng = np.random.default_rng(2024)
    # a few seeded points anywhere, plus: mid-swap (old files half moved aside), just before and at the commit
    points = sorted(set(rng.integers(0, len(calls), 4).tolist()) | {swap[len(swap) // 2], commit - 1, commit})
    for kill_at in points:
        restore(out, old)
        child = run(kill_at)
        assert child.returncode == -signal.SIGKILL, (kill_at, child.stderr)
        now = snapshot(out)
        assert MARKER in now or same_pack(visible(now), old) or same_pack(visible(now), new), kill_at
        # the next pack into OUT recognises the leftovers; here: recover, then a recovery pack
        writer.recover(out)
        now = snapshot(out)
        assert now == old or same_pack(now, new), (kill_at, sorted(now))
        int8batch.pack("mnist", out, batch_size=100, limit=1000, shuffle=True, seed=7, force=True)
        assert same_pack(snapshot(out), new)


def test_next_pack_removes_leftovers_of_dead_runs(idx, tmp_path, caplog):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200)
    dead = _dead_pid()
    host = _atomic._HOST
    stage = out / f".int8batch-tmp-{host}-{dead}-0badf00d"
    stage.mkdir()
    (stage / "batch0").write_bytes(b"x" * 5000)
    (out / f".int8batch-tmp-{host}-{dead}-12345678.manifest.json").write_text("{")
    (out / f".batch1.tmp{dead}").write_bytes(b"y" * 300)            # an older version's temporary
    live = out / f".int8batch-tmp-{host}-{os.getppid()}-abcdef01.x"   # a live process's: kept
    live.write_text("")
    with caplog.at_level("WARNING"):
        with pytest.raises(OutputExistsError):   # leftovers go even when the pack itself is refused
            int8batch.pack(idx, out, batch_size=100, limit=200)
    assert "removed 3 leftover(s)" in caplog.text
    assert sorted(os.listdir(out)) == sorted(["batch0", "batch1", "manifest.json", live.name])


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ two writers
HOLDER = "import sys, time; from int8batch._lock import FolderLock; l = FolderLock(sys.argv[1], 'pack').acquire(); " \
         "print('held', flush=True); time.sleep(60)"


def test_second_writer_gets_a_lock_error_naming_folder_and_holder(idx, tmp_path):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200)
    old = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for force in (False, True):
            with pytest.raises(OutputLockedError) as err:
                int8batch.pack(idx, out, batch_size=100, limit=300, force=force)
            assert err.value.pid == holder.pid and str(out) in str(err.value)
            assert f"process {holder.pid}" in str(err.value)
        held = snapshot(out)
        assert visible(held) == old and set(held) - set(old) == {".int8batch.lock"}
    finally:
        holder.kill()
        holder.wait()
    # kill -9 of the holder frees the lock: the next pack proceeds
    int8batch.pack(idx, out, batch_size=100, limit=300, force=True)
    assert sorted(os.listdir(out)) == ["batch0", "batch1", "batch2", "manifest.json"]


def test_two_packs_at_once_one_wins_the_other_is_refused(idx, tmp_path, monkeypatch):
    """The second pack starts while the first is mid-pack (held at its first batch file)."""
    import threading
    out = tmp_path / "o"
    gate, go = threading.Event(), threading.Event()
    real = writer.PackWriter.open_file

    def slow_open(self, k, buffered=False):
        if threading.current_thread().name == "first" and k == 0:
            gate.set()
            go.wait(30)
        return real(self, k, buffered)

    monkeypatch.setattr(writer.PackWriter, "open_file", slow_open)
    result = {}
    t = threading.Thread(name="first", target=lambda: result.setdefault(
        "first", int8batch.pack(idx, out, batch_size=100, limit=200)))
    t.start()
    assert gate.wait(30)
    with pytest.raises(OutputLockedError, match=f"process {os.getpid()}"):
        int8batch.pack(idx, out, batch_size=100, limit=300, shuffle=True, seed=1)
    go.set()
    t.join(30)
    assert result["first"].files == 2
    with int8batch.BatchSet(out, manifest="require") as bs:
        assert bs.num_files == 2


# ------------------------------------------------------------------ the old manifest is not trusted
@pytest.mark.parametrize("manifest", [
    {"files": 300000000},
    {"files": "2"}, {"files": 2.0}, {"files": True}, {"files": -1}, {"files": None},
    {"prefix": 5}, {"prefix": "../x"}, {"suffix": ["a"]}, {"format": "other"},
    [1, 2], "text", 7,
], ids=lambda m: json.dumps(m)[:30])
def test_force_refuses_an_untrustworthy_old_manifest_quickly(idx, tmp_path, manifest):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200)
    m = json.loads((out / "manifest.json").read_text())
    if isinstance(manifest, dict):
        m.update(manifest)
        if manifest.get("format") is None and "format" in manifest:
            m.pop("format")
    else:
        m = manifest
    (out / "manifest.json").write_text(json.dumps(m))
    before = snapshot(out)
    t0 = time.perf_counter()
    with pytest.raises(OutputExistsError, match="manifest"):
        int8batch.pack(idx, out, batch_size=100, limit=300, force=True)
    assert time.perf_counter() - t0 < 5
    assert snapshot(out) == before


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"", None], ids=["json", "utf8", "empty", "huge"])
def test_force_refuses_an_unreadable_old_manifest(idx, tmp_path, content):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200)
    man = out / "manifest.json"
    if content is None:   # sparse: over the size cap without using the disk
        with open(man, "r+b") as f:
            f.truncate(MAX_MANIFEST_BYTES + 1)
    else:
        man.write_bytes(content)
    before = {n: os.path.getsize(out / n) for n in os.listdir(out)}
    with pytest.raises(OutputExistsError, match="not a valid int8batch manifest"):
        int8batch.pack(idx, out, batch_size=100, limit=300, force=True)
    assert {n: os.path.getsize(out / n) for n in os.listdir(out)} == before


def test_old_pack_with_another_prefix_is_replaced_whole(idx, tmp_path):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200, prefix="img", suffix=".bin")
    int8batch.pack(idx, out, batch_size=100, limit=300, force=True)
    assert sorted(os.listdir(out)) == ["batch0", "batch1", "batch2", "manifest.json"]


# ------------------------------------------------------------------ guarantee (h), writer side
def test_reader_of_the_old_pack_keeps_its_bytes_while_force_replaces_it(idx, tmp_path):
    out = tmp_path / "o"
    int8batch.pack(idx, out, batch_size=100, limit=200)
    with int8batch.BatchSet(out) as bs:
        before = bs.file_arrays(1)[0].copy()
        inode = os.stat(out / "batch1").st_ino
        int8batch.pack(idx, out, batch_size=100, limit=200, shuffle=True, seed=9, force=True)
        assert os.stat(out / "batch1").st_ino != inode   # a new file, never rewritten in place
        np.testing.assert_array_equal(bs.file_arrays(1)[0], before)
    with int8batch.BatchSet(out) as bs:
        assert not np.array_equal(bs.file_arrays(1)[0], before)


def test_force_refuses_files_the_old_manifest_does_not_describe(tmp_path):
    """Found by a new user: foreign batch0..2 (N=50) beside a manifest copied from a 3-file pack of N=100 were
    replaced by --force; each file's header and size must match the manifest's dims."""
    a, b = tmp_path / "a", tmp_path / "b"
    int8batch.pack("mnist-test", a, batch_size=100, limit=300)
    int8batch.pack("mnist-test", b, batch_size=50, limit=150)
    (b / "manifest.json").write_bytes((a / "manifest.json").read_bytes())
    before = snapshot(b)
    with pytest.raises(OutputExistsError, match=r"does not describe batch0 \(its header says N,C,H,W = "
                                                 r"\(50, 1, 28, 28\), the manifest \(100, 1, 28, 28\)\)"):
        int8batch.pack("mnist-test", b, limit=200, force=True)
    assert snapshot(b) == before
