"""Fault cases of issue 25 at library level: any PyTorch classifier gets its kernels or a clear
refusal. Recurrent classifiers (which torch.func cannot vmap) must equal brute-force autograd;
Hugging Face style outputs (a dict or an object holding ``logits``) must equal the same model
returning a plain tensor; unusable outputs must be refused saying what came back."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ntkbench import kernels
from tests.kernel_models import MLP, assert_kernels_match, brute_jacobian, brute_kernels

F64 = torch.float64
KINDS = ["entk", "trntk", "trntk0", "pntk", "pntk0"]
IMPLS = ["auto", "generic"]  # "auto" is compute's default


# ----------------------------------------------------------------------------- recurrent models
class RecurrentClassifier(nn.Module):
    """(N, T, D) -> recurrent layer -> last time step's hidden state -> nn.Linear -> (N, C).

    ``encoder`` puts an nn.Linear before the recurrent layer, so that the fast path's batched
    backward has to pass through the recurrent module to reach a factorised layer."""

    def __init__(self, cell: type[nn.RNNBase], D: int = 3, H: int = 6, C: int = 3, encoder: bool = False,
                 **rnn_kw):
        super().__init__()
        self.encoder = nn.Linear(D, D) if encoder else None
        self.rnn = cell(D, H, batch_first=True, **rnn_kw)
        self.head = nn.Linear(H * (2 if rnn_kw.get("bidirectional") else 1), C)

    def forward(self, x):
        if self.encoder is not None:
            x = torch.tanh(self.encoder(x))
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class CellClassifier(nn.Module):
    """An nn.GRUCell unrolled by hand over (N, T, D), with its default zero initial state."""

    def __init__(self, D: int = 3, H: int = 6, C: int = 3):
        super().__init__()
        self.cell = nn.GRUCell(D, H)
        self.head = nn.Linear(H, C)

    def forward(self, x):
        h = self.cell(x[:, 0])
        for t in range(1, x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


RECURRENT = {
    "gru": lambda: RecurrentClassifier(nn.GRU),
    "rnn": lambda: RecurrentClassifier(nn.RNN),
    "lstm": lambda: RecurrentClassifier(nn.LSTM),
    "gru-2layer-bidir-encoder": lambda: RecurrentClassifier(nn.GRU, encoder=True, num_layers=2, bidirectional=True),
    "grucell": lambda: CellClassifier(),
}


@pytest.fixture(scope="module")
def recurrent_references():
    """{case: (model, x, y, brute kernels (x, y), brute kernels (x, x))}, float64."""
    out = {}
    for case, build in RECURRENT.items():
        torch.manual_seed(0)
        model = build().double()
        x, y = torch.randn(5, 4, 3, dtype=F64), torch.randn(3, 4, 3, dtype=F64)
        jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)
        out[case] = (model, x, y, brute_kernels(jx, jy), brute_kernels(jx, jx))
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(RECURRENT))
def test_recurrent_classifiers_match_brute_force(recurrent_references, case, impl):
    model, x, y, ref_xy, ref_xx = recurrent_references[case]
    assert_kernels_match(model, x, y, ref_xy, ref_xx, KINDS, impl, case)


def test_recurrent_jacobian_matches_brute_force(recurrent_references):
    model, x, _, _, _ = recurrent_references["lstm"]
    torch.testing.assert_close(kernels.jacobian(model, x, dtype=F64, batch_size=2), brute_jacobian(model, x),
                               rtol=1e-9, atol=1e-10)


def test_recurrent_projected_kernel_matches_brute_force(recurrent_references):
    model, x, y, _, _ = recurrent_references["gru"]
    from ntkbench.kernels.forward import trainable_parameters
    from ntkbench.kernels.projection import BlockProjector

    layout = [(n, tuple(p.shape)) for n, p in trainable_parameters(model).items()]
    rt = BlockProjector(32, "gaussian", 5, torch.device("cpu"), F64).dense_matrix(layout)
    px, py = brute_jacobian(model, x) @ rt, brute_jacobian(model, y) @ rt
    ref = torch.einsum("ick,jck->ij", px, py) / torch.sqrt(px.pow(2).sum((1, 2))[:, None] * py.pow(2).sum((1, 2))[None])
    got = kernels.compute(model, x, y, "proj-trntk", proj_dim=32, seed=5, dtype=F64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def test_recurrent_fallback_is_logged_naming_the_module(recurrent_references, caplog):
    model, x, _, _, _ = recurrent_references["gru"]
    with caplog.at_level(logging.INFO, logger="ntkbench.kernels.generic"):
        kernels.compute(model, x, kind="trntk", dtype=F64)
    assert "GRU module 'rnn'" in caplog.text and "one sample at a time" in caplog.text


# --------------------------------------------------- vmap failing at run time, and a refusal
class OldStyleSquare(torch.autograd.Function):
    """x**2 as an autograd.Function without ``setup_context``: plain autograd runs it, but
    torch.func transforms refuse it (a stand-in for any op vmap cannot batch)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class SquareAct(nn.Module):
    def forward(self, x):
        return OldStyleSquare.apply(x)


class CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.act = SquareAct()
        self.gain = nn.Parameter(torch.tensor([0.9, 1.2, 0.7, 1.1, 1.3]))  # a root parameter: generic path
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.act(self.fc(x)) * self.gain)


@pytest.mark.parametrize("impl", IMPLS)
def test_model_vmap_cannot_batch_falls_back_exactly(impl, caplog):
    torch.manual_seed(0)
    model, x = CustomOpNet().double(), torch.randn(6, 4, dtype=F64)
    ref = brute_kernels(brute_jacobian(model, x), brute_jacobian(model, x))
    with caplog.at_level(logging.WARNING, logger="ntkbench.kernels.generic"):
        for kind in KINDS:
            got = kernels.compute(model, x, kind=kind, dtype=F64, impl=impl)
            torch.testing.assert_close(got, ref[kind], rtol=1e-9, atol=1e-10, msg=f"{kind} {impl}")
    assert "SquareAct module 'act'" in caplog.text


class ZetaNet(nn.Module):
    """A parameter that reaches the logits only through torch.special.zeta, whose derivative
    torch does not implement: no exact per-sample gradient exists to be had."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.s = nn.Parameter(torch.tensor(2.5))

    def forward(self, x):
        return self.fc(x) * torch.special.zeta(self.s, torch.tensor(2.0, dtype=x.dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_model_autograd_cannot_differentiate_is_refused(impl):
    model, x = ZetaNet().double(), torch.randn(4, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"ZetaNet cannot be computed.*derivative for 'zeta' is not implemented"):
        kernels.compute(model, x, kind="trntk", dtype=F64, impl=impl)


# ------------------------------------------------------------------ Hugging Face style outputs
@dataclass
class ClassifierOutput:
    """What a Hugging Face model returns, in spirit: logits plus other things."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class Wrapped(nn.Module):
    """The same network as ``base``, returning its logits packed as ``style``."""

    def __init__(self, base: nn.Module, style: str):
        super().__init__()
        self.base, self.style = base, style

    def forward(self, x):
        z = self.base(x)
        if self.style == "tensor":
            return z
        if self.style == "dict":
            return {"hidden": z.detach() * 0, "logits": z}
        if self.style == "object":
            return ClassifierOutput(logits=z, hidden=z * 2)
        if self.style == "1-tuple":
            return (z,)
        if self.style == "2-tuple":
            return z, z * 2
        if self.style == "string":
            return "logits"
        if self.style == "dict-without-logits":
            return {"scores": z}
        if self.style == "object-without-tensor":
            return ClassifierOutput(logits=z.tolist())  # type: ignore[arg-type]
        raise KeyError(self.style)


ALL_KINDS = KINDS + ["proj-trntk", "proj-pntk", "ck", "em"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("style", ["dict", "object"])
def test_logits_in_dict_or_object_give_the_plain_kernels(style, impl):
    torch.manual_seed(0)
    base = MLP().double()
    x, y = torch.randn(6, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    for kind in ALL_KINDS:
        want = kernels.compute(Wrapped(base, "tensor"), x, y, kind, dtype=F64, impl=impl, proj_dim=64)
        got = kernels.compute(Wrapped(base, style), x, y, kind, dtype=F64, impl=impl, proj_dim=64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13, msg=f"{style} {kind} {impl}")
    torch.testing.assert_close(kernels.jacobian(Wrapped(base, style), x, dtype=F64),
                               kernels.jacobian(Wrapped(base, "tensor"), x, dtype=F64))


def test_one_tuple_output_is_still_accepted():
    """A guard, not a fault: (logits,) (Hugging Face's return_dict=False) worked before."""
    torch.manual_seed(0)
    base, x = MLP().double(), torch.randn(5, 6, dtype=F64)
    for impl in IMPLS:
        torch.testing.assert_close(kernels.compute(Wrapped(base, "1-tuple"), x, kind="entk", dtype=F64, impl=impl),
                                   kernels.compute(base, x, kind="entk", dtype=F64, impl=impl))


def test_recurrent_model_returning_a_dict(recurrent_references):
    model, x, _, _, ref_xx = recurrent_references["gru"]
    for impl in IMPLS:
        got = kernels.compute(Wrapped(model, "dict"), x, kind="entk", dtype=F64, impl=impl)
        torch.testing.assert_close(got, ref_xx["entk"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("style, returned", [
    ("2-tuple", r"a tuple of 2 element\(s\) \(Tensor\(\d+, 3\), Tensor\(\d+, 3\)\)"),
    ("string", "an object of type str"),
    ("dict-without-logits", r"a dict with keys \['scores'\] and no 'logits' tensor"),
    ("object-without-tensor", "an object of type ClassifierOutput"),
])
@pytest.mark.parametrize("kind", ["trntk", "ck"])
def test_unusable_outputs_are_refused_saying_what_came_back(style, returned, kind):
    torch.manual_seed(0)
    model, x = Wrapped(MLP(), style), torch.randn(7, 6)
    with pytest.raises(TypeError, match="model output must be a tensor of logits") as err:
        kernels.compute(model, x, kind=kind)
    message = str(err.value)
    assert "a dict (or other mapping" in message and "an object with a .logits tensor attribute" in message
    assert re.search(returned, message), message


def test_streamed_recurrent_kernel_equals_in_memory(recurrent_references, tmp_path):
    import h5py

    model, x, y, ref_xy, _ = recurrent_references["gru"]
    kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, y, kind="trntk", group="g", block_size=2,
                            progress=False, dtype=F64)
    with h5py.File(tmp_path / "k.h5", "r") as fh:
        got = torch.from_numpy(fh["g"]["kernel"][...])
    torch.testing.assert_close(got, ref_xy["trntk"], rtol=1e-9, atol=1e-10)
