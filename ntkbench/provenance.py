"""Code fingerprints for reruns: the library modules a workflow script really imports.

Snakemake reruns a job when its script changes, but not when a library module the script
imports changes. Each rule therefore passes, as a ``params`` value, the hash of the import
closure of its script: every ``ntkbench`` module reachable through ``import`` statements
(including imports inside functions, and the package ``__init__`` files Python executes on
the way), read statically from the source, never by importing it, so the Snakefile stays
cheap to parse. Files are hashed by their path relative to the repository root, so a moved
or re-cloned checkout hashes the same and reruns nothing.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["import_closure", "code_fingerprint"]

PACKAGE = "ntkbench"


def _module_file(root: Path, dotted: str) -> Path | None:
    """The source file of module ``dotted`` under ``root`` (a module or a package)."""
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, file: Path) -> str:
    rel = file.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _with_parents(root: Path, dotted: str) -> list[Path]:
    """``a.b.c`` executes ``a/__init__``, ``a/b/__init__`` and ``a/b/c``: all of them."""
    parts = dotted.split(".")
    files = [_module_file(root, ".".join(parts[: i + 1])) for i in range(len(parts))]
    return [f for f in files if f is not None]


@lru_cache(maxsize=None)
def _direct_imports(root: Path, file: Path, mtime_ns: int) -> tuple[Path, ...]:
    """Library files that ``file`` imports anywhere in its body (cached per file version)."""
    tree = ast.parse(file.read_bytes(), filename=str(file))
    is_package = file.name == "__init__.py"
    here = _module_name(root, file) if file.is_relative_to(root / PACKAGE) else ""
    found: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                pkg = here.split(".") if is_package else here.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                module = ".".join(pkg + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from a import b`` imports a, and a.b too when b is a submodule.
            names = [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.extend(_with_parents(root, name))
    return tuple(dict.fromkeys(found))


def import_closure(script: str | Path, root: str | Path) -> list[Path]:
    """Every ``ntkbench`` source file ``script`` imports, directly or not, sorted.

    ``root`` is the repository root (the directory holding the ``ntkbench`` package).
    """
    root = Path(root).resolve()
    todo = [Path(script).resolve()]
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(_direct_imports(root, file, file.stat().st_mtime_ns))
    seen.discard(Path(script).resolve())
    return sorted(seen)


def code_fingerprint(script: str | Path, root: str | Path) -> str:
    """Short hash of ``script`` and its import closure, by paths relative to ``root``."""
    root = Path(root).resolve()
    script = Path(script).resolve()
    digest = hashlib.sha256()
    for file in [script, *import_closure(script, root)]:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
