"""The small vision transformer ``vit``: shapes, parameter count, validation, kernels against
brute-force autograd (fast and generic paths), fast-path coverage of every parameter, and a
few training steps. Tiny sizes (1×8×8 images, 4×4 patches, dim 8) keep every test to seconds."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ntkbench import models
from ntkbench.data import DataBundle, Split
from ntkbench.kernels.fast import GradientEngine
from ntkbench.kernels.generic import functional_state
from ntkbench.models.vit import patchify
from ntkbench.training import TrainConfig, train_classifier
from tests.kernel_models import assert_kernels_match, brute_jacobian, brute_kernels

F64 = torch.float64
KINDS = ("entk", "trntk", "trntk0", "pntk", "pntk0")
TINY = {"name": "vit", "input_shape": [1, 8, 8], "num_outputs": 3, "patch": 4, "dim": 8, "depth": 2,
        "heads": 2, "mlp_dim": 12}
CASES = {
    "cls-preln": TINY,
    "mean-postln": {**TINY, "depth": 1, "pool": "mean", "norm_first": False},
    "rgb-rect": {**TINY, "input_shape": [3, 4, 8], "patch": 2, "depth": 1, "heads": 4},
}


def _images(spec: dict, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *spec["input_shape"], generator=g)


def _model(spec: dict) -> nn.Module:
    torch.manual_seed(0)
    net = models.build(spec).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines and embeddings, so their gradients are tested
        g = torch.Generator().manual_seed(3)
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.5, generator=g)
    return net


@pytest.fixture(scope="module")
def references():
    out = {}
    for case, spec in CASES.items():
        model, x, y = _model(spec), _images(spec, 5, 1), _images(spec, 4, 2)
        jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)
        out[case] = (model, x, y, brute_kernels(jx, jy), brute_kernels(jx, jx))
    return out


def test_shapes_parameter_count_and_validation():
    net = models.build({"name": "vit", "input_shape": [1, 28, 28], "num_outputs": 10}).eval()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert net.num_patches == 16 and net.embed.pos.num_embeddings == 17 and len(net.blocks) == 2
    assert sum(p.numel() for p in net.parameters()) == 19_594  # the docstring's MNIST count
    d, m, depth, C, k, T = 32, 64, 2, 10, 49, 17
    formula = (k + 1) * d + d + T * d + depth * (4 * d * d + 2 * d * m + 8 * d + m) + 2 * d + (d + 1) * C
    assert formula == 19_594
    mean = models.build({"name": "vit", "input_shape": [1, 28, 28], "num_outputs": 10, "pool": "mean"})
    assert mean.embed.cls is None and sum(p.numel() for p in mean.parameters()) == 19_594 - 2 * d
    one = models.build({**TINY, "num_outputs": 1}).eval()
    assert one(torch.randn(3, 1, 8, 8)).shape == (3, 1)
    # The patch embedding is the stride-patch convolution written as a Linear on patchify.
    x = torch.randn(2, 3, 4, 8)
    lin = nn.Linear(3 * 4, 5)
    conv = nn.functional.conv2d(x, lin.weight.view(5, 3, 2, 2), lin.bias, stride=2)  # (2, 5, 2, 4)
    torch.testing.assert_close(lin(patchify(x, 2)), conv.flatten(2).transpose(1, 2))
    for bad, needle in (({"patch": 3}, r"model\.patch"), ({"patch": 0}, r"model\.patch"),
                        ({"heads": 3}, r"model\.heads"), ({"pool": "max"}, r"model\.pool"),
                        ({"dim": 0}, r"model\.dim"), ({"dropout": 1.0}, r"model\.dropout"),
                        ({"input_shape": [64]}, "input_shape")):
        with pytest.raises(ValueError, match=needle):
            models.build({**TINY, **bad})
    with pytest.raises(ValueError, match=r"vit expects images \(N, 1, 8, 8\)"):
        one(torch.randn(2, 1, 8, 12))


def test_samples_are_independent():
    """No batch statistics: a sample's logits do not depend on the rest of the batch."""
    net = _model(TINY)
    x = _images(TINY, 6, 4)
    torch.testing.assert_close(net(x)[2:3], net(x[2:3]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["fast", "auto", "generic"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_brute_force(references, case, impl):
    model, x, y, ref_xy, ref_xx = references[case]
    assert ref_xy["entk"].abs().max() > 0
    assert_kernels_match(model, x, y, ref_xy, ref_xx, KINDS, impl, case)


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_covers_every_parameter(references, case):
    """Every parameter of the ViT (class token and positions included) is on the factorised
    fast path; none falls back to torch.func, and the first-batch autograd check passes."""
    model, x = references[case][:2]
    params, others = functional_state(model, torch.device("cpu"), F64)
    engine = GradientEngine(model, params, others, impl="fast")
    reps = engine.reps(x.to(F64))
    assert engine._verified and engine.fallback_names == []
    owners = {name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert set(engine.fast) == owners and set(reps) == owners
    expected = {"embed.patch", "embed.pos", "head"} | ({"embed.cls"} if model.pool == "cls" else set())
    assert expected <= owners
    covered = {p for fm in engine.fast.values() for p in fm.params}
    assert covered == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_lower_the_loss(optimizer):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 3
    bundle = DataBundle(Split(x, y), Split(x[:8], y[:8]), 3)
    net = models.build(TINY)
    with torch.no_grad():
        before = nn.functional.cross_entropy(net.eval()(x), y).item()
    params = [p.detach().clone() for p in net.parameters()]
    lr = 0.1 if optimizer == "sgd" else 1e-2
    hist = train_classifier(net, bundle, TrainConfig(optimizer=optimizer, lr=lr, epochs=5, batch_size=8), seed=0)
    assert hist["epoch"].iloc[-1] == 5 and math.isfinite(hist["train_loss"].iloc[-1])
    assert not net.training
    changed = [not torch.equal(b, p) for b, p in zip(params, net.parameters())]
    assert all(changed), [n for (n, _), c in zip(net.named_parameters(), changed) if not c]
    with torch.no_grad():
        after = nn.functional.cross_entropy(net(x), y).item()
    assert after < before


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = models.build(CASES["mean-postln"]).eval()
    models.save_checkpoint(tmp_path / "m.pt", net, CASES["mean-postln"])
    back, _ = models.load_checkpoint(tmp_path / "m.pt")
    x = _images(TINY, 3, 5)
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
