"""What a run prints, and its JSON / Markdown / PNG reports."""
import dataclasses
import json
import os
import platform
import time

import numpy as np

from .._version import __version__
from .._atomic import write_json_atomic, write_text_atomic
from .._staged import refuse_foreign_files
from . import protocol
from ..calib.artefacts import centred_phrase


def _versions():
    v = {"int8batch": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "cv2"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v


def verdict(result, tolerance=0.01, min_agreement=0.95):
    """PASSED or not, and the rule that decided, for an :class:`~int8batch.calib.evaluate.EvalResult`.

    With labels, sampleINT8's rule (:func:`protocol.passed`): INT8 top-1 no
    more than ``tolerance`` below FP32.  Without labels (no image has one):
    INT8 top-1 agrees with FP32 on at least ``min_agreement`` of the images.

    Returns
    -------
    (bool, str)
    """
    if judged_by_labels(result):
        return (protocol.passed(result.top1_fp32, result.top1_int8, tolerance),
                f"labelled: INT8 top-1 within {100 * tolerance:g} point of FP32 (sampleINT8)")
    if result.labelled:
        return (result.top1_agreement >= min_agreement,
                f"labelled, but FP32 top-1 is only {100 * result.top1_fp32:.1f} % (under "
                f"{100 * MIN_LABELLED_TOP1:g} %, so the labels are not the model's classes): INT8/FP32 top-1 "
                f"agreement >= {100 * min_agreement:g} %")
    return (result.top1_agreement >= min_agreement,
            f"unlabelled: INT8/FP32 top-1 agreement >= {100 * min_agreement:g} %")


#: with labels the model's FP32 top-1 gets this rarely right, they are not its classes (chance on ImageNet's
#: 1000 is 0.1 %): the top-1 rule would pass INT8 at 0 % vs 0 %, so agreement decides
MIN_LABELLED_TOP1 = 0.10


def judged_by_labels(result):
    """True when the labels decide the verdict: there are some, and FP32 gets at least 10 % of them right."""
    return bool(result.labelled) and result.top1_fp32 is not None and result.top1_fp32 >= MIN_LABELLED_TOP1


#: below this many scoring images the report says how much one image moves the figures
SMALL_SCORING_SET = 1000


def _biases(cal):
    rep = getattr(cal, "qdq_report", None)
    return getattr(rep, "biases", None) or {}


def _rate(v):
    return "n/a" if v is None else f"{v:.4f}"


class RunReport:
    """The figures of one ``int8batch run`` and how to show them.

    ``result`` is the :class:`~int8batch.calib.evaluate.EvalResult` of the
    scoring window; ``notes`` are extra lines printed under the model line and
    ``extra`` extra keys of the JSON report.  ``cal_origin`` (a
    :class:`~int8batch.runner.protocol.SampleWindow`, optional) says whose
    window the calibration window reproduces.
    """

    def __init__(self, name, settings, cal_window, score_window, calibration, result, out,
                 tolerance=0.01, backend="onnxruntime", min_agreement=0.95, notes=(), extra=None,
                 cal_origin=None):
        self.name, self.settings, self.cal, self.win = name, settings, cal_window, score_window
        self.cal_origin = cal_origin
        self.calibration, self.result, self.out = calibration, result, out
        self.tolerance, self.backend, self.min_agreement = tolerance, backend, min_agreement
        self.notes, self.extra = list(notes), dict(extra or {})
        self.versions = _versions()
        self.paths = {}

    @property
    def labelled(self):
        return bool(self.result.labelled)

    @property
    def passed(self):
        return verdict(self.result, self.tolerance, self.min_agreement)[0]

    @property
    def rule(self):
        return verdict(self.result, self.tolerance, self.min_agreement)[1]

    def _scores(self):
        r = self.result
        return (("FP32", r.top1_fp32, r.top5_fp32, r.top1_hits_fp32, r.top5_hits_fp32, r.ms_per_image_fp32),
                ("INT8", r.top1_int8, r.top5_int8, r.top1_hits_int8, r.top5_hits_int8, r.ms_per_image_int8))

    def to_dict(self):
        r, cal = self.result, self.calibration
        scores = {n.lower(): {"top1": t1, "top5": t5, "top1_count": h1, "top5_count": h5, "images": r.images,
                              "labelled": r.labelled, "ms_per_image": ms}
                  for n, t1, t5, h1, h5, ms in self._scores()}
        d = {
            "run": self.name, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": self.backend,
            "versions": self.versions,
            "settings": {k: v for k, v in dataclasses.asdict(self.settings).items()},
            "calibration": {"window": dataclasses.asdict(self.cal),
                            "sample_window": self.cal_origin and self.cal_origin.name,
                            "window_text": self.calibration_window(), "method": self.settings.method,
                            "tensors": len(cal.amax), "seconds": cal.seconds, "artefacts": cal.paths,
                            "kept_float": list(getattr(cal, "kept_float", None) or []),
                            "bias_corrected": sorted(_biases(cal)),
                            "centred": [t.original for t in getattr(cal, "centred", None) or []]},
            "scoring": {"window": dataclasses.asdict(self.win), **scores,
                        "top1_agreement": r.top1_agreement, "agreed": r.agreed, "mean_softmax_kl": r.mean_kl,
                        "max_abs_output_diff": r.max_abs_diff},
            "first_predictions": {"labels": r.labels, "fp32": r.fp32_pred, "int8": r.int8_pred},
            "disagreements": [dict(zip(("image", "label", "fp32", "int8"), t)) for t in r.disagreements],
            "verdict": "PASSED" if self.passed else "FAILED",
            "rule": self.rule,
            "notes": list(self.notes),
        }
        d.update(self.extra)
        return d

    def text(self):
        r, cal, s = self.result, self.calibration, self.settings
        lines = [f"&&&& RUNNING int8batch run {self.name} (the TensorRT sampleINT8 protocol)",
                 self._backend_line(),
                 f"Model: {os.path.basename(s.model)}; preprocessing preset {getattr(s, 'preset', '?')}",
                 *self.notes,
                 f"Calibration: {self.calibration_window()}, method {s.method}: "
                 f"{len(cal.amax)} tensors in {cal.seconds:.2f} s"
                 + (f"; kept float in the Q/DQ model (sensitivity pass): {', '.join(cal.kept_float)}"
                    if getattr(cal, "kept_float", None) else "")
                 + (f"; {len(_biases(cal))} layer biases corrected for the int8 weights" if _biases(cal) else "")
                 + (f"; {centred_phrase(len(cal.centred))}" if getattr(cal, "centred", None) else ""),
                 f"Artefacts: {', '.join(os.path.relpath(p) for p in cal.paths.values())}", ""]
        for label, t1, t5, _, _, ms in self._scores():
            top = f"Top1: {_rate(t1)}, Top5: {_rate(t5)}" if self.labelled else "Top1/Top5: n/a (no labels)"
            lines += [f"{label} run: {self.win.describe()}", top,
                      f"Processing {r.images} images averaged {ms:.4f} ms/image and "
                      f"{ms * self.win.batch_size:.3f} ms/batch.", ""]
        lines += [f"INT8 vs FP32: top-1 agreement {100 * r.top1_agreement:.2f} %, mean softmax KL {r.mean_kl:.2e}, "
                  f"largest output difference {r.max_abs_diff:.3g}"]
        if 0 < r.images < SMALL_SCORING_SET:
            lines += [f"Note: {r.images} scoring images: one image moves top-1 and agreement by "
                      f"{100 / r.images:.2g} point{'' if 100 / r.images == 1 else 's'}; score more images for a "
                      "stable verdict"]
        lines += [""]
        n = len(r.labels)
        if n and self.labelled:
            correct = sum(int(a == b) for a, b in zip(r.labels, r.int8_pred))
            lines += [f"Expected predictions (first {n} images):", _wrap(r.labels),
                      "Actual predictions (INT8):", _wrap(r.int8_pred),
                      f"Accuracy of these {n}: {100 * correct / n:.1f} %", ""]
        elif n:
            same = sum(int(a == b) for a, b in zip(r.fp32_pred, r.int8_pred))
            lines += [f"FP32 predictions (first {n} images):", _wrap(r.fp32_pred),
                      "INT8 predictions:", _wrap(r.int8_pred),
                      f"Agreement of these {n}: {100 * same / n:.1f} %", ""]
        lines.append(self._verdict_line())
        return "\n".join(lines)

    def calibration_window(self):
        """``"10 batches of 50 from image 50 (<whose window>), images 50..549"``."""
        w = self.cal
        if self.cal_origin is not None:
            return self.cal_origin.describe(w)
        text = f"{w.count} batches of {w.batch_size} from image {w.start_image}, {w.span()}"
        if w.skipped != w.first:
            text += f" ({w.describe()})"
        return text

    def _backend_line(self):
        if self.backend == "tensorrt":
            e = getattr(self.result, "engines", None) or {}
            return (f"Backend: TensorRT {e.get('tensorrt', '?')} on the GPU; FP32 engine vs INT8 engine calibrated "
                    f"with the {e.get('algorithm', '?')} calibrator (implicit quantization, TensorRT 8.6-10.x)")
        return (f"Backend: ONNX Runtime {self.versions.get('onnxruntime', '?')} on the CPU; INT8 = the Q/DQ model "
                "(explicit quantization, as TensorRT 11 builds it), run on ONNX Runtime's int8 kernels")

    def _verdict_line(self):
        r, word = self.result, "PASSED" if self.passed else "FAILED"
        if self.labelled and not judged_by_labels(r):
            return (f"&&&& {word} int8batch run {self.name}: INT8/FP32 top-1 agreement {100 * r.top1_agreement:.2f} % "
                    f"(rule: {self.rule})")
        if self.labelled:
            return (f"&&&& {word} int8batch run {self.name}: INT8 top-1 {100 * r.top1_int8:.2f} % vs FP32 "
                    f"{100 * r.top1_fp32:.2f} % (rule: within {100 * self.tolerance:g} point)")
        return (f"&&&& {word} int8batch run {self.name}: INT8/FP32 top-1 agreement {100 * r.top1_agreement:.2f} % "
                f"(rule, no labels: agreement >= {100 * self.min_agreement:g} %)")

    def markdown(self):
        d, r = self.to_dict(), self.result
        md = [f"# int8batch run {self.name}: {d['verdict']}", "",
              f"- date: {d['date']}", f"- backend: {self.backend}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in d['versions'].items())}",
              f"- model: {os.path.basename(self.settings.model)}",
              f"- calibration: {self.calibration_window()}, method {self.settings.method}",
              f"- scoring: {self.win.describe()}; {r.images} images, {r.labelled} labelled",
              f"- rule: {self.rule}", *[f"- note: {n}" for n in self.notes], "",
              "| precision | top-1 | top-5 | ms/image |", "|---|---|---|---|"]
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
        md += [f"| {n} | {pct(t1)} | {pct(t5)} | {ms:.4f} |" for n, t1, t5, _, _, ms in self._scores()]
        md += ["", f"Top-1 agreement {100 * r.top1_agreement:.2f} %, mean softmax KL {r.mean_kl:.2e}, largest output "
               f"difference {r.max_abs_diff:.3g}.", ""]
        if "plot" in self.paths:
            md += [f"![predictions]({os.path.basename(self.paths['plot'])})", ""]
        return "\n".join(md)

    def write(self):
        """Write ``report.json`` and ``report.md`` into the output folder; return their paths."""
        os.makedirs(self.out, exist_ok=True)
        paths = {"json": os.path.join(self.out, "report.json"), "markdown": os.path.join(self.out, "report.md")}
        write_json_atomic(paths["json"], self.to_dict(), default=_plain)
        write_text_atomic(paths["markdown"], self.markdown())
        self.paths.update(paths)
        return paths


#: the files a run writes beside the calibration's artefacts
REPORT_NAMES = ("report.json", "report.md", "predictions.png", "images.txt")


def check_replaceable(out, force=False):
    """Before a run writes into ``out``: refuse to replace report files int8batch did not write.

    A ``report.json`` of an earlier ``int8batch run`` marks the folder as a
    previous run's, replaced by a new one (:func:`refuse_foreign_files`).
    """
    def ours():
        try:
            with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return "no report.json of a run beside them"
        except (OSError, ValueError) as exc:
            return f"report.json: {getattr(exc, 'strerror', None) or exc}"
        ok = isinstance(doc, dict) and doc.get("run") in ("mnist", "imagenet") and "calibration" in doc
        return None if ok else "report.json is not an int8batch run report"
    return refuse_foreign_files(out, REPORT_NAMES, ours, "an int8batch run", force)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _wrap(values, per_line=25):
    vals = [str(v) for v in values]
    return "\n".join(" ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line))
