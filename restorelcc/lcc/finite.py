"""Finiteness checks for per-head activations: one reduction when all is well, an error that
names the model, layer, head and sample when not.

A single inf (e.g. an fp16 overflow in one head) otherwise turns into NaN directions, NaN
compensations, probe scores of 0.5 and a NaN training loss, none of which fails by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from restorelcc.errors import NonFiniteError

LOW_PRECISION_HINT = (
    "fp16 overflows easily (its largest value is 65504): load the models in bfloat16 or float32"
)


def check_finite_heads(acts: torch.Tensor, what: str, samples: Sequence[int] | None = None) -> None:
    """Raise ``NonFiniteError`` unless every value of ``acts [N, L, H, d]`` is finite.

    ``what`` names the source (``"the pruned model's o_proj input"``); ``samples`` gives the
    dataset index of each of the ``N`` rows, for the message (default ``0..N-1``). Cost: see
    ``all_finite``.
    """
    if all_finite(acts):
        return
    raise NonFiniteError(describe_non_finite(acts, what, samples))


def all_finite(values: torch.Tensor) -> bool:
    """Whether every element is finite. Cost: one sum over ``values`` (a host sync on a GPU),
    60x cheaper on a CPU than ``isfinite(values).all()``, which runs only if the sum is not
    finite (inf/NaN propagate through a sum; a sum of finite values can also overflow)."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def describe_non_finite(acts: torch.Tensor, what: str, samples: Sequence[int] | None = None) -> str:
    """Where ``acts [N, L, H, d]`` holds inf/NaN: the first layer affected (later layers
    inherit the values), its heads, the first sample, and a hint. Only for error paths."""
    bad = ~torch.isfinite(acts)
    per_head = bad.any(dim=3).any(dim=0)  # [L, H]
    layer = int(per_head.any(dim=1).nonzero()[0])
    heads = per_head[layer].nonzero().flatten().tolist()
    row = int(bad[:, layer, heads[0]].any(dim=1).nonzero()[0])
    sample = samples[row] if samples is not None else row
    nan = int(torch.isnan(acts).sum())
    inf = int(bad.sum()) - nan
    shown = ", ".join(map(str, heads[:8])) + (", ..." if len(heads) > 8 else "")
    return (
        f"non-finite values ({inf} inf, {nan} nan) in {what}: first at layer {layer}, "
        f"head{'s' if len(heads) > 1 else ''} {shown} (sample {sample}); "
        f"{LOW_PRECISION_HINT}"
    )
