"""Checks for `make cluster-test` (ci/cluster/cluster_test.sh).

    check_run.py compare LOCAL_RESULTS SLURM_RESULTS
        Both result trees hold the same files with the same numbers: CSV and JSON values,
        NPZ arrays, HDF5 datasets and attributes, model checkpoints (loaded, so the random
        temporary name torch.save leaves inside the archive does not count), figure pixels.
        Timestamps and timings (fields named like `created`, `finished`, `seconds`: see
        VOLATILE) are skipped, and the logs/ and benchmarks/ folders are only checked for
        presence.

    check_run.py jobs PROFILE SNAKEMAKE_LOG SQUEUE_DUMP
        The SLURM jobs of the run (squeue --states=all, kept by MinJobAge) match the profile:
        every job COMPLETED; rules in the profile's set-resources with a `gpu` count went to
        that partition and asked for that many GPUs; every other rule went to
        default-resources' partition without GPUs; the local rules never became SLURM jobs;
        and each remote rule was submitted exactly as often as the run finished jobs of it.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

# Cheap aggregations the workflow declares as `localrules` (they run in the main Snakemake
# process on the login node); `all` has no job to run. Keep in step with the rules/*.smk.
LOCAL_RULES = {"all", "prepare_data", "summary", "tms_report", "modadd_report", "tf_report",
               "attribution_table"}
# Folders whose contents are timings or log lines: compared by file name only.
NAMES_ONLY = {"logs", "benchmarks"}
# Fields (HDF5 attributes, NPZ members, JSON keys, CSV columns) that record when, where or
# how fast a file was written, not what it holds.
VOLATILE = re.compile(r"(created|finished|started|updated|timestamp|hostname|elapsed|wall|seconds|duration)", re.I)


def _volatile(key) -> bool:
    return isinstance(key, str) and bool(VOLATILE.search(key))


class Mismatch(Exception):
    pass


def _equal_values(a, b, where: str) -> None:
    """Recursive exact comparison of loaded values (dicts, lists, arrays, tensors, scalars)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise Mismatch(f"{where}: tensor vs {type(b).__name__}")
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            raise Mismatch(f"{where}: tensors differ")
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            raise Mismatch(f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
        if not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            diff = np.nanmax(np.abs(a.astype(float) - b.astype(float))) if a.dtype.kind in "iufc" else "?"
            raise Mismatch(f"{where}: arrays differ (max abs difference {diff})")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        a = {k: v for k, v in a.items() if not _volatile(k)}
        b = {k: v for k, v in b.items() if not _volatile(k)}
        if set(a) != set(b):
            raise Mismatch(f"{where}: keys differ: {sorted(set(a) ^ set(b), key=str)}")
        for key in a:
            _equal_values(a[key], b[key], f"{where}[{key!r}]")
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            raise Mismatch(f"{where}: lengths {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _equal_values(x, y, f"{where}[{i}]")
        return
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return
    if type(a) is not type(b) or a != b:
        raise Mismatch(f"{where}: {a!r} vs {b!r}")


def _compare_h5(a: Path, b: Path, where: str) -> None:
    import h5py

    def items(fh):
        out = {}
        fh.visititems(lambda name, obj: out.__setitem__(name, obj))
        return out

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ia, ib = items(fa), items(fb)
        if set(ia) != set(ib):
            raise Mismatch(f"{where}: HDF5 members differ: {sorted(set(ia) ^ set(ib))}")
        for name in [""] + sorted(ia):
            oa, ob = (fa, fb) if name == "" else (ia[name], ib[name])
            _equal_values(dict(oa.attrs), dict(ob.attrs), f"{where}:/{name} attrs")
            if isinstance(oa, h5py.Dataset):
                _equal_values(oa[()], ob[()], f"{where}:/{name}")


def _compare_file(a: Path, b: Path, where: str) -> None:
    suffix = a.suffix.lower()
    if suffix == ".csv":
        import pandas as pd

        fa, fb = pd.read_csv(a), pd.read_csv(b)
        fa, fb = (f[[c for c in f.columns if not _volatile(c)]] for f in (fa, fb))
        if list(fa.columns) != list(fb.columns):
            raise Mismatch(f"{where}: columns differ")
        try:
            pd.testing.assert_frame_equal(fa, fb, check_exact=True)
        except AssertionError as err:
            raise Mismatch(f"{where}: {err}") from None
    elif suffix == ".json":
        _equal_values(json.loads(a.read_text()), json.loads(b.read_text()), where)
    elif suffix == ".npz":
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            _equal_values(dict(za), dict(zb), where)
    elif suffix in (".h5", ".hdf5"):
        _compare_h5(a, b, where)
    elif suffix == ".pt":
        import torch

        _equal_values(torch.load(a, map_location="cpu", weights_only=False),
                      torch.load(b, map_location="cpu", weights_only=False), where)
    elif suffix == ".png":
        import matplotlib.image

        _equal_values(matplotlib.image.imread(a), matplotlib.image.imread(b), where)
    elif a.read_bytes() != b.read_bytes():
        raise Mismatch(f"{where}: contents differ")


def compare(local: Path, slurm: Path) -> int:
    files_a = {p.relative_to(local) for p in local.rglob("*") if p.is_file()}
    files_b = {p.relative_to(slurm) for p in slurm.rglob("*") if p.is_file()}
    problems = []
    for rel in sorted(files_a ^ files_b):
        problems.append(f"{rel}: only in the {'local' if rel in files_a else 'SLURM'} run")
    compared = 0
    for rel in sorted(files_a & files_b):
        if rel.parts[0] in NAMES_ONLY:
            continue
        try:
            _compare_file(local / rel, slurm / rel, str(rel))
            compared += 1
        except Mismatch as err:
            problems.append(str(err))
    for line in problems:
        print(f"MISMATCH {line}")
    if not compared:
        problems.append("no result files were compared")
        print("MISMATCH no result files were compared")
    print(f"compared {compared} result files ({len(files_a)} files in all): "
          f"{'EQUAL' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _finished_jobs(log_text: str) -> dict[str, int]:
    """Rule -> number of jobs the Snakemake run finished (local and remote). Counted from the
    'Finished jobid: N (Rule: name)' lines, not the first job table, because jobs behind a
    checkpoint (the kernel tiles behind prepare_data) join the DAG only later."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log_text):
        counts[rule] = counts.get(rule, 0) + 1
    if not counts:
        raise SystemExit("no finished jobs in the Snakemake log")
    return counts


def _resource_value(value):
    """A profile resource value as Snakemake reads it (plain names are strings)."""
    return str(value).strip("'\"")


def jobs(profile_path: Path, log_path: Path, squeue_path: Path) -> int:
    profile = yaml.safe_load(profile_path.read_text())
    default_partition = _resource_value(profile["default-resources"]["slurm_partition"])
    expected = {}  # rule -> (partition, gpus)
    for rule, res in (profile.get("set-resources") or {}).items():
        expected[rule] = (_resource_value(res.get("slurm_partition", default_partition)),
                          int(res.get("gpu", 0)))
    finished = _finished_jobs(log_path.read_text())

    problems, seen = [], {}
    for line in squeue_path.read_text().splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 5 or not fields[0]:
            continue
        jobid, partition, comment, state, tres = fields[:5]
        rule = re.sub(r"^rule_", "", comment).split("_wildcards_")[0]
        seen[rule] = seen.get(rule, 0) + 1
        want_partition, want_gpus = expected.get(rule, (default_partition, 0))
        gpus = int(m.group(1)) if (m := re.search(r"gpu:(\d+)", tres)) else 0
        where = f"job {jobid} ({comment})"
        if state != "COMPLETED":
            problems.append(f"{where}: state {state}")
        if partition != want_partition:
            problems.append(f"{where}: partition {partition}, expected {want_partition}")
        if gpus != want_gpus:
            problems.append(f"{where}: {gpus} GPU(s) requested ({tres}), expected {want_gpus}")
    for rule in sorted(LOCAL_RULES & set(seen)):
        problems.append(f"rule {rule} ran as {seen[rule]} SLURM job(s); it should be a local rule")
    for rule, count in sorted(finished.items()):
        if rule not in LOCAL_RULES and seen.get(rule, 0) != count:
            problems.append(f"rule {rule}: {seen.get(rule, 0)} SLURM job(s) for {count} finished job(s)")
    for rule in sorted(set(seen) - set(finished)):
        problems.append(f"rule {rule}: {seen[rule]} SLURM job(s) but no finished job")
    for line in problems:
        print(f"JOB PROBLEM {line}")
    summary = ", ".join(
        f"{rule}={n} on {expected.get(rule, (default_partition, 0))[0]}"
        + (f" with {expected[rule][1]} GPU" if expected.get(rule, (0, 0))[1] else "")
        for rule, n in sorted(seen.items()))
    local = ", ".join(sorted(set(finished) & LOCAL_RULES))
    print(f"SLURM jobs: {summary or 'none'}; local: {local or 'none'}: "
          f"{'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems or not seen else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    if len(argv) == 4 and argv[0] == "jobs":
        return jobs(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
