"""Sets of files swapped in whole (int8batch._staged): faults at every step, crashes, hostile journals."""
import os
import shutil

import numpy as np
import pytest

from int8batch import _atomic, _staged
from int8batch._atomic import write_bytes_atomic


def _listing(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_output_set_appears_whole_and_removes_stale_names(tmp_path):
    out = tmp_path / "out"
    with _staged.atomic_output_set(out) as s:
        for n in ("a.cache", "b.txt", "c.onnx"):
            write_bytes_atomic(s.path(n), b"old " + n.encode())
        (out / "unrelated").write_bytes(b"u")   # not part of the set: never touched
        assert sorted(os.listdir(out)) == sorted(["unrelated", os.path.basename(s.staging)])
    with _staged.atomic_output_set(out, stale=["a.cache", "b.txt", "c.onnx"]) as s:
        write_bytes_atomic(s.path(out / "a.cache"), b"new a")
        with open(s.path("b.txt"), "wb") as f:
            f.write(b"new b")
    assert _listing(out) == {"a.cache": b"new a", "b.txt": b"new b", "unrelated": b"u"}
    assert s.committed == [str(out / "a.cache"), str(out / "b.txt")]


def test_output_set_failure_in_the_block_changes_nothing(tmp_path):
    out = tmp_path / "out"
    with _staged.atomic_output_set(out) as s:
        write_bytes_atomic(s.path("a"), b"1")
        write_bytes_atomic(s.path("b"), b"2")
    before = _listing(out)
    with pytest.raises(ZeroDivisionError):
        with _staged.atomic_output_set(out, stale=["a", "b"]) as s:
            write_bytes_atomic(s.path("a"), b"new")
            1 / 0
    assert _listing(out) == before


def test_output_set_keeps_onnx_external_data_beside_its_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    out = tmp_path / "out"
    with _staged.atomic_output_set(out) as s:
        onnx.save(helper.make_model(g), s.path("m.onnx"), save_as_external_data=True, location="m.onnx.data",
                  size_threshold=0)
    assert sorted(os.listdir(out)) == ["m.onnx", "m.onnx.data"]
    m = onnx.load(str(out / "m.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[0]), numpy_helper.to_array(w))


@pytest.mark.parametrize("persistent", [False, True], ids=["one-fault", "disk-stays-full"])
def test_output_set_fault_at_every_step_leaves_old_or_new_set(tmp_path, monkeypatch, persistent):
    from faultfs import FaultLayer
    from int8batch.errors import Int8BatchError
    out = tmp_path / "out"
    names = ["calibration.cache", "dynamic_range.txt", "calibration.json", "model.qdq.onnx"]

    def write_set(tag, which):
        with _staged.atomic_output_set(out, stale=names) as s:
            for n in which:
                write_bytes_atomic(s.path(n), f"{tag} {n}".encode())

    write_set("old", names)
    old = _listing(out)
    faults = FaultLayer(monkeypatch, out)
    faults.count()
    write_set("new", names[:3])   # the new set has no Q/DQ model: the old one must go with the rest
    new = _listing(out)
    assert new == {n: f"new {n}".encode() for n in names[:3]}
    steps = len(faults.calls)
    for k in range(steps):
        shutil.rmtree(out)
        out.mkdir()
        for n, data in old.items():
            (out / n).write_bytes(data)
        faults.arm(k, persistent)
        try:
            write_set("new", names[:3])
        except Int8BatchError:
            pass
        faults.disarm()
        now = {n: v for n, v in _listing_files(out).items() if not n.startswith(".")}
        if not persistent:
            assert now in (old, new), (k, faults.calls[k] if k < len(faults.calls) else None, sorted(now))
        _staged.clean_leftovers(out)
        assert _listing_files(out) in (old, new) and sorted(os.listdir(out)) in (sorted(old), sorted(new)), k


def _listing_files(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if (folder / n).is_file()}


def test_crash_mid_swap_is_finished_from_the_journal(tmp_path, monkeypatch):
    """A journal left by a dead process: the next set in the folder finishes the swap."""
    out = tmp_path / "out"
    with _staged.atomic_output_set(out) as s:
        write_bytes_atomic(s.path("a"), b"old a")
        write_bytes_atomic(s.path("b"), b"old b")
    real_replace = os.replace
    moved = []

    def crash_after_first_new(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if os.path.dirname(os.fspath(dst)) == str(out) and \
                os.path.basename(os.path.dirname(os.fspath(src))).startswith(".int8batch-tmp-"):
            moved.append(dst)
            raise KeyboardInterrupt   # stands in for the process dying here...

    monkeypatch.setattr(_staged, "_undo", lambda *a: (_ for _ in ()).throw(SystemExit("killed")))  # ...with no undo
    monkeypatch.setattr(os, "replace", crash_after_first_new)
    with pytest.raises(KeyboardInterrupt):
        with _staged.atomic_output_set(out, stale=["a", "b"]) as s:
            write_bytes_atomic(s.path("a"), b"new a")
            write_bytes_atomic(s.path("b"), b"new b")
    monkeypatch.undo()
    assert len(moved) == 1 and any(n.startswith(".int8batch-journal-") for n in os.listdir(out))
    _staged.clean_leftovers(out)
    assert _listing(out) == {"a": b"new a", "b": b"new b"}


def test_a_hostile_journal_is_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_bytes(b"keep")
    token = f"{_atomic._HOST}-999999999-0badf00d"
    (out / f".int8batch-journal-{token}.json").write_text(
        '{"int8batch_journal": 1, "token": "%s", "pid": 1, "new": [["../x", [1, 2]]], "old": [], '
        '"commit": null, "marker": null, "marker_existed": false}' % token)
    _staged.clean_leftovers(out, lock_held=True)
    assert (out / "precious").read_bytes() == b"keep" and len(os.listdir(out)) == 2
