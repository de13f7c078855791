"""The model's image input: which one it is, and whether batches or a packing recipe fit it.

One shape comparison serves every command that pairs images with a model:
``calibrate``, ``eval`` and the runners check batch files ``(N, C, H, W)``
against the input (:func:`check_batch_shape`, through
:class:`~int8batch.calib.ort_exec.ActivationRunner` and ``ModelRunner``), and
``pack --model`` / ``run imagenet`` check a preprocessing recipe's
``(C, H, W)`` before any image is decoded (:func:`check_recipe`).

``onnx`` is imported inside the functions (through :mod:`int8batch.onnx.graph`).
"""
from dataclasses import dataclass

from ..errors import ModelError
from ..preprocess import PRESETS, preset, resize_for
from . import graph as G


def image_input(model, label="<model>"):
    """The model's single float input, as :class:`~int8batch.onnx.graph.InputInfo`.

    Raises
    ------
    ModelError
        The model has several inputs, or its input is not a float tensor.
    """
    infos = G.input_info(model)
    if len(infos) != 1:
        raise ModelError(f"{label}: the model has {len(infos)} inputs "
                         f"({', '.join(i.name for i in infos)}); int8batch feeds models with "
                         "exactly one image input", label)
    info = infos[0]
    if info.dtype is None or info.dtype.kind != "f":
        raise ModelError(f"{label}: input '{info.name}' is {info.dtype}, not a float tensor; "
                         "the batch files hold float32 images", label)
    return info


def _fixed(d):
    return d if isinstance(d, int) and d > 0 else None


def shown_shape(shape):
    """A model input shape for messages: fixed sizes, dimension names, ``?`` for unnamed ones."""
    return [d if _fixed(d) else (d if isinstance(d, str) else "?") for d in shape]


def check_batch_shape(info, dims, label="<model>", against="the batches are", hint=None):
    """Check ``(N, C, H, W)`` against a model input.

    Parameters
    ----------
    info : InputInfo
    dims : sequence of int or None
        The images' shape; a None entry is not compared (``pack`` leaves the
        batch size to ``calibrate --batch-size``).
    label : str
        How the message names the model (its path).
    against, hint : str, optional
        What ``dims`` are (the message reads "has shape [...] but <against>
        [...]") and how to fix a channel/height/width mismatch (default:
        repack at the model's size).

    Dynamic model dimensions (named, unnamed or <= 0) accept any size.

    Raises
    ------
    ModelError
        Naming the input, both shapes and the fix.
    """
    dims = tuple(None if d is None else int(d) for d in dims)
    shape = info.shape
    if shape is None:
        return
    fixed = [_fixed(d) for d in shape]
    shown = shown_shape(shape)
    dims_shown = ["N" if d is None else d for d in dims]
    if len(fixed) != len(dims):
        raise ModelError(f"{label}: model input '{info.name}' has shape {shown} (rank {len(shape)}) "
                         f"but {against} {dims_shown}; export the model with an NCHW image "
                         "input or repack the images to match", label)
    bad = [k for k, (m, b) in enumerate(zip(fixed, dims)) if None not in (m, b) and m != b]
    if not bad:
        return
    if channels_last(shape, dims[1]):
        hint = channels_last_hint(info.name)
    elif bad == [0]:
        hint = (f"the model has a fixed batch size of {fixed[0]}: pass --batch-size {fixed[0]} "
                f"to re-batch, repack with {fixed[0]} images per file, or export the model "
                "with a dynamic batch dimension")
    elif hint is None:
        hint = (f"repack the images at the model's size {shown[1:]} "
                "(int8batch pack --size/--channels, or pack --model MODEL to check before packing)")
    raise ModelError(f"{label}: model input '{info.name}' has shape {shown} but {against} "
                     f"{dims_shown}; {hint}", label)


@dataclass(frozen=True)
class RecipeFit:
    """How a packing recipe met a model input (:func:`check_recipe`).

    Attributes
    ----------
    model : str
    input : str
        The input's name.
    shape : list
        Its shape as :func:`shown_shape` prints it.
    recipe : str
        ``preset NAME`` or ``the recipe``.
    chw : tuple of int
        What the recipe makes.
    dynamic : tuple of str
        Which of channels/height/width the model leaves open (the recipe decides them).
    """

    model: str
    input: str
    shape: list
    recipe: str
    chw: tuple
    dynamic: tuple

    def describe(self):
        """One line for the command line."""
        made = "x".join(map(str, self.chw))
        head = f"model {self.model}: input '{self.input}' {self.shape}"
        if self.dynamic:
            return (f"{head}: {' and '.join(self.dynamic)} dynamic, so {self.recipe} decides ({made}); "
                    "the model does not record channel order or mean/std: check they match its training")
        return (f"{head} fits {self.recipe} ({made}); the model does not record channel order or "
                "mean/std: check they match its training")


def check_recipe(model, cfg, label=None):
    """Check a packing recipe's ``(C, H, W)`` against a model's image input.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
    cfg : PreprocessConfig
        The recipe (its ``chw`` and ``preset`` are read).
    label : str, optional
        How messages name the model (default: its path).

    Returns
    -------
    RecipeFit

    Raises
    ------
    ModelError
        The model has no single NCHW float input, or a fixed channel count,
        height or width differs from the recipe's; the message names the
        model file, both shapes, the presets that would fit and the options
        that change the recipe.
    """
    label = label or G.model_label(model)
    info = image_input(G.load_model(model), label)
    recipe = f"preset {cfg.preset}" if cfg.preset else "the recipe"
    check_batch_shape(info, (None,) + tuple(cfg.chw), label, against=f"{recipe} makes",
                      hint=_recipe_hint(info.shape, cfg, info.name) if info.shape and len(info.shape) == 4 else None)
    dynamic = tuple(n for n, d in zip(("channels", "height", "width"), info.shape[1:]) if not _fixed(d)) \
        if info.shape else ("channels", "height", "width")
    return RecipeFit(label, info.name, shown_shape(info.shape) if info.shape else "[unknown rank]", recipe,
                     tuple(cfg.chw), dynamic)


def channels_last(shape, channels):
    """True for a rank-4 input that looks NHWC for images of ``channels``: its last dimension is that
    count, its second is not, and the middle two are dynamic or image-sized (more than 4)."""
    if shape is None or len(shape) != 4 or _fixed(shape[3]) != channels or _fixed(shape[1]) == channels:
        return False
    return all(_fixed(d) is None or d > 4 for d in shape[1:3])


def channels_last_hint(name="NAME"):
    return ("the input looks channels-last (NHWC, as TensorFlow exports it), but batch files hold NCHW images "
            f"(TensorRT's sample format): export the model with an NCHW input (tf2onnx: --inputs-as-nchw {name})")


def _recipe_hint(shape, cfg, name="NAME"):
    if channels_last(shape, cfg.num_channels):
        return channels_last_hint(name)
    c, h, w = (_fixed(d) for d in shape[1:])
    if c and c not in (1, 3):
        return f"the model takes {c} channels; int8batch packs images of 1 (gray) or 3 (rgb, bgr) channels"
    fits = [n for n in PRESETS
            if all(m is None or m == r for m, r in zip((c, h, w), preset(n).chw))]
    parts = []
    if fits:
        parts.append("use a preset of that shape: " + " or ".join(f"--preset {n}" for n in fits))
    opts, note = [], ""
    if h and w and (h, w) != tuple(cfg.size):
        opts.append(f"--size {h}x{w}")
        if cfg.preset in PRESETS:    # the preset's own rule for the resize (EfficientNet-Lite1: 240 from 272)
            rs = resize_for(cfg.preset, (h, w))
            opts.append(f"--resize-size {rs if isinstance(rs, int) else f'{rs[0]}x{rs[1]}'}")
        else:
            note = " and a --resize-size of at least that"
    if c and c != cfg.num_channels:
        opts.append("--channels gray" if c == 1 else "--channels rgb (or bgr)")
        if c == 1 and (len(set(cfg.mean)) > 1 or len(set(cfg.std)) > 1):   # one value for one channel
            mean, std = sum(cfg.mean) / len(cfg.mean), sum(cfg.std) / len(cfg.std)
            opts.append(f"--mean {mean:.4g} --std {std:.4g}")
    if opts:
        if cfg.preset:
            opts.insert(0, f"--preset {cfg.preset}")
        parts.append(f"{'or ' if parts else ''}keep the recipe with {' '.join(opts)}{note}")
    return "; ".join(parts) + " (whichever matches how the model was trained)"
