"""Paper 001's zoo (ResNet18/34, MobileNetV2, the BERT-style text encoder): shapes, parameter
counts, kernels against brute-force autograd, fast-path coverage, the padding mask, the
Hugging Face checkpoint loader and one training step each. Tiny widths, 3×8×8 images and
length-6 token sequences keep every test to seconds."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ntkbench import kernels, models
from ntkbench.data import DataBundle, Split
from ntkbench.kernels.activations import default_em_layers
from ntkbench.kernels.fast import GradientEngine
from ntkbench.kernels.forward import trainable_parameters
from ntkbench.kernels.generic import functional_state
from ntkbench.kernels.projection import BlockProjector
from ntkbench.training import TrainConfig, train_classifier
from tests.kernel_models import brute_jacobian, brute_kernels, with_bn_stats

F64 = torch.float64
TINY_MOBILENET = {"width_mult": 1.0, "divisor": 1, "stem_channels": 4, "last_channel": 10,
                  "blocks": [[1, 4, 1, 1], [2, 6, 2, 2], [3, 5, 1, 2]]}
SPECS = {
    "resnet18": {"name": "resnet18", "input_shape": [3, 8, 8], "num_outputs": 3, "width": 4},
    "resnet34": {"name": "resnet34", "input_shape": [3, 8, 8], "num_outputs": 3, "width": 2},
    "mobilenetv2": {"name": "mobilenetv2", "input_shape": [3, 8, 8], "num_outputs": 3, **TINY_MOBILENET},
    "text": {"name": "text-encoder", "input_shape": [6], "num_outputs": 2, "vocab_size": 11,
             "dim": 8, "depth": 2, "heads": 2, "mlp_dim": 12, "init_std": 0.5},
    "text-preln": {"name": "text-encoder", "input_shape": [6], "num_outputs": 2, "vocab_size": 11,
                   "dim": 8, "depth": 1, "heads": 4, "mlp_dim": 6, "norm_first": True, "init_std": 0.5},
}
CASES = list(SPECS)  # the text models use init_std 0.5: BERT's 0.02 makes the logits almost constant


def _tokens(n: int, seed: int) -> torch.Tensor:
    """(n, 6) float32 token ids as a bundle stores them: [CLS]=1 first, 0-padding at the end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 11, (n, 6), generator=g)
    x[:, 0] = 1
    for i in range(n):
        x[i, 3 + i % 4:] = 0  # lengths 3..6
    return x.float()


def make_case(name: str):
    torch.manual_seed(0)
    model = with_bn_stats(models.build(SPECS[name])).eval()
    if name.startswith("text"):
        return model, _tokens(6, 0), _tokens(4, 1)
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(6, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)


@pytest.fixture(scope="module")
def references():
    out = {}
    for name in CASES:
        model, x, y = make_case(name)
        jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)
        out[name] = (model, x, y, jx, jy, brute_kernels(jx, jy), brute_kernels(jx, jx))
    return out


@pytest.mark.parametrize("case, impl", [(c, i) for c in CASES for i in ("fast", "generic")] + [("mobilenetv2", "auto")])
def test_kernels_match_brute_force(references, case, impl):
    """entk (x vs y: the whole per-class Jacobian inner product), trntk (x vs x, in batches:
    normalisation and the symmetric block path) and proj-trntk against brute force."""
    model, x, y, jx, jy, ref_xy, ref_xx = references[case]
    assert ref_xy["entk"].abs().max() > 0
    got = kernels.compute(model, x, y, "entk", dtype=F64, impl=impl)
    torch.testing.assert_close(got, ref_xy["entk"], rtol=1e-9, atol=1e-10, msg=f"{case} entk {impl}")
    got = kernels.compute(model, x, kind="trntk", dtype=F64, impl=impl, batch_size=4)
    torch.testing.assert_close(got, ref_xx["trntk"], rtol=1e-9, atol=1e-10, msg=f"{case} trntk xx {impl}")
    # proj-trntk against the brute-force Jacobians times the same dense projection R.
    layout = [(n, tuple(p.shape)) for n, p in trainable_parameters(model).items()]
    rt = BlockProjector(32, "gaussian", 5, torch.device("cpu"), F64).dense_matrix(layout)
    fx, fy = jx @ rt, jy @ rt
    ref = torch.einsum("ick,jck->ij", fx, fy) / torch.sqrt(fx.pow(2).sum((1, 2))[:, None] * fy.pow(2).sum((1, 2))[None])
    got = kernels.compute(model, x, y, "proj-trntk", proj_dim=32, seed=5, dtype=F64, impl=impl)
    torch.testing.assert_close(got, ref, msg=f"{case} proj-trntk {impl}")


@pytest.mark.parametrize("case", CASES)
def test_fast_path_covers_every_module(references, case):
    """No parameter of the new models falls back to the generic torch.func path, and the
    first-batch cross-check against autograd passes (impl="fast" raises otherwise)."""
    model = references[case][0]
    x = references[case][1]
    params, others = functional_state(model, torch.device("cpu"), F64)
    engine = GradientEngine(model.eval(), params, others, impl="fast")
    reps = engine.reps(x.to(F64))
    assert engine._verified and engine.fallback_names == []
    owners = {name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert set(engine.fast) == owners and set(reps) == owners
    grouped = [n for n, fm in engine.fast.items() if isinstance(fm.module, nn.Conv2d) and fm.module.groups > 1]
    assert bool(grouped) == (case == "mobilenetv2")


@pytest.mark.parametrize("case", ["resnet18", "mobilenetv2", "text"])
def test_activation_kernels(references, case):
    """ck and em run on the new models; em's default layers are their activation modules."""
    model, x, y = references[case][:3]
    for kind in ("ck", "em"):
        k = kernels.compute(model, x, kind=kind, dtype=F64)
        torch.testing.assert_close(k.diagonal(), torch.ones(len(x), dtype=F64))
        assert torch.isfinite(k).all() and k.abs().max() <= 1 + 1e-9
    acts = default_em_layers(model)
    # resnet18: stem + 2 per block; tiny mobilenet: stem + 1 + 2·2 + 2 (blocks) + last; text: GELU per layer + tanh.
    expected = {"resnet18": 1 + 2 * 8, "mobilenetv2": 9, "text": 2 + 1}[case]
    assert len(acts) == expected, acts
    if case == "resnet18":  # paper 001's Table 6 em layers (less the max-pool) name modules of ours
        names = dict(model.named_modules())
        table6 = ["conv1", "bn1", "avgpool", "fc"] + [f"layer{x}.{b}{leaf}" for x in range(1, 5) for b in (0, 1)
                                                      for leaf in ("", ".conv1", ".bn1", ".conv2", ".bn2")]
        assert all(n in names for n in table6)
        k = kernels.compute(model, x, y, kind="em", layers=["layer4.1", "avgpool"], dtype=F64)
        assert k.shape == (len(x), len(y)) and torch.isfinite(k).all()


def test_grouped_conv_with_bias_and_conv1d():
    """Grouped (not depthwise) convs with a bias, 2-D and 1-D, on the fast path vs brute force."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
            self.c1 = nn.Conv1d(6, 6, 3, padding=2, dilation=2, groups=3)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.c2(x)).flatten(2)  # (B, 6, 16)
            return self.fc(torch.tanh(self.c1(h)).mean(-1))

    model, x, y = Net().eval(), torch.randn(5, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ref = brute_kernels(brute_jacobian(model, x), brute_jacobian(model, y))
    for kind in ("entk", "trntk"):
        got = kernels.compute(model, x, y, kind, dtype=F64, impl="fast")
        torch.testing.assert_close(got, ref[kind], rtol=1e-9, atol=1e-10)
    params, others = functional_state(model, torch.device("cpu"), F64)
    engine = GradientEngine(model, params, others, impl="fast")
    engine.reps(x.to(F64))
    assert engine.fallback_names == [] and set(engine.fast) == {"c2", "c1", "fc"}


def test_paper_size_parameter_counts():
    """Paper 001's CIFAR-10 sizes (also Phan's PyTorch_CIFAR10 weights the paper used)."""
    expected = {"resnet18": 11_173_962, "resnet34": 21_282_122, "mobilenetv2": 2_236_682}
    for name, count in expected.items():
        net = models.build({"name": name, "input_shape": [3, 32, 32], "num_outputs": 10})
        assert sum(p.numel() for p in net.parameters()) == count, name
    net = models.build({"name": "resnet18", "input_shape": [3, 32, 32], "num_outputs": 10})
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert sum(1 for c in convs if c.kernel_size == (1, 1)) == 3  # projection shortcuts
    mb = models.build({"name": "mobilenetv2", "input_shape": [3, 32, 32], "num_outputs": 10})
    depthwise = [m for m in mb.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(isinstance(m, nn.ReLU6) for m in mb.modules()) == 35  # 2 per block (17) + stem + last


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "mobilenetv2"])
def test_image_shapes_and_channels(name):
    extra = TINY_MOBILENET if name == "mobilenetv2" else {"width": 4}
    for ch, hw in [(1, 8), (3, 8), (3, 11)]:
        net = models.build({"name": name, "input_shape": [ch, hw, hw], "num_outputs": 5, **extra}).eval()
        assert net(torch.randn(2, ch, hw, hw)).shape == (2, 5)
    net = models.build({"name": name, "input_shape": [3, 32, 32], "num_outputs": 1, **extra}).eval()
    # Stride 1 stem; three stride-2 stages (ResNet) / two (tiny MobileNet table): 32 -> 4 / 8.
    feats = {}
    last = net.layer4 if name != "mobilenetv2" else net.features
    last.register_forward_hook(lambda m, i, o: feats.__setitem__("h", o))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    assert feats["h"].shape[-2:] == ((4, 4) if name != "mobilenetv2" else (8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        models.build({"name": name, "input_shape": [64], "num_outputs": 2})


@pytest.mark.parametrize("case", ["resnet18", "mobilenetv2", "text"])
def test_seeded_build_is_deterministic(case):
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        states.append(models.build(SPECS[case]).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0] if states[0][k].is_floating_point())


def test_text_encoder_shapes_and_padding_mask():
    torch.manual_seed(0)
    net = models.build({**SPECS["text"], "dropout": 0.0}).eval()
    x = _tokens(4, 3)
    x[:, 3:] = 0  # every row: 3 real tokens, 3 padding
    x[x == 10] = 9  # token 10 serves as the never-used pad id below
    out = net(x)
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    # Float ids (as in bundles) and int64 ids agree; a shorter, unpadded input gives the same logits.
    torch.testing.assert_close(net(x.long()), out, rtol=0, atol=0)
    torch.testing.assert_close(net(x[:, :3]), out, rtol=1e-6, atol=1e-6)
    # Changing the position embedding of a padded position does not change the output;
    # changing that of a real position does (not a constant shift: the LayerNorm removes it).
    bump = torch.linspace(-2.0, 3.0, 8)
    with torch.no_grad():
        net.embed.pos.weight[4] += bump
    torch.testing.assert_close(net(x), out, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        net.embed.pos.weight[1] += bump
    assert (net(x) - out).abs().max() > 1e-3
    # Without the mask, padding would matter: a model whose pad id is never used differs.
    nomask = models.build({**SPECS["text"], "dropout": 0.0, "pad_id": 10})
    nomask.load_state_dict(net.state_dict())
    assert (nomask.eval()(x) - net(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"\(N, L\) with 1 <= L <= 6"):
        net(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="divisible by heads"):
        models.build({**SPECS["text"], "heads": 3})


# -- Hugging Face checkpoint loader -------------------------------------------------------------
HF_CONFIG = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 12,
             "vocab_size": 15, "max_position_embeddings": 10, "type_vocab_size": 2, "pad_token_id": 0,
             "layer_norm_eps": 1e-12, "hidden_act": "gelu", "model_type": "bert"}


def _hf_state(num_labels: int = 2) -> dict[str, torch.Tensor]:
    """A random BertForSequenceClassification state dict in Hugging Face naming."""
    g = torch.Generator().manual_seed(7)
    H, I, V = HF_CONFIG["hidden_size"], HF_CONFIG["intermediate_size"], HF_CONFIG["vocab_size"]
    r = lambda *s: torch.randn(*s, generator=g) * 0.5  # noqa: E731
    st = {"bert.embeddings.word_embeddings.weight": r(V, H),
          "bert.embeddings.position_embeddings.weight": r(10, H),
          "bert.embeddings.token_type_embeddings.weight": r(2, H),
          "bert.embeddings.LayerNorm.weight": 1 + r(H), "bert.embeddings.LayerNorm.bias": r(H)}
    for i in range(HF_CONFIG["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for sub, (o, n) in {"attention.self.query": (H, H), "attention.self.key": (H, H),
                            "attention.self.value": (H, H), "attention.output.dense": (H, H),
                            "intermediate.dense": (I, H), "output.dense": (H, I)}.items():
            st[p + sub + ".weight"], st[p + sub + ".bias"] = r(o, n), r(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            st[p + ln + ".weight"], st[p + ln + ".bias"] = 1 + r(H), r(H)
    st["bert.pooler.dense.weight"], st["bert.pooler.dense.bias"] = r(H, H), r(H)
    st["classifier.weight"], st["classifier.bias"] = r(num_labels, H), r(num_labels)
    return st


def _hf_forward(st: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face BertForSequenceClassification's eval forward, written out from its source."""
    H, heads, eps = HF_CONFIG["hidden_size"], HF_CONFIG["num_attention_heads"], HF_CONFIG["layer_norm_eps"]
    lin = lambda x, n: x @ st[n + ".weight"].T + st[n + ".bias"]  # noqa: E731
    ln = lambda x, n: F.layer_norm(x, (H,), st[n + ".weight"], st[n + ".bias"], eps)  # noqa: E731
    B, L = ids.shape
    e = "bert.embeddings."
    h = st[e + "word_embeddings.weight"][ids] + st[e + "position_embeddings.weight"][:L] \
        + st[e + "token_type_embeddings.weight"][0]
    h = ln(h, e + "LayerNorm")
    ext = (1.0 - (ids != 0).float())[:, None, None, :] * torch.finfo(torch.float32).min
    for i in range(HF_CONFIG["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        sp = lambda t: t.view(B, L, heads, H // heads).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = (sp(lin(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(H // heads) + ext, dim=-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(B, L, H)
        h = ln(lin(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        inter = F.gelu(lin(h, p + "intermediate.dense"))
        h = ln(lin(inter, p + "output.dense") + h, p + "output.LayerNorm")
    pooled = torch.tanh(lin(h[:, 0], "bert.pooler.dense"))
    return lin(pooled, "classifier")


def _write_safetensors(path, state: dict[str, torch.Tensor]) -> None:
    save_file({k: t.contiguous() for k, t in state.items()}, path, metadata={"format": "pt"})


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_checkpoint_loader(tmp_path, fmt):
    st = _hf_state()
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    if fmt == "safetensors":
        _write_safetensors(tmp_path / "model.safetensors", st)
    else:
        torch.save(st, tmp_path / "pytorch_model.bin")
    spec = {"name": "text-encoder", "input_shape": [6], "num_outputs": 2, "vocab_size": 12,
            "checkpoint": str(tmp_path), "dropout": 0.0}
    net = models.build(spec).eval()
    assert net.embed.pos.weight.shape == (6, 8) and len(net.layers) == 2 and net.layers[0].attn.heads == 2
    torch.testing.assert_close(net.layers[1].attn.k.weight.detach(), st["bert.encoder.layer.1.attention.self.key.weight"])
    ids = _tokens(5, 4).long()
    ids[0, 1:] = 0
    torch.testing.assert_close(net(ids.float()), _hf_forward(st, ids), rtol=1e-5, atol=1e-5)
    # A single-logit head does not fit the 2-label classifier: freshly initialised, rest loaded.
    one = models.build({**spec, "num_outputs": 1}).eval()
    assert one(ids).shape == (5, 1)
    torch.testing.assert_close(one.pooler.weight.detach(), st["bert.pooler.dense.weight"])


def test_hf_checkpoint_errors(tmp_path):
    spec = {"name": "text-encoder", "input_shape": [6], "num_outputs": 2, "vocab_size": 12,
            "checkpoint": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.build(spec)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(FileNotFoundError, match="model.safetensors nor pytorch_model.bin"):
        models.build(spec)
    st = _hf_state()
    del st["bert.encoder.layer.1.intermediate.dense.bias"]
    _write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(KeyError, match=r"model\.safetensors.*bert\.encoder\.layer\.1\.intermediate\.dense\.bias"):
        models.build(spec)
    st = _hf_state()
    st["bert.pooler.dense.weight"] = torch.zeros(8, 7)
    _write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense\.weight.*\(8, 7\)"):
        models.build(spec)
    (tmp_path / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"not json")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        models.build(spec)
    _write_safetensors(tmp_path / "model.safetensors", _hf_state())
    with pytest.raises(ValueError, match=r"model.dim=16 contradicts .*config.json"):
        models.build({**spec, "dim": 16})
    with pytest.raises(ValueError, match="exceeds .*vocab_size 15"):
        models.build({**spec, "vocab_size": 30})
    with pytest.raises(ValueError, match="pad_id 3 .*differs from .*pad_token_id 0"):
        models.build({**spec, "pad_id": 3})


@pytest.mark.parametrize("case", ["resnet18", "resnet34", "mobilenetv2", "text"])
def test_trains_one_step_and_checkpoints(case, tmp_path):
    torch.manual_seed(0)
    spec = SPECS[case]
    if case == "text":
        x, y = _tokens(8, 5), torch.arange(8) % 2
        bundle = DataBundle(Split(x, y), Split(x[:4], y[:4]), 2, meta={"vocab_size": 11})
        spec = {**spec, "num_outputs": bundle.num_outputs}
    else:
        x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3
        bundle = DataBundle(Split(x, y), Split(x[:4], y[:4]), 3)
    net = models.build(spec)
    before = [p.detach().clone() for p in net.parameters()]
    hist = train_classifier(net, bundle, TrainConfig(optimizer="adam", lr=1e-2, epochs=1, batch_size=8), seed=0)
    assert len(hist) == 1 and math.isfinite(hist["train_loss"].iloc[0])
    assert not net.training
    changed = [not torch.equal(b, p) for b, p in zip(before, net.parameters())]
    assert all(changed), [n for (n, _), c in zip(net.named_parameters(), changed) if not c]
    models.save_checkpoint(tmp_path / "m.pt", net, spec)
    back, _ = models.load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(back(x[:3]), net(x[:3]), rtol=0, atol=0)
