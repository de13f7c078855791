"""The synthetic ImageNet set of the runner tests: constant-colour PNGs and a hand-made classifier.

After the efficientnet-lite preprocessing a constant image of colour ``rgb`` is
``(rgb - 127) / 128`` everywhere, so every logit, prediction and top-k count is
computed here in NumPy from the colours alone, independently of the pipeline.
"""
import os

import numpy as np

from int8batch.runner.imagenet import ImagenetSettings

W = np.array([[1.0, 0.0, 0.0, -0.5, 0.25, 0.0, 0.0],
              [0.0, 1.0, 0.0, 0.0, -0.5, 0.25, 0.0],
              [0.0, 0.0, 1.0, 0.25, 0.0, -0.5, 0.0]], np.float32)
B = np.array([0, 0, 0, 0, 0, 0, 0.1], np.float32)
# class folder -> RGB colours of its 4 images; the last of a/b "looks like" another class
FOLDERS = {"a": [(248, 216, 56), (240, 208, 72), (248, 216, 72), (200, 248, 112)],
           "b": [(80, 248, 216), (56, 232, 208), (88, 248, 0), (216, 64, 248)],
           "c": [(216, 56, 248), (208, 80, 240), (208, 72, 232), (0, 160, 184)]}


def tiny_model(path, w=W, b=B, size=224):
    """x (N,3,size,size) -> GlobalAveragePool -> Flatten -> MatMul w -> Add b -> logits (N,7)."""
    from onnx import TensorProto, helper, numpy_helper, save
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                        ["N", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    save(m, str(path))
    return str(path)


def ref_logits(rgb, w=W, b=B):
    """NumPy twin of the tiny model on a constant image of colour ``rgb`` (efficientnet-lite)."""
    return ((np.asarray(rgb, np.float64) - 127.0) / 128.0) @ w.astype(np.float64) + b


def ref_top(rgb, k, w=W):
    return list(np.argsort(-ref_logits(rgb, w), kind="stable")[:k])


def write_png(path, rgb, size=(24, 32)):
    import cv2
    img = np.empty(size + (3,), np.uint8)
    img[...] = rgb[::-1]                      # OpenCV writes BGR
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)


def make_data(root):
    """The class-folder set, a flat ILSVRC-style set with a label file, a calibration folder, the model."""
    colours = {}
    for cls, cols in FOLDERS.items():
        for i, c in enumerate(cols):
            rel = f"{cls}/img{i}.png"
            write_png(root / "folders" / rel, c)
            colours[rel] = (c, "abc".index(cls))
    flat, lines = {}, []
    for n, (rel, (c, _)) in enumerate(sorted(colours.items()), 1):
        name = f"ILSVRC2012_val_{n:08d}.png"
        write_png(root / "val" / name, c)
        lab = n % 7                          # labels 0..6: some outside every top-5 of 7
        flat[name] = (c, lab)
        lines.append(f"{name} {lab}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    for i in range(4):
        write_png(root / "cal" / f"c{i}.png", (64 * i, 200 - 40 * i, 128))
    return {"root": root, "folders": str(root / "folders"), "val": str(root / "val"),
            "labels": str(root / "val.txt"), "cal": str(root / "cal"), "colours": colours, "flat": flat,
            "model": tiny_model(root / "tiny.onnx")}


def settings(d, **kw):
    base = dict(model=d["model"], images=d["folders"], calib_images=4, calib_batch_size=2, batch_size=4,
                threads=1)
    base.update(kw)
    return ImagenetSettings(**base)


def expected(files, table):
    """Hand/NumPy figures over ``files`` from ``table[file] = (colour, label)``."""
    top1 = [ref_top(table[f][0], 1)[0] for f in files]
    return {"top1": sum(int(p == table[f][1]) for p, f in zip(top1, files)),
            "top5": sum(int(table[f][1] in ref_top(table[f][0], 5)) for f in files),
            "pred": top1, "labels": [table[f][1] for f in files]}

