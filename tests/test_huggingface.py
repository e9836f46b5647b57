"""Hugging Face checkpoints through transformers (ntkbench.models.huggingface, extra ``hf``):
tiny randomly initialised BERT, ViT and GPT-2 classifiers saved with ``save_pretrained`` load
back through ``from_pretrained``, give the HF model's own logits, and their entk / trntk /
proj-trntk equal brute-force autograd in float64; the workflow model ``huggingface`` builds,
checks the data against the checkpoint, trains and round-trips through a checkpoint.

Nothing is downloaded. The tests that need transformers skip without it (a plain
``make test``); the schema and missing-library tests run either way.
"""
from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import yaml

from ntkbench import kernels, models
from ntkbench.config import ConfigError, validate_config
from ntkbench.data import DataBundle, Split
from ntkbench.kernels.forward import trainable_parameters
from ntkbench.kernels.projection import BlockProjector
from ntkbench.models import huggingface
from ntkbench.training import TrainConfig, train_classifier
from tests.kernel_models import assert_kernels_match, brute_jacobian, brute_kernels

F64 = torch.float64
CASES = ["bert", "vit", "gpt2"]
TASK = {"bert": "sequence-classification", "gpt2": "sequence-classification", "vit": "image-classification"}
VOCAB, PAD, LABELS = 50, 0, 3


def _hf_model(tf, case: str):
    """A tiny randomly initialised classifier of the Hugging Face architecture ``case``."""
    torch.manual_seed(0)
    if case == "bert":
        config = tf.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=16, pad_token_id=PAD,
                               num_labels=LABELS, initializer_range=0.2)
        return tf.BertForSequenceClassification(config).eval()
    if case == "vit":
        config = tf.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=32, num_labels=LABELS, initializer_range=0.2)
        return tf.ViTForImageClassification(config).eval()
    config = tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16, pad_token_id=PAD,
                           num_labels=LABELS, initializer_range=0.2)
    return tf.GPT2ForSequenceClassification(config).eval()


def _inputs(case: str, n: int, seed: int) -> torch.Tensor:
    """(n, 6) token ids with trailing padding in some rows, or (n, 3, 8, 8) pixel values."""
    g = torch.Generator().manual_seed(seed)
    if case == "vit":
        return torch.randn(n, 3, 8, 8, generator=g)
    ids = torch.randint(1, VOCAB, (n, 6), generator=g)
    ids[0, 4:] = PAD  # the attention mask and GPT-2's last-non-pad-token pooling see these
    if n > 2:
        ids[2, 3:] = PAD
    return ids


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tf, tmp_path_factory):
    """``{case: (original HF model, checkpoint directory)}``."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case in CASES:
        hf = _hf_model(tf, case)
        hf.save_pretrained(root / case)
        out[case] = (hf, root / case)
    return out


def _hf_logits(hf, case: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if case == "vit":
            return hf(pixel_values=x).logits
        return hf(input_ids=x, attention_mask=(x != PAD).long()).logits


@pytest.mark.parametrize("case", CASES)
def test_logits_are_the_hf_models_own(saved, case):
    hf, path = saved[case]
    model = models.from_pretrained(path)  # task from config.json's architectures
    assert isinstance(model, huggingface.HFClassifier) and model.task == TASK[case] and not model.training
    x = _inputs(case, 5, 1)
    with torch.no_grad():
        got = model(x)
        assert got.shape == (5, LABELS)
        torch.testing.assert_close(got, _hf_logits(hf, case, x), rtol=1e-5, atol=1e-6)
        if case != "vit":
            # bundles hand token ids over as floats; padding changes nothing but the length
            torch.testing.assert_close(model(x.float()), got, rtol=0, atol=0)
            torch.testing.assert_close(model(x[:1, :4]), got[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_kernels_match_brute_force(saved, case):
    model = models.from_pretrained(saved[case][1], task=TASK[case])
    x, y = _inputs(case, 4, 2), _inputs(case, 3, 3)
    jx, jy = brute_jacobian(model, x), brute_jacobian(model, y)  # (N, C, P), float64
    ref_xy, ref_xx = brute_kernels(jx, jy), brute_kernels(jx, jx)
    assert_kernels_match(model, x, y, ref_xy, ref_xx, ["entk", "trntk"], "auto", case)
    assert_kernels_match(model, x, y, ref_xy, ref_xx, ["trntk"], "generic", case)  # torch.func throughout
    # proj-trntk: the same R^T (P x K) as the engine, from the projector's dense form
    layout = [(n, tuple(p.shape)) for n, p in trainable_parameters(model).items()]
    rt = BlockProjector(64, "gaussian", 0, torch.device("cpu"), F64).dense_matrix(layout)
    for other, jo in [(y, jy), (None, jx)]:
        px, po = jx @ rt, jo @ rt
        k0 = torch.einsum("ick,jck->ij", px, po)
        ref = k0 / torch.sqrt(px.pow(2).sum((1, 2))[:, None] * po.pow(2).sum((1, 2))[None])
        got = kernels.compute(model, x, other, "proj-trntk", proj_dim=64, proj_type="gaussian", seed=0, dtype=F64)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10, msg=f"{case} proj-trntk")


def test_workflow_model_builds_trains_and_checkpoints(saved, tmp_path, monkeypatch):
    hf, path = saved["bert"]
    (tmp_path / "ckpt").symlink_to(path)
    monkeypatch.chdir(tmp_path)  # model.path is relative to the working directory
    spec = {"name": "huggingface", "path": "ckpt", "input_shape": [6], "num_outputs": LABELS,
            "vocab_size": VOCAB - 5, "pad_id": PAD}
    net = models.build(spec)
    x = _inputs("bert", 6, 4).float()  # as a data bundle stores token ids
    torch.testing.assert_close(net(x).detach(), _hf_logits(hf, "bert", x.long()), rtol=1e-5, atol=1e-6)
    bundle = DataBundle(Split(x, torch.arange(6) % LABELS), Split(x[:3], torch.arange(3)), LABELS)
    hist = train_classifier(net, bundle, TrainConfig(optimizer="adam", lr=1e-2, epochs=1, batch_size=6), seed=0)
    assert len(hist) == 1 and math.isfinite(hist["train_loss"].iloc[0])
    models.save_checkpoint(tmp_path / "m.pt", net, spec)
    back, ckpt = models.load_checkpoint(tmp_path / "m.pt")
    assert ckpt["spec"] == spec
    with torch.no_grad():
        assert not torch.allclose(back(x), _hf_logits(hf, "bert", x.long()))  # the trained weights, not the saved ones
        torch.testing.assert_close(back(x), net.eval()(x), rtol=0, atol=0)


def test_workflow_model_checks_the_data(saved):
    text = {"name": "huggingface", "path": str(saved["gpt2"][1]), "input_shape": [6], "num_outputs": LABELS}
    image = {"name": "huggingface", "path": str(saved["vit"][1]), "input_shape": [3, 8, 8], "num_outputs": LABELS}
    assert models.build({**text, "vocab_size": VOCAB, "pad_id": PAD}).task == "sequence-classification"
    assert models.build(image).task == "image-classification"
    with pytest.raises(ValueError, match=r"num_labels=3 but the data need 1 output.*num_labels=1"):
        models.build({**text, "num_outputs": 1})
    with pytest.raises(ValueError, match="sequence length 20 exceeds .*max_position_embeddings 16"):
        models.build({**text, "input_shape": [20]})
    with pytest.raises(ValueError, match="vocab_size 60 exceeds"):
        models.build({**text, "vocab_size": 60})
    with pytest.raises(ValueError, match="pad with token id 3 .*pad_token_id is 0"):
        models.build({**text, "pad_id": 3})
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 8\) does not fit .*num_channels=3"):
        models.build({**image, "input_shape": [1, 8, 8]})
    with pytest.raises(ValueError, match="needs .L,. token-id inputs"):
        models.build({**text, "input_shape": [3, 8, 8]})


def test_errors_name_the_checkpoint(tf, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*no such directory"):
        models.from_pretrained(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        models.from_pretrained(tmp_path / "empty")
    torch.manual_seed(0)
    base = tf.BertModel(tf.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=8, max_position_embeddings=8))
    base.save_pretrained(tmp_path / "bert-base")
    with pytest.raises(ValueError, match=r"bert-base.*architectures \['BertModel'\] name neither"):
        models.from_pretrained(tmp_path / "bert-base")
    with pytest.raises(ValueError, match=r"bert-base.*cannot be loaded for image-classification"):
        models.from_pretrained(tmp_path / "bert-base", task="image-classification")
    with pytest.raises(ValueError, match="task must be one of"):
        models.from_pretrained(tmp_path / "bert-base", task="text")
    # an explicit task puts a fresh classification head on a base checkpoint
    model = models.from_pretrained(tmp_path / "bert-base", task="sequence-classification")
    assert model(torch.randint(1, VOCAB, (2, 5))).shape == (2, 2)


def test_without_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(ImportError, match=r"pip install 'ntkbench\[hf\]'"):
        models.from_pretrained(tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'ntkbench\[hf\]'"):
        models.build({"name": "huggingface", "path": str(tmp_path), "input_shape": [6], "num_outputs": 2})


def test_schema_validates_path_and_task():
    with open("config.yaml") as fh:
        config = yaml.safe_load(fh)
    name = next(iter(config["experiments"]))

    def with_model(model: dict) -> dict:
        cfg = copy.deepcopy(config)
        cfg["experiments"][name]["model"] = model
        return cfg

    ok = validate_config(with_model({"name": "huggingface", "path": "ckpt/vit", "task": "image-classification"}))
    assert ok["experiments"][name]["model"]["path"] == "ckpt/vit"
    validate_config(with_model({"name": "huggingface", "path": "ckpt/vit"}))
    for model, message in [({"name": "huggingface"}, "'path' is a required property"),
                           ({"name": "huggingface", "path": ""}, "model.path"),
                           ({"name": "huggingface", "path": "x", "task": "text"}, "model.task"),
                           ({"name": "huggingface", "path": "x", "width": 3}, "unknown key(s): 'width'")]:
        with pytest.raises(ConfigError, match=".") as err:
            validate_config(with_model(model))
        assert message in str(err.value), (model, str(err.value))
