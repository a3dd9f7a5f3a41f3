"""One small description per supported model family, keyed by ``config.model_type``.

Everything else (pruning, activation capture, training hooks, folding, the attention
swap) reads module names and head geometry from here, so adding a family that follows the
common decoder layout is one entry in ``FAMILIES``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from restorelcc.errors import NotAModelError, UnsupportedModelError


@dataclass(frozen=True)
class Family:
    """Where a decoder family keeps its blocks, and what its attention looks like."""

    model_type: str
    layers_path: str = "model.layers"
    attention: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    # Norms on queries and keys before RoPE, and what their weights span: "head" (one
    # head_dim vector shared by all heads: Qwen3, Gemma3), "heads" (one row per head:
    # Cohere's use_qk_norm), "projection" (the whole projection: OLMo 2/3). Structured
    # pruning cuts the last two along with the heads it removes.
    qk_norm: str | None = None
    q_norm: str = "q_norm"
    k_norm: str = "k_norm"
    # Config flag that gives o_proj a bias in vanilla transformers (most also give q/k/v
    # one, saved as zeros), so a folded restoration can be exported as a plain checkpoint;
    # None where the family's o_proj is always bias-free (Mistral, Qwen2, EXAONE 4).
    o_proj_bias_flag: str | None = None
    # Whether lm-eval 0.4 scores this family's zero-shot requests with the special tokens
    # the tokenizer puts in front (its BOS): Gemma's, which does poorly without one; every
    # other family is scored on the text's own ids (``restorelcc.eval.scoring``).
    eval_bos: bool = False

    @property
    def attention_linears(self) -> tuple[str, ...]:
        return tuple(
            f"{self.attention}.{n}" for n in (self.q_proj, self.k_proj, self.v_proj, self.o_proj)
        )

    @property
    def mlp_linears(self) -> tuple[str, ...]:
        return tuple(f"{self.mlp}.{n}" for n in (self.gate_proj, self.up_proj, self.down_proj))

    @property
    def block_linears(self) -> tuple[str, ...]:
        """Names, relative to one decoder block, of every prunable linear layer."""
        return self.attention_linears + self.mlp_linears


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", o_proj_bias_flag="attention_bias"),
        Family("mistral"),
        Family("qwen2"),
        Family("qwen3", qk_norm="head", o_proj_bias_flag="attention_bias"),
        Family("gemma", o_proj_bias_flag="attention_bias", eval_bos=True),
        Family("gemma2", o_proj_bias_flag="attention_bias", eval_bos=True),
        Family("gemma3_text", qk_norm="head", o_proj_bias_flag="attention_bias", eval_bos=True),
        Family("olmo", o_proj_bias_flag="attention_bias"),
        Family("olmo2", qk_norm="projection", o_proj_bias_flag="attention_bias"),
        Family("olmo3", qk_norm="projection", o_proj_bias_flag="attention_bias"),
        Family("smollm3", o_proj_bias_flag="attention_bias"),
        Family("granite", o_proj_bias_flag="attention_bias"),
        Family("cohere", qk_norm="heads", o_proj_bias_flag="attention_bias"),
        Family("cohere2", o_proj_bias_flag="attention_bias"),
        Family("exaone4", qk_norm="head"),
        Family("ernie4_5", o_proj_bias_flag="use_bias"),
        Family("seed_oss", o_proj_bias_flag="attention_out_bias"),
    )
}


@dataclass(frozen=True)
class HeadGeometry:
    """Attention shape of a model: ``layers x heads`` query heads of ``head_dim``."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def total_heads(self) -> int:
        return self.layers * self.heads

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head."""
        return self.heads // self.kv_heads

    def layer_and_head(self, flat: torch.Tensor) -> torch.Tensor:
        """``[S, 2]`` (layer, head) rows of flat head indices ``[S]`` (``layer * heads +
        head``)."""
        return torch.stack([flat // self.heads, flat % self.heads], dim=1)


NOT_A_MODEL = "expected a model (a Hugging Face causal LM: an nn.Module with a config)"


def check_is_model(obj, or_config: bool = False) -> None:
    """Raise ``NotAModelError`` unless ``obj`` is a model: an ``nn.Module`` with a
    Hugging Face ``config`` (or, ``or_config``, anything whose config, or itself, has a
    ``model_type``). The message names the type received; a tuple and a name or path get
    a hint (``load_model`` returns ``(model, tokenizer)``; a name must be loaded first)."""
    if or_config and hasattr(getattr(obj, "config", obj), "model_type"):
        return
    if isinstance(obj, nn.Module) and hasattr(obj, "config"):
        return
    if isinstance(obj, tuple):
        hint = (
            "; load_model returns (model, tokenizer): unpack it "
            "(model, tokenizer = load_model(...))"
        )
    elif isinstance(obj, (str, os.PathLike)):
        hint = f"; {str(obj)!r} is a name or path: load it first with load_model({str(obj)!r})"
    else:
        hint = ""
    raise NotAModelError(f"{NOT_A_MODEL}, got {type(obj).__name__}{hint}")


def family_of(model_or_config) -> Family:
    check_is_model(model_or_config, or_config=True)
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model family {model_type!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def model_positions(model_or_config) -> int | None:
    """The positions a model serves: ``max_position_embeddings``, or where a RoPE scaling
    with a ``factor`` is configured (YaRN, llama3, dynamic...) the length it extends to
    (``original_max_position_embeddings`` x factor where given); None if unstated."""
    config = getattr(model_or_config, "config", model_or_config)
    text = config.get_text_config()
    limit = getattr(text, "max_position_embeddings", None)
    scaling = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
    if limit is None or not isinstance(scaling, dict):
        return limit
    kind, factor = scaling.get("rope_type", scaling.get("type")), scaling.get("factor")
    if kind in (None, "default") or not isinstance(factor, (int, float)) or factor <= 1:
        return limit
    original = scaling.get("original_max_position_embeddings") or limit
    return max(limit, int(original * factor))


def check_length_fits(length: int, model_or_config, what: str) -> None:
    """Raise ``ValueError`` where ``length`` tokens (``what``, e.g. ``--seqlen 600``) exceed
    the positions the model serves (``model_positions``)."""
    limit = model_positions(model_or_config)
    if limit is not None and length > limit:
        raise ValueError(f"{what}: more tokens than the {limit} positions the model serves")


def head_geometry(model_or_config) -> HeadGeometry:
    config = getattr(model_or_config, "config", model_or_config)
    family_of(config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return HeadGeometry(config.num_hidden_layers, heads, kv_heads, head_dim, config.hidden_size)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks; raises if the family layout is not found."""
    family = family_of(model)
    module = model
    for part in family.layers_path.split("."):
        module = getattr(module, part, None)
        if module is None:
            if type(model).__module__.split(".")[0] == "peft":
                raise UnsupportedModelError(
                    f"{type(model).__name__} is a peft model (adapters around a "
                    f"{family.model_type} model): merge the adapters with "
                    "model.merge_and_unload() first, or "
                    "pass model.get_base_model() to leave them out"
                )
            raise UnsupportedModelError(
                f"{type(model).__name__} has no {family.layers_path!r}; expected a "
                f"{family.model_type} causal LM"
            )
    return module


def block_linear(block: nn.Module, name: str) -> nn.Linear:
    """``block.get_submodule(name)``, checked to be an ``nn.Linear``."""
    try:
        module = block.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        from restorelcc.hf.attention import PackedLinear, ProjectionView

        if isinstance(module, (PackedLinear, ProjectionView)):
            raise UnsupportedModelError(
                f"{name} is swapped for a packed sparse module; this needs the nn.Linear "
                "weights: call unswap_attention(model) first (or swap after it)"
            )
        if module is None:
            raise UnsupportedModelError(f"decoder block has no linear layer {name!r}")
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        raise UnsupportedModelError(f"{name} is a {kind}, not an nn.Linear")
    return module


def o_proj_of(model: nn.Module, layer: int) -> nn.Linear:
    family = family_of(model)
    return block_linear(decoder_layers(model)[layer], f"{family.attention}.{family.o_proj}")


def model_device(model: nn.Module) -> torch.device:
    """The one device of ``model``'s parameters; ``UnsupportedModelError`` for a model
    spread over several (a ``device_map`` over GPUs, or with CPU/disk offload), which the
    pipeline would fail on part-way with an error naming neither."""
    devices = {param.device for param in model.parameters()}
    if len(devices) > 1:
        names = ", ".join(sorted(str(device) for device in devices))
        raise UnsupportedModelError(
            f"{type(model).__name__} has parameters on {names} (a device_map spreading it "
            "or offloading part of it): restorelcc runs a model on one device; load it "
            "whole onto one (no device_map, or device_map set to that device)"
        )
    return devices.pop()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (no dropout) for the block, then restore its training
    flag."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
