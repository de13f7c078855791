#!/usr/bin/env python3
"""Train sampleINT8's LeNet on the bundled MNIST and export it as ONNX.

The network is the Caffe LeNet that TensorRT's sampleINT8 calibrates:

    data (N x 1 x 28 x 28) -> conv 20@5x5 -> max-pool 2 -> conv 50@5x5 -> max-pool 2
    -> fc 500 -> ReLU -> fc 10 -> softmax -> prob (N x 10)

Inputs follow the ``mnist`` preset of int8batch: float32 ``pixel / 255``,
NCHW 1 x 28 x 28.  Training reads the bundled gzip IDX files with plain NumPy,
runs on the CPU with a fixed seed and two threads, and takes a few minutes.
The export uses PyTorch's TorchScript-based ONNX exporter (``dynamo=False``,
opset 13), input ``data`` with a dynamic batch dimension, output ``prob``
(softmax included).  ONNX Runtime then checks that the ONNX model matches
PyTorch and measures the test accuracy; the script fails below 99 %.

Usage::

    pip install torch==2.13.0          # tools-only dependency
    python tools/train_lenet.py        # writes int8batch/data/lenet.onnx + lenet.json

torch is a dependency of this tool only, never of the int8batch package.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import struct
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "int8batch", "data")
MNIST = os.path.join(DATA, "mnist")
OPSET = 13
ALLOWED_OPS = {"Conv", "MaxPool", "Flatten", "Reshape", "Gemm", "Relu", "Softmax"}


def read_idx(path: str) -> np.ndarray:
    """Read a gzip IDX file of unsigned bytes into a NumPy array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(prefix: str):
    """Return (images float32 N x 1 x 28 x 28 = pixel/255, labels int64)."""
    images = read_idx(os.path.join(MNIST, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(MNIST, f"{prefix}-labels-idx1-ubyte.gz"))
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


def build_lenet(torch):
    """The Caffe/sampleINT8 LeNet, with the softmax inside the model."""
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5)
            self.pool1 = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(20, 50, 5)
            self.pool2 = nn.MaxPool2d(2, 2)
            self.ip1 = nn.Linear(50 * 4 * 4, 500)
            self.relu1 = nn.ReLU()
            self.ip2 = nn.Linear(500, 10)

        def logits(self, x):
            x = self.pool1(self.conv1(x))
            x = self.pool2(self.conv2(x))
            x = torch.flatten(x, 1)
            return self.ip2(self.relu1(self.ip1(x)))

        def forward(self, x):
            return torch.softmax(self.logits(x), dim=1)

    return LeNet()


def evaluate(torch, model, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Softmax outputs of ``model`` on ``x`` (no grad)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(outs)


def train(torch, model, x, y, epochs: int, batch: int, lr: float, seed: int) -> None:
    """Adam with a step decay in the last epoch; a seeded shuffle each epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        if epoch == epochs - 1 and epochs > 1:
            for group in opt.param_groups:
                group["lr"] = lr * 0.2
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        t0, total = time.perf_counter(), 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)


def export_onnx(torch, model, path: str) -> None:
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no extra packages.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), path, dynamo=False, opset_version=OPSET,
            input_names=["data"], output_names=["prob"],
            dynamic_axes={"data": {0: "N"}, "prob": {0: "N"}},
            do_constant_folding=True,
        )


def tag_onnx(path: str, meta: dict) -> list:
    """Check the graph, record metadata in the model, return the op types."""
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in model.graph.node})
    extra = set(ops) - ALLOWED_OPS
    if extra:
        raise SystemExit(f"unexpected ops in the exported graph: {sorted(extra)}")
    model.doc_string = "sampleINT8 LeNet trained on MNIST by int8batch tools/train_lenet.py"
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, path)
    return ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=DATA, help="folder for lenet.onnx and lenet.json")
    ap.add_argument("--min-accuracy", type=float, default=0.99)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_split("train")
    x_test, y_test = load_split("t10k")
    print(f"training on {len(x_train)} images, testing on {len(x_test)}; "
          f"torch {torch.__version__}, {args.threads} threads", flush=True)

    model = build_lenet(torch)
    t0 = time.perf_counter()
    train(torch, model, x_train, y_train, args.epochs, args.batch_size, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    prob_torch = evaluate(torch, model, x_test)
    acc_torch = float((prob_torch.argmax(1) == y_test).mean())
    print(f"torch test accuracy {acc_torch:.4f} after {train_s:.0f} s of training")

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "lenet.onnx")
    export_onnx(torch, model, onnx_path)
    meta = {"preset": "mnist", "input": "data", "output": "prob",
            "normalization": "pixel / 255", "test_accuracy": f"{acc_torch:.4f}"}
    ops = tag_onnx(onnx_path, meta)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    if (inp.name, out.name) != ("data", "prob") or inp.shape[1:] != [1, 28, 28]:
        raise SystemExit(f"unexpected ONNX signature {inp.name}{inp.shape} -> {out.name}{out.shape}")
    if isinstance(inp.shape[0], int):
        raise SystemExit("the batch dimension of 'data' is not dynamic")
    prob_ort = np.concatenate([sess.run(["prob"], {"data": x_test[i:i + 1000]})[0]
                               for i in range(0, len(x_test), 1000)])
    max_diff = float(np.abs(prob_ort - prob_torch).max())
    acc_ort = float((prob_ort.argmax(1) == y_test).mean())
    print(f"ONNX Runtime test accuracy {acc_ort:.4f}; max |ORT - torch| = {max_diff:.2e}; ops {ops}")
    if max_diff > 1e-4:
        raise SystemExit("ONNX Runtime output does not match PyTorch")
    if acc_ort < args.min_accuracy:
        raise SystemExit(f"test accuracy {acc_ort:.4f} is below {args.min_accuracy}")

    with open(onnx_path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    info = {
        "model": "lenet.onnx",
        "architecture": "sampleINT8 LeNet: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, "
                        "fc 500, ReLU, fc 10, softmax",
        "preset": "mnist",
        "normalization": "float32 pixel / 255, NCHW 1x28x28",
        "input": {"name": "data", "shape": ["N", 1, 28, 28], "dtype": "float32"},
        "output": {"name": "prob", "shape": ["N", 10], "dtype": "float32", "softmax": True},
        "opset": OPSET,
        "ops": ops,
        "test_accuracy": round(acc_ort, 4),
        "test_images": int(len(x_test)),
        "train_images": int(len(x_train)),
        "max_abs_diff_ort_vs_torch": max_diff,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam lr {args.lr}, x0.2 in the last epoch",
        "train_seconds": round(train_s, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "date": datetime.date.today().isoformat(),
        "sha256": digest,
        "made_by": "tools/train_lenet.py",
    }
    with open(os.path.join(args.out, "lenet.json"), "w") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes, sha256 {digest}) and lenet.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
