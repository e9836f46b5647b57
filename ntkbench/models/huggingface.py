"""Local Hugging Face classification checkpoints through ``transformers`` (optional extra ``hf``).

:func:`from_pretrained` loads a checkpoint directory written by ``save_pretrained``
(``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``) with ``AutoConfig`` and
``AutoModelForSequenceClassification`` / ``AutoModelForImageClassification``, and wraps it in
:class:`HFClassifier`, a plain ``nn.Module`` whose ``forward(x)`` returns the (N, C) logits
tensor, so the kernel engine (``ntkbench.kernels.compute``), training and checkpoints treat it
like any model of the zoo:

* ``task="sequence-classification"``: ``x`` is (N, L) token ids (int64, or floats holding
  integers as in the data bundles); the attention mask is ``x != config.pad_token_id`` (all
  ones when the config has no pad id).
* ``task="image-classification"``: ``x`` is ``pixel_values`` (N, C, H, W).

The workflow model ``{name: huggingface, path: <dir>, task: ...}`` (``path`` relative to the
working directory) builds the same module through :func:`ntkbench.models.build`, after checking
the data against the checkpoint (number of outputs, input shape, vocabulary, pad id).

Nothing is downloaded: only local directories are read (``local_files_only=True``).
``transformers`` is an optional dependency (``pip install 'ntkbench[hf]'``); without it this
module still imports, and loading a checkpoint raises an ImportError saying how to install it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ntkbench.models import register

__all__ = ["HFClassifier", "from_pretrained", "huggingface", "infer_task", "TASKS"]

#: The tasks a checkpoint can be loaded for.
TASKS = ("sequence-classification", "image-classification")
_SUFFIXES = {"sequence-classification": "ForSequenceClassification",
             "image-classification": "ForImageClassification"}


def _require_transformers() -> Any:
    """The ``transformers`` module, imported on first use: it is an optional extra, and
    importing it costs over a second, which every job that builds any model would pay if the
    zoo imported it up front."""
    try:
        import transformers
    except Exception as err:  # noqa: BLE001 (a broken install must not break the rest of the zoo)
        why = "" if isinstance(err, ModuleNotFoundError) else f" (importing it failed: {err})"
        raise ImportError("Hugging Face checkpoints need the optional dependency transformers: "
                          f"pip install 'ntkbench[hf]'{why}") from err
    return transformers


class HFClassifier(nn.Module):
    """A Hugging Face classification model as a function of one tensor: ``forward(x)`` → (N, C).

    Args:
        model: the ``transformers`` model (``...ForSequenceClassification`` or
            ``...ForImageClassification``), registered as the submodule ``model``.
        task: ``"sequence-classification"`` (``x``: (N, L) token ids) or
            ``"image-classification"`` (``x``: (N, C, H, W) pixel values).
        pad_token_id: token id masked out of attention (text only); None: attend everywhere.

    The wrapped model is called with ``return_dict=True`` and its ``.logits`` returned, so the
    forward is a pure tensor function that ``torch.func.functional_call`` and ``vmap`` can trace.
    """

    def __init__(self, model: nn.Module, task: str, pad_token_id: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.model = model
        self.task = task
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_labels) of token ids (N, L) or pixel values (N, C, H, W)."""
        if self.task == "image-classification":
            if x.dim() != 4:
                raise ValueError(f"image classifier expects pixel values (N, C, H, W), got shape {tuple(x.shape)}")
            return self.model(pixel_values=x, return_dict=True).logits
        if x.dim() != 2:
            raise ValueError(f"sequence classifier expects token ids (N, L), got shape {tuple(x.shape)}")
        ids = x.round().long() if x.is_floating_point() else x.long()  # bundles store ids as floats
        if self.pad_token_id is None:
            mask = torch.ones_like(ids)
        else:
            mask = (ids != self.pad_token_id).long()
        return self.model(input_ids=ids, attention_mask=mask, return_dict=True).logits

    def extra_repr(self) -> str:
        return f"task={self.task!r}, pad_token_id={self.pad_token_id}"


def _checkpoint_dir(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"Hugging Face checkpoint {str(path)!r}: no such directory (expected a local "
                                "directory written by save_pretrained, with config.json)")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"Hugging Face checkpoint {str(path)!r}: {directory / 'config.json'} does not exist "
                                "(expected a local directory written by save_pretrained)")
    return directory


def _mapping_names(task: str) -> set[str]:
    """Class names the Auto class of ``task`` maps configs to (some are tuples of several)."""
    table = {"sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
             "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"}[task]
    names: set[str] = set()
    for value in getattr(_require_transformers().models.auto.modeling_auto, table, {}).values():
        names.update([value] if isinstance(value, str) else value)
    return names


def infer_task(config: Any, path: str | Path = "<config>") -> str:
    """The task of a checkpoint from its config's ``architectures``.

    Args:
        config: a ``transformers.PretrainedConfig``.
        path: the checkpoint directory, for the error message.

    Returns:
        ``"sequence-classification"`` or ``"image-classification"``.

    Raises:
        ValueError: naming ``path`` when no architecture is a sequence or image classifier.
    """
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        for task in TASKS:
            if arch.endswith(_SUFFIXES[task]) or arch in _mapping_names(task):
                return task
    raise ValueError(f"Hugging Face checkpoint {str(path)!r}: its config.json architectures {archs} name neither a "
                     "sequence-classification nor an image-classification model; pass task="
                     f"{' or '.join(repr(t) for t in TASKS)} to load it with a classification head")


def _load(path: str | Path, task: str | None) -> tuple[HFClassifier, Any]:
    tf = _require_transformers()
    directory = _checkpoint_dir(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"Hugging Face checkpoint {str(path)!r}: task must be one of {TASKS} or None, got {task!r}")
    config = tf.AutoConfig.from_pretrained(directory, local_files_only=True)
    task = infer_task(config, path) if task is None else task
    auto = (tf.AutoModelForSequenceClassification if task == "sequence-classification"
            else tf.AutoModelForImageClassification)
    try:
        # eager attention: plain matmul + softmax, which torch.func (vmap, jacrev) traces
        # exactly in any dtype, with no data-dependent shortcut on the attention mask
        model = auto.from_pretrained(directory, config=config, local_files_only=True, attn_implementation="eager")
    except ValueError as err:  # e.g. "Unrecognized configuration class ... for this kind of AutoModel"
        raise ValueError(f"Hugging Face checkpoint {str(path)!r} ({type(config).__name__}) cannot be loaded "
                         f"for {task}: {err}") from err
    pad = getattr(config, "pad_token_id", None) if task == "sequence-classification" else None
    return HFClassifier(model, task, pad).eval(), config


def from_pretrained(path: str | Path, task: str | None = None) -> HFClassifier:
    """Load a local Hugging Face classification checkpoint as an :class:`HFClassifier`.

    Args:
        path: directory written by ``save_pretrained`` (``config.json`` + weights).
        task: ``"sequence-classification"``, ``"image-classification"``, or None to infer it
            from ``config.architectures``.

    Returns:
        The model in eval mode; ``model(x)`` gives the (N, num_labels) logits of token ids
        (N, L) or pixel values (N, C, H, W).

    Raises:
        ImportError: transformers is not installed (``pip install 'ntkbench[hf]'``).
        FileNotFoundError: ``path`` is not a directory with a config.json.
        ValueError: the checkpoint is not a sequence or image classifier (task None), or its
            model type has no head for ``task``.
    """
    return _load(path, task)[0]


def _check_data(config: Any, task: str, path: str, input_shape: Sequence[int], num_outputs: int,
                vocab_size: int | None, pad_id: int | None) -> None:
    where = f"model.path {path!r}"
    labels = int(config.num_labels)
    if labels != int(num_outputs):
        binary = " (binary tasks train one logit: save the checkpoint with num_labels=1)" if num_outputs == 1 else ""
        raise ValueError(f"{where}: the checkpoint has num_labels={labels} but the data need {num_outputs} "
                         f"output(s){binary}")
    shape = tuple(int(s) for s in input_shape)
    if task == "image-classification":
        size = getattr(config, "image_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
        channels = getattr(config, "num_channels", None)
        if len(shape) != 3 or (channels is not None and shape[0] != channels) or (size is not None
                                                                                  and shape[1:] != size):
            raise ValueError(f"{where}: the data's input shape {shape} does not fit the checkpoint's images "
                             f"(num_channels={channels}, image_size={size}; expected (C, H, W))")
        return
    if len(shape) != 1:
        raise ValueError(f"{where}: a sequence classifier needs (L,) token-id inputs, got input shape {shape}")
    max_len = getattr(config, "max_position_embeddings", None)
    if max_len is not None and shape[0] > int(max_len):
        raise ValueError(f"{where}: sequence length {shape[0]} exceeds the checkpoint's max_position_embeddings "
                         f"{max_len}")
    if vocab_size is not None and int(vocab_size) > int(config.vocab_size):
        raise ValueError(f"{where}: the data's vocab_size {vocab_size} exceeds the checkpoint's {config.vocab_size}: "
                         "the token ids must come from the checkpoint's vocabulary")
    if pad_id is not None and config.pad_token_id != int(pad_id):
        raise ValueError(f"{where}: the data pad with token id {pad_id} but the checkpoint's pad_token_id is "
                         f"{config.pad_token_id}: the token ids must come from the checkpoint's vocabulary")


@register("huggingface")
def huggingface(input_shape: Sequence[int], num_outputs: int, path: str, task: str | None = None,
                vocab_size: int | None = None, pad_id: int | None = None) -> HFClassifier:
    """Workflow model ``{name: huggingface, path: <dir>, task: ...}``: :func:`from_pretrained`
    with the data checked against the checkpoint.

    The returned model carries the checkpoint's weights; :func:`ntkbench.models.load_checkpoint`
    rebuilds it from the same directory (which must still exist) and then loads the trained
    weights over them.

    Args:
        input_shape: one sample's shape from the data: ``(L,)`` token ids or ``(C, H, W)``.
        num_outputs: logits the data need; must equal the checkpoint's ``num_labels``.
        path: checkpoint directory, relative to the working directory.
        task: as in :func:`from_pretrained` (None: from ``config.architectures``).
        vocab_size: the text data's vocabulary size, if any; at most the checkpoint's.
        pad_id: the text data's pad token id, if any; must equal the checkpoint's pad_token_id.

    Returns:
        The :class:`HFClassifier`, in eval mode.

    Raises:
        ValueError: the data do not fit the checkpoint (see :func:`from_pretrained` for the
            other errors).
    """
    model, config = _load(path, task)
    _check_data(config, model.task, str(path), input_shape, num_outputs, vocab_size, pad_id)
    return model
