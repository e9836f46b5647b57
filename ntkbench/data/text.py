"""CoLA (Corpus of Linguistic Acceptability) read from its public tsv files, with tokenizers
that need no download.

Nothing is downloaded: the files must already be in ``data_dir``. Accepted layouts (first
match wins), each with the same four tab-separated columns and no header — source code,
acceptability label (0 / 1), the original author's mark ("*" for unacceptable, or empty),
sentence:

- the public release (https://nyu-mll.github.io/CoLA/, ``cola_public_1.1.zip``):
  ``cola_public/raw/in_domain_train.tsv`` (8551 sentences) and
  ``cola_public/raw/in_domain_dev.tsv`` (527);
- the GLUE copy (``CoLA.zip`` of the GLUE benchmark): ``CoLA/train.tsv`` and ``CoLA/dev.tsv``
  (also under ``glue_data/``).

GLUE's test labels are hidden, so the **test split is the dev set**: with the public layout the
in-domain dev set (527 sentences; ``out_of_domain_dev.tsv`` is not read), with the GLUE layout
GLUE's dev set (1043 = the 527 in-domain plus 516 out-of-domain sentences). Paper 001 (appendix
K.1) reports 9515 training and 1049 test sentences, which matches neither layout exactly;
GLUE's dev set is the closer one.

Tokenizers (config ``data.tokenizer``):

- ``word`` (default): BERT's basic tokenisation (Unicode clean-up, optional lower-casing and
  accent stripping, punctuation split off as single tokens), and a word vocabulary built from
  the **training split only** (words seen at least ``min_freq`` times, the most frequent first,
  at most ``max_vocab`` entries in all). Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]``, then the
  words; a word not in the vocabulary (e.g. seen only in the dev set) becomes ``[UNK]``.
- ``wordpiece``: BERT's WordPiece (greedy longest-match-first, ``##`` continuations) over the
  basic tokens, with the vocabulary of a local ``vocab.txt`` (config ``data.vocab``, e.g. the
  file of a downloaded ``bert-base-uncased`` checkpoint). Ids are line numbers of that file;
  a sequence is ``[CLS] tokens [SEP]`` as BERT expects.

Every sequence starts with ``[CLS]`` and is truncated or padded (``[PAD]``) to ``max_len``.
The bundle stores x as (N, max_len) float32 token ids (every bundle holds float32 inputs; the
text models cast them back to integers), labels y (N,) in {0, 1}, ``num_classes`` 2, and in
``meta``: ``vocab_size``, ``pad_id``, ``unk_id``, ``cls_id``, ``max_len``, ``tokenizer``, the
vocabulary's SHA-256 and ``model_args`` (``vocab_size`` and ``pad_id``, passed to the model
constructor by the train stage). The vocabulary itself is ``extra["vocab"]`` (one string, tokens
joined by newlines, id = line number): :func:`decode` maps ids back to text.
"""
from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ntkbench.data import DataBundle, Split

__all__ = ["read_cola_tsv", "find_cola_files", "basic_tokenize", "WordVocab", "WordPiece",
           "load_vocab_txt", "encode", "decode", "load_cola", "LOADERS"]

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
WORD_SPECIALS = (PAD, UNK, CLS)  # ids 0, 1, 2 of the word vocabulary
TOKENIZERS = ("word", "wordpiece")
_LAYOUTS = (  # (folder under data_dir, train file, test file)
    ("cola_public/raw", "in_domain_train.tsv", "in_domain_dev.tsv"),
    ("CoLA", "train.tsv", "dev.tsv"),
    ("glue_data/CoLA", "train.tsv", "dev.tsv"),
    (".", "in_domain_train.tsv", "in_domain_dev.tsv"),
)
_COLA_URL = ("https://nyu-mll.github.io/CoLA/cola_public_1.1.zip (unzip it into data_dir, giving "
             "cola_public/raw/), or GLUE's CoLA.zip (giving CoLA/train.tsv and CoLA/dev.tsv)")


# --------------------------------------------------------------------------- files

def read_cola_tsv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Sentences and labels (n,) int64 of one CoLA tsv file (4 columns, no header).

    Raises ``FileNotFoundError`` when it does not exist and ``ValueError`` naming the file and
    line for a row without 4 columns or with a label other than 0 / 1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoLA file {path} not found. Download {_COLA_URL}.")
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            # Split at the first three tabs only: the sentence is everything after them.
            cols = line.split("\t", 3)
            if len(cols) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 tab-separated columns (source, label, "
                                 f"mark, sentence), got {len(cols)}: {line[:80]!r}")
            if cols[1] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {cols[1]!r} "
                                 "(a header line? the CoLA files have none)")
            labels.append(int(cols[1]))
            sentences.append(cols[3])
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences, np.asarray(labels, dtype=np.int64)


def find_cola_files(data_dir: str | Path) -> tuple[Path, Path]:
    """(train, test) tsv files of the first layout present under ``data_dir`` (module docstring)."""
    data_dir = Path(data_dir)
    for folder, train, test in _LAYOUTS:
        root = data_dir / folder
        if (root / train).is_file():
            if not (root / test).is_file():
                raise FileNotFoundError(f"CoLA file {root / test} not found (its training file "
                                        f"{root / train} is there). Download {_COLA_URL}.")
            return root / train, root / test
    tried = ", ".join(str(data_dir / folder / train) for folder, train, _ in _LAYOUTS)
    raise FileNotFoundError(f"CoLA training file not found; looked for {tried}. Download {_COLA_URL} "
                            "(config key data_dir, e.g. --config data_dir=/path/to/data).")


# --------------------------------------------------------------------------- tokenizers

def _is_punctuation(ch: str) -> bool:
    # As BERT: every non-letter/number ASCII symbol counts, e.g. "$" and "`", plus Unicode P*.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """BERT's BasicTokenizer: drop control characters, normalise whitespace, put spaces around
    CJK characters, optionally lower-case and strip accents (NFD, drop combining marks), then
    split on whitespace and split every punctuation character off as its own token.

    ``basic_tokenize("Bill's  DOG, barked!")`` -> ``["bill", "'", "s", "dog", ",", "barked", "!"]``.
    """
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch.isspace():
            chars.append(" ")
        elif _is_cjk(cp):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    tokens = []
    for word in "".join(chars).split():
        if lowercase:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                           if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    tokens.append(current)
                    current = ""
                tokens.append(ch)
            else:
                current += ch
        if current:
            tokens.append(current)
    return tokens


class WordVocab:
    """Word-level vocabulary: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, then words by frequency."""

    name = "word"

    def __init__(self, tokens: Sequence[str], lowercase: bool = True) -> None:
        self.tokens = list(tokens)
        if tuple(self.tokens[:3]) != WORD_SPECIALS:
            raise ValueError(f"a word vocabulary starts with {WORD_SPECIALS}, got {self.tokens[:3]}")
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.lowercase = lowercase
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = 0, 1, 2, None

    @classmethod
    def build(cls, sentences: Sequence[str], min_freq: int = 1, max_vocab: int | None = None,
              lowercase: bool = True) -> "WordVocab":
        """From (training) sentences: words seen >= ``min_freq`` times, most frequent first (ties
        alphabetical, so the vocabulary is deterministic), at most ``max_vocab`` ids in all."""
        if min_freq < 1:
            raise ValueError(f"data.min_freq must be >= 1, got {min_freq}")
        if max_vocab is not None and max_vocab <= len(WORD_SPECIALS):
            raise ValueError(f"data.max_vocab must exceed the {len(WORD_SPECIALS)} special tokens, got {max_vocab}")
        counts = Counter(t for s in sentences for t in basic_tokenize(s, lowercase))
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in WORD_SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            words = words[: max_vocab - len(WORD_SPECIALS)]
        return cls([*WORD_SPECIALS, *words], lowercase)

    def tokenize(self, text: str) -> list[str]:
        return basic_tokenize(text, self.lowercase)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]


def load_vocab_txt(path: str | Path) -> list[str]:
    """The tokens of a BERT ``vocab.txt`` (one per line; id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.vocab: WordPiece vocabulary {path} not found (point it at the "
                                "vocab.txt of a local BERT checkpoint, e.g. bert-base-uncased/vocab.txt)")
    with open(path, encoding="utf-8") as fh:
        tokens = [line.rstrip("\r\n") for line in fh]
    while tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


class WordPiece:
    """BERT's WordPiece over :func:`basic_tokenize`, with the vocabulary of a ``vocab.txt``."""

    name = "wordpiece"

    def __init__(self, tokens: Sequence[str], lowercase: bool = True, source: str = "vocab.txt",
                 max_chars_per_word: int = 100) -> None:
        self.tokens = list(tokens)
        self.index = {}
        for i, t in enumerate(self.tokens):
            self.index.setdefault(t, i)  # first occurrence wins, as BERT's loader
        missing = [t for t in (PAD, UNK, CLS) if t not in self.index]
        if missing:
            raise ValueError(f"{source}: the WordPiece vocabulary has no {missing} token(s)")
        self.lowercase = lowercase
        self.max_chars_per_word = max_chars_per_word
        self.pad_id, self.unk_id, self.cls_id = self.index[PAD], self.index[UNK], self.index[CLS]
        self.sep_id = self.index.get(SEP)

    def split_word(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one basic token; ``[UNK]`` when any part of it
        cannot be matched (e.g. ``"unaffable"`` -> ``["un", "##aff", "##able"]``)."""
        if len(word) > self.max_chars_per_word:
            return [UNK]
        pieces, start = [], 0
        while start < len(word):
            end, match = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.index:
                    match = piece
                    break
                end -= 1
            if match is None:
                return [UNK]
            pieces.append(match)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in basic_tokenize(text, self.lowercase) for p in self.split_word(w)]

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]


def encode(sentences: Sequence[str], tokenizer: WordVocab | WordPiece, max_len: int) -> tuple[np.ndarray, int]:
    """(N, max_len) int64 ids — ``[CLS]``, the tokens (then ``[SEP]`` for WordPiece), truncated
    to ``max_len`` and padded with ``[PAD]`` — and how many sentences were truncated."""
    if max_len < 2:
        raise ValueError(f"data.max_len must be at least 2 ([CLS] and one token), got {max_len}")
    out = np.full((len(sentences), max_len), tokenizer.pad_id, dtype=np.int64)
    truncated = 0
    tail = [] if tokenizer.sep_id is None else [tokenizer.sep_id]
    room = max_len - 1 - len(tail)
    for n, sentence in enumerate(sentences):
        ids = tokenizer.ids(tokenizer.tokenize(sentence))
        if len(ids) > room:
            truncated += 1
            ids = ids[:room]
        row = [tokenizer.cls_id, *ids, *tail]
        out[n, : len(row)] = row
    return out, truncated


def decode(ids: Sequence[float] | np.ndarray, vocab: str | np.ndarray | Sequence[str],
           pad_id: int = 0, skip_special: bool = True) -> str:
    """Text of one row of token ids (float or int), given the bundle's ``extra["vocab"]``
    (newline-joined) or a token list; padding and (optionally) special tokens are dropped and
    ``##`` continuations are glued to the previous piece."""
    tokens = str(vocab).split("\n") if isinstance(vocab, (str, np.ndarray)) else list(vocab)
    words: list[str] = []
    for i in np.asarray(ids, dtype=np.int64).tolist():
        if i == pad_id:
            continue
        tok = tokens[i]
        if skip_special and tok in (PAD, CLS, SEP):  # [UNK] stays visible
            continue
        if tok.startswith("##") and words:
            words[-1] += tok[2:]
        else:
            words.append(tok)
    return " ".join(words)


# --------------------------------------------------------------------------- loader

def _subset(x: np.ndarray, y: np.ndarray, size: int | None, rng: np.random.Generator, key: str
            ) -> tuple[np.ndarray, np.ndarray]:
    if size is None:
        return x, y
    if size > len(y):
        raise ValueError(f"data.{key}: asked for {size} sentences but only {len(y)} are available")
    idx = np.sort(rng.choice(len(y), size=size, replace=False))
    return x[idx], y[idx]


def load_cola(data_dir: Path, max_len: int = 64, tokenizer: str = "word", vocab: str | None = None,
              min_freq: int = 1, max_vocab: int | None = None, lowercase: bool = True,
              max_train: int | None = None, max_test: int | None = None, split_seed: int = 0,
              **unknown: Any) -> DataBundle:
    """CoLA as (N, max_len) float32 token ids; test split = in-domain dev set (module docstring).

    ``tokenizer``: ``word`` (vocabulary from the training split, ``min_freq``, ``max_vocab``)
    or ``wordpiece`` (needs ``vocab``, the path of a BERT ``vocab.txt``; a relative path is
    taken relative to ``data_dir``). ``max_train`` / ``max_test`` keep a random subset (drawn
    with ``split_seed``) for quick runs; the word vocabulary is built from the full training
    file either way, so a subset does not change the ids.
    """
    if unknown:
        raise ValueError(f"data: key(s) {sorted(unknown)} do not apply to 'cola' (accepted: max_len, "
                         "tokenizer, vocab, min_freq, max_vocab, lowercase, max_train, max_test, split_seed)")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"data.tokenizer: {tokenizer!r} is not one of {list(TOKENIZERS)}")
    data_dir = Path(data_dir)
    train_path, test_path = find_cola_files(data_dir)
    train_s, train_y = read_cola_tsv(train_path)
    test_s, test_y = read_cola_tsv(test_path)
    if tokenizer == "word":
        if vocab is not None:
            raise ValueError("data.vocab is a WordPiece vocab.txt; set data.tokenizer: wordpiece to use it")
        tok: WordVocab | WordPiece = WordVocab.build(train_s, min_freq=min_freq, max_vocab=max_vocab,
                                                     lowercase=lowercase)
    else:
        if vocab is None:
            raise ValueError("data.tokenizer: wordpiece needs data.vocab, the path of a BERT vocab.txt")
        vocab_path = Path(vocab) if Path(vocab).is_absolute() else data_dir / vocab
        tok = WordPiece(load_vocab_txt(vocab_path), lowercase=lowercase, source=str(vocab_path))
    train_x, train_trunc = encode(train_s, tok, max_len)
    test_x, test_trunc = encode(test_s, tok, max_len)
    rng = np.random.default_rng(split_seed)
    train_x, train_y = _subset(train_x, train_y, max_train, rng, "max_train")
    test_x, test_y = _subset(test_x, test_y, max_test, rng, "max_test")
    joined = "\n".join(tok.tokens)
    meta = {"name": "cola", "files": [train_path.name, test_path.name], "tokenizer": tok.name,
            "max_len": int(max_len), "lowercase": bool(lowercase), "vocab_size": len(tok.tokens),
            "pad_id": tok.pad_id, "unk_id": tok.unk_id, "cls_id": tok.cls_id, "sep_id": tok.sep_id,
            "vocab_sha256": hashlib.sha256(joined.encode("utf-8")).hexdigest(),
            "truncated": {"train": train_trunc, "test": test_trunc},
            "max_train": max_train, "max_test": max_test, "split_seed": split_seed,
            "n_train": len(train_y), "n_test": len(test_y),
            "model_args": {"vocab_size": len(tok.tokens), "pad_id": tok.pad_id}}
    if tokenizer == "word":
        meta.update(min_freq=int(min_freq), max_vocab=max_vocab)
    else:
        meta["vocab"] = str(vocab)
    # float32 holds integers exactly up to 2**24, far above any vocabulary here.
    return DataBundle(train=Split(train_x.astype(np.float32), train_y),
                      test=Split(test_x.astype(np.float32), test_y),
                      num_classes=2, meta=meta, extra={"vocab": np.array(joined)})


LOADERS: dict[str, Callable[..., DataBundle]] = {"cola": load_cola}
