"""The preprocessing recipe: what happens to a decoded image before it is packed.

Every parameter is explicit and recorded in the manifest.  The transform is::

    decode -> resize (short side to S | direct to h x w | none) -> crop (center | none)
           -> channel order (rgb | bgr | gray) -> out = (pixel * scale - mean) / std -> CHW float32

16-bit images are brought to the 8-bit range first (pixel / 257), so presets and
means written for 8-bit images apply unchanged.  Normalization uses per-channel
lookup tables computed in float64, so each output value is the correctly
rounded float32 of the formula above.
"""
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

RESIZE_MODES = ("short", "direct", "none")
CROP_MODES = ("center", "none")
CHANNEL_MODES = ("rgb", "bgr", "gray")
INTERPOLATIONS = ("linear", "area", "cubic", "nearest", "lanczos")
EXIF_MODES = ("respect", "ignore")
FORMULA = "out = (pixel * scale - mean) / std"


@dataclass(frozen=True)
class PreprocessConfig:
    """One complete preprocessing recipe.

    Attributes
    ----------
    size : (int, int)
        Output height and width.
    channels : {"rgb", "bgr", "gray"}
        Output channel order; "gray" gives one channel (color images are
        converted by the decoder).
    resize : {"short", "direct", "none"}
        "short": scale so the short side equals ``resize_size`` (long side
        ``int(S * long / short)``, as torchvision); "direct": resize to
        ``resize_size`` = (h, w) ignoring aspect ratio (Caffe's
        ``convert_imageset``); "none": keep the decoded size.
    resize_size : int or (int, int) or None
    crop : {"center", "none"}
        "center": window of ``size`` at ((h - H) // 2, (w - W) // 2); "none":
        the resized image must already be ``size``.
    interpolation : {"linear", "area", "cubic", "nearest", "lanczos"}
        OpenCV interpolation for the resize.
    scale : float
    mean, std : tuple of float, one per output channel (in output order)
    exif : {"respect", "ignore"}
        Apply or ignore the EXIF orientation tag when decoding.
    reduced_decode : bool
        Decode JPEGs at 1/2, 1/4 or 1/8 size (libjpeg DCT scaling) whenever the
        result still covers the resize target: much faster, but not
        bit-identical to a full decode followed by the resize.
    """

    size: tuple = (224, 224)
    channels: str = "rgb"
    resize: str = "short"
    resize_size: object = 256
    crop: str = "center"
    interpolation: str = "linear"
    scale: float = 1.0
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    exif: str = "respect"
    reduced_decode: bool = True
    preset: str = field(default=None, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("size", _pair(self.size, "size (--size)"))
        if self.resize == "direct":
            set_("resize_size", _pair(self.resize_size if self.resize_size is not None else self.size,
                                      "resize_size (--resize-size)"))
        elif self.resize == "short":
            if self.resize_size is None:
                raise ConfigError("resize 'short' needs resize_size (--resize-size: the short side in pixels)")
            rs = self.resize_size
            if isinstance(rs, (tuple, list)):
                if len(rs) != 1 and len(set(rs)) != 1:
                    raise ConfigError(f"resize 'short' takes one size (--resize-size S), got {rs}")
                rs = rs[0]
            set_("resize_size", _positive_int(rs, "resize_size (--resize-size)"))
        else:
            set_("resize_size", None)
        for name, allowed in (("resize", RESIZE_MODES), ("crop", CROP_MODES), ("channels", CHANNEL_MODES),
                              ("interpolation", INTERPOLATIONS), ("exif", EXIF_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        c = self.num_channels
        set_("mean", _per_channel(self.mean, c, "mean (--mean)"))
        set_("std", _per_channel(self.std, c, "std (--std)"))
        set_("scale", float(self.scale))
        set_("reduced_decode", bool(self.reduced_decode))
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ConfigError(f"scale (--scale) must be a finite non-zero number, got {self.scale}")
        if not all(math.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean (--mean) values must be finite numbers, got {list(self.mean)}")
        if any(s == 0 or not math.isfinite(s) for s in self.std):
            raise ConfigError(f"std (--std) values must be finite and non-zero, got {list(self.std)}")
        _check_output_range(self.scale, self.mean, self.std)
        if self.crop == "none" and self.resize == "short":
            raise ConfigError("resize 'short' keeps the aspect ratio, so it needs crop 'center' to reach a fixed "
                              "size; use resize 'direct' for crop 'none'")
        if self.crop == "none" and self.resize == "direct" and self.resize_size != self.size:
            raise ConfigError(f"crop none keeps the whole resized image, so resize_size (--resize-size) "
                              f"{_hw(self.resize_size)} must be the output size (--size) {_hw(self.size)}: give "
                              f"--resize-size {_hw(self.size)}")
        if self.crop == "center" and self.resize == "direct" and (
                self.resize_size[0] < self.size[0] or self.resize_size[1] < self.size[1]):
            raise ConfigError(f"resize_size (--resize-size) {_hw(self.resize_size)} is smaller than the output size "
                              f"(--size) {_hw(self.size)}: the crop is cut from the resized image; give a "
                              f"--resize-size of at least {_hw(self.size)}")
        if self.crop == "center" and self.resize == "short" and self.resize_size < min(self.size):
            own = (f" (preset {self.preset}'s own rule gives --resize-size {resize_for(self.preset, self.size)})"
                   if self.preset in PRESETS else "")
            raise ConfigError(f"short side (--resize-size) {self.resize_size} is smaller than the output size "
                              f"(--size) {_hw(self.size)}: the crop is cut from the resized image; give a "
                              f"--resize-size of at least {max(self.size)}{own}")

    @property
    def num_channels(self):
        return 1 if self.channels == "gray" else 3

    @property
    def chw(self):
        """Output (C, H, W)."""
        return (self.num_channels,) + tuple(self.size)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """JSON-ready description, as written into the manifest."""
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["resize_size"] = list(self.resize_size) if isinstance(self.resize_size, tuple) else self.resize_size
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["formula"] = FORMULA
        d["sixteen_bit"] = "pixel / 257 (to the 8-bit range) before the formula"
        d["alpha"] = "dropped"
        return d

    @classmethod
    def from_dict(cls, d):
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in keys})

    # -------------------------------------------------------------- planning
    def resized_shape(self, h, w):
        """(h, w) after the resize step, for a decoded image of h x w."""
        if self.resize == "short":
            s = self.resize_size
            if h <= w:
                return s, max(s, int(s * w / h))
            return max(s, int(s * h / w)), s
        if self.resize == "direct":
            return self.resize_size
        return h, w

    def crop_origin(self, h, w):
        """Top-left corner of the output window in a resized image of h x w, or None if it does not fit."""
        H, W = self.size
        if self.crop == "none":
            return (0, 0) if (h, w) == (H, W) else None
        if h < H or w < W:
            return None
        return (h - H) // 2, (w - W) // 2

    def reduction_factor(self, h, w):
        """Largest JPEG decode reduction (1, 2, 4, 8) that still covers the resize target.

        Orientation-safe: compares the short side of the file against the
        largest side the resize needs, so an EXIF rotation cannot break it.
        """
        if not self.reduced_decode or self.resize == "none":
            return 1
        need = self.resize_size if self.resize == "short" else max(self.resize_size)
        short = min(h, w)
        for r in (8, 4, 2):
            if short // r >= need:
                return r
        return 1

    # ---------------------------------------------------------- value tables
    def lut(self, depth=8):
        """Per-channel value tables, float32 (C, 256) or (C, 65536) for 16-bit input."""
        levels = 256 if depth == 8 else 65536
        v = np.arange(levels, dtype=np.float64)
        if depth == 16:
            v = v / 257.0
        mean = np.asarray(self.mean, dtype=np.float64)[:, None]
        std = np.asarray(self.std, dtype=np.float64)[:, None]
        return np.ascontiguousarray(((v[None, :] * self.scale - mean) / std).astype(np.float32))

    def channel_map(self, src_channels):
        """Source channel index for each output channel, for a decoded BGR (or gray) image."""
        if self.channels == "gray" or src_channels == 1:
            return np.zeros(self.num_channels, dtype=np.int32)
        return np.array([2, 1, 0] if self.channels == "rgb" else [0, 1, 2], dtype=np.int32)


def denormalize(data, recipe=None):
    """Packed values back to 8-bit pixels: the inverse of the recipe's formula.

    Parameters
    ----------
    data : ndarray, float32, shape (K, C, H, W)
    recipe : PreprocessConfig or None
        Pixels are ``(out * std + mean) / scale`` per channel (a recipe of one
        channel applies to every channel of ``data``).  None stretches the
        range of all values to 0..255 instead.

    Returns
    -------
    ndarray, uint8, shape (K, C, H, W)
        Rounded to the nearest integer and clipped to 0..255; NaN becomes 0.

    Raises
    ------
    ConfigError
        The recipe has more than one channel and ``data`` another number.
    """
    x = np.asarray(data, dtype=np.float64)
    c = x.shape[1]
    if recipe is None:
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        pix = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    else:
        if recipe.num_channels not in (1, c):
            raise ConfigError(f"the recipe ({recipe.channels}) has {recipe.num_channels} channels but the data "
                              f"has {c}; they cannot be de-normalized with it")
        mean = np.broadcast_to(np.asarray(recipe.mean, np.float64), (c,))
        std = np.broadcast_to(np.asarray(recipe.std, np.float64), (c,))
        pix = (x * std[:, None, None] + mean[:, None, None]) / recipe.scale
    return np.clip(np.rint(np.nan_to_num(pix, nan=0.0)), 0, 255).astype(np.uint8)


#: the largest finite float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_output_range(scale, mean, std):
    """Refuse a recipe whose output is not a finite float32 for some pixel value.

    The formula is linear in the pixel, so its extremes are at pixel 0 and 255
    (16-bit pixels are divided by 257 first, which maps 0..65535 onto 0..255):
    checking both ends of every channel covers every possible output value.
    """
    for c, (m, s) in enumerate(zip(mean, std)):
        for pixel in (0.0, 255.0):
            value = (pixel * scale - m) / s
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(np.float32(value)):
                    continue
                culprits = []
                if abs(s) < 1:
                    culprits.append("std (--std)")
                if not np.isfinite(np.float32(m / s)):
                    culprits.append("mean (--mean)")
                if not np.isfinite(np.float32(255.0 * scale / s)):
                    culprits.append("scale (--scale)")
            where = "" if len(set(zip(mean, std))) == 1 else f" of channel {c}"
            raise ConfigError(
                f"{' / '.join(culprits or ['std (--std)'])}: with scale {scale:g}, mean {m:g} and std {s:g}{where}, "
                f"out = (pixel * scale - mean) / std is {value:.4g} for pixel {pixel:g}, not a finite float32 "
                f"(whose range is about +-{FLOAT32_MAX:.3g}); every packed value must be finite: check the "
                "mean, std and scale (std divides, e.g. 58.4, or 0.229 with --scale 1/255)")


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (v, v)
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or (height, width), got {v!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{name} must be positive, got {_hw((h, w))}")
    return h, w


def _hw(pair):
    return f"{pair[0]}x{pair[1]}"


def _positive_int(v, name):
    try:
        v = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {v!r}") from None
    if v <= 0:
        raise ConfigError(f"{name} must be positive, got {v}")
    return v


def _per_channel(values, c, name):
    if isinstance(values, (int, float, np.floating, np.integer)):
        values = (values,)
    try:
        values = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers, got {values!r}") from None
    if len(values) == 1:
        return values * c
    if len(values) != c:
        raise ConfigError(f"{name} has {len(values)} values but the output has {c} channel"
                          f"{'s' if c != 1 else ''} (--channels); give "
                          f"{'one value' if c == 1 else f'1 or {c} values'}")
    return values


_MNIST = dict(size=(28, 28), channels="gray", resize="direct", resize_size=(28, 28), crop="none",
              interpolation="area", mean=(0.0,), std=(1.0,))

PRESETS = {
    # what TensorRT 5's shipped MNIST batch files hold (Caffe LeNet, scale 1/256)
    "mnist-caffe": dict(_MNIST, scale=1 / 256),
    # TensorRT 6-8 MNISTBatchStream and the Python int8_caffe_mnist sample: pixel / 255
    "mnist": dict(_MNIST, scale=1 / 255),
    # Caffe ImageNet models: BGR, 256x256 warp (convert_imageset), 224 center crop, mean subtraction
    "imagenet-caffe": dict(size=(224, 224), channels="bgr", resize="direct", resize_size=(256, 256),
                           crop="center", scale=1.0, mean=(104.0, 117.0, 123.0), std=(1.0,)),
    # torchvision: RGB, short side 256, 224 center crop, /255 then mean/std
    "imagenet-torch": dict(size=(224, 224), channels="rgb", resize="short", resize_size=256, crop="center",
                           scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    # Inception-style: 299 from a 342 short side (crop fraction 0.875), 2x/255 - 1
    "inception": dict(size=(299, 299), channels="rgb", resize="short", resize_size=342, crop="center",
                      scale=2 / 255, mean=(1.0,), std=(1.0,)),
    # EfficientNet-Lite (TF checkpoints): RGB, (x - 127) / 128, short side 256, 224 center crop
    "efficientnet-lite": dict(size=(224, 224), channels="rgb", resize="short", resize_size=256, crop="center",
                              scale=1.0, mean=(127.0,), std=(128.0,)),
}


#: presets whose resize keeps a margin in pixels rather than a ratio when the output size changes
#: (TensorFlow's EfficientNet evaluation resizes the short side to size + 32: Lite1 240 from 272)
PRESET_MARGIN = {"efficientnet-lite": 32}


def resize_for(name, size):
    """The resize size preset ``name``'s own rule gives an output ``size`` (H, W) other than its own.

    A short-side preset keeps its margin (:data:`PRESET_MARGIN`) or its crop fraction (imagenet-torch: 224
    from 256, so 299 from 342); a direct warp with a centre crop scales each side by the same fraction; a
    preset without a crop resizes to the size itself.  Returns an int (short side) or an (H, W) pair.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    base = preset(name)
    h, w = _pair(size, "size (--size)")
    if base.crop == "none":
        return (h, w)
    if base.resize == "short":
        if name in PRESET_MARGIN:
            return min(h, w) + PRESET_MARGIN[name]
        return int(round(min(h, w) * base.resize_size / min(base.size)))
    return (int(round(h * base.resize_size[0] / base.size[0])), int(round(w * base.resize_size[1] / base.size[1])))


def preset(name, **overrides):
    """The :class:`PreprocessConfig` of preset ``name`` with some fields overridden.

    Overrides whose value is None are ignored, so command-line defaults can be
    passed through unchanged.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PreprocessConfig(preset=name, **fields)
    except ConfigError as exc:   # name the preset when its own per-channel values do not fit the channels given
        mine = [k for k in ("mean", "std") if overrides.get(k) is None and str(exc).startswith(f"{k} (--{k}) has")]
        if mine:
            raise ConfigError(f"{exc} (these are preset {name}'s {mine[0]} values: give --mean and --std for "
                              f"the channels you chose)") from None
        raise
