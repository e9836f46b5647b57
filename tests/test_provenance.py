"""Code fingerprints follow the import closure of each workflow script, by relative path."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ntkbench.provenance import code_fingerprint, import_closure

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "workflow_scripts").glob("*.py"))
LIBRARY = sorted(p for p in (REPO / "ntkbench").rglob("*.py") if "__pycache__" not in p.parts)


_PROBE = """
import ast, json, sys
out = {}
for script in sys.argv[1:]:
    for name in [k for k in sys.modules if k.startswith("ntkbench")]:
        del sys.modules[name]  # torch stays loaded: the expensive part
    tree = ast.parse(open(script).read())
    exec(compile(ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], []), script, "exec"), {})
    if "ntkbench.models" in sys.modules:
        sys.modules["ntkbench.models"]._import_zoo()  # the zoo is imported on first use
    out[script] = [getattr(m, "__file__", None) for k, m in sys.modules.items() if k.startswith("ntkbench")]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runtime_modules() -> dict[str, set[Path]]:
    """Per script, the ntkbench files Python loads when it runs the script's imports."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *map(str, SCRIPTS)], cwd=REPO, capture_output=True,
                          text=True, check=True)
    loaded = json.loads(proc.stdout.splitlines()[-1])
    return {Path(k).name: {Path(f).resolve() for f in v if f} for k, v in loaded.items()}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_closure_holds_every_module_python_loads(script, runtime_modules):
    static = set(import_closure(script, REPO))
    runtime = runtime_modules[script.name]
    assert ntkbench_loaded(runtime), script.name
    assert runtime - static == set(), f"{script.name}: modules loaded but not fingerprinted"
    assert all(p.is_relative_to(REPO / "ntkbench") for p in static)


def ntkbench_loaded(files: set[Path]) -> bool:
    return (REPO / "ntkbench" / "__init__.py").resolve() in files


def test_library_has_no_dynamic_imports():
    """The closure is read statically, so every import must be an import statement."""
    offenders = [p.relative_to(REPO) for p in LIBRARY
                 if "__import__(" in p.read_text() or "import_module(" in p.read_text()]
    assert offenders == []


def _tree_copy(dest: Path) -> Path:
    for name in ("ntkbench", "workflow_scripts"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_fingerprints_do_not_depend_on_where_the_checkout_lives(tmp_path):
    a, b = _tree_copy(tmp_path / "one"), _tree_copy(tmp_path / "elsewhere" / "two")
    for script in SCRIPTS:
        rel = script.relative_to(REPO)
        assert code_fingerprint(a / rel, a) == code_fingerprint(b / rel, b) == code_fingerprint(script, REPO)


def test_editing_a_module_changes_exactly_the_scripts_that_import_it(tmp_path):
    root = _tree_copy(tmp_path / "repo")
    scripts = [root / s.relative_to(REPO) for s in SCRIPTS]
    before = {s.name: code_fingerprint(s, root) for s in scripts}
    closures = {s.name: set(import_closure(s, root)) for s in scripts}
    for module in LIBRARY:
        target = root / module.relative_to(REPO)
        original = target.read_text()
        target.write_text(original + "\n# edited\n")
        try:
            changed = {s.name for s in scripts if code_fingerprint(s, root) != before[s.name]}
        finally:
            target.write_text(original)
        expected = {name for name, files in closures.items() if target.resolve() in files}
        assert changed == expected, module.relative_to(REPO)


def test_stage_modules_are_fingerprinted_by_the_rules_that_run_them():
    """The issue's example: editing ntkbench/stages/*.py must rerun the kernel and kGLM jobs."""
    kernel = {p.relative_to(REPO).as_posix() for p in import_closure(REPO / "workflow_scripts/kernel.py", REPO)}
    kglm = {p.relative_to(REPO).as_posix() for p in import_closure(REPO / "workflow_scripts/kglm.py", REPO)}
    assert "ntkbench/stages/kernels.py" in kernel and "ntkbench/kernels/streaming.py" in kernel
    assert {"ntkbench/stages/surrogates.py", "ntkbench/surrogate.py", "ntkbench/metrics.py",
            "ntkbench/stages/kernels.py", "ntkbench/store.py"} <= kglm
    assert "ntkbench/plots/summary.py" not in kglm
