"""Load a model folder (a known name resolved by ``assets.resolve_model``) with its
tokenizer, refusing what transformers would accept silently: weights missing (left
randomly initialised), unused or of the wrong shape, a folder without a tokenizer, a
folded restoration that its config does not enable."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from restorelcc.assets import DEFAULT_MODEL, resolve_model
from restorelcc.errors import CorruptCacheError, RestoreLCCError
from restorelcc.hf.families import FAMILIES

# The dtypes a model loads in (transformers instantiates floating-point models only).
LOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class CheckpointError(RestoreLCCError):
    """A model folder that is whole but cannot be loaded as it stands: it has no
    tokenizer, or it holds a folded restoration that its config does not enable (a model
    saved with ``save_pretrained`` after ``Restoration.fold``). The message says how to
    write one that loads."""


# Files one of which a saved tokenizer needs (a fast tokenizer's file, a SentencePiece or
# tiktoken model, a BPE / WordPiece vocabulary).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
    "vocab.json",
    "vocab.txt",
)
LISTED_KEYS = 3


def _one_line(exc: BaseException) -> str:
    """The exception's message as one line (all of its lines, joined)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def _listed(keys) -> str:
    """A few sorted names, then "and N more"."""
    keys = sorted(map(str, keys))
    shown = ", ".join(keys[:LISTED_KEYS])
    more = len(keys) - LISTED_KEYS
    return f"{shown} and {more} more" if more > 0 else shown


def load_config(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The model's ``transformers`` config, without its weights (cheap checks first).

    Raises ``ModelNotFoundError`` / ``CorruptCacheError`` (an unreadable config.json)."""
    return read_config(resolve_model(name_or_path))


def read_config(directory: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError, AttributeError) as exc:  # "dtype": "auto": Attr.
        raise CorruptCacheError(
            f"cannot read the config of {directory}: {_one_line(exc)}"
        ) from None


def load_tokenizer(directory: Path):
    """The tokenizer saved in ``directory``, padding on the right (with its eos token if
    it has no pad token); ``CheckpointError`` where the folder has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as exc:
        if not any((directory / name).is_file() for name in TOKENIZER_FILES):
            raise CheckpointError(
                f"{directory} has no tokenizer (no {TOKENIZER_FILES[0]}, nor "
                f"{', '.join(TOKENIZER_FILES[1:])}): save the model's tokenizer beside its "
                "weights (tokenizer.save_pretrained(folder)); a merged checkpoint gets one "
                "with export_merged(..., tokenizer=tokenizer)"
            ) from exc
        raise CorruptCacheError(
            f"cannot load the tokenizer from {directory}: {_one_line(exc)}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@contextmanager
def _without_load_report():
    """Hide transformers' LOAD REPORT warning: ``_check_loading_info`` raises instead."""
    logger = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _folded_biases_message(directory: Path, model, info: dict) -> str | None:
    """Where the only weights the model did not use are its family's attention output
    projection biases (``o_proj.bias``), which its config does not enable: a message
    saying that this is a model with a restoration folded in (``Restoration.fold``) saved
    with ``save_pretrained`` (transformers would drop the restoration), and how to save
    one instead. Else None."""
    family = FAMILIES.get(getattr(model.config, "model_type", None))
    unexpected = info["unexpected_keys"]
    if family is None or not unexpected or info["missing_keys"] or info["mismatched_keys"]:
        return None
    layers, attention, o_proj = map(
        re.escape, (family.layers_path, family.attention, family.o_proj)
    )
    bias = re.compile(rf"{layers}\.\d+\.{attention}\.{o_proj}\.bias")
    if not all(bias.fullmatch(key) for key in unexpected):
        return None
    found = (
        f"{directory} holds {family.o_proj} biases ({_listed(unexpected)}) that its config does "
        "not enable: a model with a restoration folded in (Restoration.fold) saved with "
        "save_pretrained, whose restoration transformers would drop on loading"
    )
    if family.o_proj_bias_flag is None:
        return (
            f"{found}; {family.model_type} models cannot hold an {family.o_proj} bias in "
            "transformers: save the restoration as an adapter (Restoration.save) and fold it "
            "into the pruned model after loading"
        )
    return (
        f"{found}. Save a folded model with Restoration.export_merged(model, folder, "
        f"tokenizer), given the pruned model before folding: it sets "
        f"{family.o_proj_bias_flag} in the config"
    )


def _check_loading_info(directory: Path, model, info: dict) -> None:
    """Raise ``CorruptCacheError`` if weights were missing from the checkpoint (so left
    randomly initialised), unused by the model, or of the wrong shape; ``CheckpointError``
    where the unused ones are the ``o_proj`` biases of a folded model saved with
    ``save_pretrained`` (``_folded_biases_message``). Tied weights and buffers that
    transformers rebuilds are not reported as missing by transformers."""
    folded = _folded_biases_message(directory, model, info)
    if folded is not None:
        raise CheckpointError(folded)
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing tensors {_listed(info['missing_keys'])}")
    if info["unexpected_keys"]:
        problems.append(f"unexpected tensors {_listed(info['unexpected_keys'])}")
    if info["mismatched_keys"]:
        shapes = [
            f"{key} {list(saved)} (config implies {list(expected)})"
            for key, saved, expected in info["mismatched_keys"]
        ]
        problems.append(f"tensors of the wrong shape {_listed(shapes)}")
    if problems:
        raise CorruptCacheError(
            f"the weights in {directory} do not match its config "
            f"({model.config.model_type}, {type(model).__name__}): {'; '.join(problems)}"
        )


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: str | int | torch.device = "cpu",
):
    """Load ``(model, tokenizer)`` in eval mode; the tokenizer pads on the right.

    ``dtype``: one of ``LOAD_DTYPES`` (``torch.float32``, ``torch.bfloat16``...) or its
    name (``"bfloat16"``), or ``"auto"`` (the dtype the checkpoint records); ``device``:
    ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a CUDA index or a ``torch.device``. Both are checked
    before anything is read (``ValueError`` naming the argument). Raises
    ``ModelNotFoundError`` / ``CorruptCacheError`` with the reason, including weights the
    checkpoint lacks (which transformers would initialise randomly), and
    ``CheckpointError`` for a folder without a tokenizer, a folded model saved with
    ``save_pretrained`` (export those with ``Restoration.export_merged``) or a packed
    checkpoint (``restorelcc.hf.load_packed`` loads those).
    """
    from transformers import AutoModelForCausalLM

    from restorelcc.hf.packed_checkpoint import refuse_packed

    dtype, device = check_load_arguments(dtype, device)
    directory = resolve_model(name_or_path)
    refuse_packed(
        directory,
        "load it with restorelcc.hf.load_packed (restorelcc eval --model and bench --model "
        "read it too); the other commands need the dense checkpoint it was packed from",
    )
    config = read_config(directory)  # the small files before the (larger) weights
    tokenizer = load_tokenizer(directory)
    try:
        with _without_load_report():
            model, info = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported by _check_loading_info
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CorruptCacheError(f"cannot load model from {directory}: {_one_line(exc)}") from exc
    _check_loading_info(directory, model, info)
    return model.to(device).eval(), tokenizer


def check_load_arguments(
    dtype, device, dtypes: tuple[torch.dtype, ...] = LOAD_DTYPES
) -> tuple[torch.dtype | str, torch.device]:
    """``(dtype, device)`` as ``from_pretrained`` and ``.to`` take them, after checking
    them as ``load_model`` takes them: ``dtype`` one of the caller's ``dtypes`` (which the
    message lists) or "auto"; ``ValueError`` naming the argument."""
    from restorelcc.commands.options import resolve_device  # the --device checks

    names = {str(d).removeprefix("torch."): d for d in dtypes}
    if isinstance(dtype, str) and dtype != "auto":
        dtype = names.get(dtype, dtype)
    if dtype != "auto" and dtype not in dtypes:
        raise ValueError(
            f"dtype must be one of {', '.join(names)} (a torch.dtype or its name) or 'auto' "
            f"(the checkpoint's own); got {dtype!r}"
        )
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # as torch.device(1) reads it
    if not isinstance(device, (str, torch.device)):
        raise ValueError(
            f"device must be a str (cpu, cuda, cuda:1...), a CUDA index or a torch.device, "
            f"got {device!r}"
        )
    return dtype, resolve_device(str(device), option="device=")
