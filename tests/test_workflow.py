"""The whole Snakemake DAG end to end on a tiny config, and what reruns after a change.

The repository's workflow files are copied into a temporary directory with a tiny
``config.yaml``; Snakemake runs there for real, then dry runs check the rerun rules:
a kGLM setting reruns only the kGLM fits and what follows, a kernel setting does not
retrain, and a library-code change reruns its stage.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_scripts", "profiles", "ntkbench", "report"]
TINY_CONFIGS = ["main_tiny.yaml", "forensics_tiny.yaml", "spectral_tiny.yaml"]

pytestmark = pytest.mark.slow


def tiny_config() -> dict:
    """The main tiny config merged with the stage blocks the other tiny configs provide."""
    config: dict = {}
    for name in TINY_CONFIGS:
        path = REPO / "tests" / "configs" / name
        if not path.exists():
            continue
        block = yaml.safe_load(path.read_text()) or {}
        experiments = block.pop("experiments", {})
        config.setdefault("experiments", {}).update(experiments)
        config.update(block)
    return config


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # profiles/default re-selects jobs every 5 s, and a run exits up to 5 s after its last job;
    # the tests' many short runs keep Snakemake's 1 s (the timespan changes no output)
    proc = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--max-jobs-per-timespan", "100/1s", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule name -> job count that a dry run would execute."""
    proc = snakemake(workdir, "--dry-run", "--quiet", "rules")
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^([A-Za-z_][\w]*)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    assert jobs, f"could not parse the dry run:\n{text[-3000:]}"
    return jobs


def copy_workflow(dest: Path) -> Path:
    """The repository's workflow files, copied into ``dest``."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def finished_workdir(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    snakemake(workdir)
    return workdir


def edit_config(workdir: Path, edit) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_summary_has_paper_columns_and_faithful_trntk(finished_workdir):
    summary = pd.read_csv(finished_workdir / "results" / "summary.csv")
    required = ["experiment", "kernel", "variant", "solver", "alpha", "target", "n_seeds", "nn_test_acc",
                "kglm_test_acc", "tad", "tad_sem", "tau", "tau_sem", "tau_true_class", "tau_true_class_sem"]
    assert set(required) <= set(summary.columns)
    assert (summary.solver == "lbfgs").all() and (summary.variant == "default").all()
    config = tiny_config()
    expected_rows = {(exp, k) for exp, spec in config["experiments"].items() for k in spec["kernels"]}
    assert set(zip(summary.experiment, summary.kernel)) == expected_rows
    assert (summary.n_seeds == 2).all()
    assert summary.tau.between(-1, 1).all()
    trntk = summary[summary.kernel == "trntk"]
    assert (trntk.tau > 0.1).all(), trntk[["experiment", "tau"]]
    assert (finished_workdir / "results" / "summary.md").read_text().count("|") > 10
    assert (finished_workdir / "results" / "summary_tau.png").stat().st_size > 10_000


def test_kernel_files_carry_provenance(finished_workdir):
    import h5py

    path = finished_workdir / "results" / "tiny2-mlp" / "seed0" / "kernels" / "trntk.h5"
    with h5py.File(path, "r") as fh:
        assert set(fh) >= {"train_train", "test_train"}
        attrs = dict(fh["train_train"].attrs)
        assert attrs["kind"] == "trntk"
        assert fh["train_train"]["kernel"].shape == (80, 80)
        assert fh["test_train"]["kernel"].shape == (40, 80)
    assert not list(finished_workdir.rglob("*.partial")), "a finished run leaves no partial files"


def test_logs_and_benchmarks_written(finished_workdir):
    logs = finished_workdir / "results" / "logs"
    assert (logs / "tiny2-mlp" / "seed0" / "train.log").read_text().count("epoch") >= 2
    assert list((finished_workdir / "results" / "benchmarks").rglob("*.tsv"))


def test_nothing_to_do_after_a_complete_run(finished_workdir):
    assert planned_jobs(finished_workdir) == {}


def test_kglm_setting_reruns_only_kglm_and_downstream(finished_workdir):
    edit_config(finished_workdir, lambda c: c.setdefault("kglm", {}).update(alpha=3e-4))
    jobs = planned_jobs(finished_workdir)
    edit_config(finished_workdir, lambda c: c["kglm"].pop("alpha"))
    assert "train" not in jobs and "kernel" not in jobs
    # Experiments that set their own kglm.alpha are unaffected by the global one.
    n_kglm = sum(len(s["kernels"]) * 2 for s in tiny_config()["experiments"].values()
                 if "alpha" not in s.get("kglm", {}))
    assert jobs["kglm"] == n_kglm
    assert jobs["summary"] == 1


def test_kernel_setting_does_not_retrain(finished_workdir):
    edit_config(finished_workdir, lambda c: c["kernel_options"].update(proj_dim=128))
    jobs = planned_jobs(finished_workdir)
    edit_config(finished_workdir, lambda c: c["kernel_options"].update(proj_dim=256))
    assert "train" not in jobs
    # proj_dim touches the two projected kernels of tiny2-mlp and one of tiny10-cnn, x 2 seeds.
    n_proj = sum(sum(k.startswith("proj-") for k in s["kernels"]) * 2
                 for s in tiny_config()["experiments"].values())
    assert jobs["kernel"] == n_proj
    assert jobs["kglm"] == n_proj


def test_library_code_change_reruns_its_stage(finished_workdir):
    surrogate = finished_workdir / "ntkbench" / "surrogate.py"
    original = surrogate.read_text()
    surrogate.write_text(original + "\n# an edit\n")
    try:
        jobs = planned_jobs(finished_workdir)
    finally:
        surrogate.write_text(original)
    assert "train" not in jobs and "kernel" not in jobs
    assert jobs["kglm"] > 0


def test_invalid_config_stops_with_named_key(finished_workdir):
    edit_config(finished_workdir, lambda c: c["experiments"]["tiny2-mlp"]["train"].update(lr=-1))
    try:
        proc = snakemake(finished_workdir, "--dry-run", check=False)
    finally:
        edit_config(finished_workdir, lambda c: c["experiments"]["tiny2-mlp"]["train"].update(lr=1.0))
    assert proc.returncode != 0
    assert "experiments.tiny2-mlp.train.lr" in proc.stdout + proc.stderr


def test_a_moved_checkout_reruns_nothing(finished_workdir, tmp_path):
    """Code fingerprints hash paths relative to the repository: a moved or re-cloned checkout
    (with its results) is up to date."""
    moved = tmp_path / "somewhere" / "else"
    shutil.copytree(finished_workdir, moved, symlinks=True)
    assert planned_jobs(moved) == {}


def _downstream(workdir: Path) -> dict[str, set[str]]:
    """Rule -> itself and every rule that (transitively) consumes its outputs, from the rule graph."""
    dot = snakemake(workdir, "--rulegraph").stdout
    names = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)\"", dot, flags=re.M))
    edges = [(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)]
    closure = {rule: {rule} for rule in names.values()}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            for rule, down in closure.items():
                if a in down and not closure[b] <= down:
                    down |= closure[b]
                    changed = True
    return closure


def test_each_library_module_reruns_exactly_the_stages_that_import_it(finished_workdir, tmp_path):
    """For every library module: edit it, and the jobs Snakemake plans must be exactly those of
    the rules whose script imports the module (directly or not) and of the rules downstream of
    them. Two copies of the finished workdir share the modules, so two dry runs go at once."""
    from concurrent.futures import ThreadPoolExecutor

    from ntkbench.provenance import import_closure

    copies = [finished_workdir, tmp_path / "copy"]
    shutil.copytree(finished_workdir, copies[1], symlinks=True)
    downstream = _downstream(finished_workdir)
    scripts = {path.stem: path for path in (finished_workdir / "workflow_scripts").glob("*.py")}
    # every rule runs the script of its own name
    closures = {rule: {p.relative_to(finished_workdir) for p in import_closure(scripts[rule], finished_workdir)}
                for rule in downstream if rule != "all"}
    modules = sorted(p.relative_to(finished_workdir) for p in (finished_workdir / "ntkbench").rglob("*.py")
                     if "__pycache__" not in p.parts)
    assert len(modules) > 40

    def check(workdir, module):
        path = workdir / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            planned = set(planned_jobs(workdir)) - {"all"}
        finally:
            path.write_text(original)
        importers = {rule for rule, files in closures.items() if module in files}
        expected = set().union(*(downstream[r] for r in importers)) - {"all"} if importers else set()
        return module, planned, expected

    def check_all(i):  # one thread per copy: a copy is never edited by two threads
        return [check(copies[i], m) for m in modules[i::2]]

    with ThreadPoolExecutor(2) as pool:
        results = [r for part in pool.map(check_all, range(2)) for r in part]
    wrong = [(str(m), sorted(c), sorted(e)) for m, c, e in results if c != e]
    assert wrong == [], wrong
    # Every stage's script is covered: some module edit reruns each rule.
    assert set().union(*(c for _, c, _ in results)) == set(closures)


def test_report_holds_every_table_and_figure_with_captions(finished_workdir):
    """`snakemake --report` (make report) writes one self-contained HTML file."""
    snakemake(finished_workdir, "--report", "results/report.html")
    html = (finished_workdir / "results" / "report.html").read_text()
    for name in ("summary.csv", "summary_tau.png", "forensics.csv", "forensics_top_k.png", "attack.csv",
                 "tms_spectra.png", "tms_alignment.png", "grokking.png", "fourier_heatmaps.png",
                 "kglm_attribution.png", "exemplars.png", "linear_realisation.png", "attribution.csv",
                 "attribution.png"):
        assert name in html, name
    for caption in ("saturated points dropped", "flagged as poisoned", "cliffs detected",
                    "sum over the training points", "linear datamodeling score", "Does a more faithful surrogate"):
        assert caption in html, caption
    # Nothing is fetched when it opens: no external scripts, styles or images.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", html)


def test_a_spectral_only_config_plans_only_the_spectral_jobs(tmp_path):
    copy_workflow(tmp_path)
    spectral = {"tms": {"n_features": 8, "num_points": 40, "runs": [{"m": 3, "sparsity": 0.3}], "steps": 100,
                        "top_k": 20}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"experiments": {}, "spectral": spectral}))
    assert planned_jobs(tmp_path) == {"tms_train": 1, "tms_spectrum": 1, "tms_report": 1, "all": 1}


def test_attribution_table_written(finished_workdir):
    table = pd.read_csv(finished_workdir / "results" / "attribution.csv")
    assert set(table.experiment) == set(tiny_config()["attribution"]["experiments"])
    assert table.lds.between(-1, 1).all() and table.auc.between(0, 1).all()
    assert {"kglm", "kernel-sim", "tracin", "grad-dot", "grad-cos", "trak"} <= set(table.method)
    kglm = table[table.method == "kglm"]
    assert kglm.tau.between(-1, 1).all()  # τ beside LDS, from the kGLM reports
    assert (finished_workdir / "results" / "attribution.png").stat().st_size > 10_000
    assert "LDS" in (finished_workdir / "results" / "attribution.md").read_text()


def test_analysis_figures_written(finished_workdir):
    """The surrogate analysis of every experiment (default: first seed, every kGLM kernel)."""
    config = tiny_config()
    for experiment, spec in config["experiments"].items():
        folder = finished_workdir / "results" / experiment / "analysis"
        for name in ("kglm_attribution.png", "exemplars.png", "linear_realisation.png"):
            assert (folder / name).stat().st_size > 20_000, (experiment, name)
        table = pd.read_csv(folder / "kglm_attribution.csv")
        assert set(table.seed) == {0} and set(table.kernel) == set(spec["kernels"])
        assert table.test_row.nunique() == 4  # the schema's default test_points
        sums = table.groupby(["kernel", "test_row", "logit"]).agg(total=("sum", "sum"), z=("kglm_logit", "first"))
        assert ((sums.total - sums.z).abs() <= 1e-8 * (1 + sums.z.abs())).all()
        assert (pd.read_csv(folder / "exemplars.csv").groupby(["kernel", "test_row"]).size() == 5).all()


def test_a_failing_job_keeps_the_previous_good_outputs(finished_workdir):
    """A kernel of another kind copied over trntk.h5: the kGLM job stops with a message naming
    the file and what differs, and its previous good report survives (outputs are update())."""
    kernels = finished_workdir / "results" / "tiny2-mlp" / "seed0" / "kernels"
    report = finished_workdir / "results" / "tiny2-mlp" / "seed0" / "kglm" / "trntk.json"
    before = report.read_text()
    shutil.copy2(kernels / "trntk.h5", finished_workdir / "trntk.h5.bak")
    shutil.copy(kernels / "trntk0.h5", kernels / "trntk.h5")  # a newer file: the kGLM job reruns
    try:
        proc = snakemake(finished_workdir, "results/tiny2-mlp/seed0/kglm/trntk.json", check=False)
    finally:
        shutil.copy2(finished_workdir / "trntk.h5.bak", kernels / "trntk.h5")
    assert proc.returncode != 0
    log = (finished_workdir / "results" / "logs" / "tiny2-mlp" / "seed0" / "kglm_trntk.log").read_text()
    assert "trntk.h5:train_train is not the kernel this stage needs" in log
    assert "kind: file has 'trntk0', expected 'trntk'" in log
    assert report.read_text() == before


def test_verify_passes_a_finished_run_and_names_rules_from_snakemake(finished_workdir):
    """`make verify` on a real results tree: everything intact; the rule of each file comes
    from Snakemake's own records (.snakemake/metadata)."""
    from ntkbench.integrity import producing_rule
    from ntkbench.stages.verify import verify_results

    checked, findings = verify_results(finished_workdir / "results")
    assert checked > 20 and findings == []
    tms_model = next((finished_workdir / "results" / "tms").rglob("model.pt"), None)
    expected = {"tiny2-mlp/seed0/model.pt": "train", "tiny2-mlp/data.npz": "prepare_data",
                "tiny2-mlp/seed0/kernels/trntk.h5": "kernel", "summary.csv": "summary"}
    for rel, rule in expected.items():
        assert producing_rule(finished_workdir / "results" / rel, finished_workdir) == rule
    if tms_model is not None:
        assert producing_rule(tms_model, finished_workdir) == "tms_train"


def test_a_damaged_model_stops_the_run_with_the_way_out(finished_workdir, tmp_path):
    """Bit-rot inside model.pt (torch's zip reader checks no CRC): the next job that reads it
    fails naming the file and the rule that recomputes it, and `make verify` lists exactly it."""
    from ntkbench.stages.verify import main as verify_main
    from tests.test_integrity import damage_zip_member

    workdir = tmp_path / "copy"
    shutil.copytree(finished_workdir, workdir, symlinks=True)
    model = workdir / "results" / "tiny2-mlp" / "seed0" / "model.pt"
    damage_zip_member(model, "/data/0")
    # model.pt is now newer than what was computed from it: the kernel jobs rerun first, and stop
    proc = snakemake(workdir, "results/tiny2-mlp/seed0/kglm/trntk.json", check=False)
    assert proc.returncode != 0
    log = (workdir / "results" / "logs" / "tiny2-mlp" / "seed0" / "kernel_trntk.log").read_text()
    assert "results/tiny2-mlp/seed0/model.pt: the model checkpoint's content does not match its checksum" in log
    assert "snakemake --forcerun train" in log
    assert verify_main([str(workdir / "results")]) == 1
