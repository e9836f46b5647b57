"""Poisoned-data forensics with kernels (paper 001 section 4, Table 3; Shan et al. 2022).

Every kernel is used as a forensic model: for each test image (clean and poisoned test sets)
take the ``top_k`` training points with the highest kernel value and flag the image as
poisoned when at least ``min_poisoned`` of them are poisoned training points. Flags on the
poisoned test set are true positives, flags on the clean test set false positives, so

    precision = TP / (TP + FP),   recall = TP / |poisoned test set|.

Table 3 also reports the kGLM's faithfulness (τ_K, TAD, R_miss) on the clean and the poisoned
test sets; those come from the surrogate stage's reports. Precision and recall are given in
percent like Table 3; τ_K and R_miss are fractions, TAD is in percent points.

The experiment only means something when the backdoor works: :func:`attack_report` gives the
network's clean accuracy and attack success rate (fraction of poisoned test images it
classifies as the target class) per seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ntkbench.data import DataBundle
from ntkbench.data.poison import POISONED_SPLIT
from ntkbench.metrics import mean_sem, precision_recall
from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = [
    "TABLE3_COLUMNS",
    "top_k_training_points",
    "poisoned_votes",
    "forensic_flags",
    "flag_precision_recall",
    "attack_success_rate",
    "attack_report",
    "kernel_forensics",
    "ForensicsResult",
    "evaluate_forensics",
    "forensics_table",
]

# Table 3's columns: (our name, kGLM report split, metric key in that split's report).
FAITHFULNESS_COLUMNS = (("tau", "test", "tau"), ("tau_true_class", "test", "tau_true_class"),
                        ("tad", "test", "tad"), ("r_miss", "test", "r_miss"),
                        ("poi_tau", POISONED_SPLIT, "tau"), ("poi_tau_true_class", POISONED_SPLIT, "tau_true_class"),
                        ("poi_tad", POISONED_SPLIT, "tad"), ("poi_r_miss", POISONED_SPLIT, "r_miss"))
TABLE3_COLUMNS = ("kernel", "precision", "recall", *(c[0] for c in FAITHFULNESS_COLUMNS))
TABLE3_METRICS = TABLE3_COLUMNS[1:]


# ----------------------------------------------------------------------------- the rule
def top_k_training_points(kernel: np.ndarray, top_k: int) -> np.ndarray:
    """Indices (N, top_k) of each row's ``top_k`` largest kernel values, most similar first.

    Ties are broken towards the lower training index (a stable sort), so the answer never
    depends on the sorting algorithm.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError(f"forensics: need a (test, train) kernel matrix, got shape {kernel.shape}")
    if not 1 <= top_k <= kernel.shape[1]:
        raise ValueError(f"forensics.top_k={top_k} must lie in 1..{kernel.shape[1]} (training points)")
    if not np.isfinite(kernel).all():
        raise ValueError("forensics: the kernel matrix holds NaN or infinite values")
    # Partition first (O(M) per row), then sort only the top_k candidates. Rows whose k-th
    # value is tied with values beyond the partition need the full stable sort to honour
    # the tie rule, so those few rows are redone exactly.
    neg = -kernel  # ascending order of neg = descending similarity
    part = np.argpartition(neg, top_k - 1, axis=1)[:, :top_k]
    part_values = np.take_along_axis(neg, part, axis=1)
    top = np.take_along_axis(part, np.lexsort((part, part_values), axis=1), axis=1)
    kth_value = part_values.max(axis=1, keepdims=True)
    tied_in_row = (neg == kth_value).sum(axis=1)
    tied_kept = (part_values == kth_value).sum(axis=1)
    ambiguous = np.flatnonzero(tied_in_row > tied_kept)  # a tie straddles the top-k boundary
    if len(ambiguous):
        top[ambiguous] = np.argsort(neg[ambiguous], axis=1, kind="stable")[:, :top_k]
    return top


def poisoned_votes(kernel: np.ndarray, poisoned_train_idx: Sequence[int], top_k: int = 5) -> np.ndarray:
    """How many of each test point's ``top_k`` most similar training points are poisoned."""
    kernel = np.asarray(kernel)
    is_poisoned = np.zeros(kernel.shape[1], dtype=bool)
    idx = np.asarray(poisoned_train_idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= kernel.shape[1]):
        raise ValueError(f"forensics: poisoned training indices outside 0..{kernel.shape[1] - 1}")
    is_poisoned[idx] = True
    return is_poisoned[top_k_training_points(kernel, top_k)].sum(axis=1)


def forensic_flags(kernel: np.ndarray, poisoned_train_idx: Sequence[int], top_k: int = 5,
                   min_poisoned: int = 3) -> np.ndarray:
    """Boolean flag per test point: at least ``min_poisoned`` of its ``top_k`` neighbours are poisoned."""
    if not 1 <= min_poisoned <= top_k:
        raise ValueError(f"forensics.min_poisoned={min_poisoned} must lie in 1..top_k={top_k}")
    return poisoned_votes(kernel, poisoned_train_idx, top_k) >= min_poisoned


def flag_precision_recall(flags_clean: np.ndarray, flags_poisoned: np.ndarray) -> tuple[float, float]:
    """Precision and recall (fractions) of the flags; the poisoned test set is the positive class.

    Precision is NaN when nothing at all is flagged (0/0).
    """
    flags_clean = np.asarray(flags_clean, dtype=bool)
    flags_poisoned = np.asarray(flags_poisoned, dtype=bool)
    truth = np.concatenate([np.zeros(len(flags_clean), bool), np.ones(len(flags_poisoned), bool)])
    pred = np.concatenate([flags_clean, flags_poisoned])
    precision, recall = precision_recall(pred, truth)
    return float(precision), float(recall)


# ----------------------------------------------------------------------------- the attack
def _predicted_labels(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits)
    return (logits[:, 0] > 0).astype(np.int64) if logits.shape[1] == 1 else logits.argmax(1)


def attack_success_rate(poisoned_logits: np.ndarray, target: int) -> float:
    """Fraction of poisoned test images (all of true class ≠ target) classified as ``target``."""
    if len(poisoned_logits) == 0:
        raise ValueError("forensics: the poisoned test set is empty")
    return float((_predicted_labels(poisoned_logits) == target).mean())


def attack_report(logits: Mapping[str, np.ndarray], clean_y: np.ndarray, target: int) -> dict[str, float]:
    """Clean test accuracy and attack success rate of the network from its logits per split."""
    clean_acc = float((_predicted_labels(logits["test_logits"]) == np.asarray(clean_y)).mean())
    return {"clean_acc": clean_acc,
            "attack_success_rate": attack_success_rate(logits[f"{POISONED_SPLIT}_logits"], target)}


# ----------------------------------------------------------------------------- per kernel
def kernel_forensics(clean_kernel: np.ndarray, poisoned_kernel: np.ndarray,
                     poisoned_train_idx: Sequence[int], top_k: int = 5,
                     min_poisoned: int = 3) -> dict[str, float]:
    """Precision/recall (percent) and flag counts of one kernel used as a forensic model."""
    flags_clean = forensic_flags(clean_kernel, poisoned_train_idx, top_k, min_poisoned)
    flags_poisoned = forensic_flags(poisoned_kernel, poisoned_train_idx, top_k, min_poisoned)
    precision, recall = flag_precision_recall(flags_clean, flags_poisoned)
    return {"precision": 100.0 * precision, "recall": 100.0 * recall,
            "flagged_clean": int(flags_clean.sum()), "flagged_poisoned": int(flags_poisoned.sum())}


@dataclass
class ForensicsResult:
    """Everything the forensics stage produces, before it is written out."""

    per_seed: pd.DataFrame            # one row per (seed, kernel): Table 3 metrics of that run
    attack: pd.DataFrame              # one row per seed: clean_acc, attack_success_rate, attack_ok
    table: pd.DataFrame               # Table 3: means (and SEMs) over seeds, one row per kernel
    # For the figure (first seed): chosen poisoned-test rows, and per kernel their top-k indices.
    example_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    example_top_k: dict[str, np.ndarray] = field(default_factory=dict)


def _choose_examples(true_y: np.ndarray, n: int) -> np.ndarray:
    """``n`` poisoned-test rows, one per true class in turn (first image of each), deterministic."""
    rows: list[int] = []
    by_class = {c: list(np.flatnonzero(true_y == c)) for c in np.unique(true_y)}
    while len(rows) < min(n, len(true_y)):
        for c in sorted(by_class):
            if by_class[c] and len(rows) < n:
                rows.append(int(by_class[c].pop(0)))
    return np.array(rows, dtype=np.int64)


def evaluate_forensics(bundle: DataBundle, seeds: Sequence[int], kernels: Sequence[str],
                       logits: Mapping[int, Mapping[str, np.ndarray]],
                       load_kernels: Callable[[int, str], tuple[np.ndarray, np.ndarray]],
                       kglm_reports: Mapping[tuple[int, str], Mapping], *, top_k: int, min_poisoned: int,
                       figure_examples: int, min_attack_success: float,
                       min_clean_accuracy: float) -> ForensicsResult:
    """The whole Table 3 computation for one experiment, over all its seeds and kernels.

    ``logits[seed]`` holds the network's ``test_logits`` and ``poisoned_test_logits``;
    ``load_kernels(seed, kernel)`` returns its (clean test x train, poisoned test x train)
    kernels, loaded one pair at a time so memory holds one kernel's blocks; ``kglm_reports``
    are the surrogate stage's reports by (seed, kernel), for the faithfulness columns.
    """
    if "poisoned_train_idx" not in bundle.extra or POISONED_SPLIT not in bundle.extra_splits:
        raise ValueError("forensics: not a poisoned data bundle (set data.poison in the experiment)")
    poisoned_idx = bundle.extra["poisoned_train_idx"]
    target = int(bundle.meta["poison"]["target"])
    example_rows = _choose_examples(bundle.extra["poisoned_test_true_y"], figure_examples)
    example_top_k: dict[str, np.ndarray] = {}

    attack_rows, rows = [], []
    for seed in seeds:
        report = attack_report(logits[seed], bundle.test.y.numpy(), target)
        ok = report["attack_success_rate"] >= min_attack_success and report["clean_acc"] >= min_clean_accuracy
        attack_rows.append({"seed": seed, **report, "attack_ok": ok})
        log.info("seed %d: clean accuracy %.4f, attack success rate %.4f", seed, report["clean_acc"],
                 report["attack_success_rate"])
        if not ok:
            log.warning("seed %d: the attack did not work well enough (attack success rate %.3f, need >= %.2f; "
                        "clean accuracy %.3f, need >= %.2f): the forensics numbers of this seed are not "
                        "meaningful — train longer, or use a larger/brighter trigger or a higher poison "
                        "fraction", seed, report["attack_success_rate"], min_attack_success,
                        report["clean_acc"], min_clean_accuracy)
        for kernel in kernels:
            clean_k, poisoned_k = load_kernels(seed, kernel)
            scores = kernel_forensics(clean_k, poisoned_k, poisoned_idx, top_k, min_poisoned)
            kglm = kglm_reports[(seed, kernel)]
            row = {"seed": seed, "kernel": kernel, **scores}
            for column, split, key in FAITHFULNESS_COLUMNS:
                row[column] = float(kglm[split].get(key, np.nan))
            rows.append(row)
            log.info("seed %d %s: precision %.2f%%, recall %.2f%% (flagged %d clean, %d poisoned)",
                     seed, kernel, scores["precision"], scores["recall"], scores["flagged_clean"],
                     scores["flagged_poisoned"])
            if seed == seeds[0]:
                example_top_k[kernel] = top_k_training_points(np.asarray(poisoned_k)[example_rows], top_k)
    attack = pd.DataFrame(attack_rows)
    if not attack["attack_ok"].all():
        log.warning("the backdoor attack failed for seed(s) %s; Table 3 for this experiment is not meaningful",
                    attack.loc[~attack["attack_ok"], "seed"].tolist())
    per_seed = pd.DataFrame(rows)
    return ForensicsResult(per_seed=per_seed, attack=attack, table=forensics_table(per_seed, kernels),
                           example_rows=example_rows, example_top_k=example_top_k)


# ----------------------------------------------------------------------------- Table 3
def forensics_table(per_seed: pd.DataFrame, kernels: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 3: per kernel the mean over seeds of each metric, its SEM (``<metric>_sem``,
    NaN with one seed) and the number of seeds. Rows follow ``kernels`` order."""
    kernels = list(dict.fromkeys(per_seed["kernel"])) if kernels is None else list(kernels)
    rows = []
    for kernel in kernels:
        sub = per_seed[per_seed["kernel"] == kernel]
        if sub.empty:
            raise KeyError(f"forensics: no results for kernel {kernel!r}")
        row: dict[str, object] = {"kernel": kernel}
        for metric in TABLE3_METRICS:
            mean, sem = mean_sem(sub[metric].to_numpy(dtype=float))
            row[metric], row[f"{metric}_sem"] = float(mean), float(sem)
        row["n_seeds"] = len(sub)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*TABLE3_COLUMNS, *(f"{m}_sem" for m in TABLE3_METRICS), "n_seeds"])
