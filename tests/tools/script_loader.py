"""Load a tools/ or bench/ script as a module (they are scripts, not a package)."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name, folder="tools", register=False):
    """``folder/name.py`` as a fresh module; ``register``: also in sys.modules (dataclasses look it up there)."""
    if folder == "bench" and os.path.join(ROOT, "bench") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "bench"))      # as when run as a script: its _paths helper
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod
