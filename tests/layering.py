"""Static import scans shared by the layering tests (policies below the engine, the reference
oracles below everything): which modules the files of a package import."""

from __future__ import annotations

import ast
import pathlib


def module_name(root: pathlib.Path, package: str, path: pathlib.Path) -> str:
    """``path`` (a file under ``root``, the directory of ``package``) as a dotted module name."""
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def imported(
    root: pathlib.Path, package: str, path: pathlib.Path, members: bool = False
) -> list[str]:
    """The absolute module names every import statement in ``path`` refers to (function-local
    imports included); ``members`` adds ``module.name`` for every ``from module import name``."""
    pkg = module_name(root, package, path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            head = ".".join([*base, node.module] if node.module else base)
            names.append(head)
            if members:
                names.extend(f"{head}.{alias.name}" for alias in node.names)
    return names
