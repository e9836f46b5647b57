"""Small BERT-style encoder for CoLA (paper 001's text model, appendix K), trained from scratch
or loaded from a local Hugging Face BERT checkpoint.

Token ids (N, L) → word + position + token-type embeddings → LayerNorm → ``depth`` encoder
layers → tanh pooler on position 0 ([CLS]) → linear classifier → logits (N, num_outputs).
An encoder layer is BERT's post-LN block (``norm_first=False``):
``h = LN1(h + Attn(h)); h = LN2(h + W2 gelu(W1 h))``; with ``norm_first=True`` it is the pre-LN
block ``h = h + Attn(LN1(h)); h = h + MLP(LN2(h))`` with one more LayerNorm after the last
layer. Keys at padding positions (token == ``pad_id``) are masked out of every attention, so
the output at [CLS] does not depend on what the padded positions hold.

Attention is written with nn.Linear q/k/v/o (not nn.MultiheadAttention) and positions and
token types go through nn.Embedding, so the kernel engine's fast path covers every parameter.
The data bundle stores token ids as float32; they are rounded to int64 in ``forward``.

``checkpoint=<dir>`` reads ``<dir>/config.json`` (sizes, eps, activation, pad id) and the
weights from ``<dir>/model.safetensors`` (``safetensors.torch.load_file``) or
``<dir>/pytorch_model.bin`` (``torch.load(weights_only=True)``), mapping the HF BERT names onto
this module (:func:`hf_key_map`). Only the first L position embeddings and the first
token-type row are used (inputs are single segments). The token ids must then come from the
checkpoint's own vocabulary (``vocab.txt``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ntkbench.models import register
from ntkbench.utils import get_logger

__all__ = ["TextEncoder", "text_encoder", "hf_key_map", "load_hf_bert", "DEFAULTS"]

_LOG = get_logger(__name__)
#: Sizes of the from-scratch model: those of Google's BERT-tiny (L=2, H=128, A=2, 4H MLP).
DEFAULTS = {"dim": 128, "depth": 2, "heads": 2, "mlp_dim": 512}
_ACTS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, max_len: int, dim: int, pad_id: int, eps: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, dim)
        self.typ = nn.Embedding(1, dim)  # BERT's token-type embedding; single-segment inputs use row 0
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return self.ln(self.tok(tokens) + self.pos(positions) + self.typ(torch.zeros_like(tokens)))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), key_pad (B, L) True at padding → (B, L, D)."""
        B, L, D = x.shape
        split = lambda t: t.reshape(B, L, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
        # finfo.min rather than -inf: a row whose keys are all padding stays finite (uniform).
        scores = scores.masked_fill(key_pad[:, None, None, :], torch.finfo(scores.dtype).min)
        att = torch.softmax(scores, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, L, D))


class _MLP(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, approximate: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU(approximate=approximate)  # a module: activation modules are the default em layers
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float, norm_first: bool, approximate: str,
                 dropout: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = _SelfAttention(dim, heads)
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, mlp_dim, approximate)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            h = h + self.drop(self.attn(self.ln1(h), key_pad))
            return h + self.drop(self.mlp(self.ln2(h)))
        h = self.ln1(h + self.drop(self.attn(h, key_pad)))
        return self.ln2(h + self.drop(self.mlp(h)))


class TextEncoder(nn.Module):
    """Logits (N, num_outputs) of token ids (N, L') with L' ≤ max_len; position 0 is [CLS]."""

    def __init__(self, vocab_size: int, max_len: int, num_outputs: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, pad_id: int, eps: float = 1e-12, norm_first: bool = False,
                 approximate: str = "none", dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size, self.max_len, self.pad_id = vocab_size, max_len, pad_id
        self.embed = _Embeddings(vocab_size, max_len, dim, pad_id, eps)
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _Layer(dim, heads, mlp_dim, eps, norm_first, approximate, dropout) for _ in range(depth)
        )
        self.final_ln = nn.LayerNorm(dim, eps=eps) if norm_first else nn.Identity()
        self.pooler = nn.Linear(dim, dim)
        self.pooler_act = nn.Tanh()
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_floating_point():  # bundles and the kernel engine hand ids over as floats
            tokens = tokens.round().long()
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.max_len:
            raise ValueError(f"text-encoder expects token ids of shape (N, L) with 1 <= L <= {self.max_len}, "
                             f"got {tuple(tokens.shape)}")
        key_pad = tokens == self.pad_id
        h = self.embed_drop(self.embed(tokens))
        for layer in self.layers:
            h = layer(h, key_pad)
        h = self.final_ln(h)
        pooled = self.pooler_act(self.pooler(h[:, 0]))
        return self.classifier(self.drop(pooled))


def _init_bert(net: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std²) Linear/Embedding weights, zero biases, LN (1, 0)."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register("text-encoder")
def text_encoder(input_shape: Sequence[int], num_outputs: int, vocab_size: int, dim: int | None = None,
                 depth: int | None = None, heads: int | None = None, mlp_dim: int | None = None, pad_id: int = 0,
                 norm_first: bool = False, dropout: float = 0.1, init_std: float = 0.02,
                 checkpoint: str | None = None) -> TextEncoder:
    """BERT-style encoder over sequences of length ``input_shape = (L,)``.

    Sizes left as None take :data:`DEFAULTS`, or with ``checkpoint`` the values of its
    config.json (an explicit size that contradicts config.json is an error).
    """
    if len(input_shape) != 1 or int(input_shape[0]) < 1:
        raise ValueError(f"text-encoder needs (L,) token-id inputs, got input_shape {tuple(input_shape)}")
    seq_len = int(input_shape[0])
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    given = {"dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp_dim}
    if checkpoint is not None:
        return load_hf_bert(checkpoint, seq_len, num_outputs, vocab_size, given, pad_id, norm_first, dropout)
    sizes = {k: DEFAULTS[k] if v is None else int(v) for k, v in given.items()}
    _check_sizes(sizes, vocab_size, pad_id, "model")
    net = TextEncoder(int(vocab_size), seq_len, num_outputs, sizes["dim"], sizes["depth"], sizes["heads"],
                      sizes["mlp_dim"], pad_id, norm_first=norm_first, dropout=dropout)
    _init_bert(net, init_std)
    return net


def _check_sizes(sizes: dict[str, int], vocab_size: int, pad_id: int, where: str) -> None:
    if min(sizes.values()) < 1 or sizes["dim"] % sizes["heads"]:
        raise ValueError(f"{where}: text-encoder needs positive sizes and dim divisible by heads, got {sizes}")
    if vocab_size < 2 or not 0 <= pad_id < vocab_size:
        raise ValueError(f"{where}: text-encoder needs vocab_size >= 2 and 0 <= pad_id < vocab_size, "
                         f"got vocab_size={vocab_size}, pad_id={pad_id}")


# -- Hugging Face checkpoints -------------------------------------------------------------------
def hf_key_map(depth: int, prefix: str = "bert.") -> dict[str, str]:
    """``{this module's parameter: HF BERT parameter}`` for a ``depth``-layer encoder.

    The classifier is not included (pre-trained checkpoints have none; see :func:`load_hf_bert`).
    """
    e, m = f"{prefix}embeddings.", {}
    for ours, theirs in [("tok", "word_embeddings"), ("pos", "position_embeddings"),
                         ("typ", "token_type_embeddings")]:
        m[f"embed.{ours}.weight"] = f"{e}{theirs}.weight"
    m["embed.ln.weight"], m["embed.ln.bias"] = f"{e}LayerNorm.weight", f"{e}LayerNorm.bias"
    for i in range(depth):
        hf = f"{prefix}encoder.layer.{i}."
        for ours, theirs in [("attn.q", "attention.self.query"), ("attn.k", "attention.self.key"),
                             ("attn.v", "attention.self.value"), ("attn.o", "attention.output.dense"),
                             ("ln1", "attention.output.LayerNorm"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense"), ("ln2", "output.LayerNorm")]:
            for leaf in ("weight", "bias"):
                m[f"layers.{i}.{ours}.{leaf}"] = f"{hf}{theirs}.{leaf}"
    m["pooler.weight"], m["pooler.bias"] = f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"
    return m


def _read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.exists():
        try:
            return load_file(st, device="cpu"), st
        except SafetensorError as err:
            raise ValueError(f"{st}: not a readable safetensors file ({err})") from err
    if pt.exists():
        state = torch.load(pt, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{pt}: expected a state dict, got {type(state).__name__}")
        return state, pt
    raise FileNotFoundError(f"model.checkpoint: {directory} has neither model.safetensors nor pytorch_model.bin "
                            "(sharded checkpoints are not supported: save the model unsharded)")


def load_hf_bert(checkpoint: str | Path, seq_len: int, num_outputs: int, vocab_size: int | None,
                 given: dict[str, int | None], pad_id: int, norm_first: bool, dropout: float) -> TextEncoder:
    """A :class:`TextEncoder` sized by ``<checkpoint>/config.json`` with the checkpoint's weights.

    ``given`` sizes (None = take config.json's) must agree with config.json; the data's
    ``vocab_size`` may not exceed the checkpoint's. Older checkpoints' LayerNorm ``gamma``/
    ``beta`` names are accepted. A ``classifier`` of matching shape is loaded too, otherwise
    the classifier keeps its fresh BERT initialisation. Post-LN only (BERT).
    """
    directory = Path(checkpoint)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"model.checkpoint: {cfg_path} does not exist (expected a local Hugging Face "
                                "BERT directory with config.json and model.safetensors or pytorch_model.bin)")
    cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    keys = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads",
            "mlp_dim": "intermediate_size"}
    missing = [k for k in [*keys.values(), "vocab_size", "max_position_embeddings"] if k not in cfg]
    if missing:
        raise ValueError(f"{cfg_path}: missing key(s) {missing}")
    sizes = {ours: int(cfg[theirs]) for ours, theirs in keys.items()}
    for ours, value in given.items():
        if value is not None and int(value) != sizes[ours]:
            raise ValueError(f"model.{ours}={value} contradicts {cfg_path} ({keys[ours]}={sizes[ours]}); "
                             "leave it unset to use the checkpoint's size")
    if norm_first:
        raise ValueError(f"model.norm_first=True: {cfg_path} is a post-LN BERT checkpoint")
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise ValueError(f"{cfg_path}: hidden_act {act!r} is not supported (one of {sorted(_ACTS)})")
    hf_vocab = int(cfg["vocab_size"])
    if vocab_size is not None and int(vocab_size) > hf_vocab:
        raise ValueError(f"data vocab_size {vocab_size} exceeds {cfg_path} vocab_size {hf_vocab}: the token ids "
                         "must come from the checkpoint's vocabulary")
    if seq_len > int(cfg["max_position_embeddings"]):
        raise ValueError(f"sequence length {seq_len} exceeds {cfg_path} max_position_embeddings "
                         f"{cfg['max_position_embeddings']}")
    pad = pad_id if cfg.get("pad_token_id") is None else int(cfg["pad_token_id"])
    if pad != pad_id:
        raise ValueError(f"pad_id {pad_id} (from the data) differs from {cfg_path} pad_token_id {pad}: the token ids "
                         "must come from the checkpoint's vocabulary")
    _check_sizes(sizes, hf_vocab, pad, str(cfg_path))
    net = TextEncoder(hf_vocab, seq_len, num_outputs, sizes["dim"], sizes["depth"], sizes["heads"],
                      sizes["mlp_dim"], pad, eps=float(cfg.get("layer_norm_eps", 1e-12)),
                      approximate=_ACTS[act], dropout=dropout)
    _init_bert(net, float(cfg.get("initializer_range", 0.02)))

    state, weights_path = _read_weights(directory)
    prefix = "bert." if any(k.startswith("bert.embeddings.") for k in state) else ""
    # Older TF-converted checkpoints call LayerNorm parameters gamma/beta.
    state = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
             for k, v in state.items()}
    ours = dict(net.named_parameters())
    new: dict[str, torch.Tensor] = {}
    for name, key in hf_key_map(sizes["depth"], prefix).items():
        if key not in state:
            raise KeyError(f"{weights_path}: missing parameter {key!r} (needed for {name})")
        t = state[key].to(torch.float32)
        if name == "embed.pos.weight":
            t = t[:seq_len]
        elif name == "embed.typ.weight":
            t = t[:1]
        if tuple(t.shape) != tuple(ours[name].shape):
            raise ValueError(f"{weights_path}: parameter {key!r} has shape {tuple(state[key].shape)}, "
                             f"{cfg_path} implies {tuple(ours[name].shape)} for {name}")
        new[name] = t
    cw, cb = state.get("classifier.weight"), state.get("classifier.bias")
    if cw is not None and cb is not None and tuple(cw.shape) == tuple(ours["classifier.weight"].shape):
        new["classifier.weight"], new["classifier.bias"] = cw.to(torch.float32), cb.to(torch.float32)
    else:
        _LOG.info("%s: no classifier for %d outputs; the classifier is freshly initialised", weights_path,
                  num_outputs)
    with torch.no_grad():
        for name, t in new.items():
            ours[name].copy_(t)
    return net
