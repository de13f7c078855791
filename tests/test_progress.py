"""int8batch._progress: phase-aware progress calls that keep plain (done, total) callables working."""
import functools

from int8batch._progress import accepts, reporter


def test_plain_callables_get_only_the_passes_they_always_got():
    seen = []

    def plain(done, total):
        seen.append((done, total))
    assert reporter(plain, "histograms", "batches", legacy=True) is plain
    assert reporter(plain, "sensitivity", "tensors") is None
    assert reporter(None, "histograms", legacy=True) is None
    reporter(plain, "histograms", legacy=True)(3, 10)
    assert seen == [(3, 10)]


def test_phase_aware_callables_hear_the_phase_and_unit_they_accept():
    seen = []

    def phased(done, total, phase=None):
        seen.append((done, total, phase))

    def full(done, total, *, phase=None, unit=None):
        seen.append((done, total, phase, unit))

    def anything(done, total, **kw):
        seen.append((done, total, kw))
    reporter(phased, "sensitivity", "tensors")(1, 5)
    reporter(full, "writing artefacts", "files")(2, 4)
    reporter(anything, "histograms", "batches", legacy=True)(7, 9)
    reporter(full, "scoring")(1, None)
    assert seen == [(1, 5, "sensitivity"), (2, 4, "writing artefacts", "files"),
                    (7, 9, {"phase": "histograms", "unit": "batches"}), (1, None, "scoring", None)]


def test_accepts_objects_partials_and_builtins():
    class Bar:
        def __call__(self, done, total, phase=None):
            pass
    assert accepts(Bar(), "phase") and not accepts(Bar(), "unit")
    assert accepts(functools.partial(lambda d, t, phase: None, phase="x"), "phase")
    assert not accepts(print, "phase")   # a builtin: no readable signature or no such keyword
    assert not accepts(lambda *args: None, "phase")
