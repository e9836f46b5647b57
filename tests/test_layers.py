"""The library's shape: data flows one way through the layers, and modules talk to each other
through public names only (no ``from .x import _private``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ntkbench"

# data -> models -> training -> kernels -> surrogates / forensics / spectral / attribution
# -> tables and plots -> stages. Rank 0: foundations every layer may use.
RANKS = {
    "ntkbench": 0, "utils": 0, "integrity": 0, "kinds": 0, "store": 0, "tiles": 0, "provenance": 0,
    "config": 0, "metrics": 0,
    "data": 1,
    "models": 2,
    "training": 3,
    "kernels": 4,
    "surrogate": 5, "forensics": 5, "spectral": 5, "attribution": 5, "analysis": 5,
    "tables": 6, "plots": 6, "leaderboard": 6,
    "stages": 7,
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, imported name or '') of every ntkbench import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "ntkbench":
                found += [(node.lineno, target, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names if alias.name.split(".")[0] == "ntkbench"]
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ntkbench"


def test_every_library_module_has_a_layer():
    missing = sorted({_unit(m) for m, _ in _modules()} - set(RANKS))
    assert not missing, f"classify these modules in RANKS: {missing}"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_no_module_imports_a_layer_above_it(module, path):
    own = RANKS[_unit(module)]
    above = []
    for line, target, name in _imports(module, path):
        # ``from ntkbench import kernels`` names the subpackage in ``name``
        unit = _unit(target) if target != "ntkbench" or name in ("", "__version__") else name
        if RANKS.get(unit, 0) > own:
            above.append(f"{path.name}:{line} imports {target}{'.' + name if name else ''} ({unit}, above {_unit(module)})")
    assert not above, "\n".join(above)


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_no_module_imports_a_private_name(module, path):
    private = [f"{path.name}:{line} from {target} import {name}"
               for line, target, name in _imports(module, path)
               if name.startswith("_") and not name.startswith("__")]
    # Aliases count too: ``from .. import kinds as _kinds`` hides a public module behind a
    # private-looking name, ``kernels._x`` reaches into another module.
    tree = ast.parse(path.read_text())
    modules_bound = {alias.asname or alias.name for node in ast.walk(tree)
                     if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ntkbench")):
            private += [f"{path.name}:{node.lineno} imports {alias.name} as {alias.asname}" for alias in node.names
                        if (alias.asname or "").startswith("_") and not alias.asname.startswith("__")]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules_bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not private, "\n".join(private)


def test_the_checks_see_a_private_import(tmp_path):
    """The scan itself: a planted private import and a layer inversion are found."""
    bad = tmp_path / "ntkbench" / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ntkbench.kernels.engine import _hidden\nfrom ..stages import common\n")
    found = _imports("ntkbench.data.bad", bad)
    assert (1, "ntkbench.kernels.engine", "_hidden") in found
    assert (2, "ntkbench.stages", "common") in found
