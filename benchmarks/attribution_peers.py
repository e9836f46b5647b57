"""Attribution peers side by side (issue 22): dattri's and traker's own code beside ntkbench's.

One run, on the same trained networks, data and LDS ground truth as the workflow's attribution
benchmark (``configs/dattri_mnist.yaml``), for each loss-gradient method:

  TracIn     over the final networks of 10 training seeds, weight 1e-3 each (dattri's "TracIn")
  Grad-Dot   on network 0 (the attributed network)
  Grad-Cos   on network 0
  TRAK-k     on the first k LDS subset networks, K = 512, no regularisation (k = 1, 10, 50)

TracIn, Grad-Dot and Grad-Cos use loss gradients projected to 512 dimensions, as dattri's
benchmark does (its TracIn attributor always projects). Implementations:

  ntkbench  ``ntkbench.attribution.methods.gradient_method_scores`` with the arguments of the
            workflow's gradients stage; the scores are recomputed (and timed) here and checked
            against the stage's ``gradients.npz``.
  dattri    dattri 0.3.0's TracInAttributor / TRAKAttributor, called as its
            ``experiments/benchmark_result.py`` calls them for MNIST (same loss functions,
            data loaders of 500, weight_list 1e-3, TRAK's margin loss and probability function).
  traker    MadryLab's traker 0.3.2 (TRAK only): TRAKer on the CPU with its BasicProjector
            (normal, seed 0), float32, lambda_reg 0, task "image_classification".

Influence functions (methods ``if-ekfac``, ``if-kfac``) of the attributed network, all n_test x N:
τ(x, i) = g(x)ᵀ (H + λ I)⁻¹ g(x_i), g the cross-entropy gradient over all parameters, > 0 when
upweighting training point i lowers the test loss (dattri's target is the negated test loss):

  IF (EK-FAC)     kronfluence 1.0.1: ``Analyzer`` with ``FactorArguments(strategy="ekfac")``
                  (``fit_all_factors`` on the N training points) and ``compute_pairwise_scores``
  IF (K-FAC)      the same with ``strategy="kfac"``
  IF (exact GGN)  ``ntkbench.attribution.influence.influence_scores``: the explicit mean GGN (the
                  Hessian for LR), float64, Cholesky; when P ≤ its MAX_PARAMS (LR, not the MLP);
                  the "ntkbench" reference of the kronfluence rows

kronfluence's Task (``kronfluence_task``) returns the cross-entropy *summed* over the batch as
training loss and as measurement: kronfluence takes per-sample gradients from the batch's
backward pass and divides its covariance and Lambda sums by the number of examples itself (a
mean would scale the gradients by 1 / batch size). The factors use its default true Fisher
(labels drawn from the model's softmax, torch seed 0; its expectation is the GGN). Its score
is g_testᵀ (F̂ + λ I)⁻¹ g_i without a minus sign, i.e. Koh & Liang's influence on the test loss
negated: with the test loss as measurement, > 0 = supports, ntkbench's convention (checked: a
training point's score on its own loss is > 0). ``prepare_model`` sets eval mode: dropout is
off for factors, queries and training gradients. λ in the main table: kronfluence's default
``ScoreArguments.damping_factor`` = 1e-8, added to the eigenvalues of the N-averaged Fisher (the
scale of the mean GGN), the exact GGN at the same λ; ``--if-dampings`` adds a grid (default:
kronfluence's heuristic, damping_factor None = 0.1 x the mean eigenvalue of each module, and
dattri's IF grid 1 ... 1e-5). kronfluence runs on the CPU (``Analyzer(cpu=True)``) in float32
(eigendecompositions float64), writes to a temporary directory, and never imports torchvision.
The IF methods are in the default ``--methods``; ``--methods if-ekfac if-kfac`` runs them alone,
``--no-if`` leaves them out.

For each (method, implementation) it prints LDS ± SEM against ntkbench's ground truth (the
workflow's 50 subset networks, target = negated test loss), the wall time (one run,
``time.perf_counter``, the same torch and BLAS thread count for all; the 1-minute load average
beside it), and the Spearman correlation of the full flattened (n_test x N) score matrix with
ntkbench's. Random projections differ between the implementations (ntkbench's
device-independent Philox R, dattri's and traker's ``torch.Generator`` blocks), so a second
table recomputes ntkbench's formulas with the peer's own projection matrix R (read from
dattri's projector, checked against its ``random_project``): there the scores agree up to a
constant factor and float32 rounding.

What differs between the implementations, besides R (all shown by the second table):

* dattri's Grad-Dot and Grad-Cos carry benchmark_result.py's weight 1e-3 (a constant factor).
* dattri draws a different R for every TracIn checkpoint (``ensemble_id``); ntkbench projects
  every checkpoint with the same R. Both are unbiased for the unprojected TracIn.
* traker's CPU BasicProjector is dattri's (same seeds per block and model id) without the
  1/sqrt(K); traker and dattri also divide the gradients by sqrt(P). Neither changes TRAK.
* traker divides each member's (ΦᵀΦ)⁻¹ by its mean absolute entry, so its ensemble mean is
  weighted (a global factor for TRAK-1); the second table reproduces it.
* dattri's TRAK output ``logp - log(1 - exp(logp))`` loses digits in float32 when p is near 1
  (ntkbench and traker: ``z_y - logsumexp_{c≠y} z_c``); the checks print the largest difference.
* ntkbench's TRAK (ridge 0) applies the pseudo-inverse of Φ (an SVD of the N x K matrix, float64,
  numpy); dattri and traker solve / invert the K x K Gram matrix in float32.

Install the peers into a separate virtual environment (they pin nothing against ntkbench, but
keep torch at the project's 2.13.0; CPU only). In this order:

    python -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0          # first, so nothing below replaces it
    .venv-peers/bin/pip install -e ".[peers]"           # ntkbench + dattri==0.3.0, requests,
                                                        # traker==0.3.2, kronfluence==1.0.1

(``requests``: ``dattri.benchmark.load`` imports it unconditionally. traker's ``fast_jl`` is a
CUDA build and not needed on the CPU. kronfluence pulls in torchvision, which neither it nor
this script imports. Should a CUDA-only torchvision wheel on CPU torch ever be imported, define
the ``torchvision::nms`` / ``qnms`` op schemas before it.)

Run (after the workflow has produced the LR experiment's attribution results):

    snakemake --configfile configs/dattri_mnist.yaml --config data_dir=<dir> --cores 2
    .venv-peers/bin/python benchmarks/attribution_peers.py --results results \\
        --experiment mnist10-lr --config configs/dattri_mnist.yaml --out benchmarks/runs/peers_lr.md

Inputs read from ``<results>/<experiment>/``: ``data.npz``, ``seed<s>/model.pt``,
``attribution/ground_truth.npz`` (the LDS ground truth, checked against the config),
``attribution/subsets/*.npz`` (the subset networks' weights, stored
with ``trak.ensemble_data: subsets``) and, if present, ``attribution/gradients.npz`` (the
recomputed ntkbench scores are checked against it). The TracIn seed ensemble is not stored by
the workflow: as in the gradients stage, seed ``s`` is ``model.pt`` and the next seeds are
retrained, here with the train stage's thread count (``--train-threads``; float32 training is
bit-reproducible only at the same count); retraining seed ``s`` is checked against ``model.pt``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the peers' progress bars: tqdm reads it when imported

import argparse
import copy
import datetime
import importlib.metadata as md
import logging
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from threadpoolctl import threadpool_limits  # scikit-learn's dependency, so ntkbench's
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ntkbench import models
from ntkbench.attribution import benchmark
from ntkbench.attribution import methods as M
from ntkbench.attribution.gradients import iter_per_sample_grads, output_values
from ntkbench.attribution.influence import MAX_PARAMS, influence_scores
from ntkbench.attribution.lds import compute_lds
from ntkbench.config import attribution_seed, load_config, validate_config
from ntkbench.data import load_bundle
from ntkbench.kernels.threads import thread_budget
from ntkbench.stages.attribution.ground_truth import load_ground_truth
from ntkbench.stages.attribution.scores import (
    _trak_kwargs,  # the gradients stage's own arguments
)
from ntkbench.stages.attribution.subsets import read_subset_states

#: dattri's published MNIST-10 LDS (Deng et al. 2024, arXiv 2410.04555), for reference only:
#: their ground truth and networks, not these. "IF": their IF with CG (10 iterations), the best
#: damping of DATTRI_IF_DAMPINGS.
PUBLISHED = {
    "lr": {"TracIn": 0.33, "Grad-Dot": 0.33, "Grad-Cos": 0.19, "TRAK-1": 0.41, "TRAK-10": 0.64, "TRAK-50": 0.68,
           "IF": 0.80},
    "mlp": {"TracIn": 0.15, "Grad-Dot": 0.10, "Grad-Cos": 0.12, "TRAK-1": 0.11, "TRAK-10": 0.33, "TRAK-50": 0.45,
            "IF": 0.26},
}
LOADER_BATCH = 500  # benchmark_result.py's MNIST train_loader / test_loader batch size
DATTRI_WEIGHT = 1e-3  # benchmark_result.py: weight_list = ones * 1e-3 for TracIn, Grad-Dot and Grad-Cos
#: The influence-function methods: their kronfluence FactorArguments.strategy and row name.
IF_METHODS = {"if-ekfac": ("ekfac", "IF (EK-FAC)"), "if-kfac": ("kfac", "IF (K-FAC)")}
IF_EXACT = "IF (exact GGN)"  # ntkbench.attribution.influence, the reference row (P <= its MAX_PARAMS)
#: dattri's damping grid for IF (benchmark_result.py tunes IF-CG over it and reports the best LDS)
DATTRI_IF_DAMPINGS = [1.0, 0.1, 0.01, 5e-3, 1e-3, 1e-4, 1e-5]
IF_BATCH = 500  # kronfluence's per-device batch sizes (factors, queries, training points)


def label(method: str) -> str:
    """dattri's name of an ntkbench method."""
    if method.startswith("trak-"):
        return "TRAK-" + method.split("-", 1)[1]
    if method in IF_METHODS:
        return IF_METHODS[method][1]
    return {"tracin-seeds": "TracIn", "grad-dot": "Grad-Dot", "grad-cos": "Grad-Cos"}[method]


def trak_k(method: str) -> int | None:
    return int(method.split("-", 1)[1]) if method.startswith("trak-") else None


# ------------------------------------------------------------------------------ inputs
@dataclass
class Setup:
    """Everything the three implementations share: data, networks, settings, ground truth."""

    experiment: str
    bundle: Any
    model: nn.Module  # the attributed network (eval mode)
    seed: int
    settings: dict[str, Any]  # the config's attribution block (defaults filled)
    kw: dict[str, Any]  # the gradients stage's arguments (_trak_kwargs)
    masks: np.ndarray  # (M, N) bool
    target: np.ndarray  # (M, n_test): negated test loss of the subset networks
    members: list[dict[str, torch.Tensor]]  # TRAK members: the first max(k) subset networks
    tracin: list[tuple[dict[str, torch.Tensor], float]]  # (state_dict, weight) of the seed ensemble
    stored: dict[str, np.ndarray]  # the gradients stage's scores
    checks: list[str] = field(default_factory=list)
    peer_features: dict[int, Any] = field(default_factory=dict)  # TRAK member -> features with dattri's R
    analyzers: dict[str, Any] = field(default_factory=dict)  # kronfluence strategy -> Analyzer with fitted factors
    if_scores: dict[tuple[str, float | None], np.ndarray] = field(default_factory=dict)  # (strategy, damping)
    workdir: str | None = None  # kronfluence's output directory (a temporary one, removed at the end)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """(x, y) datasets of the training and test split."""
        tr, te = self.bundle.train, self.bundle.test
        return TensorDataset(tr.x, tr.y), TensorDataset(te.x, te.y)

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        """Sequential (x, y) loaders of the training and test split, batch 500."""
        train, test = self.datasets()
        return (DataLoader(train, batch_size=LOADER_BATCH, shuffle=False),
                DataLoader(test, batch_size=LOADER_BATCH, shuffle=False))


def load_setup(results: Path, experiment: str, config_path: Path, methods: list[str],
               train_threads: int | None) -> Setup:
    cfg = validate_config(load_config(config_path))
    exp = cfg["experiments"][experiment]
    settings = cfg["attribution"]
    seed = attribution_seed(cfg, experiment)
    root = results / experiment
    bundle = load_bundle(root / "data.npz")
    model, _ = models.load_checkpoint(root / f"seed{seed}" / "model.pt")
    subset_paths = sorted((root / "attribution" / "subsets").glob("*.npz"), key=lambda p: int(p.stem))
    # the workflow's ground truth, refused unless of this network's recipe, data and subsets
    truth = load_ground_truth(root / "attribution" / "ground_truth.npz", bundle, exp["model"], exp["train"], settings,
                              seed)
    masks, target = truth.masks, truth.outputs(settings["target"])
    stored, gradients = {}, root / "attribution" / "gradients.npz"
    if gradients.exists():
        with np.load(gradients) as z:
            stored = {str(m): z[f"scores_{m}"] for m in z["methods"]}
        missing = [m for m in methods if m not in stored and m not in IF_METHODS]
        if missing:
            raise SystemExit(f"{gradients} has no scores of {missing} (has {sorted(stored)})")
    ks = [trak_k(m) for m in methods if trak_k(m)]
    members = read_subset_states(subset_paths, max(ks)) if ks else []
    s = Setup(experiment, bundle, model, seed, settings, _trak_kwargs(settings), masks, target, members, [], stored)
    if not stored:
        s.checks.append(f"no {gradients}: ntkbench's scores are computed here only, not checked against the "
                        "gradients stage's")

    if "tracin-seeds" in methods:
        tracin = settings.get("tracin") or {}
        if tracin.get("scheme") != "seeds":
            raise SystemExit("only dattri's TracIn (attribution.tracin.scheme: seeds) has a peer here")
        # The seed ensemble as the gradients stage builds it: model.pt's weights for seed s, the
        # next seeds retrained. A float32 GEMM's last bits depend on the thread count, so they are
        # trained with the train stage's threads; retraining seed s with them must give model.pt.
        threads = train_threads or int(cfg["resources"]["train"]["threads"])
        t0 = time.perf_counter()
        with thread_budget(threads):
            again = benchmark.checkpointed_run(bundle, exp["model"], exp["train"], seed, "cpu", tracin=False).model
            s.tracin = benchmark.seed_ensemble(bundle, exp["model"], exp["train"], seed, int(tracin["models"]),
                                               float(tracin["weight"]), "cpu", first=model)
        ref, new = model.state_dict(), again.state_dict()
        same = all(torch.equal(ref[k], new[k]) for k in ref)
        diff = max(float((ref[k].double() - new[k].double()).abs().max()) for k in ref)
        s.checks.append(f"TracIn ensemble: model.pt and seeds {seed + 1}..{seed + len(s.tracin) - 1} retrained "
                        f"with {threads} thread(s) in {time.perf_counter() - t0:.0f} s; retraining seed {seed} "
                        + ("gives model.pt bit for bit" if same else f"is {diff:.2g} away from model.pt"))
    return s


# ------------------------------------------------------------------------------ ntkbench
def ntkbench_scores(s: Setup, method: str) -> np.ndarray:
    """``gradient_method_scores`` for one method, with the gradients stage's arguments."""
    kw = s.kw
    common = {"proj_dim": kw["proj_dim"], "proj_seed": kw["proj_seed"], "proj_type": kw["proj_type"],
              "ridge": kw["ridge"], "batch_size": kw["batch_size"], "device": "cpu", "loss": "cross_entropy",
              "grad_proj_dim": kw["grad_proj_dim"]}
    tr, te = s.bundle.train, s.bundle.test
    k = trak_k(method)
    if k:
        out = M.gradient_method_scores(s.model, te.x, te.y, tr.x, tr.y, methods=["trak"], trak_models=s.members[:k],
                                       trak_ensembles=[k], **common)
    else:
        name = "tracin" if method == "tracin-seeds" else method
        out = M.gradient_method_scores(s.model, te.x, te.y, tr.x, tr.y, s.tracin, methods=[name], **common)
        out = {method: out[name]}
    return out[method]


# ------------------------------------------------------------------------------ dattri
def projector_kwargs(proj_dim: int) -> dict[str, Any]:
    """A fresh dict every time: dattri's attributors ``update`` their module-level default in place."""
    return {"proj_dim": int(proj_dim), "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}


def dattri_losses(net: nn.Module) -> dict[str, Callable]:
    """The per-sample functions of dattri's experiments/benchmark_result.py (vmapped by dattri)."""

    def loss_tracin(params, data):
        image, label_ = data
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        return nn.CrossEntropyLoss()(yhat, label_.unsqueeze(0).long())

    def loss_trak(params, data):  # TRAK's margin log(p / (1 - p)), written as dattri writes it
        image, label_ = data
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        logp = -nn.CrossEntropyLoss()(yhat, label_.unsqueeze(0))
        return logp - torch.log(1 - torch.exp(logp))

    def m_trak(params, data):  # correct-class probability
        image, label_ = data
        yhat = torch.func.functional_call(net, params, image.unsqueeze(0))
        return torch.exp(-nn.CrossEntropyLoss()(yhat, label_.unsqueeze(0).long()))

    return {"tracin": loss_tracin, "trak": loss_trak, "m_trak": m_trak}


def dattri_scores(s: Setup, method: str) -> np.ndarray:
    """dattri's attributor for one method; (n_test, N) (dattri returns (N, n_test))."""
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    net = copy.deepcopy(s.model).eval()
    fns = dattri_losses(net)
    train_loader, test_loader = s.loaders()
    k = trak_k(method)
    if k:
        task = AttributionTask(model=net, loss_func=fns["trak"], checkpoints=list(s.members[:k]))
        attributor = TRAKAttributor(task=task, correct_probability_func=fns["m_trak"], device="cpu",
                                    projector_kwargs=projector_kwargs(s.kw["proj_dim"]))
        attributor.cache(train_loader)
        with torch.no_grad():
            score = attributor.attribute(test_loader)
    else:
        if method == "tracin-seeds":
            checkpoints = [sd for sd, _ in s.tracin]
            weights = torch.tensor([w for _, w in s.tracin])
        else:
            checkpoints = [s.model.state_dict()]
            weights = torch.ones(1) * DATTRI_WEIGHT
        task = AttributionTask(model=net, loss_func=fns["tracin"], checkpoints=checkpoints)
        attributor = TracInAttributor(task=task, weight_list=weights, normalized_grad=method == "grad-cos",
                                      projector_kwargs=projector_kwargs(s.kw["grad_proj_dim"]), device="cpu")
        with torch.no_grad():
            score = attributor.attribute(train_loader, test_loader)
    return score.T.double().numpy()


# ------------------------------------------------------------------------------ traker
def traker_scores(s: Setup, k: int) -> np.ndarray:
    """traker's TRAK over the first k subset networks; (n_test, N)."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    net = copy.deepcopy(s.model).eval()
    train_loader, test_loader = s.loaders()
    save_dir = tempfile.mkdtemp(prefix="traker_")
    try:
        projector = BasicProjector(grad_dim=s.n_params, proj_dim=s.kw["proj_dim"], seed=0,
                                   proj_type=ProjectionType.normal, device="cpu", dtype=torch.float32)
        traker = TRAKer(model=net, task="image_classification", train_set_size=len(s.bundle.train),
                        save_dir=save_dir, device="cpu", projector=projector, use_half_precision=False,
                        lambda_reg=0.0, logging_level=logging.WARNING)
        for e, sd in enumerate(s.members[:k]):
            traker.load_checkpoint(sd, model_id=e)
            for xb, yb in train_loader:
                traker.featurize(batch=(xb, yb), num_samples=len(xb))
        traker.finalize_features()
        for e, sd in enumerate(s.members[:k]):
            traker.start_scoring_checkpoint(exp_name="peers", checkpoint=sd, model_id=e,
                                            num_targets=len(s.bundle.test))
            for xb, yb in test_loader:
                traker.score(batch=(xb, yb), num_samples=len(xb))
        scores = np.array(traker.finalize_scores(exp_name="peers"), dtype=np.float64)  # (N, n_test)
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
    return scores.T


# ------------------------------------------------------------------------------ influence functions
def kronfluence_task() -> Any:
    """kronfluence's Task: the cross-entropy as training loss and as measurement, both summed.

    kronfluence takes the per-sample gradients from the backward pass of the batch's loss and
    divides its covariance and Lambda sums by the number of examples itself, so it expects the
    *sum* over the batch (a mean would scale every per-sample gradient by 1 / batch size). With
    ``sample=True`` (the factors, kronfluence's default ``use_empirical_fisher=False``) the
    labels are drawn from the model's softmax: the true Fisher, whose expectation over the
    draws is the GGN of the cross-entropy; one draw per training point and pass."""
    from kronfluence.task import Task

    class CrossEntropyTask(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.distributions.Categorical(logits=logits.detach()).sample()
            return nn.functional.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(model(x), y, reduction="sum")

    return CrossEntropyTask()


def kronfluence_analyzer(s: Setup, strategy: str) -> Any:
    """kronfluence's Analyzer on a copy of the attributed network, with the factors of
    ``strategy`` fitted on the full training set (once per strategy; label draws seeded 0)."""
    if strategy not in s.analyzers:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments

        task = kronfluence_task()
        net = prepare_model(copy.deepcopy(s.model), task)  # net.eval() (dropout off), wraps the nn.Linear layers
        if net.training:
            raise RuntimeError("kronfluence's prepare_model left the network in training mode")
        if s.workdir is None:
            s.workdir = tempfile.mkdtemp(prefix="kronfluence_")
        analyzer = Analyzer(f"peers_{strategy}", net, task, cpu=True, log_level=logging.WARNING, disable_tqdm=True,
                            output_dir=s.workdir)
        torch.manual_seed(0)
        analyzer.fit_all_factors(strategy, s.datasets()[0], per_device_batch_size=IF_BATCH,
                                 factor_args=FactorArguments(strategy=strategy))
        s.analyzers[strategy] = analyzer
    return s.analyzers[strategy]


def kronfluence_scores(s: Setup, strategy: str, damping: float | None, self_check: int = 0) -> np.ndarray:
    """kronfluence's pairwise scores (n_test, N), float32 computed, with ``damping`` (None: its
    heuristic, 0.1 x the mean eigenvalue of each module): g_testᵀ (F̂ + λ I)⁻¹ g_i with F̂ the
    K-FAC / EK-FAC Fisher of the summed training loss divided by N, and no sign flip: > 0 =
    upweighting training point i lowers the test loss, ntkbench's convention (``self_check``:
    the score of that many training points on their own loss instead, which is > 0 then)."""
    key = (strategy, damping) if not self_check else (f"{strategy}-self{self_check}", damping)
    if key not in s.if_scores:
        from kronfluence.arguments import ScoreArguments

        analyzer = kronfluence_analyzer(s, strategy)
        train, test = s.datasets()
        name = f"{key[0]}_{damping}"
        indices = list(range(self_check)) if self_check else None
        analyzer.compute_pairwise_scores(name, strategy, train if self_check else test, train,
                                         per_device_query_batch_size=IF_BATCH, per_device_train_batch_size=IF_BATCH,
                                         query_indices=indices, train_indices=indices,
                                         score_args=ScoreArguments(damping_factor=damping))
        s.if_scores[key] = analyzer.load_pairwise_scores(name)["all_modules"].double().numpy()
    return s.if_scores[key]


def kronfluence_eigenvalues(s: Setup, strategy: str) -> dict[str, torch.Tensor]:
    """The eigenvalues kronfluence adds the damping to and inverts, per module (float64): K-FAC's
    Kronecker products of the two factors' eigenvalues, EK-FAC's fitted Lambda matrix divided by
    the number of examples."""
    f = s.analyzers[strategy].load_all_factors(strategy)
    if strategy == "ekfac":
        return {m: lam.double() / f["num_lambda_processed"][m].double() for m, lam in f["lambda_matrix"].items()}
    return {m: torch.kron(ea.double().unsqueeze(0), f["gradient_eigenvalues"][m].double().unsqueeze(-1))
            for m, ea in f["activation_eigenvalues"].items()}


def kronfluence_heuristic(s: Setup, strategy: str) -> dict[str, float]:
    """The damping kronfluence's heuristic (damping_factor None) adds, per module: 0.1 x the mean
    of its eigenvalues (:func:`kronfluence_eigenvalues`)."""
    from kronfluence.utils.constants import HEURISTIC_DAMPING_SCALE

    return {m: float(HEURISTIC_DAMPING_SCALE * ev.mean()) for m, ev in kronfluence_eigenvalues(s, strategy).items()}


def exact_influence(s: Setup, dampings: list[float]) -> dict[float, np.ndarray]:
    """ntkbench's influence function with the explicit mean GGN (float64), one GGN for all dampings."""
    tr, te = s.bundle.train, s.bundle.test
    return influence_scores(s.model, te.x, te.y, tr.x, tr.y, [float(d) for d in dampings],
                            batch_size=s.kw["batch_size"], device="cpu")


def influence_grid(s: Setup, strategies: list[str], dampings: list[float | None], exact: bool) -> list[dict]:
    """LDS of kronfluence's scores (and of the exact ones when ``exact``) for each damping;
    None = kronfluence's heuristic (the exact one then at EK-FAC's value when there is one module)."""
    heuristic = {st: kronfluence_heuristic(s, st) for st in strategies} if None in dampings else {}
    exact_at = {d: d for d in dampings if d is not None}
    if exact and len(heuristic.get("ekfac", {})) == 1:
        exact_at[None] = next(iter(heuristic["ekfac"].values()))
    ref: dict[float, np.ndarray] = {}
    if exact and exact_at:
        ref, seconds, _ = timed(lambda: exact_influence(s, list(dict.fromkeys(exact_at.values()))))
        s.checks.append(f"{IF_EXACT}: the damping grid ({len(ref)} dampings) from one GGN in {seconds:.0f} s")
    grid = []
    for d in dampings:
        row: dict[str, Any] = {"damping": d, "heuristic": {st: heuristic[st] for st in heuristic} if d is None else {}}
        theirs = ref.get(exact_at[d]) if d in exact_at else None
        if theirs is not None:
            lds = compute_lds(theirs, s.masks, s.target)
            row["exact"] = (lds.mean, lds.sem, exact_at[d])
        for st in strategies:
            scores = kronfluence_scores(s, st, d)
            lds = compute_lds(scores, s.masks, s.target)
            row[st] = (lds.mean, lds.sem, *((spearman(scores, theirs), rowwise_spearman(scores, theirs))
                                           if theirs is not None else (None, None)))
        grid.append(row)
        print(f"  damping {d}: " + "; ".join(f"{k} LDS {v[0]:.3f}" for k, v in row.items()
                                              if k not in ("damping", "heuristic")), flush=True)
    return grid


# ------------------------------------------------------------------------------ the peer's R
def dattri_projection(n_params: int, proj_dim: int, ensemble_id: int) -> torch.Tensor:
    """dattri's CPU projection matrix (P, K) for ``ensemble_id`` (1/sqrt(K) included): the
    blocks its BasicProjector draws (seed 0 + 1000 * block + 1e5 * ensemble_id)."""
    from dattri.func.projection import BasicProjector, ProjectionType

    proj = BasicProjector(feature_dim=n_params, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.normal,
                          device=torch.device("cpu"), dtype=torch.float32, ensemble_id=ensemble_id)
    R = torch.empty(n_params, proj_dim)
    for i, state in enumerate(proj.generator_states):
        proj._gen_randomness_dense(state)
        st, ed = i * proj.block_size, min((i + 1) * proj.block_size, proj_dim)
        R[:, st:ed] = proj.proj_matrix[:, :ed - st]
    return R / proj_dim ** 0.5


def check_peer_projections(s: Setup) -> bool:
    """dattri's ``random_project`` equals G @ R for our R; traker's BasicProjector is the same R
    without the 1/sqrt(K). Returns whether traker's R is dattri's (then one table covers both)."""
    from dattri.func.projection import random_project
    from trak.projectors import BasicProjector, ProjectionType

    x, y = s.bundle.train.x[:64], s.bundle.train.y[:64]
    _, G = next(iter_per_sample_grads(s.model, x, y, "loss", batch_size=64, device="cpu"))
    K = s.kw["proj_dim"]
    same_traker = True
    for e in (0, 1):
        R = dattri_projection(s.n_params, K, e)
        d = random_project(G, len(G), **projector_kwargs(K))(G, ensemble_id=e)
        t = BasicProjector(grad_dim=s.n_params, proj_dim=K, seed=0, proj_type=ProjectionType.normal, device="cpu",
                           dtype=torch.float32).project(G.clone(), model_id=e)
        ref = G @ R
        err_d = float((d - ref).abs().max() / ref.abs().max())
        err_t = float((t / K ** 0.5 - ref).abs().max() / ref.abs().max())
        if err_d > 1e-5:
            raise RuntimeError(f"dattri's projection (ensemble {e}) is not the matrix read from its projector "
                               f"(relative difference {err_d:.2g})")
        same_traker &= err_t < 1e-5
        s.checks.append(f"projection, ensemble/model id {e}: dattri random_project vs G @ R: rel. diff {err_d:.1e}; "
                        f"traker BasicProjector / sqrt(K) vs G @ R: rel. diff {err_t:.1e}")
    return same_traker


def _projected(net: nn.Module, x: torch.Tensor, y: torch.Tensor, output: str, sd: dict | None, R: torch.Tensor,
               batch_size: int) -> torch.Tensor:
    """ntkbench's per-sample gradients (loss or margin) times R, streamed, float64 (n, K)."""
    return torch.cat([(g @ R).double() for _, g in iter_per_sample_grads(net, x, y, output, sd, batch_size, "cpu")])


def ntkbench_with_peer_R(s: Setup, method: str) -> dict[str, np.ndarray]:
    """ntkbench's formula of ``method`` (in ntkbench's scaling: TracIn's weights, none for
    Grad-Dot / Grad-Cos) with dattri's projection matrices, one per checkpoint / member
    (ensemble id = its index), as dattri draws them: ``{"dattri": scores}``, and for TRAK also
    ``"traker"``: the same with traker's member weights (its finalize_features divides each
    member's (ΦᵀΦ)⁻¹ by its mean absolute entry, so the ensemble mean is a weighted one)."""
    tr, te = s.bundle.train, s.bundle.test
    bs = s.kw["batch_size"]
    k = trak_k(method)
    if k:
        feats, weighted = [], []
        for e, sd in enumerate(s.members[:k]):
            if e not in s.peer_features:  # TRAK-k's members are the first k: computed once
                R = dattri_projection(s.n_params, s.kw["proj_dim"], e)
                margin = output_values(s.model, tr.x, tr.y, "margin", sd, device="cpu").numpy()
                s.peer_features[e] = M.TrakFeatures(_projected(s.model, tr.x, tr.y, "margin", sd, R, bs).numpy(),
                                                    _projected(s.model, te.x, te.y, "margin", sd, R, bs).numpy(),
                                                    1.0 / (1.0 + np.exp(margin)))
            f = s.peer_features[e]
            feats.append(f)
            w = 1.0 / np.abs(np.linalg.inv(f.phi_train.T @ f.phi_train)).mean()
            weighted.append(M.TrakFeatures(f.phi_train, w * f.phi_test, f.one_minus_p))
        return {"dattri": M.trak_scores(feats, s.kw["ridge"]), "traker": M.trak_scores(weighted, s.kw["ridge"])}
    pairs = s.tracin if method == "tracin-seeds" else [(None, 1.0)]
    total = 0.0
    for e, (sd, w) in enumerate(pairs):
        R = dattri_projection(s.n_params, s.kw["grad_proj_dim"], e)
        a = _projected(s.model, te.x, te.y, "loss", sd, R, bs)
        b = _projected(s.model, tr.x, tr.y, "loss", sd, R, bs)
        if method == "grad-cos":
            a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        total = total + w * (a @ b.T).numpy()
    return {"dattri": total}


def dattri_margin_check(s: Setup) -> None:
    """dattri's TRAK output ``logp - log(1 - exp(logp))`` against ntkbench's (and traker's)
    ``z_y - logsumexp_{c != y} z_c`` on the training points, per TRAK member."""
    tr = s.bundle.train
    nonfinite, worst = [], 0.0
    for sd in s.members:
        net = copy.deepcopy(s.model)
        net.load_state_dict(sd)
        with torch.no_grad():
            z = net.eval()(tr.x)
        logp = -nn.functional.cross_entropy(z, tr.y, reduction="none")
        theirs = logp - torch.log(1 - torch.exp(logp))
        ours = output_values(s.model, tr.x, tr.y, "margin", sd, device="cpu")
        ok = torch.isfinite(theirs)
        nonfinite.append(int((~ok).sum()))
        if ok.any():
            worst = max(worst, float((theirs[ok].double() - ours[ok]).abs().max()))
    s.checks.append(f"TRAK output on the training points of the {len(s.members)} members: dattri's float32 "
                    f"log(p/(1-p)) is non-finite (p rounds to 1) for {sum(nonfinite)} point-member pairs "
                    f"(max {max(nonfinite)} in one member; their gradients go through dattri's nan_to_num); "
                    f"elsewhere max |dattri - ntkbench margin| = {worst:.2g}")


# ------------------------------------------------------------------------------ metrics
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of the flattened matrices (all entries)."""
    return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over test points (rows) of the Spearman correlation of their training-point scores."""
    ra, rb = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return float(np.mean((ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))))


def dattri_lds(scores: np.ndarray, s: Setup) -> float:
    """dattri.metric.lds on the same scores and ground truth (mean over test points, NaNs dropped)."""
    from dattri.metric import lds

    idx = torch.from_numpy(np.stack([np.flatnonzero(m) for m in s.masks]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: NaN, dropped as dattri's benchmark drops them
        corr, _ = lds(torch.from_numpy(scores.T.copy()), (torch.from_numpy(s.target), idx))
    return float(corr[~torch.isnan(corr)].mean())


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, os.getloadavg()[0]


# ------------------------------------------------------------------------------ main
def default_methods(config_path: Path) -> list[str]:
    """The gradient methods the config's attribution block asks for, as ntkbench names them,
    and the influence-function methods."""
    settings = validate_config(load_config(config_path))["attribution"]
    ensemble = settings["trak"]["ensemble"]
    ks = ensemble if isinstance(ensemble, list) else [ensemble]
    tracin = ["tracin-seeds"] if (settings.get("tracin") or {}).get("scheme") == "seeds" else []
    return [*tracin, "grad-dot", "grad-cos", *[f"trak-{int(k)}" for k in ks], *IF_METHODS]


def _damping(text: str) -> float | None:
    return None if text == "heuristic" else float(text)


def make_row(s: Setup, experiment: str, method: str, impl: str, scores: np.ndarray, seconds: float | None,
             load: float, ours: tuple[np.ndarray, float, float | None] | None,
             published: str | None) -> dict[str, Any]:
    """One row of the main table; ``seconds``: None where the scores were not timed (read from a
    file); ``ours``: ntkbench's (scores, LDS, time) of the method, if any; ``published``: the key
    of dattri's published LDS to show."""
    if not np.all(np.isfinite(scores)):
        raise FloatingPointError(f"{impl} {method}: non-finite scores")
    lds = compute_lds(scores, s.masks, s.target)
    if ours is None and impl == "ntkbench":
        ours = (scores, lds.mean, seconds)
    row = {"method": method, "impl": impl, "lds": lds.mean, "sem": lds.sem, "time": seconds, "load": load,
           "dlds": None, "ratio": None, "rho": None, "dattri_lds": dattri_lds(scores, s),
           "published": PUBLISHED.get(experiment.rsplit("-", 1)[-1], {}).get(published) if published else None}
    if ours is not None:
        timed_both = seconds is not None and ours[2] is not None
        row.update(dlds=lds.mean - ours[1], ratio=seconds / ours[2] if timed_both else None,
                   rho=spearman(scores, ours[0]))
    print(f"  {method:14s} {impl:17s} LDS {row['lds']:.3f} ± {row['sem']:.3f}  {_fmt(seconds, '7.1f')} s "
          f"({_fmt(row['ratio'], '.2f')}x)  Spearman vs ntkbench {_fmt(row['rho'], '.3f')}  load {load:.1f}",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="the workflow's results directory")
    parser.add_argument("--experiment", default="mnist10-lr")
    parser.add_argument("--config", type=Path, default=Path("configs/dattri_mnist.yaml"))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="ntkbench method names (default: the config's and both IF): tracin-seeds grad-dot "
                             "grad-cos trak-1 trak-10 trak-50 if-ekfac if-kfac")
    parser.add_argument("--no-if", action="store_true", help="leave out the influence-function methods (if-*)")
    parser.add_argument("--if-dampings", nargs="*", default=["heuristic", *map(str, DATTRI_IF_DAMPINGS)],
                        help="the IF damping grid besides kronfluence's default (a number or 'heuristic'; "
                             "default: heuristic and dattri's grid; the flag alone: no grid)")
    parser.add_argument("--peers", nargs="+", default=["dattri", "traker"], choices=["dattri", "traker"])
    parser.add_argument("--peer-r", nargs="*", default=None,
                        help="methods recomputed with the peer's R (default: all gradient methods of --methods; "
                             "the flag alone: none)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and BLAS threads, the same for every implementation")
    parser.add_argument("--train-threads", type=int, default=None,
                        help="torch threads for retraining the TracIn seed ensemble (default: the config's "
                             "resources.train.threads, with which the train stage made model.pt)")
    parser.add_argument("--stored-ours", action="store_true",
                        help="take ntkbench's scores from the workflow's gradients.npz instead of recomputing "
                             "them (no ntkbench time, hence no time ratio): for peer runs too long to repeat ours")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS too (ntkbench's TRAK solves with np.linalg.pinv)
    logging.getLogger("ntkbench").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)  # kronfluence's torch.cuda.amp.GradScaler
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.methods is None:
        args.methods = default_methods(args.config)
    if args.no_if:
        args.methods = [m for m in args.methods if m not in IF_METHODS]
    gradient_methods = [m for m in args.methods if m not in IF_METHODS]
    if_methods = [m for m in args.methods if m in IF_METHODS]
    peer_r = gradient_methods if args.peer_r is None else args.peer_r

    s = load_setup(args.results, args.experiment, args.config, args.methods, args.train_threads)
    versions = {p: md.version(p) for p in ("torch", "dattri", "traker", *(["kronfluence"] if if_methods else []))}
    print(f"{args.experiment}: N = {len(s.bundle.train)}, n_test = {len(s.bundle.test)}, P = {s.n_params}, "
          f"{len(s.masks)} subsets; torch threads {args.threads}; {versions}", flush=True)

    rows, peer_scores = [], {}
    try:
        for method in gradient_methods:
            impls: list[tuple[str, Callable[[], np.ndarray]]] = [("ntkbench",
                                                                  lambda m=method: ntkbench_scores(s, m))]
            if args.stored_ours:
                if method not in s.stored:
                    raise SystemExit(f"--stored-ours: gradients.npz has no scores of {method}")
                impls = [("ntkbench", lambda m=method: s.stored[m])]
            if "dattri" in args.peers:
                impls.append((f"dattri {versions['dattri']}", lambda m=method: dattri_scores(s, m)))
            if "traker" in args.peers and trak_k(method):
                impls.append((f"traker {versions['traker']}", lambda m=method: traker_scores(s, trak_k(m))))
            ours = None
            for impl, fn in impls:
                scores, seconds, load = timed(fn)
                if impl == "ntkbench" and args.stored_ours:
                    seconds = None  # read from gradients.npz: not timed
                rows.append(make_row(s, args.experiment, label(method), impl, scores, seconds, load, ours,
                                     None if impl == "ntkbench" else label(method)))
                if impl == "ntkbench":
                    ours = (scores, rows[-1]["lds"], seconds)
                if impl == "ntkbench" and args.stored_ours:
                    s.checks.append(f"{label(method)}: ntkbench's scores read from gradients.npz, not recomputed "
                                    "(--stored-ours): no time ratio")
                elif impl == "ntkbench" and method in s.stored:
                    diff = float(np.abs(scores - s.stored[method]).max() / np.abs(s.stored[method]).max())
                    s.checks.append(f"{label(method)}: ntkbench recomputed vs gradients.npz: "
                                    + ("bit-identical" if diff == 0 else f"max rel. diff {diff:.1e}"))
                    # TracIn's seed networks are retrained here: another thread count than the gradients
                    # job's changes their last bits, hence a note only
                    if diff > 1e-5 and method != "tracin-seeds":
                        raise RuntimeError(f"{method}: recomputed scores differ from the stored ones ({diff:.2g})")
                elif impl != "ntkbench":
                    peer_scores[(method, impl)] = scores

            both = [peer_scores.get((method, impl)) for impl, _ in impls[1:]]
            if len(both) == 2:  # dattri and traker share their R (checked below): how close are they?
                s.checks.append(f"{label(method)}: dattri vs traker (same R): Spearman {spearman(*both):.6f}")

        # influence functions: kronfluence at its default damping, beside ntkbench's exact GGN where P allows
        grid: list[dict] = []
        if if_methods:
            from kronfluence.arguments import ScoreArguments

            default = ScoreArguments().damping_factor
            exact = s.n_params <= MAX_PARAMS
            if not exact:
                s.checks.append(f"{IF_EXACT}: not computed, P = {s.n_params} > ntkbench's MAX_PARAMS {MAX_PARAMS}")
            ours = None
            for method in if_methods:
                if exact and ours is None:
                    scores, seconds, load = timed(lambda: exact_influence(s, [default])[default])
                    rows.append(make_row(s, args.experiment, IF_EXACT, "ntkbench", scores, seconds, load, None, "IF"))
                    ours = (scores, rows[-1]["lds"], seconds)
                strategy = IF_METHODS[method][0]
                scores, seconds, load = timed(lambda st=strategy: kronfluence_scores(s, st, default))
                rows.append(make_row(s, args.experiment, label(method), f"kronfluence {versions['kronfluence']}",
                                     scores, seconds, load, ours, "IF"))
                own = np.diagonal(kronfluence_scores(s, strategy, default, self_check=100))
                damped = torch.cat([ev.ravel() for ev in kronfluence_eigenvalues(s, strategy).values()]) + default
                s.checks.append(
                    f"{label(method)}: kronfluence's score of training points 0..99 on their own loss (damping "
                    f"{default:g}): {int((own > 0).sum())} of 100 positive (min {own.min():.3g}); its eigenvalues + λ: "
                    f"min {float(damped.min()):.3g}, {int((damped <= 0).sum())} of {damped.numel()} ≤ 0, "
                    f"{int((damped < 1e-7).sum())} < 1e-7. Its score is g_testᵀ (F̂ + λ I)⁻¹ g_train (no sign flip, "
                    "> 0 = supports)" + ("" if (damped > 0).all() else
                                         "; here F̂ + λ I is not positive definite (float32 covariances with "
                                         "eigenvalues at rounding level, negative ones included)"))
            dampings = list(dict.fromkeys([default, *map(_damping, args.if_dampings)]))
            if len(dampings) > 1:
                grid = influence_grid(s, [IF_METHODS[m][0] for m in if_methods], dampings, exact)
    finally:
        if s.workdir:
            shutil.rmtree(s.workdir, ignore_errors=True)

    # ntkbench's formulas with the peer's own R
    r_rows = []
    if peer_r and "dattri" in args.peers:
        same_traker = check_peer_projections(s)
        if s.members:
            dattri_margin_check(s)
        for method in [m for m in gradient_methods if m in peer_r]:
            variants = ntkbench_with_peer_R(s, method)
            for (m, impl), theirs in peer_scores.items():
                if m != method or (impl.startswith("traker") and not same_traker):
                    continue  # traker's R is dattri's times sqrt(K), a scale TRAK's scores do not see
                with_r = variants[impl.split()[0]]
                lds = compute_lds(with_r, s.masks, s.target).mean
                scale = float((with_r * theirs).sum() / (with_r * with_r).sum())  # peer = scale * ntkbench
                r_rows.append({"method": label(method), "impl": impl, "rho": spearman(with_r, theirs),
                               "scale": scale,
                               "rel": float(np.abs(scale * with_r - theirs).max() / np.abs(theirs).max()),
                               "lds": lds, "peer_lds": compute_lds(theirs, s.masks, s.target).mean})
                r = r_rows[-1]
                print(f"  with the peer's R: {r['method']:9s} vs {impl:15s} Spearman {r['rho']:.6f}, "
                      f"scale {r['scale']:.4g}, max |diff| / max |peer| {r['rel']:.1e}", flush=True)

    report = render(args, s, rows, r_rows, grid, versions, started)
    print("\n" + report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _damping_cell(row: dict, strategy: str | None = None) -> str:
    """λ of a grid row; the heuristic's values per module (of ``strategy`` only, if given)."""
    if row["damping"] is not None:
        return f"{row['damping']:g}"
    return "heuristic: " + "; ".join(f"{st} " + ", ".join(f"{v:.3g}" for v in per_module.values())
                                     for st, per_module in row["heuristic"].items() if strategy in (None, st))


def render_grid(grid: list[dict]) -> list[str]:
    """The IF damping table."""
    strategies = [st for st in ("ekfac", "kfac") if st in grid[0]]
    names = {"ekfac": "EK-FAC", "kfac": "K-FAC"}
    head = ["damping λ", "exact GGN LDS ± SEM"]
    for st in strategies:
        head += [f"{names[st]} LDS ± SEM", f"{names[st]} Spearman vs exact (all / per test point)"]
    lines = [
        "",
        ("**Influence functions over the damping λ** (added to the mean GGN / the K-FAC or EK-FAC eigenvalues, "
         "both per training point; the first row is kronfluence's default; dattri reports the best LDS of IF-CG "
         f"over {', '.join(f'{d:g}' for d in DATTRI_IF_DAMPINGS)}; heuristic: kronfluence's damping_factor=None, "
         "0.1 x the mean eigenvalue of each module, its values listed per module and the exact GGN at EK-FAC's "
         "when there is one module). Spearman vs exact: all entries of the flattened matrices / the mean over "
         "test points of the correlation of their N scores:"),
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
    ]
    for row in grid:
        ex = row.get("exact")
        cells = [_damping_cell(row), "–" if ex is None else f"{ex[0]:.3f} ± {ex[1]:.3f}"
                 + ("" if row["damping"] is not None else f" (λ = {ex[2]:.3g})")]
        for st in strategies:
            lds, sem, rho, rho_row = row[st]
            cells += [f"{lds:.3f} ± {sem:.3f}", "–" if rho is None else f"{rho:.3f} / {rho_row:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    best = []
    with_exact = [r for r in grid if r.get("exact")]
    if with_exact:
        r = max(with_exact, key=lambda r: r["exact"][0])
        best.append(f"exact GGN λ = {r['exact'][2]:.3g} (LDS {r['exact'][0]:.3f})")
    for st in strategies:
        r = max(grid, key=lambda r: r[st][0])
        best.append(f"{names[st]} {_damping_cell(r, st)} (LDS {r[st][0]:.3f})")
    return [*lines, "", "Best damping: " + "; ".join(best) + "."]


def render(args: argparse.Namespace, s: Setup, rows: list[dict], r_rows: list[dict], grid: list[dict],
           versions: dict[str, str], started: datetime.datetime) -> str:
    """The Markdown report: the main table, the peer's-R table, the IF damping table and the checks."""
    kron = f", kronfluence {versions['kronfluence']}" if "kronfluence" in versions else ""
    if_note = ("" if not kron else
               f" IF rows: {IF_EXACT} is ntkbench.attribution.influence (the explicit mean GGN, float64, Cholesky; "
               "the Hessian for LR; computed when P ≤ its MAX_PARAMS) and the ntkbench reference of the kronfluence "
               "rows, all at kronfluence's default damping; kronfluence: fit_all_factors on the N training points "
               "(true Fisher: labels drawn from the model, seed 0) and compute_pairwise_scores, summed "
               "cross-entropy as training loss, test cross-entropy as measurement, its time includes the factors; "
               "'dattri published' for IF: dattri's IF-CG, best damping.")
    lines = [
        f"# Attribution peers: {args.experiment}", "",
        (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()} ({os.cpu_count()} CPUs), torch {versions['torch']} "
         f"on the CPU with {args.threads} threads, dattri {versions['dattri']}, traker {versions['traker']}{kron}. "
         f"N = {len(s.bundle.train)} training and {len(s.bundle.test)} test points, P = {s.n_params}; LDS over "
         f"{len(s.masks)} subset networks (target: {s.settings['target']}). Time: one run each, wall clock; "
         "load: 1-minute load average when it ended. Spearman: all entries of the flattened "
         "(n_test x N) score matrices, against ntkbench's." + if_note), "",
        ("| method | implementation | LDS ± SEM | ΔLDS vs ntkbench | time (s) | ratio to ntkbench | "
         "Spearman vs ntkbench | load avg | dattri published |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['impl']} | {r['lds']:.3f} ± {r['sem']:.3f} | {_fmt(r['dlds'], '+.3f')} | "
                     f"{_fmt(r['time'], '.1f')} | {_fmt(r['ratio'], '.2f')} | {_fmt(r['rho'], '.3f')} | {r['load']:.1f} | "
                     f"{_fmt(r['published'], '.2f')} |")
    if r_rows:
        lines += [
            "",
            ("**ntkbench's formulas with the peer's projection matrix R** (dattri's BasicProjector blocks, one R "
             "per checkpoint / member as dattri draws them; traker's R is the same matrix times sqrt(K); traker "
             "rows use traker's member weights 1 / mean |(ΦᵀΦ)⁻¹|). Scale: least-squares c with peer ≈ "
             "c · ntkbench; the difference is taken after it:"),
            "",
            ("| method | peer | Spearman | scale c | max abs (peer − c · ntkbench) / max abs peer | "
             "LDS (ntkbench, peer's R) | LDS (peer) |"),
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in r_rows:
            lines.append(f"| {r['method']} | {r['impl']} | {r['rho']:.6f} | {r['scale']:.4g} | {r['rel']:.1e} | "
                         f"{r['lds']:.3f} | {r['peer_lds']:.3f} |")
    if grid:
        lines += render_grid(grid)
    lds_gap = max(abs(r["dattri_lds"] - r["lds"]) for r in rows)
    lines += ["", "Checks:", "", *[f"- {c}" for c in s.checks],
              (f"- dattri.metric.lds on the same scores and ground truth vs ntkbench's compute_lds: max |difference| "
               f"{lds_gap:.1e} over all rows")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
