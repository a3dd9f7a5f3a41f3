"""How much structured pruning removes from every layer: KV groups and MLP channels.

``sparsity`` is the fraction of the decoder blocks' linear parameters removed. By default
``floor(sparsity * kv_heads)`` groups are removed (at most all but one), so attention
never loses a larger share than the target, and MLP channels make up the rest (where even
all but one channel cannot, the fewest more groups that let them); ``head_fraction`` sets
the number of groups directly (``head_fraction * kv_heads``, rounded half up; ``0``
removes MLP channels only). ``channel_multiple`` keeps a multiple of that many MLP
channels per layer (8 suits tensor cores; 4 lets a later 2:4 prune take ``down_proj``):
the count removed rounds to it. A plan that removes nothing is refused. Llama and Gemma
2/3 configs must keep a head count that divides the hidden size (transformers refuses to
save them otherwise, even with an explicit head_dim): the default then removes fewer groups
(LLaMA-7B, 32 heads and hidden 4096, keeps all its heads below 50%), and a
``head_fraction`` that breaks it is refused.
Why floor: on SmolLM2-135M (3 KV groups), 20% structured with one KV group + 239 channels
per layer measured LAMBADA perplexity 135.0, MLP channels only (410 per layer) 79.7 (dense
40.4; benchmarks/results).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

from torch import nn

from restorelcc.hf.families import Family, block_linear, decoder_layers, head_geometry
from restorelcc.prune.validate import PruneArgumentError, PruneSpec, rounded_up


def _params(linear: nn.Linear) -> int:
    return linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)


@dataclass(frozen=True)
class StructuredPlan:
    """How much every layer loses; parameter counts are per layer, biases included."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    kv_groups_removed: int
    channels_removed: int
    group_params: int
    channel_params: int
    layer_params: int
    channel_multiple: int = 1  # kept channels are a multiple of it

    @property
    def removed_params(self) -> int:
        per_layer = (
            self.kv_groups_removed * self.group_params + self.channels_removed * self.channel_params
        )
        return self.layers * per_layer

    @property
    def removed_fraction(self) -> float:
        return self.removed_params / (self.layers * self.layer_params)


def plan_removal(model: nn.Module, family: Family, spec: PruneSpec) -> StructuredPlan:
    """Choose how many KV groups and MLP channels every layer loses; raises
    ``PruneArgumentError`` where no such plan reaches ``spec.sparsity``, or it removes nothing.

    Reads only the linears' shapes and biases and the config, so a meta-device shell built
    from a config (``prune.api.check_config``) gets the plan its loaded model will.
    """
    geometry = head_geometry(model)
    layers = decoder_layers(model)
    first = layers[0]
    linear = {name: block_linear(first, name) for name in family.block_linears}
    for index, layer in enumerate(layers):
        for name in family.block_linears:
            if block_linear(layer, name).weight.shape != linear[name].weight.shape:
                raise PruneArgumentError(
                    f"structured pruning needs identical layers; layers.{index}.{name} differs"
                )
    attn, mlp = family.attention, family.mlp
    q, k, v = (linear[f"{attn}.{n}"] for n in (family.q_proj, family.k_proj, family.v_proj))
    o = linear[f"{attn}.{family.o_proj}"]
    gate, up, down = (
        linear[f"{mlp}.{n}"] for n in (family.gate_proj, family.up_proj, family.down_proj)
    )
    heads, kv_heads, head_dim = geometry.heads, geometry.kv_heads, geometry.head_dim
    group = geometry.group_size
    per_row = lambda lin: lin.in_features + (1 if lin.bias is not None else 0)
    group_params = head_dim * (
        group * per_row(q) + per_row(k) + per_row(v) + group * o.out_features
    )
    channel_params = per_row(gate) + per_row(up) + down.out_features
    layer_params = sum(_params(lin) for lin in linear.values())
    intermediate = down.in_features

    # Kept channels come in whole units of ``multiple``: removed ones number the remainder
    # plus a whole count of units, rounded half up like a single channel.
    multiple = spec.channel_multiple
    if multiple > 1 and multiple >= intermediate:
        raise PruneArgumentError(
            f"channel_multiple={multiple} leaves no MLP channel that can go: a layer has "
            f"{intermediate}; pass fewer"
        )
    remainder = intermediate % multiple
    most_channels = intermediate - multiple
    target = spec.sparsity * layer_params
    channels_for = lambda groups: (
        remainder
        + multiple
        * max(
            0,
            math.floor(
                ((target - groups * group_params) / channel_params - remainder) / multiple + 0.5
            ),
        )
    )
    savable = lambda groups: not _config_refusal(model.config, kv_heads - groups, group)
    if spec.head_fraction is not None:
        groups = most_groups = _fixed_groups(model.config, spec, kv_heads, group)
        if groups * group_params > target:
            raise PruneArgumentError(
                f"head_fraction={spec.head_fraction} removes {groups} KV groups, more than "
                f"sparsity={spec.sparsity} allows"
            )
    else:
        # all but one group at most; one group's heads divide the hidden size as all do
        most_groups = kv_heads - 1
        groups = min(math.floor(spec.sparsity * kv_heads), most_groups)
        while groups > 0 and (groups * group_params > target or not savable(groups)):
            groups -= 1
        if channels_for(groups) > most_channels:
            # the MLP alone cannot make up the rest: attention loses more than its share
            groups = next(
                (
                    g for g in range(groups + 1, most_groups + 1)
                    if g * group_params <= target and channels_for(g) <= most_channels
                    and savable(g)
                ),
                groups,
            )  # fmt: skip
    channels = channels_for(groups)
    kept = "one MLP channel" if multiple == 1 else f"{multiple} MLP channels"
    if channels > most_channels:
        most = (most_groups * group_params + most_channels * channel_params) / layer_params
        if spec.head_fraction is None and spec.sparsity < most:
            # between two plans: these groups with all but one channel, the next groups alone
            below = (groups * group_params + most_channels * channel_params) / layer_params
            above = next(g for g in range(groups + 1, most_groups + 1) if savable(g))
            # with a remainder, every plan also takes the channels over a whole multiple
            alone = f"and the {remainder} channels beyond a multiple of {multiple}"
            alone = alone if remainder else "alone"
            least = (above * group_params + remainder * channel_params) / layer_params
            raise PruneArgumentError(
                f"sparsity={spec.sparsity} (structured) falls between two plans: {groups} KV "
                f"groups and all but {kept} per layer remove {below:.4f} of the "
                f"block parameters, {above} KV groups {alone} {least:.4f}; pass sparsity="
                f"{math.floor(below * 1000) / 1000:g} or less, or {rounded_up(least):g} or more"
            )
        raise PruneArgumentError(_out_of_reach(spec, most, kv_heads, most_groups, kept))
    if groups == 0 and channels == 0:
        unit = multiple * channel_params
        least = rounded_up(unit / (2 * layer_params))  # half a unit rounds up
        raise PruneArgumentError(
            f"sparsity={spec.sparsity} (structured) removes nothing: no KV group goes, and "
            f"{kept} per layer {'is' if multiple == 1 else 'are'} {unit / layer_params:.3g} "
            f"of the block parameters; pass sparsity={least:.3g} or more"
        )
    return StructuredPlan(
        len(layers), heads, kv_heads, head_dim, intermediate, groups, channels,
        group_params, channel_params, layer_params, multiple,
    )  # fmt: skip


def _fixed_groups(config, spec: PruneSpec, kv_heads: int, group: int) -> int:
    """The KV groups ``spec.head_fraction`` removes per layer (rounded half up), checked
    to leave one and a head count transformers saves."""
    groups = math.floor(spec.head_fraction * kv_heads + 0.5)
    if groups >= kv_heads:
        raise PruneArgumentError(
            f"head_fraction={spec.head_fraction} removes all {kv_heads} KV groups"
        )
    refusal = _config_refusal(config, kv_heads - groups, group) if groups else None
    if refusal:
        raise PruneArgumentError(
            f"head_fraction={spec.head_fraction} leaves {(kv_heads - groups) * group} "
            f"attention heads, which transformers refuses to save: {refusal}"
        )
    return groups


def _out_of_reach(spec: PruneSpec, most: float, kv_heads: int, most_groups: int, kept: str) -> str:
    """Why ``spec.sparsity`` cannot be reached: at most ``most`` of the block parameters
    go, removing ``most_groups`` KV groups (all but one unless ``head_fraction`` fixed
    them) and all MLP channels but ``kept`` (one, or ``channel_multiple``) per layer."""
    reach = f"removes at most {most:.3f} of the block parameters"
    if spec.head_fraction is not None:
        return (
            f"sparsity={spec.sparsity} (structured) is out of reach with "
            f"head_fraction={spec.head_fraction}, which removes {most_groups} of {kv_heads} "
            f"KV groups per layer: keeping {kept} per layer {reach}"
        )
    return (
        f"sparsity={spec.sparsity} (structured) is out of reach: keeping one KV group and "
        f"{kept} per layer {reach}"
    )


def _config_refusal(config, kv_heads: int, group: int) -> str | None:
    """Why transformers would refuse to save ``config`` with ``kv_heads`` KV heads (and
    ``kv_heads * group`` query heads), or None. Llama and Gemma 2/3 configs insist that
    the hidden size be a multiple of the head count, even with an explicit head_dim."""
    trial = copy.deepcopy(config)
    trial.num_attention_heads, trial.num_key_value_heads = kv_heads * group, kv_heads
    validate = getattr(trial, "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except Exception as exc:  # transformers' validation error types differ between versions
        # the last line holds the reason, sometimes indented and prefixed "ValueError: "
        reason = str(exc).strip().splitlines()[-1].strip()
        return re.sub(r"^\w+(Error|Exception):\s*", "", reason) or type(exc).__name__
    return None
