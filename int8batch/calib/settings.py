"""Every setting of a calibration and its default, in one frozen config.

The command line, the runners and the Python API all build a
:class:`CalibrationConfig`; ``None`` for a field means "the default here"
(resolved by the config itself, never repeated elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..cuda.feeder import STRATEGIES as FEEDER_STRATEGIES
from ..errors import ConfigError, is_whole
from . import thresholds as th

#: "auto" (the default): observed max for tensors whose op bounds them (ReLU6/Clip,
#: Sigmoid, Tanh, Softmax: clipping them only loses signal), the smallest expected
#: quantization error (MSE) for every other tensor, and for the network input, when
#: the batch files hold normalized 8-bit pixels that 127 steps cover, the pixel step
#: itself (the input then quantizes exactly); the Q/DQ model leaves the rare
#: activation that INT8 alone damages in float (see ``keep_float``).
METHODS = ("auto",) + th.METHODS
DEFAULT_METHOD = "auto"
#: the TensorRT calibrator whose cache header a method's scales are written under (vocab names)
CACHE_ALGORITHM = {"minmax": "minmax"}  # every other method: entropy2
#: bytes of activations per ONNX Runtime call (sub-batch size of dynamic-batch models); 512 MB was
#: faster than 256 MB and 1 GB on 2 cores and than 256 MB on 16 (DenseNet-121, ResNet-50; README)
ACTIVATION_BUDGET = 512 << 20
#: the same on the GPU (device "cuda"): device memory the activations of one run may take
DEVICE_BUDGET = 8 << 30
#: where the model runs and the statistics are computed (int8batch.calib.ort_exec.resolve_device)
DEVICES = ("auto", "cpu", "cuda")
#: how the per-channel int8 weights are rounded (int8batch.calib.rounding)
WEIGHT_ROUNDINGS = ("nearest", "gptq")
#: keep_float="auto": an activation whose quantization ALONE changes the output by more than
#: this fraction of its energy (||y_q - y||^2 / ||y||^2, on SENSITIVITY_IMAGES images) stays float, the
#: most sensitive first, within the budgets below (session 11: 1e-5 lets the budgets decide on
#: EfficientNet-Lite, where 2.5e-4 had kept 1-3; chosen on the choose pair, README)
SENSITIVITY_THRESHOLD = 1e-5
SENSITIVITY_IMAGES = 4
#: ... of the first calibration batch, the first whose FP32 output carries at least this fraction of the batch's
#: mean output energy (a text detector's map is empty on most photos: four empty ones ranked noise)
SENSITIVITY_MIN_ENERGY = 0.1
#: ... while the readers of those kept float do at most this fraction of the network's multiply-adds
#: (they run in FP16/FP32 in TensorRT instead of INT8: the budget bounds that cost), and at most
#: SENSITIVITY_MAX_KEPT tensors (each is a precision boundary); where the multiply-adds cannot be
#: counted (shape inference fails), at most SENSITIVITY_MAX_KEPT_UNCOUNTED tensors
SENSITIVITY_MAC_BUDGET = 0.10
SENSITIVITY_MAX_KEPT = 10
SENSITIVITY_MAX_KEPT_UNCOUNTED = 3
#: calibrate warns when a chosen amax clips at least this fraction of a tensor's values (TensorRT's
#: entropy clips up to about 5 % of EfficientNet-Lite0's stem output; a wrecked input scale clipped 93 %)
SATURATION_WARNING = 0.2
#: bias correction: input means from the first calibration images only (they settle fast)
BIAS_CORRECTION_IMAGES = 256
#: where bias correction takes a layer's input mean: the FP32 model's ("fp32", the classic correction) or,
#: layer after layer, the Q/DQ model's own ("int8", int8batch.calib.sequential)
BIAS_INPUTS = ("fp32", "int8")
#: ... "int8": both means on the first calibration images only (the Q/DQ model runs on them once, cut before
#: each layer; 32 images gave worse held-out agreement and KL than 64 on EfficientNet-Lite0)
SEQUENTIAL_IMAGES = 64
#: ... and only for the Conv layers whose input is at most this many times smaller than the network input
#: (per spatial axis): in the late layers a mean drift matched on the calibration images raised the KL on
#: other photos (EfficientNet-Lite1; README, "Bias correction on the INT8 model's own inputs")
SEQUENTIAL_MAX_STRIDE = 8
#: ... the pass keeps, for its images, every tensor that crosses a cut: where that would exceed this many bytes
#: (estimated as float32 from the FP32 model's shapes; quantized tensors are kept as int8, a quarter) it takes
#: fewer images, down to SEQUENTIAL_MIN_IMAGES (EfficientNet-Lite2 at 260: 545 MB, YOLO-style at 640: 900 MB;
#: a 1280 detector would need 3.6 GB)
SEQUENTIAL_BUDGET = 1 << 30
SEQUENTIAL_MIN_IMAGES = 8


@dataclass(frozen=True)
class CalibrationConfig:
    """How to calibrate (see :func:`int8batch.calib.api.calibrate` for each field's meaning).

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    batch_size, first, max_batches :
        The calibration window, served as TensorRT's BatchStream serves it
        (``batch_size`` None: the model's fixed batch, else the files' N).
    two_pass : bool
        A max pass, then fixed-range histograms.
    num_bins : int
        Histogram bins.
    percentile : float or None
        Percentile of ``method="percentile"`` (None: the threshold default).
    trt_version, cache_algorithm :
        The cache header (None: installed TensorRT / by method).
    providers, intra_op_threads :
        ONNX Runtime settings.
    write_qdq, per_channel_weights :
        The Q/DQ model and its weight granularity.
    keep_float : int, "auto" or None
        Activations left float in the Q/DQ model (None: "auto" for method
        auto, 0 otherwise).
    bias_correction : bool
        Correct each Conv/Gemm bias for its int8 weights.
    bias_inputs : {"fp32", "int8"} or None
        Which input mean bias correction takes (None: "int8" for method auto,
        "fp32" otherwise): the FP32 model's (the classic correction, which
        cancels the weights' own shift), or the Q/DQ model's own, layer after
        layer, which also cancels the drift of the layers before
        (:mod:`int8batch.calib.sequential`).
    device : {"auto", "cpu", "cuda"}
        Where ONNX Runtime runs the model and the statistics are computed
        ("auto": cuda when ONNX Runtime's CUDA provider and a GPU are usable).
        The results are the same numbers on both.
    device_budget : int or None
        Bytes of device memory one run's activations may take on the GPU
        (None: :data:`DEVICE_BUDGET`); bigger batches run in sub-batches.
    device_feeder : {"auto", "registered", "pinned", "pageable"}
        How the batch files reach the GPU (:class:`int8batch.cuda.DeviceFeeder`'s ``strategy``).
    weight_rounding : {"nearest", "gptq"} or None
        How the Q/DQ model's per-channel int8 weights are rounded: to the
        nearest level, or compensating each rounding error through the
        layer's input correlations (:mod:`int8batch.calib.rounding`).
        None: "gptq" for method auto, "nearest" for the others.
    centre : bool or None
        Centre bounded activations (ReLU6 outputs read by unpadded Conv or
        Gemm layers) so that their symmetric int8 range covers them with
        half the step (:mod:`int8batch.onnx.centre`); the Q/DQ and corrected
        models carry the shift.  None: on for method auto, off for the others.
    centre_padded : bool
        Also centre the inputs of padded convolutions (depthwise inputs), each
        convolution then reading an explicit ``Pad`` of the shifted zero: new
        nodes in the graph, so off unless asked for.
    cache_keep_float : bool
        Leave the activations the Q/DQ model keeps float out of
        ``calibration.cache`` and ``dynamic_range.txt`` too, so that TensorRT
        10's implicit INT8 runs the layers reading or producing them in higher
        precision (its fallback for a tensor without a scale) instead of
        quantizing them.  Off by default: the cache then holds every tensor.
    report : bool
        Also write ``report.png`` (histograms of the most saturated tensors; needs
        matplotlib), as part of the artefact set.
    """

    method: str = DEFAULT_METHOD
    batch_size: int | None = None
    first: int = 0
    max_batches: int | None = None
    two_pass: bool = False
    num_bins: int = 2048
    percentile: float | None = None
    trt_version: str | None = None
    cache_algorithm: str | None = None
    providers: tuple | None = None
    intra_op_threads: int | None = None
    write_qdq: bool = True
    per_channel_weights: bool = True
    keep_float: object = None
    bias_correction: bool = True
    bias_inputs: str | None = None
    device: str = "auto"
    device_budget: int | None = None
    device_feeder: str = "auto"
    weight_rounding: str | None = None
    centre: bool | None = None
    centre_padded: bool = False
    cache_keep_float: bool = False
    report: bool = False

    def __post_init__(self):
        if self.weight_rounding is not None and self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ConfigError(f"weight rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, "
                              f"got {self.weight_rounding!r}")
        if self.bias_inputs is not None and self.bias_inputs not in BIAS_INPUTS:
            raise ConfigError(f"bias inputs must be one of {', '.join(BIAS_INPUTS)}, got {self.bias_inputs!r}")
        if self.bias_inputs is not None and not (self.bias_correction and self.write_qdq):
            raise ConfigError("bias_inputs (--bias-inputs) chooses how bias correction measures its means; it needs "
                              "bias correction on and the Q/DQ model written (not --no-bias-correction, --no-qdq)")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device_feeder not in FEEDER_STRATEGIES:
            raise ConfigError(f"device feeder must be one of {', '.join(FEEDER_STRATEGIES)}, got "
                              f"{self.device_feeder!r}")
        if self.device_budget is not None and (not is_whole(self.device_budget) or self.device_budget < 1):
            raise ConfigError(f"device budget must be a whole number of bytes >= 1, got {self.device_budget!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.batch_size is not None and (not is_whole(self.batch_size) or self.batch_size < 1):
            raise ConfigError(f"calibration batch size must be a whole number >= 1, got {self.batch_size!r}")
        if not is_whole(self.first) or self.first < 0:
            raise ConfigError(f"first batch must be a whole number >= 0, got {self.first!r}")
        if self.max_batches is not None and (not is_whole(self.max_batches) or self.max_batches < 1):
            raise ConfigError(f"max batches must be a whole number >= 1, got {self.max_batches!r}")
        if not is_whole(self.num_bins) or self.num_bins < 2 or self.num_bins % 2:
            raise ConfigError(f"histogram bins must be an even number >= 2, got {self.num_bins!r}")
        if self.centre is not None and not isinstance(self.centre, bool):
            raise ConfigError(f"centre must be True, False or None (the default for the method), got {self.centre!r}")
        if not isinstance(self.cache_keep_float, bool):
            raise ConfigError(f"cache_keep_float must be True or False, got {self.cache_keep_float!r}")
        if self.cache_keep_float and (not self.write_qdq or self.resolved_keep_float == 0):
            raise ConfigError("leaving the float activations out of the cache (cache_keep_float, --cache-keep-float) "
                              "needs activations kept float: method auto or keep_float (--keep-float) above 0, "
                              "with the Q/DQ model written")
        if not isinstance(self.centre_padded, bool):
            raise ConfigError(f"centre_padded must be True or False, got {self.centre_padded!r}")
        if self.centre_padded and not self.write_qdq:
            raise ConfigError("centring the inputs of padded convolutions (centre_padded, --centre-padded) changes "
                              "the Q/DQ and corrected models, which write_qdq=False (--no-qdq) does not write")
        if self.centre_padded and (self.method != "auto" or self.centre is False):
            raise ConfigError("centring the inputs of padded convolutions (centre_padded, --centre-padded) extends "
                              "the centring of method auto; it needs method auto with centring on")
        if self.centre is not None and self.method != "auto":
            raise ConfigError(f"centring bounded activations (centre, --no-centre) applies to method auto only, "
                              f"not {self.method!r}: the other methods never centre (they reproduce a "
                              "calibrator's scales for the model as given)")
        k = self.keep_float
        if k is not None and k != "auto" and (not is_whole(k) or k < 0):
            raise ConfigError(f"keep_float (--keep-float) must be a number >= 0 or 'auto', got {k!r}")
        if self.trt_version is not None and str(self.trt_version).strip():
            from ..trt import vocab
            vocab.make_header(self.trt_version)   # a version no cache header can carry fails now, not after the pass
        th.DEFAULTS.replace(percentile=self.percentile)   # validates the percentile

    def replace(self, **changes) -> "CalibrationConfig":
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown calibration option(s) {bad}; valid: {sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def thresholds(self) -> th.ThresholdConfig:
        return th.DEFAULTS.replace(percentile=self.percentile)

    @property
    def resolved_weight_rounding(self):
        """``weight_rounding`` resolved: "gptq" for method auto, "nearest" for the others, unless given."""
        if self.weight_rounding is None:
            return "gptq" if self.method == "auto" else "nearest"
        return self.weight_rounding

    @property
    def resolved_bias_inputs(self):
        """``bias_inputs`` resolved: "int8" for method auto, "fp32" for the others, unless given; None
        without bias correction or the Q/DQ model (the corrected biases live in the models written with it)."""
        if not (self.bias_correction and self.write_qdq):
            return None
        if self.bias_inputs is None:
            return "int8" if self.method == "auto" else "fp32"
        return self.bias_inputs

    @property
    def resolved_centre(self):
        """``centre`` resolved: on for method auto, off for the others, unless given; off without the
        Q/DQ model (the centring lives in the models written with it)."""
        return self.write_qdq and (self.method == "auto" if self.centre is None else bool(self.centre))

    @property
    def resolved_keep_float(self):
        """``keep_float`` resolved: "auto" for method auto, 0 for the others, unless given."""
        if self.keep_float is None:
            return "auto" if self.method == "auto" else 0
        return self.keep_float

    @property
    def cache_calibrator(self) -> str:
        return self.cache_algorithm or CACHE_ALGORITHM.get(self.method, "entropy2")
