"""CoLA reader and tokenizers on tiny tsv files written in the real format (4 tab-separated
columns, no header), and the text model getting its vocabulary size from the data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkbench.data import load_bundle, load_dataset, save_bundle
from ntkbench.data.text import WordPiece, basic_tokenize, decode, load_cola, read_cola_tsv

TRAIN = [  # (source, label, mark, sentence) as in cola_public/raw/in_domain_train.tsv
    ("gj04", 1, "", "Our friends won't buy this analysis, let alone the next one we propose."),
    ("gj04", 1, "", "One more pseudo generalization and I'm giving up."),
    ("gj04", 0, "*", "They drank the pub."),
    ("clc95", 1, "", "The dog barked."),
    ("clc95", 0, "*", "The dog barked the cat the."),
]
DEV = [
    ("gj04", 1, "", "The zebra barked."),          # "zebra" never occurs in the training split
    ("clc95", 0, "*", "Dog the barked the the the the the the."),
]


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\t{label}\t{mark}\t{text}\n" for s, label, mark, text in rows),
                    encoding="utf-8")


@pytest.fixture
def cola_dir(tmp_path):
    write_tsv(tmp_path / "cola_public" / "raw" / "in_domain_train.tsv", TRAIN)
    write_tsv(tmp_path / "cola_public" / "raw" / "in_domain_dev.tsv", DEV)
    return tmp_path


def test_basic_tokenize_splits_punctuation_and_lowercases():
    assert basic_tokenize("Bill's  DOG,\tbarked!") == ["bill", "'", "s", "dog", ",", "barked", "!"]
    assert basic_tokenize("Café") == ["cafe"]                      # accents stripped with lower-casing
    assert basic_tokenize("Café", lowercase=False) == ["Café"]


def test_read_tsv_columns(cola_dir):
    sentences, labels = read_cola_tsv(cola_dir / "cola_public" / "raw" / "in_domain_train.tsv")
    assert sentences[2] == "They drank the pub." and labels.tolist() == [1, 1, 0, 1, 0]


def test_word_vocab_from_train_only_and_padding(cola_dir):
    bundle = load_cola(cola_dir, max_len=6)
    vocab = str(bundle.extra["vocab"]).split("\n")
    meta = bundle.meta
    assert vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"] and meta["vocab_size"] == len(vocab)
    assert meta["pad_id"] == 0 and meta["tokenizer"] == "word" and meta["max_len"] == 6
    assert meta["model_args"] == {"vocab_size": len(vocab), "pad_id": 0}
    # "the" occurs 6 times in the training split, "." 5, "dog" twice, "pub" once.
    assert vocab[3:5] == ["the", "."] and vocab.index("dog") < vocab.index("pub")
    assert "zebra" not in vocab                      # dev-only words never enter the vocabulary
    x = bundle.test.x.numpy()
    assert bundle.train.x.dtype == torch.float32 and x.shape == (2, 6)
    idx = {t: i for i, t in enumerate(vocab)}
    # "The zebra barked." -> [CLS] the [UNK] barked . [PAD]
    assert x[0].tolist() == [2, idx["the"], 1, idx["barked"], idx["."], 0]
    # The second dev sentence has 10 tokens: truncated to [CLS] + 5 tokens.
    assert x[1].tolist() == [2, idx["dog"], idx["the"], idx["barked"], idx["the"], idx["the"]]
    assert meta["truncated"] == {"train": 3, "test": 1}
    assert bundle.test.y.tolist() == [1, 0] and bundle.num_classes == 2 and bundle.num_outputs == 1
    assert decode(x[0], bundle.extra["vocab"]) == "the [UNK] barked ."
    # min_freq and max_vocab: only words seen twice, and at most 5 ids in all.
    small = load_cola(cola_dir, max_len=6, min_freq=2, max_vocab=5)
    assert str(small.extra["vocab"]).split("\n") == ["[PAD]", "[UNK]", "[CLS]", "the", "."]
    words = str(load_cola(cola_dir, max_len=6, min_freq=2).extra["vocab"]).split("\n")[3:]
    assert sorted(words[2:]) == ["'", "barked", "dog", "one"]   # the words seen exactly twice


def test_bundle_round_trip_keeps_vocab(cola_dir, tmp_path):
    bundle = load_dataset({"name": "cola", "max_len": 8}, data_dir=cola_dir)
    save_bundle(bundle, tmp_path / "data.npz")
    back = load_bundle(tmp_path / "data.npz")
    assert str(back.extra["vocab"]) == str(bundle.extra["vocab"])
    assert back.model_args == {"input_shape": [8], "num_outputs": 1,
                               "vocab_size": bundle.meta["vocab_size"], "pad_id": 0}


def test_glue_layout(tmp_path):
    write_tsv(tmp_path / "CoLA" / "train.tsv", TRAIN)
    write_tsv(tmp_path / "CoLA" / "dev.tsv", DEV)
    bundle = load_cola(tmp_path, max_len=4)
    assert len(bundle.train) == 5 and len(bundle.test) == 2 and bundle.meta["files"] == ["train.tsv", "dev.tsv"]


def test_wordpiece_on_a_tiny_vocab(cola_dir):
    tokens = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "the", "dog", "bark", "##ed", "##s",
              ".", "z", "##eb", "##ra", "un", "##aff", "##able"]
    (cola_dir / "bert").mkdir()
    (cola_dir / "bert" / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    wp = WordPiece(tokens)
    assert wp.split_word("unaffable") == ["un", "##aff", "##able"]
    assert wp.split_word("barks") == ["bark", "##s"]
    assert wp.split_word("zebras") == ["z", "##eb", "##ra", "##s"]
    assert wp.split_word("zebrax") == ["[UNK]"]             # one unmatched rest: the whole word
    assert wp.split_word("zebra") == ["z", "##eb", "##ra"]
    assert wp.split_word("cat") == ["[UNK]"]                # no piece matches: the whole word
    bundle = load_cola(cola_dir, max_len=8, tokenizer="wordpiece", vocab="bert/vocab.txt")
    idx = {t: i for i, t in enumerate(tokens)}
    # "The zebra barked." -> [CLS] the z ##eb ##ra bark ##ed . [SEP]: 9 ids, truncated to 8 with [SEP] kept
    assert bundle.test.x[0].long().tolist() == [idx[t] for t in
                                                ["[CLS]", "the", "z", "##eb", "##ra", "bark", "##ed", "[SEP]"]]
    assert bundle.meta["vocab_size"] == len(tokens) and bundle.meta["pad_id"] == 0
    assert bundle.meta["cls_id"] == 3 and bundle.meta["unk_id"] == 2
    assert decode(bundle.test.x[0], bundle.extra["vocab"]) == "the zebra barked"


def test_missing_files_name_themselves(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"in_domain_train\.tsv.*nyu-mll\.github\.io/CoLA"):
        load_cola(tmp_path)
    write_tsv(tmp_path / "cola_public" / "raw" / "in_domain_train.tsv", TRAIN)
    with pytest.raises(FileNotFoundError, match=r"in_domain_dev\.tsv not found"):
        load_cola(tmp_path)
    write_tsv(tmp_path / "cola_public" / "raw" / "in_domain_dev.tsv", DEV)
    with pytest.raises(FileNotFoundError, match=r"nope/vocab\.txt not found"):
        load_cola(tmp_path, tokenizer="wordpiece", vocab="nope/vocab.txt")
    (tmp_path / "bad.tsv").write_text("source\tlabel\tmark\tsentence\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1: label must be 0 or 1"):
        read_cola_tsv(tmp_path / "bad.tsv")


def test_train_stage_passes_vocab_size_to_the_model(cola_dir, tmp_path):
    """The text model gets vocab_size and pad_id from the bundle; the checkpoint rebuilds it."""
    from ntkbench import models
    from ntkbench.attribution.retrain import build_model
    from ntkbench.stages.train import train_stage

    data = tmp_path / "data.npz"
    save_bundle(load_dataset({"name": "cola", "max_len": 8}, data_dir=cola_dir), data)
    vocab_size = load_bundle(data).meta["vocab_size"]
    spec = {"name": "text-encoder", "dim": 8, "depth": 1, "heads": 2, "mlp_dim": 16, "dropout": 0.0}
    train_stage(data, spec, {"optimizer": "adamw", "lr": 1e-3, "epochs": 1, "batch_size": 5,
                             "allow_divergence": True},
                seed=0, device="cpu", out_model=tmp_path / "model.pt", out_logits=tmp_path / "logits.npz",
                out_history=tmp_path / "history.csv")
    model, ckpt = models.load_checkpoint(tmp_path / "model.pt")
    assert ckpt["spec"]["vocab_size"] == vocab_size and ckpt["spec"]["pad_id"] == 0
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings[0].num_embeddings == vocab_size
    # The attribution stages rebuild the network the same way.
    _, rebuilt = build_model(load_bundle(data), spec, seed=0)
    assert rebuilt == ckpt["spec"]
    logits = np.load(tmp_path / "logits.npz")["test_logits"]
    assert logits.shape == (2, 1) and np.all(np.isfinite(logits))
