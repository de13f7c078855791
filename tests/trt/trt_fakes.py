"""A minimal stand-in for the ``tensorrt`` module and a CPU feeder, for tests without TensorRT or a GPU.

The fake builder drives a calibrator exactly through the documented sequence
(trt-int8-reference.md, 2.1): read the cache; if it does not match this
version and algorithm, get_batch_size once, get_batch until None (reading the
served pointers as host memory), then write_calibration_cache once.
"""
import ctypes
import types

import numpy as np


def fake_tensorrt(version="10.3.0", with_int8=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32 = "float32"

    if with_int8:
        class IInt8Calibrator:
            def __init__(self):
                self.base_init_called = True

        names = {"IInt8EntropyCalibrator2": "EntropyCalibration2", "IInt8EntropyCalibrator": "EntropyCalibration",
                 "IInt8MinMaxCalibrator": "MinMaxCalibration", "IInt8LegacyCalibrator": "LegacyCalibration"}
        for cls_name, algo in names.items():
            setattr(trt, cls_name, type(cls_name, (IInt8Calibrator,), {"algo_name": algo}))
        trt.IInt8Calibrator = IInt8Calibrator
        trt.BuilderFlag = types.SimpleNamespace(INT8="INT8", FP16="FP16")
    else:
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    _add_builder(trt)
    return trt


def header_for(trt, algo_cls_name):
    major, minor, patch = (int(x) for x in trt.__version__.split(".")[:3])
    number = (major * 10000 if major >= 10 else major * 1000) + minor * 100 + patch
    return f"TRT-{number}-{getattr(trt, algo_cls_name).algo_name}"


def drive(calibrator, input_name, batch_bytes, table=b"data: 3c010204\n"):
    """Run the builder's calibration call sequence; return (served host arrays, used_cache)."""
    module = calibrator._trt
    base = next(c for c in type(calibrator).__mro__ if "algo_name" in c.__dict__)
    expected = header_for(module, base.__name__)
    cache = calibrator.read_calibration_cache()
    if cache is not None and bytes(cache).split(b"\n", 1)[0].decode() == expected:
        return [], True          # a matching cache: TensorRT skips calibration
    calibrator.get_batch_size()
    served = []
    while True:
        ptrs = calibrator.get_batch([input_name])
        if not ptrs:
            break
        assert len(ptrs) == 1
        served.append(np.frombuffer(ctypes.string_at(int(ptrs[0]), batch_bytes), dtype=np.float32).copy())
    calibrator.write_calibration_cache(memoryview((expected + "\n").encode() + table))
    return served, False


class HostFeeder:
    """CPU feeder with the DeviceFeeder protocol: "device" pointers are host addresses."""

    def __init__(self, batchset, batch_size=None, first=0, max_batches=None, **unused):
        self._it = batchset.batches(batch_size or batchset.per_file, first, max_batches)
        self._hold = None
        self.closed = False

    def next_batch(self):
        b = next(self._it, None)
        if b is None:
            return None
        self._hold = np.ascontiguousarray(b.data).copy()
        return types.SimpleNamespace(ptr=self._hold.ctypes.data, shape=self._hold.shape)

    def close(self):
        self.closed = True


def _add_builder(trt):
    """Builder / network / parser / config enough for build_int8_engine, reading the ONNX input with onnx."""

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, severity=2):
            self.severity = severity

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape, self.dtype = name, shape, trt.float32

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            import onnx
            try:
                model = onnx.load(path)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"cannot load: {exc}")
                return False
            inits = {i.name for i in model.graph.initializer}
            for vi in model.graph.input:
                if vi.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims))
            return True

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.calibration_profile, self.int8_calibrator = set(), [], None, None

        def set_flag(self, flag):
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pool = (pool, size)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_calibration_profile(self, p):
            self.calibration_profile = p

    class Builder:
        last = None

        def __init__(self, logger):
            Builder.last = self

        def create_network(self, flags=0):
            return Network()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            cal = config.int8_calibrator
            assert "INT8" in config.flags and cal is not None
            inp = network.get_input(0)
            shape = config.calibration_profile.shapes[2] if config.calibration_profile else inp.shape
            self.served, self.used_cache = drive(cal, inp.name, int(np.prod(shape)) * 4)
            return b"FAKE-ENGINE:" + inp.name.encode()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
