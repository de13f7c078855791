"""Progress callbacks with phases, compatible with plain ``progress(done, total)`` callables.

The library reports progress through a callable the caller passes in; it
never draws anything itself.  A callable that accepts a ``phase`` keyword
(or ``**kwargs``) is called ``progress(done, total, phase=..., unit=...)``, so
one object can show each pass of a long job ("histograms", "sensitivity",
"writing artefacts") as its own bar; the command line's bar does this.  A
plain ``(done, total)`` callable keeps receiving exactly what it received
before phases existed: the passes marked ``legacy`` (the main batch loop),
nothing else.
"""
import inspect


def accepts(fn, name):
    """True when ``fn`` can be called with the keyword ``name``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


def reporter(progress, phase, unit=None, legacy=False):
    """The ``(done, total)`` callable to use for one phase, or None.

    Parameters
    ----------
    progress : callable or None
        What the caller gave.
    phase : str
        Short name of the pass, e.g. ``"histograms"``.
    unit : str, optional
        What ``done`` counts (``"batches"``, ``"images"``, ...), passed when
        ``progress`` accepts ``unit``.
    legacy : bool
        Whether a plain ``(done, total)`` callable gets this phase (True for
        the passes it always received).
    """
    if progress is None:
        return None
    if not accepts(progress, "phase"):
        return progress if legacy else None
    extra = {"phase": phase}
    if unit is not None and accepts(progress, "unit"):
        extra["unit"] = unit

    def report(done, total):
        progress(done, total, **extra)
    return report
