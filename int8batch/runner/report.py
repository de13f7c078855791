"""What a run prints, and its JSON / Markdown / PNG reports."""
import dataclasses
import json
import os
import platform
import time

import numpy as np

from .. import __version__
from . import protocol


def _versions():
    v = {"int8batch": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "cv2"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v


class RunReport:
    """The figures of one ``int8batch run`` and how to show them."""

    def __init__(self, name, settings, cal_window, score_window, calibration, comparison, out,
                 tolerance=0.01, backend="onnxruntime"):
        self.name, self.settings, self.cal, self.win = name, settings, cal_window, score_window
        self.calibration, self.cmp, self.out = calibration, comparison, out
        self.tolerance, self.backend = tolerance, backend
        self.versions = _versions()

    @property
    def passed(self):
        return protocol.passed(self.cmp.fp32.top1_rate, self.cmp.int8.top1_rate, self.tolerance)

    def to_dict(self):
        c, cal = self.cmp, self.calibration
        score = lambda s: {"top1": s.top1_rate, "top5": s.top5_rate, "images": s.images,  # noqa: E731
                           "ms_per_image": s.ms_per_image}
        return {
            "run": self.name, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": self.backend,
            "versions": self.versions,
            "settings": {k: v for k, v in dataclasses.asdict(self.settings).items()},
            "calibration": {"window": dataclasses.asdict(self.cal), "method": self.settings.method,
                            "tensors": len(cal.amax), "seconds": cal.seconds, "artefacts": cal.paths},
            "scoring": {"window": dataclasses.asdict(self.win), "fp32": score(c.fp32), "int8": score(c.int8),
                        "top1_agreement": c.agreement, "mean_softmax_kl": c.mean_kl,
                        "max_abs_output_diff": c.max_abs_diff},
            "first_predictions": {"labels": c.labels, "fp32": c.fp32_pred, "int8": c.int8_pred},
            "verdict": "PASSED" if self.passed else "FAILED",
            "rule": f"INT8 top-1 >= FP32 top-1 - {self.tolerance:g}",
        }

    def text(self):
        c, cal, s = self.cmp, self.calibration, self.settings
        lines = [f"&&&& RUNNING int8batch run {self.name} (the TensorRT sampleINT8 protocol)",
                 f"Backend: ONNX Runtime {self.versions.get('onnxruntime', '?')} on the CPU; INT8 = the Q/DQ model "
                 "(explicit quantization, as TensorRT 11 builds it), run on ONNX Runtime's int8 kernels",
                 f"Model: {os.path.basename(s.model)}; preprocessing preset {getattr(s, 'preset', '?')}",
                 f"Calibration: {self.cal.describe()} ({self.cal.images} images), method {s.method}: "
                 f"{len(cal.amax)} tensors in {cal.seconds:.2f} s",
                 f"Artefacts: {', '.join(os.path.relpath(p) for p in cal.paths.values())}", ""]
        for label, sc in (("FP32", c.fp32), ("INT8", c.int8)):
            lines += [f"{label} run: {self.win.describe()}",
                      f"Top1: {sc.top1_rate:.4f}, Top5: {sc.top5_rate:.4f}",
                      f"Processing {sc.images} images averaged {sc.ms_per_image:.4f} ms/image and "
                      f"{sc.ms_per_image * self.win.batch_size:.3f} ms/batch.", ""]
        lines += [f"INT8 vs FP32: top-1 agreement {100 * c.agreement:.2f} %, mean softmax KL {c.mean_kl:.2e}, "
                  f"largest output difference {c.max_abs_diff:.3g}", ""]
        n = len(c.labels)
        if n:
            correct = sum(int(a == b) for a, b in zip(c.labels, c.int8_pred))
            lines += [f"Expected predictions (first {n} images):", _wrap(c.labels),
                      "Actual predictions (INT8):", _wrap(c.int8_pred),
                      f"Accuracy of these {n}: {100 * correct / n:.1f} %", ""]
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"&&&& {verdict} int8batch run {self.name}: INT8 top-1 {100 * c.int8.top1_rate:.2f} % vs FP32 "
                     f"{100 * c.fp32.top1_rate:.2f} % (rule: within {100 * self.tolerance:g} point)")
        return "\n".join(lines)

    def markdown(self):
        d, c = self.to_dict(), self.cmp
        rows = [("FP32", c.fp32), ("INT8", c.int8)]
        md = [f"# int8batch run {self.name}: {d['verdict']}", "",
              f"- date: {d['date']}", f"- backend: {self.backend}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}",
              f"- calibration: {self.cal.describe()}, method {self.settings.method}",
              f"- scoring: {self.win.describe()}", "",
              "| precision | top-1 | top-5 | ms/image |", "|---|---|---|---|"]
        md += [f"| {n} | {100 * s.top1_rate:.2f} % | {100 * s.top5_rate:.2f} % | {s.ms_per_image:.4f} |"
               for n, s in rows]
        md += ["", f"Top-1 agreement {100 * c.agreement:.2f} %, mean softmax KL {c.mean_kl:.2e}, largest output "
               f"difference {c.max_abs_diff:.3g}.", ""]
        return "\n".join(md)

    def write(self):
        """Write ``report.json`` and ``report.md`` into the output folder; return their paths."""
        os.makedirs(self.out, exist_ok=True)
        paths = {"json": os.path.join(self.out, "report.json"), "markdown": os.path.join(self.out, "report.md")}
        for key, text in (("json", json.dumps(self.to_dict(), indent=1, default=_plain) + "\n"),
                          ("markdown", self.markdown())):
            tmp = paths[key] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, paths[key])
        self.paths = paths
        return paths


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _wrap(values, per_line=25):
    vals = [str(v) for v in values]
    return "\n".join(" ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line))
