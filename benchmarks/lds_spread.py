"""How much does an LDS move between two independent ground truths? (issue 22)

A published LDS is measured on one set of M subset networks. This script trains a second,
independent set for a finished workflow run (other subsets, other network seeds: dattri's
draw ``default_rng(subset_seed + j)`` and seed ``subset_seed + j`` with ``--subset-seed``,
the run's recipe otherwise), stores it as a ground truth of its own
(:class:`ntkbench.attribution.ground_truth.GroundTruth`, with its provenance), and scores every
stored method of the run (``attribution/gradients.npz``, ``attribution/influence.npz``) against
both. The difference between the two columns is the benchmark's own noise at this M, the
yardstick for "within 0.05 of the published value".

    python benchmarks/lds_spread.py --results results --experiment mnist10-lr \\
        --config configs/dattri_mnist.yaml --subset-seed 1000 --out benchmarks/runs/<date>_lds_spread_lr.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

from ntkbench.attribution.ground_truth import GroundTruth
from ntkbench.attribution.retrain import retrain_subset, subset_model_seed
from ntkbench.attribution.subsets import subset_mask
from ntkbench.config import attribution_seed, load_config, validate_config
from ntkbench.data import load_bundle
from ntkbench.kernels.threads import thread_budget
from ntkbench.stages.attribution.common import data_provenance
from ntkbench.stages.attribution.ground_truth import load_ground_truth


def independent_ground_truth(bundle, exp: dict, settings: dict, subset_seed: int, threads: int) -> GroundTruth:
    """M networks on subsets drawn with ``subset_seed`` (seeds ``subset_seed + j``)."""
    m, n = int(settings["num_subsets"]), len(bundle.train)
    masks, logits, seeds, acc = [], [], [], []
    start = time.perf_counter()
    with thread_budget(threads):
        for j in range(m):
            mask = subset_mask(n, float(settings["fraction"]), subset_seed, j, settings["subset_draw"])
            seed = subset_model_seed(subset_seed, j, "offset")
            out = retrain_subset(bundle, mask, exp["model"], exp["train"], seed, "cpu")
            masks.append(mask)
            logits.append(out["logits"])
            seeds.append(seed)
            acc.append(out["test_acc"])
            print(f"  subset {j + 1}/{m}: seed {seed}, test acc {out['test_acc']:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return GroundTruth.build(np.stack(masks), np.stack(logits), bundle.test.y.numpy(), np.arange(m), np.array(seeds),
                             np.array(acc), model=exp["model"], train=exp["train"],
                             data=data_provenance(bundle),
                             subsets={"fraction": float(settings["fraction"]), "subset_seed": subset_seed,
                                      "subset_draw": settings["subset_draw"], "seed": subset_seed,
                                      "seed_scheme": "offset"})


def stored_scores(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ("gradients.npz", "influence.npz"):
        if (folder / name).exists():
            with np.load(folder / name) as z:
                out.update({str(m): z[f"scores_{m}"] for m in z["methods"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--subset-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="training threads (default: the train stage's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = validate_config(load_config(args.config))
    exp, settings = cfg["experiments"][args.experiment], cfg["attribution"]
    seed = attribution_seed(cfg, args.experiment)
    root = args.results / args.experiment
    bundle = load_bundle(root / "data.npz")
    first = load_ground_truth(root / "attribution" / "ground_truth.npz", bundle, exp["model"], exp["train"], settings,
                              seed)
    path = root / "attribution" / f"ground_truth_seed{args.subset_seed}.npz"
    if path.exists():
        second = GroundTruth.load(path, model=exp["model"], train=exp["train"],
                                  subsets={"subset_seed": args.subset_seed})
    else:
        print(f"training {settings['num_subsets']} independent subset networks (subset seed {args.subset_seed})")
        second = independent_ground_truth(bundle, exp, settings, args.subset_seed,
                                          args.threads or int(cfg["resources"]["train"]["threads"]))
        second.save(path)
    target = settings["target"]
    lines = [f"# LDS against two independent ground truths: {args.experiment}", "",
             f"{datetime.date.today()}, {platform.node()}, load {os.getloadavg()[0]:.1f}; M = {first.num_subsets} "
             f"subsets each; target {target}; ground truth A: the workflow's (subset seed "
             f"{first.provenance['subsets']['subset_seed']}), B: {path.name} (subset seed {args.subset_seed}).", "",
             "| method | LDS vs A | LDS vs B | B − A |", "|---|---|---|---|"]
    for method, scores in stored_scores(root / "attribution").items():
        a, b = first.lds(scores, target), second.lds(scores, target)
        lines.append(f"| {method} | {a.mean:.3f} ± {a.sem:.3f} | {b.mean:.3f} ± {b.sem:.3f} | {b.mean - a.mean:+.3f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
