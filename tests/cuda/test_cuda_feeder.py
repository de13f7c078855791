"""DeviceFeeder on a real GPU: byte-identical delivery for every strategy and batch layout."""
import numpy as np
import pytest

from gpu_util import device_bytes, make_batches, skip_no_gpu

pytestmark = [pytest.mark.gpu, skip_no_gpu]

N, C, H, W = 16, 3, 40, 40      # 307 KB per file: not a whole number of pages
FILES = 5


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_batches")
    images, labels = make_batches(folder, FILES, N, C, H, W, seed=3)
    return folder, images, labels


@pytest.mark.parametrize("strategy", ["auto", "registered", "pinned", "pageable"])
@pytest.mark.parametrize("batch_size", [N, 4, 3, 2 * N, 24])   # equal, divisor, non-divisor, larger, straddling
def test_byte_identical_on_device(batch_dir, strategy, batch_size):
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, images, labels = batch_dir
    ref = images.view(np.uint8).reshape(images.shape[0], -1)
    with BatchSet(folder) as bs, DeviceFeeder(bs, batch_size, strategy=strategy) as feeder:
        assert feeder.strategy == ("registered" if strategy == "auto" else strategy)
        count = 0
        for pass_ in range(2):                       # second pass reuses registrations
            for i, b in enumerate(feeder):
                got = device_bytes(b.ptr, b.nbytes)
                want = ref[i * batch_size:(i + 1) * batch_size].reshape(-1)
                assert np.array_equal(got, want), f"batch {i} (pass {pass_}) differs on the device"
                np.testing.assert_array_equal(b.labels, labels[i * batch_size:(i + 1) * batch_size])
                count += 1
        assert count == 2 * (FILES * N // batch_size)


def test_registered_mapping_is_pinned_then_released(batch_dir):
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.buffers import host_address
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, _, _ = batch_dir
    with BatchSet(folder) as bs:
        base = host_address(bs.file_buffer(0))
        assert cu.memory_type(base) == "unregistered"
        with DeviceFeeder(bs, N, strategy="registered") as feeder:
            feeder.next_batch()
            assert feeder.wait_registered(30)
            assert 0 in feeder.registered_files
            assert cu.memory_type(base) == "host"
        assert cu.memory_type(base) == "unregistered"


@pytest.mark.parametrize("strategy", ["registered", "pinned"])
def test_keyboard_interrupt_releases_memory(tmp_path, strategy):
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.buffers import host_address
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    make_batches(tmp_path, 4, 64, 3, 64, 64, seed=5)      # 3 MB per batch
    with BatchSet(tmp_path) as bs:
        cu.ensure_context()
        cu.device_synchronize()
        free_before, _ = cu.mem_get_info()
        with pytest.raises(KeyboardInterrupt):
            with DeviceFeeder(bs, 64, strategy=strategy) as feeder:
                free_during, _ = cu.mem_get_info()
                assert free_during <= free_before - 2 * feeder.nbytes
                for i, _ in enumerate(feeder):
                    if i == 1:
                        raise KeyboardInterrupt
        assert feeder.closed and feeder.registered_files == []
        free_after, _ = cu.mem_get_info()
        assert free_after >= free_before - (1 << 20)
        for k in range(bs.num_files):
            assert cu.memory_type(host_address(bs.file_buffer(k))) == "unregistered"


def test_cuda_error_names_the_call():
    from int8batch.cuda import runtime as cu
    from int8batch.errors import CudaError

    cu.ensure_context()
    with pytest.raises(CudaError) as info:
        cu.host_unregister(0x1000)          # never registered
    assert info.value.name.startswith("cudaError")
    assert "cudaHostUnregister" in str(info.value)
