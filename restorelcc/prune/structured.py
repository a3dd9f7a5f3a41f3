"""Structured pruning: remove whole key/value groups of attention heads and MLP channels.

Every layer loses the same number of KV groups (one key/value head with all the query
heads that read it) and the same number of MLP intermediate channels, so the result is an
ordinary config (fewer ``num_attention_heads`` / ``num_key_value_heads``, smaller
``intermediate_size``, same ``head_dim``) that ``from_pretrained`` reloads. Which groups
and channels go is decided per layer by their importance, the energy they feed into the
output projection: ``sum_j ||W_out[:, j]||^2 * ||X_j||^2`` over their input columns ``j`` of
``o_proj`` / ``down_proj`` (``wanda``; ``X`` from calibration inputs propagated through the
already-pruned layers), or ``sum_j ||W_out[:, j]||^2`` (``magnitude``, no data).

How many go is planned from the shapes alone (``structured_plan``).

This is not the paper's structured baseline, SlimGPT, which also updates the weights that
remain to compensate for what goes (Optimal Brain Surgeon): here the kept weights are left
as they are (no compensation), so figures from this removal are not SlimGPT's.

Removal is exact: the pruned model computes what the dense model computes with the
group's ``o_proj`` columns (and a channel's ``down_proj`` column) zeroed, which is what the
importance score measures. The exception is families whose q/k norm spans the whole
projection (``Family.qk_norm == "projection"``: OLMo 2 and 3): there queries and keys are
RMS-normalised over all heads together, so after removal the kept heads are normalised
over fewer dimensions, their queries and keys change scale token by token, and so do their
attention patterns. No weight edit can undo that (the scale depends on the removed heads'
activations). Measured on the tiny test OLMo 2 / OLMo 3 (1 of 2 KV groups, 2 of 4 query
heads removed), the first block's attention output differs from zeroing the heads by 9% /
10% (relative norm; tests/prune/test_prune_structured_qk_norm.py). Such runs warn and say
so in the report (``kept_heads_renormalised``, ``note``); ``head_fraction=0`` avoids it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from restorelcc.hf.families import Family, block_linear, decoder_layers
from restorelcc.prune.calibrate import collect_input_stats, walk_blocks
from restorelcc.prune.structured_plan import StructuredPlan
from restorelcc.prune.validate import PruneSpec


def _keep_rows(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[index].clone(), linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[index].clone(), linear.bias.requires_grad)
    linear.out_features = int(index.numel())


def _keep_norm_rows(norm: nn.Module, index: torch.Tensor) -> None:
    for name, param in list(norm.named_parameters(recurse=False)):
        setattr(norm, name, nn.Parameter(param.data[index].clone(), param.requires_grad))


def _shrink_qk_norms(attention: nn.Module, family: Family, keep: dict[str, torch.Tensor]) -> None:
    """Cut q/k norms whose weights span the heads (``Family.qk_norm``) to the kept heads.

    ``keep`` maps "head" and "dim" to the kept query heads / their columns, "kv_head" and
    "kv_dim" to the kept key/value heads / theirs.
    """
    if family.qk_norm not in ("heads", "projection"):
        return
    unit = "head" if family.qk_norm == "heads" else "dim"
    for name, index in ((family.q_norm, keep[unit]), (family.k_norm, keep[f"kv_{unit}"])):
        norm = getattr(attention, name, None)
        if norm is not None:  # absent where a config turns the norm off (Cohere)
            _keep_norm_rows(norm, index)


def _keep_columns(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, index].clone(), linear.weight.requires_grad)
    linear.in_features = int(index.numel())


def _column_energy(weight: torch.Tensor, input_sumsq: torch.Tensor | None) -> torch.Tensor:
    """``||W[:, j]||^2`` (times ``||X_j||^2`` when given), float64 ``[in]``."""
    energy = weight.detach().double().square().sum(dim=0)
    return energy if input_sumsq is None else energy * input_sumsq.double()


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the ``count`` lowest ``scores``."""
    return torch.sort(torch.topk(scores, count, largest=False).indices).values


def _shrink_block(
    block: nn.Module,
    family: Family,
    plan: StructuredPlan,
    o_sumsq: torch.Tensor | None,
    down_sumsq: torch.Tensor | None,
) -> dict:
    """Remove the least important KV groups and channels of one block; returns what went."""
    attn, mlp = family.attention, family.mlp
    q, k, v, o = (
        block_linear(block, f"{attn}.{n}")
        for n in (family.q_proj, family.k_proj, family.v_proj, family.o_proj)
    )
    gate, up, down = (
        block_linear(block, f"{mlp}.{n}")
        for n in (family.gate_proj, family.up_proj, family.down_proj)
    )
    group, hd = plan.heads // plan.kv_heads, plan.head_dim
    # query head h reads KV head h // group (transformers' repeat_kv order)
    head_energy = _column_energy(o.weight, o_sumsq).reshape(plan.heads, hd).sum(dim=1)
    group_energy = head_energy.reshape(plan.kv_heads, group).sum(dim=1)
    removed_kv = _lowest(group_energy, plan.kv_groups_removed).cpu()
    # Index tensors live on the CPU: they index the weights on any device.
    gone_kv = set(removed_kv.tolist())
    keep_kv = torch.tensor([g for g in range(plan.kv_heads) if g not in gone_kv])
    keep_heads = (keep_kv[:, None] * group + torch.arange(group)).reshape(-1)
    keep_head_dims = (keep_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
    keep_kv_dims = (keep_kv[:, None] * hd + torch.arange(hd)).reshape(-1)
    _keep_rows(q, keep_head_dims)
    _keep_rows(k, keep_kv_dims)
    _keep_rows(v, keep_kv_dims)
    _keep_columns(o, keep_head_dims)
    kept = {"head": keep_heads, "dim": keep_head_dims, "kv_head": keep_kv, "kv_dim": keep_kv_dims}
    _shrink_qk_norms(block.get_submodule(attn), family, kept)

    channel_energy = _column_energy(down.weight, down_sumsq)
    removed_channels = _lowest(channel_energy, plan.channels_removed).cpu()
    keep = torch.ones(plan.intermediate, dtype=torch.bool)
    keep[removed_channels] = False
    keep_channels = keep.nonzero().squeeze(1)
    _keep_rows(gate, keep_channels)
    _keep_rows(up, keep_channels)
    _keep_columns(down, keep_channels)
    if hasattr(block.get_submodule(mlp), "intermediate_size"):
        block.get_submodule(mlp).intermediate_size = int(keep_channels.numel())
    kept_heads = set(keep_heads.tolist())
    removed_heads = [h for h in range(plan.heads) if h not in kept_heads]
    return {
        "kv_heads": removed_kv.tolist(),
        "heads": removed_heads,
        "channels": int(removed_channels.numel()),
    }


def _update_config(model: nn.Module, plan: StructuredPlan) -> None:
    kv = plan.kv_heads - plan.kv_groups_removed
    config = model.config
    config.num_attention_heads = kv * (plan.heads // plan.kv_heads)
    config.num_key_value_heads = kv
    config.head_dim = plan.head_dim
    config.intermediate_size = plan.intermediate - plan.channels_removed


def renormalisation_note(family: Family, plan: StructuredPlan) -> str | None:
    """Why removing heads changes the kept ones on this family, or None where it does not."""
    if family.qk_norm != "projection" or plan.kv_groups_removed == 0:
        return None
    return (
        f"{family.model_type} normalises queries and keys over the whole projection: after "
        f"removing {plan.kv_groups_removed} of {plan.kv_heads} KV groups per layer the kept "
        "heads' q/k are normalised over fewer dimensions, so their scale and attention "
        "patterns change (removal is not the same as zeroing the heads, unlike other "
        "families); pass head_fraction=0 (--head-fraction 0) to remove MLP channels only"
    )


@torch.no_grad()
def prune_structured(
    model: nn.Module,
    family: Family,
    spec: PruneSpec,
    plan: StructuredPlan,
    tokens: torch.Tensor | None,
    chunk_size: int = 8,
    progress: bool = True,
) -> dict:
    """Apply ``plan`` to ``model`` in place and update its config; returns the report part
    (with ``renormalisation_note`` as ``note``; ``prune_model`` warns it)."""
    note = renormalisation_note(family, plan)
    model_params_before = sum(p.numel() for p in model.parameters())
    o_name = f"{family.attention}.{family.o_proj}"
    down_name = f"{family.mlp}.{family.down_proj}"
    removed: dict[int, dict] = {}
    if spec.method == "wanda":
        for step in walk_blocks(model, tokens, chunk_size, "structured wanda", progress):
            names = (o_name, down_name)
            with collect_input_stats(step.block, family, names, where=step.name) as stats:
                step.forward()
            o_sumsq, down_sumsq = stats[o_name].sumsq, stats[down_name].sumsq
            removed[step.index] = _shrink_block(step.block, family, plan, o_sumsq, down_sumsq)
    else:
        from tqdm.auto import tqdm

        layers = decoder_layers(model)
        bar = tqdm(
            range(len(layers)), desc="structured magnitude", unit="layer", disable=not progress
        )
        for index in bar:
            removed[index] = _shrink_block(layers[index], family, plan, None, None)
    _update_config(model, plan)
    model_params_after = sum(p.numel() for p in model.parameters())
    return {
        "plan": asdict(plan),
        "heads": [plan.heads, model.config.num_attention_heads],
        "kv_heads": [plan.kv_heads, model.config.num_key_value_heads],
        "intermediate_size": [plan.intermediate, model.config.intermediate_size],
        "removed_params": plan.removed_params,
        "removed_fraction_of_blocks": plan.removed_fraction,
        "model_params": [model_params_before, model_params_after],
        "removed_fraction_of_model": 1 - model_params_after / model_params_before,
        "removed_per_layer": removed,
        "kept_heads_renormalised": note is not None,
        "note": note,
    }
