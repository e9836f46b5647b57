"""configs/dattri_mnist.yaml end to end on a tiny version of itself: tiny MNIST files in the
real IDX format, the LR and the MLP, every attribution rule of dattri's protocol (subsets with
dattri's draw and seeds, the ground truth with its provenance, TracIn over seeds, Grad-Dot,
Grad-Cos, TRAK-k on the subset networks, the influence functions, the kGLMs) and the joined
table with the published values beside ours."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import yaml

from idx_files import idx_bytes
from test_workflow import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST = 80, 30


def write_mnist(folder, seed=0):
    """Learnable MNIST-format files: 10 class prototypes plus noise, 28 x 28 uint8."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 28, 28))
    folder.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN + 20), ("t10k", N_TEST + 10)):
        labels = rng.permutation(np.arange(n) % 10)
        images = np.clip(prototypes[labels] * 0.8 + rng.integers(0, 50, size=(n, 28, 28)), 0, 255)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            with gzip.open(folder / f"{prefix}-{kind}.gz", "wb") as fh:
                fh.write(idx_bytes(arr))


def run_on_tiny_mnist(tmp_path, cfg: dict):
    """The workflow copied into ``tmp_path`` and run on tiny MNIST files with ``cfg``; the work dir."""
    work = copy_workflow(tmp_path)
    write_mnist(work / "data" / "mnist")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(work)
    return work


def tiny_dattri_config() -> dict:
    """configs/dattri_mnist.yaml with the sizes cut down; every protocol setting kept."""
    cfg = yaml.safe_load((REPO / "configs" / "dattri_mnist.yaml").read_text())
    for exp in cfg["experiments"].values():
        exp["data"].update(first_train=N_TRAIN, first_test=N_TEST)
        exp["kernels"] = ["trntk"]
    cfg["experiments"]["mnist10-lr"]["train"]["epochs"] = 5
    cfg["experiments"]["mnist10-mlp"]["train"]["epochs"] = 30  # 2 steps per epoch
    cfg["experiments"]["mnist10-mlp"]["model"]["hidden"] = [16, 8]
    cfg["kernel_options"].update(proj_dim=32, batch_size=64, block_size=64)
    att = cfg["attribution"]
    att.update(num_subsets=4, subsets_per_job=4, gradient_proj_dim=16)
    att["tracin"]["models"] = 2
    att["trak"].update(proj_dim=16, ensemble=[1, 2])
    att["influence"] = {"damping": [0.1], "max_params": 8000}  # the LR's 7850, not the MLP's
    cfg["analysis"] = {"experiments": []}
    cfg["data_dir"] = "data"
    return cfg


def test_dattri_config_end_to_end(tmp_path):
    from ntkbench.attribution.ground_truth import GroundTruth, ProvenanceError

    cfg = tiny_dattri_config()
    work = run_on_tiny_mnist(tmp_path, cfg)
    table = pd.read_csv(work / "results" / "attribution.csv")
    for exp in ("mnist10-lr", "mnist10-mlp"):
        methods = set(table[table["experiment"] == exp]["method"])
        assert {"kglm", "kernel-sim", "tracin-seeds", "grad-dot", "grad-cos", "trak-1", "trak-2"} <= methods
        assert (table[table["experiment"] == exp]["target"] == "neg_loss").all()
    lr_if = table[(table["experiment"] == "mnist10-lr") & table["method"].str.startswith("if@")]
    assert lr_if["method"].tolist() == ["if@0.1"]
    assert not table[table["experiment"] == "mnist10-mlp"]["method"].str.startswith("if@").any()  # over max_params
    assert table["lds"].between(-1, 1).all()

    # the ground truth is a product: its provenance names the recipe, and another is refused
    root = work / "results"
    lr = cfg["experiments"]["mnist10-lr"]
    truth = GroundTruth.load(root / "mnist10-lr" / "attribution" / "ground_truth.npz", model=lr["model"])
    assert truth.provenance["subsets"]["subset_draw"] == "dattri" and truth.num_subsets == 4
    assert truth.model_seed.tolist() == [0, 1, 2, 3]  # seed_scheme offset: seed + j
    with pytest.raises(ProvenanceError, match="ground_truth.npz: a ground truth of model"):
        GroundTruth.load(root / "mnist10-lr" / "attribution" / "ground_truth.npz",
                         model=cfg["experiments"]["mnist10-mlp"]["model"])
    # the table's IF row is the LDS of the stored scores against the stored ground truth
    scores = np.load(root / "mnist10-lr" / "attribution" / "influence.npz")["scores_if@0.1"]
    assert lr_if.set_index("method").loc["if@0.1", "lds"] == pytest.approx(truth.lds(scores, "neg_loss").mean,
                                                                           abs=1e-12)
    skipped = np.load(root / "mnist10-mlp" / "attribution" / "influence.npz")["skipped"]
    assert "max_params = 8000" in str(skipped)
    text = (root / "attribution.md").read_text()
    assert "mnist10-lr: published" in text and "| TRAK-1 |" in text and "| IF λ=0.1 |" in text
    assert (root / "attribution.png").stat().st_size > 20_000
    # every attribution job wrote its benchmark file (the cost per stage)
    bench = root / "benchmarks" / "mnist10-lr" / "attribution"
    assert {p.stem for p in bench.glob("*.tsv")} == {"subsets_0", "ground_truth", "gradients", "influence", "lds"}
