"""Fold ``o_proj`` input offsets into ``o_proj`` biases.

``o_proj`` is linear, so adding a constant ``c`` (``[H*d]``) to its input equals adding
``W_o @ c`` to its output. The bias is computed in fp32 (fp64 for an fp64 model) and
stored in the projection's bias (added to an existing one), in the model's dtype; the
weight is not touched, so the pruned weights stay bit-identical and exactly as sparse.

Folding changes the model in memory, not its config: a folded model saved with
``save_pretrained`` has ``o_proj`` biases that its config does not enable, which
transformers drops on loading. A folded model is saved with ``Restoration.export_merged``
(``restorelcc.lcc.adapter``), which also sets the config flag.
"""

from __future__ import annotations

import torch
from torch import nn

from restorelcc.hf.families import head_geometry, o_proj_of


def folded_bias(weight: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``W_o [hidden, H*d] @ offset [H*d]`` -> ``[hidden]``, in fp32 or the weight's dtype
    where that is wider (an fp64 model's fold is then exact)."""
    if weight.shape[1] != offset.shape[0]:
        raise ValueError(
            f"offset of {offset.shape[0]} does not fit o_proj input of {weight.shape[1]}"
        )
    dtype = torch.promote_types(weight.dtype, torch.float32)
    return weight.detach().to(dtype) @ offset.detach().to(weight.device, dtype)


@torch.no_grad()
def fold_offsets(model: nn.Module, offsets: torch.Tensor) -> None:
    """Add ``W_o(l) @ offsets[l]`` to every layer's ``o_proj`` bias, in place.

    ``offsets``: ``[layers, heads * head_dim]`` fp32 (zeros where nothing is added). Every
    layer gets a bias (zero where its offset is zero) so the model stays uniform, which is
    what a saved checkpoint with ``attention_bias`` needs.
    """
    g = head_geometry(model)
    if offsets.shape != (g.layers, g.heads * g.head_dim):
        raise ValueError(
            f"offsets must be [{g.layers}, {g.heads * g.head_dim}], got {tuple(offsets.shape)}"
        )
    for layer in range(g.layers):
        o_proj = o_proj_of(model, layer)
        bias = folded_bias(o_proj.weight, offsets[layer])
        if o_proj.bias is None:
            o_proj.bias = nn.Parameter(bias.to(o_proj.weight.dtype), requires_grad=False)
        else:
            o_proj.bias.copy_((o_proj.bias.to(bias.dtype) + bias).to(o_proj.bias.dtype))
