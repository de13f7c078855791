"""Which batches a stream serves: :class:`Window` and :func:`plan_window`, the one owner of that rule.

TensorRT's C++ ``BatchStream`` serves ``batch_size`` images at a time from
files of N images each, skipping ``first`` batches first; its ``skip()``
stops early at ``maxBatches`` when the batch size is not a multiple of N.
:func:`plan_window` reproduces that (``skip="batchstream"``) or skips exactly
(``"exact"``) and validates the result once; :meth:`int8batch.reader.BatchSet.window`
applies it to a folder, and the runners, the TensorRT calibrator and the GPU
feeder all take the :class:`Window` it returns.
"""
from dataclasses import dataclass

from .errors import ConfigError, is_whole


#: how ``first`` skips batches: see :meth:`BatchSet.window`
SKIP_MODES = ("batchstream", "exact")


@dataclass(frozen=True)
class Window:
    """Which batches a stream serves: ``count`` batches of ``batch_size`` after ``skipped`` skipped ones.

    Made (and validated) by :meth:`BatchSet.window` or :func:`plan_window`;
    served by :meth:`BatchSet.batches` (``bs.batches(window=w)``).

    Attributes
    ----------
    batch_size : int
        Images per served batch.
    first : int
        Batches the caller asked to skip (sampleINT8's ``firstBatch``).
    skipped : int
        Batches really skipped.  Equal to ``first`` except for the BatchStream
        quirk (``skip="batchstream"``, batch size not a multiple of N and
        ``first > max_batches``: only ``max_batches`` are skipped).
    count : int
        Batches served.
    start_image : int
        Index in the whole set of the first served image (``skipped * batch_size``).
    images : int
        Images served (``count * batch_size``).
    skip : {"batchstream", "exact"}
        The skip semantics the window was planned with.
    max_batches : int or None
        The bound asked for (None: every full batch that remains).
    """

    batch_size: int
    first: int
    skipped: int
    count: int
    start_image: int
    images: int
    skip: str = "exact"
    max_batches: int = None

    @property
    def stop_image(self):
        """One past the last served image."""
        return self.start_image + self.images

    @property
    def last_image(self):
        """Index of the last served image (``start_image - 1`` for an empty window)."""
        return self.stop_image - 1

    def span(self):
        """``"images 50..549"`` (inclusive), or ``"no images"``."""
        return f"images {self.start_image}..{self.last_image}" if self.count else "no images"

    def describe(self):
        """One line, in sampleINT8's words: ``"10 batches of size 50 starting at 1 (images 50..549)"``.

        "starting at" names the first served batch (``skipped``); a BatchStream
        window that skipped fewer batches than asked says so.
        """
        text = f"{self.count} batches of size {self.batch_size} starting at {self.skipped} ({self.span()})"
        if self.skipped != self.first:
            text += (f"; BatchStream skipped {self.skipped} of the {self.first} batches asked for "
                     f"(its skip() stops at maxBatches = {self.max_batches})")
        return text


def _fit_hint(num_images, batch_size, skipped):
    """What would fit, for the error message of a window that does not."""
    total = num_images // batch_size
    if total == 0:
        return f"not one batch of {batch_size} fits; a batch size of at most {num_images} would"
    if skipped >= total:
        return (f"{total} batches of {batch_size} fit in all (batches 0..{total - 1}): skip fewer than "
                f"{total} or use a smaller batch size")
    return f"{total - skipped} batches of {batch_size} fit after skipping {skipped}"


def plan_window(num_images, per_file, batch_size, first=0, max_batches=None, skip="batchstream", *,
                strict=False, allow_empty=False, where="batch set"):
    """The one window computation: a validated :class:`Window` over ``num_images`` images.

    :meth:`BatchSet.window` calls this with the set's image count, its files'
    N (``per_file``) and its folder (``where``, named in errors).  The
    parameters are those of :meth:`BatchSet.window`; ``per_file`` may be None
    only for ``skip="exact"``.

    Raises
    ------
    ConfigError
        With one message naming ``where``, the numbers, and what would fit.
    """
    if skip not in SKIP_MODES:
        raise ConfigError(f"{where}: skip must be one of {', '.join(SKIP_MODES)}, got {skip!r}")
    for name, value in (("batch size", batch_size), ("first batch", first), ("max_batches", max_batches)):
        if value is not None and not is_whole(value):
            raise ConfigError(f"{where}: {name} must be a whole number, got {value!r}")
    batch_size, first = int(batch_size), int(first)
    if max_batches is not None:
        max_batches = int(max_batches)
    if batch_size <= 0:
        raise ConfigError(f"{where}: batch size must be positive, got {batch_size} "
                          f"(the set holds {num_images} images)")
    if first < 0:
        raise ConfigError(f"{where}: first batch (batches to skip) must be >= 0, got {first}")
    if max_batches is not None and max_batches < (0 if allow_empty else 1):
        raise ConfigError(f"{where}: the number of batches must be >= 1 (leave it out for every full batch that "
                          f"remains), got {max_batches}")
    skipped = first
    if skip == "batchstream" and max_batches is not None:
        if per_file is None:
            raise ConfigError(f"{where}: skip='batchstream' needs the files' N (per_file)")
        if batch_size % int(per_file):
            # BatchStream::skip's slow path: next() k times, each refused once maxBatches were counted
            skipped = min(first, max_batches)
    remaining = max(0, num_images // batch_size - skipped)
    count = remaining if max_batches is None else min(remaining, max_batches)
    want = max_batches if strict and max_batches is not None else 1
    if count < want and not (allow_empty and not strict):
        files = num_images // per_file if per_file else 0
        held = (f"{num_images} images ({files} file{'s' if files != 1 else ''} of {per_file})" if per_file
                else f"{num_images} images")
        a, b = skipped * batch_size, (skipped + want) * batch_size - 1
        if want == 1:
            what = (f"no full batch of {batch_size} images after skipping {skipped} batches: batch {skipped} "
                    f"needs images {a}..{b}")
        else:
            what = f"{want} batches of {batch_size} images from batch {skipped} need images {a}..{b}"
        quirk = ""
        if skipped != first:
            quirk = (f" (BatchStream skips only {skipped} of the {first} batches asked for: its skip() "
                     f"stops at maxBatches = {max_batches} when {batch_size} is not a multiple of N = {per_file})")
        raise ConfigError(f"{where}: {what}, but the set holds {held}{quirk}; "
                          f"{_fit_hint(num_images, batch_size, skipped)}")
    return Window(batch_size, first, skipped, count, skipped * batch_size, count * batch_size, skip, max_batches)
