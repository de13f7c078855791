"""Typed exceptions.  Every user-facing error is an ``Int8BatchError``.

Each subclass also inherits the matching builtin so that callers who catch
``ValueError`` or ``OSError`` keep working.  The offending path or value is kept
as an attribute; the message says what was found, what was expected and what to
do.  The command line prints ``Int8BatchError`` as one line and exits non-zero;
any other exception is a bug and shows its traceback.
"""


class Int8BatchError(Exception):
    """Base class of every error int8batch raises on purpose."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class BatchFormatError(Int8BatchError, ValueError):
    """A batch file or batch folder does not follow the sampleINT8 format."""


class ManifestError(Int8BatchError, ValueError):
    """A manifest is missing, incomplete or disagrees with the batch files."""


class ImageDecodeError(Int8BatchError, ValueError):
    """An image file could not be read or decoded."""


class SourceError(Int8BatchError, ValueError):
    """The source of a pack (folder, label file, IDX files) is unusable."""


class ConfigError(Int8BatchError, ValueError):
    """Preprocessing or command options are inconsistent."""


class OutputExistsError(Int8BatchError, FileExistsError):
    """The output already holds files that would be overwritten."""


class DiskSpaceError(Int8BatchError, OSError):
    """The output would not fit on the disk."""


class OutputWriteError(Int8BatchError, OSError):
    """Writing, renaming or removing an output file failed (permission, read-only or failing disk).

    ``errno`` holds the operating system's error number when there was one.
    """


class OutputLockedError(Int8BatchError, BlockingIOError):
    """Another int8batch process is writing into the same output folder; ``pid`` is the holder's."""

    def __init__(self, message, path=None, pid=None):
        super().__init__(message, path)
        self.pid = pid


class CalibrationError(Int8BatchError, RuntimeError):
    """Calibration could not run or produced unusable results."""


class CacheError(Int8BatchError, ValueError):
    """A TensorRT calibration cache or dynamic-range file is malformed."""


class ModelError(Int8BatchError, ValueError):
    """An ONNX model does not fit the batches or cannot be processed."""


class CudaError(Int8BatchError, RuntimeError):
    """A CUDA runtime call failed; ``name`` is the CUDA error name."""

    def __init__(self, message, name=None, code=None):
        super().__init__(message)
        self.name = name
        self.code = code


class MissingDependencyError(Int8BatchError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def is_whole(value):
    """True for an integer (Python or NumPy), False for a bool, a float such as 2.5 or 3.0, or a string."""
    import numbers
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole_number(value, name, low=0):
    """``value`` as an int >= ``low``, or a :class:`ConfigError` naming ``name`` (never a silent substitute)."""
    if not is_whole(value) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)
