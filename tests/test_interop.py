"""Exports to .npy/.npz hold exactly the images a second reader finds in the files."""
import os

import numpy as np
import pytest

from int8batch.cli.main import main
from int8batch.errors import ConfigError
from int8batch.format import write_batch_file
from int8batch.interop import export_numpy
from int8batch.reader import BatchSet
from reference import read_batch_file


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(5)
    for k in range(3):
        write_batch_file(tmp_path / f"batch{k}", rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
                         np.full(4, k, np.float32))
    return tmp_path


def test_npz_and_npy_match_the_files(folder, tmp_path):
    want = np.concatenate([read_batch_file(folder / f"batch{k}")[1] for k in range(3)])
    assert main(["export", str(folder), str(tmp_path / "c.npz"), "--input-name", "input"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["input"], want)
    assert export_numpy(folder, tmp_path / "c.npy", limit=5, first=3) == 5
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), want[3:8])


def test_fewer_images_than_the_limit_are_said(folder, tmp_path, caplog, capsys):
    """Found as a new user: --first 11 --limit 4 on 12 images printed 'wrote 1 images' and nothing else."""
    with caplog.at_level("WARNING", logger="int8batch"):
        assert main(["export", str(folder), str(tmp_path / "x.npy"), "--first", "11", "--limit", "4"]) == 0
    assert "only 1 image(s) from image 11 on (of 12), fewer than --limit 4" in caplog.text
    assert "wrote 1 image to" in capsys.readouterr().out
    assert np.load(tmp_path / "x.npy").shape == (1, 3, 2, 2)


def test_polygraphy_style_feed_is_reusable(folder):
    with BatchSet(folder) as bs:
        feed = bs.as_feed("input", batch_size=6)
        first = [d["input"].copy() for d in feed]
        second = [d["input"] for d in feed]
        assert len(feed) == 2 and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_export_errors(folder, tmp_path):
    with pytest.raises(ConfigError, match="input name"):
        export_numpy(folder, tmp_path / "c.npz")
    with pytest.raises(ConfigError, match=".npy or .npz"):
        export_numpy(folder, tmp_path / "c.bin")


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_failed_export_leaves_the_previous_file_and_no_temporary(folder, tmp_path, monkeypatch, ext):
    import errno

    from int8batch.errors import DiskSpaceError
    dst = tmp_path / "exp"
    dst.mkdir()
    target = dst / f"X{ext}"
    export_numpy(folder, target, input_name="input", limit=4)
    before = target.read_bytes()

    def full_disk(file, *args, **kwargs):   # writes part of the array, then the disk is full
        if isinstance(file, (str, os.PathLike)):
            file = open(file, "wb")
        file.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(DiskSpaceError, match="X"):
        export_numpy(folder, target, input_name="input", force=True)
    assert os.listdir(dst) == [target.name] and target.read_bytes() == before


def test_export_command_does_not_replace_an_existing_file_without_force(folder, tmp_path, capsys):
    out = tmp_path / "mine.npy"
    out.write_text("someone's data\n")
    assert main(["export", str(folder), str(out)]) == 1
    assert "mine.npy already exists; choose another OUT or pass --force" in capsys.readouterr().err
    assert out.read_text() == "someone's data\n"
    assert main(["export", str(folder), str(out), "--force"]) == 0
    with BatchSet(folder) as bs:
        np.testing.assert_array_equal(np.load(out), bs.images(0, bs.num_images)[0])


def test_export_never_replaces_a_file_unless_forced(folder, tmp_path):
    """Found by a new user: export_numpy replaced a user's keep.npy without a word (the CLI refused)."""
    import int8batch
    from int8batch.errors import OutputExistsError
    keep = tmp_path / "keep.npy"
    keep.write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        int8batch.export_numpy(folder, keep)
    assert keep.read_bytes() == b"mine"
    n = int8batch.export_numpy(folder, keep, force=True)
    assert np.load(keep).shape[0] == n


def test_the_documented_functions_are_on_the_package():
    import int8batch
    from int8batch.calib.api import calibrate
    from int8batch.calib.evaluate import evaluate
    assert int8batch.calibrate is calibrate and int8batch.evaluate is evaluate


def test_export_names_a_missing_source_first_and_suggests_a_npy_name(tmp_path, capsys):
    """Found as a new user: `export nosuch x.npz` asked for --input-name before saying the folder is missing,
    and `export PACK FOLDER` suggested FOLDER/NAME, a name export then refuses."""
    from int8batch.errors import BatchFormatError
    with pytest.raises(BatchFormatError, match="no such folder"):
        export_numpy(str(tmp_path / "nosuch"), str(tmp_path / "x.npz"))
    (tmp_path / "d").mkdir()
    assert main(["export", str(tmp_path / "nosuch"), str(tmp_path / "d")]) != 0
    assert "nosuch: no such folder" in capsys.readouterr().err      # the source first, whatever OUT is
    assert main(["export", str(tmp_path), str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err
    assert f"e.g. {tmp_path / 'd' / 'calibration.npy'}" in err
