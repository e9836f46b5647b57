"""The fast engine is exact on every member of the benchmark's architecture family
(benchmarks/kernels.py FAMILY), covers every parameter without the generic fallback, and
handles the thread budget and unbatched module inputs correctly. Nothing here is timed."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.kernels import threads as kthreads
from ntkbench.kernels.fast import GradientEngine
from ntkbench.kernels.generic import functional_state

F64 = torch.float64
_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _bench():
    spec = importlib.util.spec_from_file_location("ntkbench_bench_kernels", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


@pytest.mark.parametrize("name", list(BENCH.FAMILY))
def test_family_member_fast_path_is_exact(name):
    """trntk0 / entk of the fast path (impl="fast": a failed verification raises) equal the
    generic torch.func path, itself checked against brute force in test_kernels.py; over
    several batches (batch_size 3 < N) so that the block-wise symmetric kernel is used."""
    model, x = BENCH.family_member(name, 7)
    model = model.to(F64)
    params, others = functional_state(model, torch.device("cpu"), F64)
    engine = GradientEngine(model, params, others, impl="fast")
    engine.reps(x.to(F64) if x.is_floating_point() else x)
    assert engine.fallback_names == [], f"{name}: parameters left to the generic path"
    y = x[:4].clone()
    for kind in ("trntk0", "entk"):
        got = kernels.compute(model, x, kind=kind, dtype=F64, batch_size=3, impl="fast")
        want = kernels.compute(model, x, x.clone(), kind=kind, dtype=F64, impl="generic")
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"{name} {kind}")
    cross = kernels.compute(model, y, x, kind="trntk", dtype=F64, batch_size=3, impl="fast")
    torch.testing.assert_close(cross, kernels.compute(model, y, x, kind="trntk", dtype=F64, impl="generic"))


class _PosNet(nn.Module):
    """Embeddings of token ids plus positional embeddings in the two common styles:
    ``style="nobatch"``: pos(arange(T)) of shape (T, d), broadcast (nanoGPT);
    ``style="lead1"``: pos(arange(T)[None]) of shape (1, T, d) (Hugging Face BERT);
    ``style="explicit"``: pos(arange(T)).unsqueeze(0), which a per-sample copy would break."""

    def __init__(self, style: str, vocab: int = 9, seq: int = 5, dim: int = 4):
        super().__init__()
        self.style = style
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        T = ids.shape[1]
        pos = torch.arange(T)
        if self.style == "nobatch":
            p = self.pos(pos)
        elif self.style == "lead1":
            p = self.pos(pos[None])
        else:
            p = self.pos(pos).unsqueeze(0)
        h = torch.tanh(self.tok(ids) + p)
        return self.head(torch.tanh(self.proj(h)).mean(1))


@pytest.mark.parametrize("style", ["nobatch", "lead1", "explicit"])
@pytest.mark.parametrize("n", [2, 5, 13])  # 5 = T: a batch as long as the sequence; 2: the probe adds a sample
def test_unbatched_positional_embedding(style, n):
    """A module fed an input without the batch dimension gets per-sample output copies (or
    the generic path where that would change the model); the kernel is exact either way,
    including when the batch size equals the sequence length."""
    torch.manual_seed(0)
    model = _PosNet(style).to(F64)
    x = torch.randint(0, 9, (n, 5))
    got = kernels.compute(model, x, kind="trntk0", dtype=F64, batch_size=5)
    want = kernels.compute(model, x, x.clone(), kind="trntk0", dtype=F64, impl="generic")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    params, others = functional_state(model, torch.device("cpu"), F64)
    engine = GradientEngine(model, params, others, impl="auto")
    engine.reps(x)
    # The per-sample copies keep the positional embedding on the fast path unless the model
    # itself adds a batch dimension to it (then only that module falls back).
    assert engine.fallback_names == (["pos.weight"] if style == "explicit" else [])


def test_thread_budget_restores_and_respects_allocation(monkeypatch):
    before = torch.get_num_threads()
    with kthreads.thread_budget(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with kthreads.thread_budget(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a positive integer, None or 'free'"):
        kthreads.resolve_threads(0)
    # A job allocated one CPU gets one thread, whatever torch's default says.
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert kthreads.allocated_cpus() == 1
    assert kthreads.resolve_threads(None) == 1
    # On a whole machine, threads="free" leaves out cores kept busy by other processes; the
    # default does not look at the load (the thread count may change float32 last bits).
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(kthreads, "allocated_cpus", lambda: 4)
    monkeypatch.setattr(kthreads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(kthreads.torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(kthreads, "busy_cpus", lambda: 3)
    assert kthreads.resolve_threads("free") == 1
    assert kthreads.resolve_threads(None) == 4
    monkeypatch.setattr(kthreads, "busy_cpus", lambda: 1)
    assert kthreads.resolve_threads("free") == 3
    monkeypatch.setattr(kthreads, "busy_cpus", lambda: 0)
    assert kthreads.resolve_threads("free") == 4
    assert kthreads.resolve_threads(2) == 2  # an explicit count is used as given


def test_compute_restores_callers_threads():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    k1 = kernels.compute(model, torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), kind="trntk0",
                         dtype=F64, threads=1)
    assert torch.get_num_threads() == before
    k2 = kernels.compute(model, torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), kind="trntk0",
                         dtype=F64)
    torch.testing.assert_close(k1, k2)
