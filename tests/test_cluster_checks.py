"""The checks `make cluster-test` applies to a SLURM run (ci/cluster/check_run.py), on
hand-made result trees and job lists, so a broken check cannot pass the cluster test."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_run", REPO / "ci" / "cluster" / "check_run.py")
check_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_run)


def write_tree(root: Path, value: float = 0.5, created: str = "2026-01-01T00:00:00") -> Path:
    (root / "exp" / "seed0" / "kernels").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "logs" / "train.log").write_text(f"took {created}\n")  # names only
    (root / "summary.csv").write_text(f"kernel,tau\ntrntk,{value}\n")
    (root / "exp" / "seed0" / "kglm.json").write_text(json.dumps({"test": {"tau": value}}))
    np.savez(root / "exp" / "data.npz", x=np.arange(6.0).reshape(2, 3) * value,
             seconds=np.array([len(created) + created.count("2")], dtype=float))  # a timing
    with h5py.File(root / "exp" / "seed0" / "kernels" / "trntk.h5", "w") as fh:
        group = fh.create_group("train_train")
        group.attrs.update(kind="trntk", created=created, finished=created)
        group.create_dataset("kernel", data=np.eye(3) * value)
    # torch.save records the (temporary) file name inside the archive: only contents count.
    tmp = root / "exp" / "seed0" / f"model.pt.{abs(hash(created))}.tmp"
    torch.save({"state_dict": {"w": torch.ones(2) * value}, "seed": 0}, tmp)
    tmp.rename(root / "exp" / "seed0" / "model.pt")
    return root


def test_equal_runs_compare_equal_despite_timestamps(tmp_path, capsys):
    a = write_tree(tmp_path / "a", created="2026-01-01T00:00:00")
    b = write_tree(tmp_path / "b", created="2026-02-02T11:11:11")
    assert check_run.compare(a, b) == 0
    assert "EQUAL" in capsys.readouterr().out


@pytest.mark.parametrize("break_it", ["value", "missing", "attr"])
def test_differences_are_reported(tmp_path, capsys, break_it):
    a = write_tree(tmp_path / "a")
    b = write_tree(tmp_path / "b", value=0.5 + (1e-12 if break_it == "value" else 0.0))
    if break_it == "missing":
        (b / "exp" / "seed0" / "kglm.json").unlink()
    if break_it == "attr":
        with h5py.File(b / "exp" / "seed0" / "kernels" / "trntk.h5", "a") as fh:
            fh["train_train"].attrs["kind"] = "pntk"
    assert check_run.compare(a, b) == 1
    assert "MISMATCH" in capsys.readouterr().out


PROFILE = """
default-resources:
  slurm_partition: cpu
set-resources:
  train: &gpu_stage
    slurm_partition: gpu
    gpu: 1
  kernel: *gpu_stage
"""

LOG = "\n".join(f"Finished jobid: {i} (Rule: {rule})" for i, rule in enumerate(
    ["prepare_data", "train", "kernel", "kernel", "kglm", "kglm", "summary", "all"])) + "\n"


GOOD_JOBS = [
    "1|gpu|rule_train_wildcards_exp_0|COMPLETED|gres:gpu:1|",
    "2|gpu|rule_kernel_wildcards_exp_0_trntk|COMPLETED|gres:gpu:1|",
    "3|gpu|rule_kernel_wildcards_exp_0_ck|COMPLETED|gres:gpu:1|",
    "4|cpu|rule_kglm_wildcards_exp_0_trntk|COMPLETED|N/A|",
    "5|cpu|rule_kglm_wildcards_exp_0_ck|COMPLETED|N/A|",
]


def run_jobs_check(tmp_path, jobs):
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "run.log").write_text(LOG)
    (tmp_path / "squeue.txt").write_text("\n".join(jobs) + "\n")
    return check_run.jobs(tmp_path / "profile.yaml", tmp_path / "run.log", tmp_path / "squeue.txt")


def test_jobs_on_the_profiles_partitions_pass(tmp_path):
    assert run_jobs_check(tmp_path, GOOD_JOBS) == 0


@pytest.mark.parametrize("bad", [
    "4|gpu|rule_kglm_wildcards_exp_0_trntk|COMPLETED|N/A|",         # CPU stage on the GPU partition
    "2|gpu|rule_kernel_wildcards_exp_0_trntk|COMPLETED|N/A|",       # GPU stage without a GPU
    "2|gpu|rule_kernel_wildcards_exp_0_trntk|FAILED|gres:gpu:1|",   # not completed
])
def test_wrong_placement_or_state_fails(tmp_path, bad):
    jobs = [bad if line.split("|")[0] == bad.split("|")[0] else line for line in GOOD_JOBS]
    assert run_jobs_check(tmp_path, jobs) == 1


def test_local_rule_submitted_or_job_missing_fails(tmp_path):
    assert run_jobs_check(tmp_path, GOOD_JOBS + ["6|cpu|rule_summary|COMPLETED|N/A|"]) == 1
    assert run_jobs_check(tmp_path, GOOD_JOBS[:-1]) == 1
