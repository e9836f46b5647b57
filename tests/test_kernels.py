"""Kernel values against brute force, for every kind and several architectures."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ntkbench import kernels
from tests.kernel_models import (
    BinaryNet, MLP, OddNet, SmallCNN, TokenNet, ViewCNN, assert_kernels_match, brute_jacobian, brute_kernels,
    with_bn_stats,
)

F64 = torch.float64
GRAD_KINDS = ["entk", "trntk0", "trntk", "pntk0", "pntk"]


def make_case(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(), torch.randn(7, 6), torch.randn(5, 6)
    if name == "cnn":
        return with_bn_stats(SmallCNN()), torch.randn(6, 1, 8, 8), torch.randn(4, 1, 8, 8)
    if name == "binary":
        return BinaryNet(), torch.randn(6, 5), torch.randn(3, 5)
    if name == "tokens":
        x = torch.randint(0, 11, (6, 5))
        x[0, 1] = 0  # padding token
        return TokenNet(), x, torch.randint(0, 11, (4, 5))
    if name == "odd":
        return OddNet(), torch.randn(5, 4), torch.randn(3, 4)
    raise KeyError(name)


CASES = ["mlp", "cnn", "binary", "tokens", "odd"]


@pytest.fixture(scope="module")
def references():
    out = {}
    for name in CASES:
        model, x, y = make_case(name)
        out[name] = (model, x, y, brute_kernels(brute_jacobian(model, x), brute_jacobian(model, y)),
                     brute_kernels(brute_jacobian(model, x), brute_jacobian(model, x)))
    return out


@pytest.mark.parametrize("impl", ["fast", "generic"])
@pytest.mark.parametrize("case", CASES)
def test_gradient_kinds_match_brute_force(references, case, impl):
    model, x, y, ref_xy, ref_xx = references[case]
    impl = "auto" if case == "odd" and impl == "fast" else impl  # odd needs the verified fallback
    assert_kernels_match(model, x, y, ref_xy, ref_xx, GRAD_KINDS, impl, case)


def test_fast_path_agrees_with_generic_float32(references):
    for case in CASES:
        model, x, y, _, _ = references[case]
        for kind in ["entk", "trntk", "pntk0"]:
            fast = kernels.compute(model, x, y, kind, impl="auto")
            generic = kernels.compute(model, x, y, kind, impl="generic")
            assert fast.dtype == torch.float32
            rel = (fast - generic).norm() / generic.norm()
            assert rel < 1e-5, (case, kind, rel.item())


def test_fast_impl_refuses_unfactorisable_module(references):
    model, x, y, _, _ = references["odd"]
    with pytest.raises(RuntimeError, match="do not match autograd"):
        kernels.compute(model, x, y, "trntk", impl="fast")


def test_class_sums_and_normalisation(references):
    model, x, y, _, _ = references["mlp"]
    entk = kernels.compute(model, x, y, "entk", dtype=F64)
    C = entk.shape[-1]
    torch.testing.assert_close(kernels.compute(model, x, y, "trntk0", dtype=F64), entk.diagonal(dim1=2, dim2=3).sum(-1))
    torch.testing.assert_close(kernels.compute(model, x, y, "pntk0", dtype=F64), entk.sum((2, 3)) / C)
    for kind in ["trntk", "pntk", "proj-trntk", "proj-pntk", "ck", "em"]:
        k = kernels.compute(model, x, kind=kind, proj_dim=64)
        assert torch.equal(k.diagonal(), torch.ones(x.shape[0])), kind
        assert k.abs().max() <= 1 + 1e-5
        torch.testing.assert_close(k, k.T, rtol=1e-5, atol=1e-6)


def test_importance_scales_classes(references):
    model, x, y, _, _ = references["mlp"]
    imp = torch.tensor([1.0, 0.25, 4.0])
    jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)
    s = imp.double().sqrt().view(1, -1, 1)
    ref = brute_kernels(jx * s, jy * s)
    for kind in GRAD_KINDS:
        k = kernels.compute(model, x, y, kind, importance=imp, dtype=F64)
        torch.testing.assert_close(k, ref[kind], msg=kind)
    j = kernels.jacobian(model, x, importance=imp, dtype=F64)
    torch.testing.assert_close(j, jx * s)
    with pytest.raises(ValueError, match="importance has 2 entries"):
        kernels.compute(model, x, y, "trntk", importance=[1.0, 2.0])


def test_jacobian_layout_and_groups(references):
    model, x, _, _, _ = references["cnn"]
    j = kernels.jacobian(model, x, dtype=F64, batch_size=4)
    torch.testing.assert_close(j, brute_jacobian(model, x))
    groups = kernels.parameter_groups(model)
    assert list(groups)[:2] == ["features.0", "features.1"]
    assert groups["features.0"] == ["features.0.weight", "features.0.bias"]
    parts = kernels.jacobian(model, x, dtype=F64, layerwise=True)
    torch.testing.assert_close(torch.cat(list(parts.values()), dim=2), j)
    odd = OddNet()
    assert kernels.parameter_groups(odd) == {"scale": ["scale"], "fc": ["fc.weight", "fc.bias"], "head": ["head.weight", "head.bias"]}


@pytest.mark.parametrize("kind", ["entk", "trntk0", "trntk", "pntk", "em"])
def test_layerwise_parts_sum_to_total(references, kind):
    model, x, y, _, _ = references["cnn"]
    total = kernels.compute(model, x, y, kind, dtype=F64)
    parts = kernels.compute(model, x, y, kind, dtype=F64, layerwise=True)
    expected = list(kernels.parameter_groups(model)) if kind != "em" else ["features.2", "features.4", "head.2"]
    assert list(parts) == expected
    torch.testing.assert_close(sum(parts.values()), total)
    assert all(v.abs().sum() > 0 for v in parts.values())
    if kind == "trntk0":  # a group's part is the kernel of that group's Jacobian alone
        jx = kernels.jacobian(model, x, dtype=F64, layerwise=True)["head.3"]
        jy = kernels.jacobian(model, y, dtype=F64, layerwise=True)["head.3"]
        torch.testing.assert_close(parts["head.3"], torch.einsum("icp,jcp->ij", jx, jy))


def test_ck_and_em_definitions():
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(5, 6), torch.randn(4, 6)
    acts = {}
    hooks = [model.net[i].register_forward_hook(lambda m, i_, o, k=i: acts.__setitem__(k, o.detach())) for i in (1, 3)]
    feats_x = {}
    model.double()
    with torch.no_grad():
        model(x.double()); feats_x = dict(acts)
        model(y.double()); feats_y = dict(acts)
    for h in hooks:
        h.remove()
    # ck: input of the last Linear = output of the Tanh (index 3)
    ex, ey = feats_x[3], feats_y[3]
    ck_ref = (ex @ ey.T) / (ex.norm(dim=1)[:, None] * ey.norm(dim=1)[None])
    torch.testing.assert_close(kernels.compute(model, x, y, "ck", dtype=F64), ck_ref)
    g = sum(feats_x[i] @ feats_y[i].T for i in (1, 3))
    dx = sum(feats_x[i].pow(2).sum(1) for i in (1, 3))
    dy = sum(feats_y[i].pow(2).sum(1) for i in (1, 3))
    torch.testing.assert_close(kernels.compute(model, x, y, "em", dtype=F64), g / torch.sqrt(dx[:, None] * dy[None]))
    one = kernels.compute(model, x, y, "em", layers=["net.1"], dtype=F64)
    ref1 = (feats_x[1] @ feats_y[1].T) / (feats_x[1].norm(dim=1)[:, None] * feats_y[1].norm(dim=1)[None])
    torch.testing.assert_close(one, ref1)
    with pytest.raises(ValueError, match="unknown em layer"):
        kernels.compute(model, x, y, "em", layers=["nope"])


def test_projection_reproducible_and_converges(references):
    model, x, y, ref_xy, _ = references["mlp"]
    a = kernels.compute(model, x, y, "proj-trntk", proj_dim=256, seed=3, dtype=F64)
    b = kernels.compute(model, x, y, "proj-trntk", proj_dim=256, seed=3, dtype=F64, impl="generic")
    c = kernels.compute(model, x, y, "proj-trntk", proj_dim=256, seed=4, dtype=F64)
    torch.testing.assert_close(a, b)  # fast (shared-input) and dense projections use the same R
    assert (a - c).abs().max() > 1e-3
    errors = []
    for k in (16, 256, 4096):
        est = [kernels.compute(model, x, y, "proj-trntk", proj_dim=k, seed=s, dtype=F64) for s in range(3)]
        errors.append(sum((e - ref_xy["trntk"]).pow(2).mean().item() for e in est) / 3)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-3


@pytest.mark.parametrize("proj_type", ["gaussian", "rademacher"])
def test_projection_equals_dense_projection(references, proj_type):
    from ntkbench.kernels.forward import trainable_parameters
    from ntkbench.kernels.projection import BlockProjector

    for case in ["mlp", "tokens", "cnn"]:
        model, x, y, _, _ = references[case]
        layout = [(n, tuple(p.shape)) for n, p in trainable_parameters(model).items()]
        rt = BlockProjector(64, proj_type, 11, torch.device("cpu"), F64).dense_matrix(layout)
        if proj_type == "rademacher":
            assert torch.allclose(rt.abs(), torch.full_like(rt, 64 ** -0.5))
        jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)
        px, py = jx @ rt, jy @ rt
        for kind, fx, fy in [("proj-trntk", px, py), ("proj-pntk", px.sum(1, keepdim=True), py.sum(1, keepdim=True))]:
            k0 = torch.einsum("ick,jck->ij", fx, fy)
            ref = k0 / torch.sqrt(fx.pow(2).sum((1, 2))[:, None] * fy.pow(2).sum((1, 2))[None])
            got = kernels.compute(model, x, y, kind, proj_dim=64, proj_type=proj_type, seed=11, dtype=F64)
            torch.testing.assert_close(got, ref, msg=f"{case} {kind}")


def test_dataset_and_dataloader_inputs(references):
    model, x, y, _, _ = references["cnn"]
    want = kernels.compute(model, x, y, "trntk", dtype=F64)
    ds_x = TensorDataset(x, torch.zeros(len(x)))
    got_ds = kernels.compute(model, ds_x, TensorDataset(y), "trntk", dtype=F64)
    got_dl = kernels.compute(model, DataLoader(ds_x, batch_size=4), DataLoader(TensorDataset(y), batch_size=3), "trntk", dtype=F64)
    torch.testing.assert_close(got_ds, want)
    torch.testing.assert_close(got_dl, want)


def test_batching_does_not_change_result(references):
    model, x, y, _, _ = references["tokens"]
    a = kernels.compute(model, x, y, "entk", dtype=F64, batch_size=2)
    b = kernels.compute(model, x, y, "entk", dtype=F64, batch_size=64)
    torch.testing.assert_close(a, b)


def test_model_mode_restored_and_not_cast(references):
    model, x, y, _, _ = references["cnn"]
    model.train()
    model.features[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kernels.compute(model, x, y, "trntk", dtype=F64)
    assert model.training and not model.features[1].training and model.head.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    model.eval()


def test_bad_inputs():
    model = MLP()
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="unknown kernel kind 'ntk'.*trntk"):
        kernels.compute(model, x, kind="ntk")
    with pytest.raises(ValueError, match=r"per-sample shape \(5,\)"):
        kernels.compute(model, torch.randn(4, 5))
    with pytest.raises(ValueError, match="proj_dim must be a positive integer"):
        kernels.compute(model, x, kind="proj-trntk", proj_dim=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        kernels.compute(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(ValueError, match="no trainable parameters"):
        kernels.jacobian(nn.Sequential(nn.ReLU()), x)
    bad = MLP()
    bad.net[0].bias.data[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        kernels.compute(bad, x)
    with pytest.raises(ValueError, match="layerwise=True is not available"):
        kernels.compute(model, x, kind="proj-trntk", layerwise=True)
    with pytest.raises(ValueError, match="no activation modules"):
        kernels.compute(BinaryNet(), torch.randn(3, 5), kind="em")
    with pytest.raises(ValueError, match="unknown impl"):
        kernels.compute(model, x, impl="magic")
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        kernels.compute(model, [[1.0] * 6])


def test_symmetric_blocks_and_uncached_path(monkeypatch):
    """y=None uses upper-triangle blocks (N > 128); without the feature cache rows and
    columns are recomputed per block. Both must equal the plain two-argument result."""
    from ntkbench.kernels import engine as api

    torch.manual_seed(0)
    model = TokenNet()
    x = torch.randint(0, 11, (300, 5))
    for kind, layerwise in [("trntk", False), ("entk", False), ("trntk0", True)]:
        sym = kernels.compute(model, x, kind=kind, dtype=F64, layerwise=layerwise)
        full = kernels.compute(model, x, x.clone(), kind=kind, dtype=F64, layerwise=layerwise)
        if layerwise:
            for k in full:
                torch.testing.assert_close(sym[k], full[k])
        else:
            torch.testing.assert_close(sym, full)
    monkeypatch.setattr(api, "CACHE_BYTES", 0)
    small = x[:40]
    for y in (None, small[:17]):
        got = kernels.compute(model, small, y, kind="pntk", dtype=F64, batch_size=16)
        want = kernels.compute(model, small, small if y is None else y.clone(), kind="pntk", dtype=F64, impl="generic")
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("model_cls", [SmallCNN, ViewCNN])
def test_conv_models_over_many_blocks(model_cls):
    """Materialised conv gradients (class-major, [W | b] rows), a ``.view`` after a conv,
    convs applied twice and the block-wise symmetric kernel over several batches: all equal
    to the generic torch.func path."""
    torch.manual_seed(0)
    model = with_bn_stats(model_cls())
    in_ch = model.c1.in_channels if model_cls is ViewCNN else 1
    x = torch.randn(150, in_ch, 8, 8)
    for kind, layerwise in [("trntk", False), ("entk", False), ("trntk0", True), ("pntk", False)]:
        got = kernels.compute(model, x, kind=kind, dtype=F64, batch_size=40, layerwise=layerwise)
        want = kernels.compute(model, x, x.clone(), kind=kind, dtype=F64, impl="generic", layerwise=layerwise)
        for key in (want if layerwise else [None]):
            g, w = (got[key], want[key]) if layerwise else (got, want)
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=f"{model_cls.__name__} {kind} {key}")
    proj = kernels.compute(model, x[:20], kind="proj-trntk", proj_dim=32, seed=3, dtype=F64, batch_size=8)
    ref = kernels.compute(model, x[:20], kind="proj-trntk", proj_dim=32, seed=3, dtype=F64, impl="generic")
    torch.testing.assert_close(proj, ref)


def test_resnet_kernel_two_threads():
    """The zoo's ResNet18 (width 8) on 28x28 inputs at 2 threads, a batch of 128: with conv
    outputs handed on in channels-last, torch 2.13.0's oneDNN backward corrupted the heap
    here (SIGABRT / SIGSEGV). Run in a child process so that a crash fails this test only;
    the kernel must also equal the generic path's."""
    code = (
        "import torch\n"
        "from ntkbench import kernels\n"
        "from ntkbench.models import build\n"
        "torch.manual_seed(0)\n"
        "m = build({'name': 'resnet18', 'width': 8, 'input_shape': (1, 28, 28), 'num_outputs': 10}).eval()\n"
        "x = torch.randn(128, 1, 28, 28)\n"
        "torch.set_num_threads(2)\n"
        "k = kernels.compute(m, x, kind='trntk0', batch_size=128)\n"
        "g = kernels.compute(m, x[:24], kind='trntk0', impl='generic')\n"
        "err = float((k[:24, :24] - g).norm() / g.norm())\n"
        "assert err < 1e-5, err\n"
        "print('ok', err)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]


def test_feature_cache_follows_the_jobs_memory(monkeypatch):
    """The in-memory path keeps a quarter of the job's memory (SLURM's or the cgroup's limit
    where lower than the machine's), never less than 2 GiB; CACHE_BYTES overrides it."""
    from ntkbench.kernels import engine, memory

    monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
    machine = memory.allocated_memory()
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "4096")  # MB
    assert memory.allocated_memory() == min(machine, 4096 << 20)
    assert memory.feature_cache_bytes() == 2 << 30
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(1 << 20))  # 1 TB: the machine's memory decides
    assert memory.allocated_memory() == machine
    assert engine.cache_bytes() == max(2 << 30, machine // 4)
    monkeypatch.setattr(engine, "CACHE_BYTES", 123)
    assert engine.cache_bytes() == 123


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (0, 1), (1, 2)), ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((5, 5), (3, 2), (2, 1), (2, 1)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_patches_equal_unfold(kernel, stride, padding, dilation, channels_last):
    """The per-offset patch copies are exactly F.unfold's columns, in the weight's (Cin, kh, kw)
    order, with the bias's ones column last; and 1-d patches equal the 2-d ones of height 1."""
    from ntkbench.kernels.fast import _patches

    x = torch.randn(3, 4, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = _patches(x, kernel, stride, padding, dilation, ones_column=True)
    want = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride).transpose(1, 2)
    assert got.shape == want.shape[:2] + (want.shape[2] + 1,)
    assert torch.equal(got[..., :-1], want)
    assert torch.equal(got[..., -1], torch.ones(got.shape[:2]))
    # The copies run along the input's contiguous dimension: a channels-last input fills
    # (B, L, width) rows, a channels-first one (B, width, L) storage, seen transposed.
    assert (got.stride(2) == 1) == channels_last
    x1 = x[:, :, 0]
    got1 = _patches(x1, kernel[1:], stride[1:], padding[1:], dilation[1:])
    want1 = F.unfold(x1.unsqueeze(2), (1,) + kernel[1:], dilation=(1,) + dilation[1:], padding=(0,) + padding[1:],
                     stride=(1,) + stride[1:]).transpose(1, 2)
    assert torch.equal(got1, want1)
