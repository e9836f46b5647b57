"""Attribution benchmark library (SPEC §6): subsets, LDS, gradient methods, TRAK, mislabel AUC."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from ntkbench import models
from ntkbench.attribution import gradients, lds, methods, mislabel, retrain, subsets
from ntkbench.plots import attribution as figure
from ntkbench.data import DataBundle, Split
from ntkbench.training import TrainConfig, train_classifier
from ntkbench.training.classifier import classification_loss
from ntkbench.utils import seed_everything


# ----------------------------------------------------------------------------- helpers
def tiny_model(num_outputs: int, seed: int = 0, d: int = 4, hidden=(6,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build({"name": "mlp", "input_shape": [d], "num_outputs": num_outputs,
                         "hidden": list(hidden), "parameterisation": "ntk"}).double().eval()


def tiny_data(n: int, num_classes: int, seed: int, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, num_classes, (n,), generator=g)


def brute_force_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, output: str = "loss",
                      loss: str = "cross_entropy") -> np.ndarray:
    """One autograd backward per sample: flattened gradient of the loss (or margin)."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        z = model(x[i:i + 1])
        if output == "loss" and loss == "mse_sigmoid":
            val = (torch.sigmoid(z[0, 0]) - y[i].double()) ** 2         # written out by hand
        elif output == "loss":
            val = classification_loss(z, y[i:i + 1])
        else:
            zi, yi = z[0], int(y[i])
            if zi.shape[0] == 1:
                val = zi[0] if yi == 1 else -zi[0]
            else:
                others = torch.cat([zi[:yi], zi[yi + 1:]])
                val = zi[yi] - torch.logsumexp(others, 0)
        val.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows).numpy()


# ----------------------------------------------------------------------------- subsets
def test_subsets_reproducible_and_prefix_stable():
    a = subsets.draw_subsets(50, 10, 0.5, seed=3)
    b = subsets.draw_subsets(50, 64, 0.5, seed=3)
    assert a.shape == (10, 50) and a.dtype == bool
    np.testing.assert_array_equal(a, b[:10])                                # independent of M
    np.testing.assert_array_equal(a, subsets.draw_subsets(50, 10, 0.5, seed=3))  # reproducible
    np.testing.assert_array_equal(b[20:30], subsets.draw_subsets(50, 10, 0.5, seed=3, start=20))
    np.testing.assert_array_equal(b[7], subsets.subset_mask(50, 0.5, 3, 7))
    np.testing.assert_array_equal(np.flatnonzero(b[7]), subsets.subset_indices(50, 0.5, 3, 7))
    assert (a.sum(1) == 25).all()
    assert len({r.tobytes() for r in b}) == 64                              # all different
    assert not np.array_equal(a, subsets.draw_subsets(50, 10, 0.5, seed=4))
    assert subsets.draw_subsets(7, 3, 0.3, seed=0).sum(1).tolist() == [2, 2, 2]
    with pytest.raises(ValueError):
        subsets.draw_subsets(10, 2, 0.0)


# ----------------------------------------------------------------------------- LDS
def test_lds_exactly_linear_outputs_give_one_and_reversed_minus_one():
    rng = np.random.default_rng(0)
    masks = subsets.draw_subsets(12, 30, 0.5, seed=1)
    tau = rng.normal(size=(5, 12))
    f = masks @ tau.T                                  # f_j(x) exactly linear in membership
    res = lds.compute_lds(tau, masks, f)
    np.testing.assert_allclose(res.per_test, 1.0)
    assert res.mean == pytest.approx(1.0) and res.sem == pytest.approx(0.0) and res.n_valid == 5
    rev = lds.compute_lds(tau, masks, -f)
    np.testing.assert_allclose(rev.per_test, -1.0)
    # A monotone (non-linear) transform of the prediction keeps Spearman at 1.
    np.testing.assert_allclose(lds.compute_lds(tau, masks, np.exp(f)).per_test, 1.0)


def test_lds_hand_case_and_nan_handling():
    # 3 training points, 4 subsets, 3 test points.
    masks = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=bool)
    tau = np.array([[1.0, 2.0, 4.0],      # g = 3, 5, 6, 1
                    [1.0, 1.0, 1.0],      # g = 2, 2, 2, 1 (ties)
                    [0.0, 0.0, 0.0]])     # g constant -> NaN
    f = np.array([[10.0, 0.0, 5.0], [20.0, 1.0, 5.0], [30.0, 2.0, 5.0], [0.0, 3.0, 5.0]])
    g = lds.predicted_outputs(masks, tau)
    np.testing.assert_array_equal(g[:, 0], [3, 5, 6, 1])
    res = lds.compute_lds(tau, masks, f)
    assert res.per_test[0] == pytest.approx(1.0)
    # ranks of g[:,1] = (3,3,3,1) -> mean-centred (0.5,0.5,0.5,-1.5); f ranks (1,2,3,4)
    expected = stats.spearmanr(f[:, 1], g[:, 1]).statistic
    assert res.per_test[1] == pytest.approx(expected) and expected == pytest.approx(-math.sqrt(0.6))
    assert math.isnan(res.per_test[2])
    assert res.n_valid == 2 and res.n_test == 3 and res.n_subsets == 4
    assert res.mean == pytest.approx((1.0 - math.sqrt(0.6)) / 2)
    assert res.sem == pytest.approx(np.std([1.0, -math.sqrt(0.6)], ddof=1) / math.sqrt(2))
    rows = lds.lds_rows({"a": tau}, masks, f)
    assert rows[0]["method"] == "a" and rows[0]["lds_n_valid"] == 2


# ----------------------------------------------------------------------------- margins
def test_true_class_margin():
    z = np.array([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    np.testing.assert_allclose(retrain.true_class_margin(z, [1, 2]), [1.0, -5.0])
    np.testing.assert_allclose(retrain.true_class_margin(np.array([[2.0], [2.0], [-1.0]]), [1, 0, 0]), [2.0, -2.0, 1.0])


# ----------------------------------------------------------------------------- gradient methods
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_grad_dot_cos_tracin_match_brute_force(num_outputs):
    model = tiny_model(num_outputs)
    ncls = 2 if num_outputs == 1 else num_outputs
    x_tr, y_tr = tiny_data(9, ncls, seed=1)
    x_te, y_te = tiny_data(5, ncls, seed=2)
    G_tr, G_te = brute_force_grads(model, x_tr, y_tr), brute_force_grads(model, x_te, y_te)
    # per-sample gradients themselves
    np.testing.assert_allclose(gradients.per_sample_grads(model, x_tr, y_tr, batch_size=4, dtype=torch.float64),
                               G_tr, rtol=1e-10, atol=1e-12)
    dot = methods.grad_dot_scores(model, x_te, y_te, x_tr, y_tr, batch_size=4, device="cpu")
    np.testing.assert_allclose(dot, G_te @ G_tr.T, rtol=1e-4, atol=1e-7)     # float32 engine
    cos = methods.grad_cos_scores(model, x_te, y_te, x_tr, y_tr, batch_size=4)
    norms = np.linalg.norm(G_te, axis=1)[:, None] * np.linalg.norm(G_tr, axis=1)[None, :]
    np.testing.assert_allclose(cos, G_te @ G_tr.T / norms, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(methods.grad_self_influence(model, x_tr, y_tr), (G_tr**2).sum(1), rtol=1e-4)
    # TracIn-CP over two checkpoints with different learning rates
    ckpts, expected = [], np.zeros_like(dot)
    self_expected = np.zeros(len(x_tr))
    for seed, lr in [(5, 0.1), (6, 0.5)]:
        other = tiny_model(num_outputs, seed=seed)
        ckpts.append(({k: v.clone() for k, v in other.state_dict().items()}, lr))
        Ga, Gb = brute_force_grads(other, x_te, y_te), brute_force_grads(other, x_tr, y_tr)
        expected += lr * Ga @ Gb.T
        self_expected += lr * (Gb**2).sum(1)
    np.testing.assert_allclose(methods.tracin_scores(model, ckpts, x_te, y_te, x_tr, y_tr, batch_size=3),
                               expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(methods.tracin_self_influence(model, ckpts, x_tr, y_tr), self_expected, rtol=1e-4)
    # the bundled entry point gives the same arrays
    both = methods.gradient_method_scores(model, x_te, y_te, x_tr, y_tr, ckpts, methods=("grad-dot", "tracin"))
    np.testing.assert_allclose(both["grad-dot"], dot, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both["tracin"], expected, rtol=1e-4, atol=1e-7)


def test_gradients_follow_the_training_loss():
    """TracIn / Grad-Dot differentiate the experiment's training loss (train.loss)."""
    model = tiny_model(1)
    x_tr, y_tr = tiny_data(6, 2, seed=1)
    x_te, y_te = tiny_data(3, 2, seed=2)
    G_tr = brute_force_grads(model, x_tr, y_tr, loss="mse_sigmoid")
    G_te = brute_force_grads(model, x_te, y_te, loss="mse_sigmoid")
    np.testing.assert_allclose(methods.grad_dot_scores(model, x_te, y_te, x_tr, y_tr, loss="mse_sigmoid"),
                               G_te @ G_tr.T, rtol=1e-4, atol=1e-8)
    ce = methods.grad_dot_scores(model, x_te, y_te, x_tr, y_tr)
    assert not np.allclose(ce, G_te @ G_tr.T, rtol=1e-2)
    with pytest.raises(ValueError, match="loss"):
        gradients.per_sample_grads(model, x_tr, y_tr, loss="hinge")


def test_grad_dot_equals_loss_weighted_entk():
    """⟨∇ℓ(x), ∇ℓ(x')⟩ = r(x)ᵀ eNTK(x, x') r(x') with r = ∂ℓ/∂z: the kernel engine agrees."""
    from ntkbench import kernels

    model = tiny_model(3).float()
    x_tr, y_tr = tiny_data(7, 3, seed=3)
    x_te, y_te = tiny_data(4, 3, seed=4)
    x_tr, x_te = x_tr.float(), x_te.float()
    K = kernels.compute(model, x_te, x_tr, kind="entk").double().numpy()          # (4, 7, 3, 3)

    def r(x, y):
        with torch.no_grad():
            p = torch.softmax(model(x).double(), 1)
        return (p - torch.nn.functional.one_hot(y, 3)).numpy()                    # ∂CE/∂z

    expected = np.einsum("nc,nmcd,md->nm", r(x_te, y_te), K, r(x_tr, y_tr))
    np.testing.assert_allclose(methods.grad_dot_scores(model, x_te, y_te, x_tr, y_tr), expected,
                               rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- TRAK
def test_projection_is_the_seeded_block_projector():
    from ntkbench.kernels.projection import BlockProjector

    model = tiny_model(1).float()
    layout = gradients.parameter_layout(model)
    G = torch.randn(6, sum(int(np.prod(s)) for _, s in layout))
    R_T = BlockProjector(40, "gaussian", 7, torch.device("cpu"), torch.float32).dense_matrix(layout)
    np.testing.assert_allclose(gradients.project(G, layout, 40, 7), G @ R_T, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gradients.project(G, layout, 40, 7), gradients.project(G, layout, 40, 7))


@pytest.mark.parametrize("num_outputs", [1, 3])
def test_trak_matches_dense_formula(num_outputs):
    from ntkbench.kernels.projection import BlockProjector

    model = tiny_model(num_outputs).float()
    ncls = 2 if num_outputs == 1 else num_outputs
    x_tr, y_tr = tiny_data(30, ncls, seed=1)
    x_te, y_te = tiny_data(6, ncls, seed=2)
    x_tr, x_te = x_tr.float(), x_te.float()
    k = 12
    feats = methods.trak_features(model, x_te, y_te, x_tr, y_tr, proj_dim=k, proj_seed=3)
    # brute force: autograd margin gradients, explicit R, explicit inverse
    R_T = BlockProjector(k, "gaussian", 3, torch.device("cpu"), torch.float32).dense_matrix(
        gradients.parameter_layout(model)).double().numpy()
    m64 = tiny_model(num_outputs)
    Phi = brute_force_grads(m64, x_tr.double(), y_tr, "margin") @ R_T
    phi = brute_force_grads(m64, x_te.double(), y_te, "margin") @ R_T
    with torch.no_grad():
        z = m64(x_tr.double()).numpy()
    f = retrain.true_class_margin(z, y_tr.numpy()) if num_outputs == 1 else \
        np.array([z[i, y] - np.log(np.exp(np.delete(z[i], y)).sum()) for i, y in enumerate(y_tr.numpy())])
    one_minus_p = 1.0 - 1.0 / (1.0 + np.exp(-f))
    expected = phi @ np.linalg.inv(Phi.T @ Phi) @ Phi.T * one_minus_p[None, :]
    np.testing.assert_allclose(feats.one_minus_p, one_minus_p, rtol=1e-5)
    np.testing.assert_allclose(methods.trak_scores(feats, ridge=0.0), expected, rtol=2e-3, atol=1e-5 * np.abs(expected).max())
    self_expected = np.einsum("ik,kl,il->i", Phi, np.linalg.inv(Phi.T @ Phi), Phi) * one_minus_p
    np.testing.assert_allclose(methods.trak_self_influence(feats, ridge=0.0), self_expected, rtol=2e-3, atol=1e-6)
    # the bundled entry points agree
    np.testing.assert_allclose(methods.gradient_method_scores(model, x_te, y_te, x_tr, y_tr, methods=("trak",),
                                                              proj_dim=k, proj_seed=3)["trak"],
                               methods.trak_scores(feats))  # both with the schema's default ridge
    np.testing.assert_allclose(methods.gradient_method_self_influence(model, x_tr, y_tr, methods=("trak",),
                                                                      proj_dim=k, proj_seed=3)["trak"],
                               methods.trak_self_influence(feats))


def test_trak_linear_model_exact_influence_and_solver_branches():
    """For f linear in θ with identity-like features, TRAK is the Newton/least-squares
    influence φ(x)ᵀ(ΦᵀΦ)⁻¹φ_i; primal (K ≤ N) and dual (K > N) ridge solves agree."""
    rng = np.random.default_rng(0)
    Phi, phi = rng.normal(size=(20, 5)), rng.normal(size=(3, 5))
    q = rng.uniform(0.1, 0.9, size=20)
    feats = methods.TrakFeatures(Phi, phi, q)
    # Exact least-squares influence: the prediction at x of OLS on targets t is φ(x)ᵀβ̂ with
    # β̂ = (ΦᵀΦ)⁻¹Φᵀt, so ∂ prediction / ∂ t_i = [φ(x)ᵀ(ΦᵀΦ)⁻¹Φᵀ]_i (times q_i here).
    t = rng.normal(size=20)
    beta = np.linalg.lstsq(Phi, t, rcond=None)[0]
    np.testing.assert_allclose((methods.trak_scores(feats, ridge=0.0) / q) @ t, phi @ beta, rtol=1e-10)
    # ridge: primal branch (K=5 <= N=20) vs the same formula written out
    lam = 0.3 * np.trace(Phi.T @ Phi) / 5
    expected = phi @ np.linalg.inv(Phi.T @ Phi + lam * np.eye(5)) @ Phi.T * q
    np.testing.assert_allclose(methods.trak_scores(feats, ridge=0.3), expected, rtol=1e-10)
    # dual branch (K=20 > N=5): push-through identity gives the same primal formula
    Phi2, phi2, q2 = rng.normal(size=(5, 20)), rng.normal(size=(3, 20)), rng.uniform(size=5)
    lam2 = 0.3 * np.trace(Phi2.T @ Phi2) / 20
    expected2 = phi2 @ np.linalg.inv(Phi2.T @ Phi2 + lam2 * np.eye(20)) @ Phi2.T * q2
    np.testing.assert_allclose(methods.trak_scores(methods.TrakFeatures(Phi2, phi2, q2), ridge=0.3), expected2,
                               rtol=1e-8)
    # K > N without ridge: pseudo-inverse interpolates, τ(x_i, ·) = q_i e_i
    np.testing.assert_allclose(methods.trak_self_influence(methods.TrakFeatures(Phi2, Phi2, q2), ridge=0.0), q2, rtol=1e-8)
    # ensemble = mean of kernels times mean of Q
    ens = methods.trak_scores([feats, methods.TrakFeatures(2 * Phi, phi, 1 - q)], ridge=0.0)
    k1 = phi @ np.linalg.pinv(Phi)
    np.testing.assert_allclose(ens, (k1 + k1 / 2) / 2 * 0.5, rtol=1e-10)


# ----------------------------------------------------------------------------- kernel methods
@pytest.mark.parametrize("ncls", [2, 3])
def test_kglm_scores_sum_to_true_class_logit(ncls):
    from ntkbench.surrogate import KernelGLM

    rng = np.random.default_rng(1)
    counts = [40 // ncls + (i < 40 % ncls) for i in range(ncls)]
    x = rng.normal(size=(40, 3)) + np.repeat(np.eye(3)[:ncls] * 3, counts, 0)
    y = np.repeat(np.arange(ncls), counts)
    K = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 4)
    glm = KernelGLM(max_iter=20).fit(K, y)
    scores = methods.kglm_scores(glm, K[:10], y[:10])
    z = glm.decision_function(K[:10])
    expected = np.where(y[:10] == 1, z[:, 0], -z[:, 0]) if ncls == 2 else z[np.arange(10), y[:10]]
    np.testing.assert_allclose(scores.sum(1), expected, rtol=1e-10)
    np.testing.assert_allclose(methods.kglm_self_influence(glm, np.diag(K), y),
                               np.diag(methods.kglm_scores(glm, K, y)), rtol=1e-12)
    signed = methods.kernel_similarity_scores(K[:3, :5], y[:3], y[:5])
    np.testing.assert_array_equal(signed, np.where(y[:3, None] == y[None, :5], K[:3, :5], -K[:3, :5]))
    np.testing.assert_array_equal(methods.kernel_similarity_scores(K[:3, :5]), K[:3, :5])


# ----------------------------------------------------------------------------- mislabel
def test_detection_auc_hand_counts():
    scores = [0.9, 0.8, 0.7, 0.7, 0.1]
    flipped = [True, False, True, False, False]
    # positive 0.9 beats 3 negatives; positive 0.7 beats 0.1, ties 0.7 (1/2), loses to 0.8
    assert mislabel.detection_auc(scores, flipped) == pytest.approx(4.5 / 6)
    assert mislabel.detection_auc(scores, flipped) == pytest.approx(roc_auc_score(flipped, scores))
    assert mislabel.detection_auc([1, 2, 3], [False, False, True]) == 1.0
    assert mislabel.detection_auc([1, 2, 3], [True, False, False]) == 0.0
    assert mislabel.detection_auc(np.ones(4), [True, False, True, False]) == 0.5
    assert math.isnan(mislabel.detection_auc([1, 2], [False, False]))
    # detection curve: checked (0, .2, ..., 1), found by decreasing score 0.9 0.8 0.7 0.7 0.1
    x, found = mislabel.detection_curve(scores, flipped)
    np.testing.assert_allclose(found, [0, 0.5, 0.5, 1.0, 1.0, 1.0])
    # without ties, detection-curve area = q/2 + (1 - q) AUC
    rng = np.random.default_rng(0)
    s, f = rng.normal(size=200), rng.uniform(size=200) < 0.15
    q = f.mean()
    assert mislabel.detection_curve_area(s, f) == pytest.approx(q / 2 + (1 - q) * mislabel.detection_auc(s, f))


@pytest.mark.parametrize("ncls", [2, 10])
def test_flip_labels_deterministic(ncls):
    y = np.arange(200) % ncls
    new, flipped = mislabel.flip_labels(y, ncls, 0.1, seed=4)
    assert flipped.sum() == 20
    assert (new[flipped] != y[flipped]).all() and (new[~flipped] == y[~flipped]).all()
    assert new.min() >= 0 and new.max() < ncls
    if ncls == 2:
        np.testing.assert_array_equal(new[flipped], 1 - y[flipped])
    again, flipped2 = mislabel.flip_labels(y, ncls, 0.1, seed=4)
    np.testing.assert_array_equal(again, new)
    np.testing.assert_array_equal(flipped2, flipped)
    assert not np.array_equal(mislabel.flip_labels(y, ncls, 0.1, seed=5)[1], flipped)


# ----------------------------------------------------------------------------- retraining
def _bundle(n: int = 40, ncls: int = 2) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % ncls
    x = torch.randn(n, 1, 2, 2, generator=g) + y[:, None, None, None].float()
    y_te = torch.arange(12) % ncls
    x_te = torch.randn(12, 1, 2, 2, generator=g) + y_te[:, None, None, None].float()
    return DataBundle(Split(x, y), Split(x_te, y_te), num_classes=ncls)


SPEC = {"name": "mlp", "hidden": [8], "parameterisation": "ntk"}
TRAIN = {"optimizer": "sgd", "lr": 0.5, "epochs": 4, "batch_size": 8}


def test_checkpointed_training_is_the_stage_recipe():
    bundle = _bundle()
    run = retrain.train_with_checkpoints(bundle, SPEC, {**TRAIN, "allow_divergence": False}, seed=3,
                                         checkpoint_epochs=[0, 2, 4])
    assert [c.epoch for c in run.checkpoints] == [0, 2, 4] and all(c.lr == 0.5 for c in run.checkpoints)
    # train_stage's recipe, written out
    seed_everything(3)
    ref = models.build({**SPEC, "input_shape": [1, 2, 2], "num_outputs": 1})
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    train_classifier(ref, bundle, TrainConfig(**TRAIN), seed=3)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(run.checkpoints[-1].state_dict[k], v, rtol=0, atol=0)
        torch.testing.assert_close(run.model.state_dict()[k], v, rtol=0, atol=0)
        torch.testing.assert_close(run.checkpoints[0].state_dict[k], init[k], rtol=0, atol=0)
    assert not torch.equal(run.checkpoints[1].state_dict["1.0.weight"], init["1.0.weight"])
    assert retrain.default_checkpoint_epochs(40, 5) == [8, 16, 24, 32, 40]
    assert retrain.default_checkpoint_epochs(3, 5) == [1, 2, 3]


def test_retrain_subset_outputs_and_seed_scheme():
    bundle = _bundle(ncls=3)
    mask = subsets.subset_mask(len(bundle.train), 0.5, seed=0, index=2)
    sub = retrain.subset_bundle(bundle, mask)
    assert len(sub.train) == 20 and len(sub.test) == 12
    torch.testing.assert_close(sub.train.x, bundle.train.x[torch.from_numpy(np.flatnonzero(mask))])
    out = retrain.retrain_subset(bundle, mask, SPEC, TRAIN, seed=retrain.subset_model_seed(0, 2))
    assert out["margins"].shape == (12,) and out["logits"].shape == (12, 3)
    np.testing.assert_allclose(out["margins"], retrain.true_class_margin(out["logits"], bundle.test.y.numpy()))
    again = retrain.retrain_subset(bundle, mask, SPEC, TRAIN, seed=retrain.subset_model_seed(0, 2))
    np.testing.assert_array_equal(out["margins"], again["margins"])
    assert retrain.subset_model_seed(5, 1) == 5 == retrain.subset_model_seed(5, 2)
    d1, d2 = retrain.subset_model_seed(5, 1, "distinct"), retrain.subset_model_seed(5, 2, "distinct")
    assert d1 != d2 and d1 == retrain.subset_model_seed(5, 1, "distinct")


# ----------------------------------------------------------------------------- figure
def test_figure_writes_png(tmp_path):
    import pandas as pd

    rows = []
    for exp in ["digits2-mlp", "digits10-mlp"]:
        for kern, tau in [("trntk", 0.7), ("pntk", 0.5)]:
            rows.append({"experiment": exp, "method": "kglm", "kernel": kern, "lds": tau / 2, "lds_sem": 0.02,
                         "auc": 0.8, "tau": tau, "tau_sem": 0.01})
            rows.append({"experiment": exp, "method": "kernel-sim", "kernel": kern, "lds": 0.1, "lds_sem": 0.02,
                         "auc": 0.5, "tau": np.nan, "tau_sem": np.nan})
        for m in ["tracin", "trak"]:
            rows.append({"experiment": exp, "method": m, "kernel": "", "lds": 0.2, "lds_sem": 0.03,
                         "auc": np.nan, "tau": np.nan, "tau_sem": np.nan})
    path = tmp_path / "attribution.png"
    figure.plot_attribution_summary(pd.DataFrame(rows), path)
    assert path.stat().st_size > 10_000
    assert figure.method_label("kglm", "trntk") == "kGLM · trntk" and figure.method_label("trak", "") == "TRAK"


# ----------------------------------------------------------------------------- stage-level steps
def test_benchmark_steps_end_to_end_on_a_tiny_task():
    from ntkbench.attribution import benchmark

    bundle = _bundle(n=32, ncls=2)
    results = [benchmark.run_subset(bundle, SPEC, TRAIN, index=j, fraction=0.5, subset_seed=1, seed=0)
               for j in range(4)]
    masks, outputs, idx = benchmark.stack_subsets(results)
    assert masks.shape == (4, 32) and outputs.shape == (4, 12) and idx.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(masks, subsets.draw_subsets(32, 4, 0.5, seed=1))
    with pytest.raises(ValueError, match="repeat"):
        benchmark.stack_subsets([results[0], results[0]])
    x = bundle.train.x.reshape(32, -1).numpy()
    xt = bundle.test.x.reshape(12, -1).numpy()
    K, Kt = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1)), np.exp(-((xt[:, None] - x[None]) ** 2).sum(-1))
    ks, kself, _ = benchmark.kernel_attributions(K, Kt, bundle.train.y, bundle.test.y, {"max_iter": 10})
    gs, gself = benchmark.gradient_attributions(bundle, SPEC, TRAIN, seed=0, num_checkpoints=2, proj_dim=8)
    scores = {**ks, **gs}
    assert set(scores) == {"kglm", "kernel-sim", "tracin", "grad-dot", "grad-cos", "trak"}
    assert all(s.shape == (12, 32) for s in scores.values())
    table = benchmark.lds_table(scores, masks, outputs, experiment="tiny")
    assert list(table["method"]) == list(scores) and (table["lds_n_subsets"] == 4).all()
    assert table["lds"].between(-1, 1).all() and (table["experiment"] == "tiny").all()
    flipped = np.arange(32) % 8 == 0
    aucs = benchmark.auc_table({**kself, **gself}, flipped)
    assert aucs.set_index("method").loc["kernel-sim", "auc"] == 0.5   # κ(x, x) = 1: no signal
    assert aucs.set_index("method").loc["grad-cos", "auc"] == 0.5
