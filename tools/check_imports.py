"""Check that int8batch's imports point down the layers written in CONTRIBUTING.md.

    python tools/check_imports.py            # prints every upward import, exit 1 if any

The layer table is the block between ``<!-- layers -->`` and ``<!-- /layers -->``
in CONTRIBUTING.md: one line per layer, bottom first, ``<number> <module> ...``
with module paths relative to the package (``trt.vocab``, ``calib``).  A module
belongs to the entry that is the longest prefix of its path.  A module may
import its own layer and every layer below; an import of a higher layer is
reported with file and line.  Imports inside functions count too: a lazy
import still ties the layers together.
"""
from __future__ import annotations

import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "int8batch"


def read_layers(contributing=os.path.join(ROOT, "CONTRIBUTING.md")) -> dict[str, int]:
    text = open(contributing, encoding="utf-8").read()
    m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    if not m:
        raise SystemExit(f"{contributing}: no '<!-- layers -->' block")
    layers = {}
    for line in m.group(1).splitlines():
        parts = line.strip().strip("`").split()
        if parts and parts[0].isdigit():
            for name in parts[1:]:
                layers[name] = int(parts[0])
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """Layer of ``int8batch.x.y`` (longest matching entry), None for the package root."""
    rel = module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else ""
    parts = rel.split(".") if rel else []
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in layers:
            return layers[key]
    return None


def _modules(pkg_dir):
    for root, _, files in os.walk(pkg_dir):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(pkg_dir))[:-3].replace(os.sep, ".")
                is_pkg = f == "__init__.py"
                yield path, (rel[: -len(".__init__")] if is_pkg else rel), is_pkg


def _is_module(name, pkg_dir):
    rel = name.split(".")[1:]
    base = os.path.join(pkg_dir, *rel)
    return os.path.isfile(base + ".py") or os.path.isdir(base)


def imports_of(path, module, is_pkg, pkg_dir):
    """(line, imported module) for every int8batch import in one file."""
    package = module if is_pkg else module.rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module
            else:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                yield node.lineno, sub if _is_module(sub, pkg_dir) else target


def check(pkg_dir=os.path.join(ROOT, PACKAGE), layers=None) -> list[str]:
    """Every upward import as ``path:line: a (layer i) imports b (layer j)``."""
    layers = read_layers() if layers is None else layers
    problems = []
    for path, module, is_pkg in _modules(pkg_dir):
        mine = layer_of(module, layers)
        if mine is None and module != PACKAGE:
            problems.append(f"{path}: module {module} has no layer in CONTRIBUTING.md")
            continue
        if module == PACKAGE:
            continue  # the root package re-exports the public API from every layer
        for line, target in imports_of(path, module, is_pkg, pkg_dir):
            theirs = layer_of(target, layers)
            if theirs is None:
                problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} (layer {mine}) imports "
                                f"the package root {target}; import the module that owns the name")
            elif theirs > mine:
                problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} (layer {mine}) imports "
                                f"{target} (layer {theirs})")
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(p)
    print(f"{len(problems)} upward import(s)" if problems else "imports point down the layers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
