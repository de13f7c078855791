import os
import sys

# The tests' helper modules are imported by name from every test folder: the NumPy twins
# (reference.py, calib/reference_calib.py), the fault layer (faultfs.py), the model builders
# (zoo_models.py, onnx/qdq_models.py), the CUDA and TensorRT fakes (cuda/fake_cudart.py,
# cuda/gpu_util.py, trt/trt_fakes.py) and the runner's synthetic set (runner/imagenet_data.py).
# Helper module names are unique across these folders.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in ("", "calib", "cuda", "onnx", "runner", "trt"):
    _path = os.path.join(_HERE, _folder) if _folder else _HERE
    if _path not in sys.path:
        sys.path.insert(0, _path)

# device "auto" means the CPU in the test suite, also on a machine with onnxruntime-gpu and a GPU: the
# GPU tests (tests/cuda, marked gpu) ask for device="cuda" explicitly.
os.environ.setdefault("INT8BATCH_DEVICE", "cpu")
