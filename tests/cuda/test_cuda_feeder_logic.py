"""DeviceFeeder pipeline logic on the CPU, over a fake CUDA runtime (runs in CI).

The fake defers every stream copy to the latest legal moment, so these tests
catch ordering bugs (a buffer reused before its copy ran), wrong segments of
batches that straddle files, leaks, and cleanup on KeyboardInterrupt.  The same
properties are checked on a real GPU in test_cuda_feeder.py.
"""
import time

import numpy as np
import pytest

from fake_cudart import FakeCuda
from int8batch import format as fmt
from int8batch.cuda.feeder import DeviceFeeder
from int8batch.errors import ConfigError, CudaError
from int8batch.reader import BatchSet

N, C, H, W = 6, 2, 3, 5
FILES = 4


@pytest.fixture
def batch_dir(tmp_path):
    rng = np.random.default_rng(7)
    images = rng.standard_normal((FILES * N, C, H, W)).astype(np.float32)
    labels = np.arange(FILES * N, dtype=np.float32)
    for k in range(FILES):
        fmt.write_batch_file(tmp_path / fmt.batch_name(k), images[k * N:(k + 1) * N], labels[k * N:(k + 1) * N])
    return tmp_path, images, labels


def _read_device(fake, batch):
    out = np.empty(batch.shape, dtype=np.float32)
    fake.memcpy_dtoh(out.ctypes.data, batch.ptr, batch.nbytes)
    return out


@pytest.mark.parametrize("strategy", ["auto", "registered", "pinned", "pageable"])
@pytest.mark.parametrize("batch_size", [N, 2, 4, 9, 1])
def test_feeder_serves_every_batch(monkeypatch, batch_dir, strategy, batch_size):
    folder, images, labels = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, batch_size, strategy=strategy, copy_threads=3) as feeder:
        want_strategy = "registered" if strategy == "auto" else strategy
        assert feeder.strategy == want_strategy
        got = [(b.index, _read_device(fake, b), b.labels) for b in feeder]
        assert len(got) == len(images) // batch_size == len(feeder)
        for i, (index, data, lab) in enumerate(got):
            assert index == i
            np.testing.assert_array_equal(data, images[i * batch_size:(i + 1) * batch_size])
            np.testing.assert_array_equal(lab, labels[i * batch_size:(i + 1) * batch_size])
    assert fake.live() == (0, 0, 0, 0)


@pytest.mark.parametrize("register_threads", [0, 1, 3])
@pytest.mark.parametrize("batch_size", [N, 4, 9])
def test_registration_threads(monkeypatch, batch_dir, register_threads, batch_size):
    folder, images, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, batch_size, register_threads=register_threads) as feeder:
        for i, b in enumerate(feeder):
            np.testing.assert_array_equal(_read_device(fake, b), images[i * batch_size:(i + 1) * batch_size])
        used = (len(images) // batch_size * batch_size - 1) // N + 1
        feeder.wait_registered()
        assert feeder.registered_files == list(range(used))    # nothing past the last batch's file
    assert fake.live() == (0, 0, 0, 0)


def test_first_and_max_batches(monkeypatch, batch_dir):
    folder, images, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, 4, first=1, max_batches=3) as feeder:
        got = [_read_device(fake, b) for b in feeder]
    assert len(got) == 3
    for i, data in enumerate(got):
        np.testing.assert_array_equal(data, images[(i + 1) * 4:(i + 2) * 4])


def test_window_with_batchstream_skip(monkeypatch, batch_dir):
    """A window from BatchSet.window: BatchStream's skip of 5 batches of 4 (not a multiple of N=6)
    stops at max_batches=2, so the feeder streams batches 2 and 3 (images 8..15)."""
    folder, images, labels = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs:
        w = bs.window(4, 5, 2, skip="batchstream")
        assert (w.skipped, w.count, w.start_image) == (2, 2, 8)
        with DeviceFeeder(bs, window=w) as feeder:
            assert (len(feeder), feeder.batch_size, feeder.first) == (2, 4, 2)
            got = [(b.index, b.start, _read_device(fake, b), b.labels) for b in feeder]
        assert [(i, s) for i, s, _, _ in got] == [(2, 8), (3, 12)]
        for _, start, data, lab in got:
            np.testing.assert_array_equal(data, images[start:start + 4])
            np.testing.assert_array_equal(lab, labels[start:start + 4])
        with pytest.raises(ConfigError, match="first batch"):
            DeviceFeeder(bs, 4, first=-1)
    assert fake.live() == (0, 0, 0, 0)


def test_second_pass_keeps_registrations(monkeypatch, batch_dir):
    folder, images, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, N) as feeder:
        first = [_read_device(fake, b) for b in feeder]
        feeder.wait_registered()
        assert feeder.stats["registered_files"] == FILES
        second = [_read_device(fake, b) for b in feeder]
        assert feeder.stats["registered_files"] == FILES   # nothing registered again
        assert len(fake.registered) == FILES
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert fake.live() == (0, 0, 0, 0)


@pytest.mark.parametrize("register_threads", [0, 1])
def test_register_limit_stages_the_rest(monkeypatch, batch_dir, register_threads):
    folder, images, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs:
        two_files = 2 * (-(-bs.file_buffer(0).size() // 4096) * 4096)
        with DeviceFeeder(bs, N, register_limit=two_files, register_threads=register_threads,
                          stage_chunk_bytes=4096, stage_chunks=2) as feeder:
            for _ in range(2):
                for i, b in enumerate(feeder):
                    np.testing.assert_array_equal(_read_device(fake, b), images[i * N:(i + 1) * N])
                    assert len(fake.registered) <= 2
                feeder.wait_registered()
            assert len(feeder.registered_files) == 2
            assert feeder.stats["staged_bytes"] >= 2 * (FILES - 2) * bs.file_arrays(0)[0].nbytes
    assert fake.live() == (0, 0, 0, 0)


class SlowRegistration(FakeCuda):
    """Every file registration takes ``delay`` seconds (the one-page probe does not)."""

    def __init__(self, delay=0.03, refuse=()):
        super().__init__()
        self.delay, self.refuse, self.calls = delay, set(refuse), 0

    def host_register(self, ptr, nbytes, readonly=False):
        self.calls += 1
        if self.calls > 1:                      # the first call is the probe
            time.sleep(self.delay)
            if self.calls - 2 in self.refuse:
                raise CudaError("refused", name="cudaErrorNotSupported")
        super().host_register(ptr, nbytes, readonly)


@pytest.mark.parametrize("during", [True, False])
@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize("batch_size", [N, 4, 9])
def test_first_pass_with_slow_registration(monkeypatch, batch_dir, depth, batch_size, during):
    folder, images, _ = batch_dir
    fake = SlowRegistration().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, batch_size, depth=depth, stage_chunk_bytes=4096,
                                              stage_chunks=3, copy_threads=3,
                                              register_during_copies=during) as feeder:
        nb = len(feeder)
        first = [_read_device(fake, b) for b in feeder]       # registration is slower than staging
        if during:      # files not reached by the background thread are registered by the planner
            assert feeder.stats["staged_bytes"] == 0
        else:           # registration starts after the pass is planned: everything staged
            assert feeder.stats["staged_bytes"] == nb * feeder.nbytes
        assert feeder.wait_registered(10)
        used = ((nb * batch_size) - 1) // N + 1
        assert feeder.registered_files == list(range(used))   # staged files were registered afterwards
        staged = feeder.stats["staged_bytes"]
        second = [_read_device(fake, b) for b in feeder]
        assert feeder.stats["staged_bytes"] == staged          # second pass: all in place
    for i, (a, b) in enumerate(zip(first, second)):
        np.testing.assert_array_equal(a, images[i * batch_size:(i + 1) * batch_size])
        np.testing.assert_array_equal(b, a)
    assert fake.live() == (0, 0, 0, 0)


def test_file_refused_midway_is_staged(monkeypatch, batch_dir, caplog):
    folder, images, _ = batch_dir
    fake = SlowRegistration(delay=0, refuse={2}).install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, N) as feeder:
        feeder.wait_registered(10)
        for _ in range(2):
            for i, b in enumerate(feeder):
                np.testing.assert_array_equal(_read_device(fake, b), images[i * N:(i + 1) * N])
        assert feeder.stats["fallback_files"] == 1
        assert len(feeder.registered_files) == FILES - 1
    assert "registration refused" in caplog.text
    assert fake.live() == (0, 0, 0, 0)


def test_small_staging_ring_keeps_order(monkeypatch, batch_dir):
    """Many more chunks than the ring holds: each chunk is reused only after its copy ran."""
    folder, images, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, 9, strategy="pinned", stage_chunk_bytes=4096,
                                              stage_chunks=2, copy_threads=4, depth=4) as feeder:
        for i, b in enumerate(feeder):
            np.testing.assert_array_equal(_read_device(fake, b), images[i * 9:(i + 1) * 9])
    assert fake.live() == (0, 0, 0, 0)


def test_auto_falls_back_to_pinned_when_registration_refused(monkeypatch, batch_dir, caplog):
    folder, images, _ = batch_dir
    fake = FakeCuda(refuse_register=True).install(monkeypatch)
    with BatchSet(folder) as bs, DeviceFeeder(bs, 4) as feeder:
        assert feeder.strategy == "pinned"
        got = [_read_device(fake, b) for b in feeder]
    assert "falling back to pinned" in caplog.text
    np.testing.assert_array_equal(np.concatenate(got), images[:len(got) * 4])
    assert fake.live() == (0, 0, 0, 0)


def test_explicit_registered_refused_raises(monkeypatch, batch_dir):
    folder, _, _ = batch_dir
    fake = FakeCuda(refuse_register=True).install(monkeypatch)
    with BatchSet(folder) as bs:
        with pytest.raises(CudaError, match="strategy='pinned'"):
            DeviceFeeder(bs, 4, strategy="registered")
    assert fake.live() == (0, 0, 0, 0)


@pytest.mark.parametrize("strategy", ["registered", "pinned", "pageable"])
def test_keyboard_interrupt_releases_everything(monkeypatch, batch_dir, strategy):
    folder, _, _ = batch_dir
    fake = FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs:
        with pytest.raises(KeyboardInterrupt):
            with DeviceFeeder(bs, 4, strategy=strategy) as feeder:
                for i, _ in enumerate(feeder):
                    if i == 2:
                        raise KeyboardInterrupt
        assert feeder.closed
        assert fake.live() == (0, 0, 0, 0)
        with pytest.raises(ConfigError):
            feeder.next_batch()


def test_bad_arguments(monkeypatch, batch_dir):
    folder, _, _ = batch_dir
    FakeCuda().install(monkeypatch)
    with BatchSet(folder) as bs:
        with pytest.raises(ConfigError, match="strategy"):
            DeviceFeeder(bs, 4, strategy="zero-copy")
        with pytest.raises(ConfigError):
            DeviceFeeder(bs, 0)
        with DeviceFeeder(bs, FILES * N + 1) as feeder:   # larger than the set: no batch at all
            assert feeder.next_batch() is None

