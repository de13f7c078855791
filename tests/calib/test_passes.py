"""calib/passes.py: the host-side logic of the GPU pass, run on the CPU with host stand-ins for the CUDA parts.

The GPU tests (tests/cuda, marked ``gpu``) run the real DevicePass; these run its
sub-batch sizing, its one-shape rule and the weight-rounding moments of the
device collector (through the NumPy twin of its kernel) on every machine, and
check the artefacts against the CPU pass's.
"""
import os

import numpy as np
import onnx
from onnx import numpy_helper

from int8batch.calib import api, passes
from int8batch.calib.collector import _HostKernels
from int8batch.calib.rounding import DeviceMomentCollector
from gram_twin import GramKernels
from int8batch.packing.sources import DATA_DIR

LENET = os.path.join(DATA_DIR, "lenet.onnx")


class _StandInKernels(_HostKernels, GramKernels):
    """The CPU kernels with DeviceKernels' extra methods (the moments through the kernel's twin)."""

    def close(self):
        pass


class _HostDevicePass(passes.DevicePass):
    """DevicePass with the host ONNX Runtime runner, host batches and the CPU kernels."""

    runs = []

    def __init__(self, facts, bs, win, cfg, model):
        self.feeder, self.owned = None, []
        self.kernels = _StandInKernels()
        passes.Pass.__init__(self, facts, bs, win, cfg, model)

    def _runner(self, facts, cfg, label):
        return passes.Pass._runner(self, facts, cfg, label)

    def _run(self, data):
        self.kernels.synchronize()
        type(self).runs.append(len(data))
        return self.runner.run(data)

    def _batches(self):
        for b in self.bs.batches(window=self.win):
            yield b.data


def _weights(path):
    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def test_the_gpu_pass_logic_gives_the_cpu_pass_artefacts(mnist, tmp_path, monkeypatch):
    cpu = api.calibrate(LENET, mnist, tmp_path / "cpu", batch_size=50, max_batches=4, keep_float=0)
    waits = []
    wait0 = DeviceMomentCollector.wait

    def wait(self):
        waits.append(len(self.kernels.launches))
        return wait0(self)
    monkeypatch.setattr(DeviceMomentCollector, "wait", wait)
    monkeypatch.setattr(api, "DevicePass", _HostDevicePass)
    monkeypatch.setattr(api, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(passes, "DEVICE_BUDGET", 7 * 87152 + 1)       # LeNet: 87152 bytes per image
    _HostDevicePass.runs = []
    gpu = api.calibrate(LENET, mnist, tmp_path / "gpu", batch_size=50, max_batches=4, keep_float=0)
    assert gpu.device == "cuda"
    # budget 7 images -> the largest divisor of 50 that fits: 5, every run the same shape, no probe
    assert _HostDevicePass.runs == [5] * 40
    assert len(waits) == 1 and waits[0] > 0      # the moments were summed by the device collector
    assert open(gpu.paths["cache"], "rb").read() == open(cpu.paths["cache"], "rb").read()
    wc, wg = _weights(cpu.paths["qdq"]), _weights(gpu.paths["qdq"])
    assert wc.keys() == wg.keys()
    for name in wc:
        if wc[name].dtype == np.int8:            # the compensated integer weights: the same moments (up to
            # float sums in another order, which move no integer here)
            np.testing.assert_array_equal(wg[name], wc[name], err_msg=name)
        else:
            np.testing.assert_allclose(wg[name], wc[name], rtol=1e-6, atol=1e-7, err_msg=name)
