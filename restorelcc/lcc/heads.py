"""Add per-head vectors to the input of ``o_proj``: the unfolded form of a restoration.

``o_proj_input_offsets`` (on ``o_proj_input_hooks``) is the one hook utility used by
training, by the baselines and by any capture that needs a compensated model.
``HeadCompensation`` holds RestoreLCC's trainable parameters: for each selected head
``(l, h)``, ``c = V^T beta + b`` (``V^T``'s rows are the head's frozen directions), added
to ``z(l, h)`` at every token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from restorelcc.hf.families import HeadGeometry, head_geometry, o_proj_of

INIT_STD = 1e-3  # beta, b ~ N(0, 1e-3), as the paper


@contextlib.contextmanager
def o_proj_input_hooks(
    model: nn.Module, transform: Callable[[int, torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """While active, layer ``l``'s ``o_proj`` input ``x [..., H*d]`` becomes
    ``transform(l, x)`` (``None`` leaves the layer alone).

    ``transform`` runs on every forward, so what it returns may carry gradient to
    trainable parameters. The hooks are removed on exit, also on error.
    """
    handles = []

    def hook_for(layer: int):
        def hook(module, args):
            y = transform(layer, args[0])
            return None if y is None else (y, *args[1:])

        return hook

    try:
        for layer in range(head_geometry(model).layers):
            handles.append(o_proj_of(model, layer).register_forward_pre_hook(hook_for(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def o_proj_input_offsets(model: nn.Module, offset: Callable[[int], torch.Tensor | None]):
    """Context manager: layer ``l``'s ``o_proj`` input ``x [..., H*d]`` becomes
    ``x + offset(l)`` (``[H*d]``, cast to ``x``'s dtype; ``None`` leaves the layer alone)."""

    def add(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        delta = offset(layer)
        return None if delta is None else x + delta.to(device=x.device, dtype=x.dtype)

    return o_proj_input_hooks(model, add)


def check_heads(heads: torch.Tensor, geometry: HeadGeometry) -> torch.Tensor:
    """``heads [S, 2]`` (layer, head) rows of an integer dtype, in range and without
    repeats; returns it as long. Float indices are refused, not truncated."""
    heads = torch.as_tensor(heads)
    if heads.dim() != 2 or heads.shape[1] != 2 or heads.shape[0] == 0:
        raise ValueError(
            f"heads must be a non-empty [S, 2] (layer, head) table, got {tuple(heads.shape)}"
        )
    if heads.dtype.is_floating_point or heads.dtype.is_complex or heads.dtype == torch.bool:
        raise ValueError(f"heads must hold integer (layer, head) indices, got {heads.dtype}")
    heads = heads.long()
    layer, head = heads[:, 0], heads[:, 1]
    bad = (layer < 0) | (layer >= geometry.layers) | (head < 0) | (head >= geometry.heads)
    if bad.any():
        raise ValueError(
            f"head {heads[bad][0].tolist()} is out of range for {geometry.layers} layers x "
            f"{geometry.heads} heads"
        )
    flat = layer * geometry.heads + head
    if flat.unique().numel() != flat.numel():
        raise ValueError("heads contains a (layer, head) twice")
    return heads


def scatter_heads(
    geometry: HeadGeometry, heads: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """Per-head vectors ``[S, d]`` -> per-layer ``o_proj`` input offsets ``[L, H*d]``
    (zeros for heads not listed). Differentiable in ``vectors``."""
    flat = heads[:, 0] * geometry.heads + heads[:, 1]
    out = torch.zeros(
        geometry.total_heads, geometry.head_dim, dtype=vectors.dtype, device=vectors.device
    )
    out = out.index_add(0, flat.to(vectors.device), vectors)
    return out.reshape(geometry.layers, geometry.heads * geometry.head_dim)


def compensation_vectors(
    beta: torch.Tensor, directions: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """``c [S, d] = V^T beta + b``: ``beta, b [S, d]``, ``directions [S, d, d]`` (rows of
    ``V^T``), i.e. ``sum_i beta_i V^T[i] + b`` per head."""
    return torch.einsum("si,sid->sd", beta, directions) + b


class HeadCompensation(nn.Module):
    """Trainable ``c(l, h) = V(l, h)^T beta + b`` for the selected heads, in fp32.

    ``heads [S, 2]``, ``directions [S, d, d]`` (rows of ``V^T``). ``beta`` and ``b`` are
    ``[S, d]`` fp32 parameters, initialised N(0, ``init_std``) from ``seed`` (a zero
    ``init_std`` starts at zero). These are the master copies: the hook casts ``c`` to the
    model's dtype on the way in, and gradients flow back in fp32.
    """

    def __init__(
        self,
        geometry: HeadGeometry,
        heads: torch.Tensor,
        directions: torch.Tensor,
        init_std: float = INIT_STD,
        seed: int = 0,
    ):
        super().__init__()
        self.geometry = geometry
        heads = check_heads(heads, geometry)
        d = geometry.head_dim
        if directions.shape != (heads.shape[0], d, d):
            raise ValueError(
                f"directions must be [{heads.shape[0]}, {d}, {d}], got {tuple(directions.shape)}"
            )
        self.register_buffer("heads", heads)
        self.register_buffer("directions", directions.detach().float().clone())
        generator = torch.Generator().manual_seed(seed)
        self.beta = nn.Parameter(torch.randn(heads.shape[0], d, generator=generator) * init_std)
        self.b = nn.Parameter(torch.randn(heads.shape[0], d, generator=generator) * init_std)
        # Rows of `heads` grouped by layer: layer l's are head_order[bounds[l]:bounds[l+1]].
        # A buffer, so the indices follow the module to its device (no copy per forward).
        order = torch.argsort(heads[:, 0], stable=True)
        self.register_buffer("head_order", order, persistent=False)
        counts = torch.bincount(heads[:, 0], minlength=geometry.layers)
        self._layer_bounds = [0, *torch.cumsum(counts, 0).tolist()]

    def per_head(self) -> torch.Tensor:
        """``c [S, d]`` = ``beta @ V^T + b`` (``sum_i beta_i V^T[i] + b``)."""
        return compensation_vectors(self.beta, self.directions, self.b)

    def layer_offsets(self) -> torch.Tensor:
        """``[L, H*d]`` fp32: what is added to every layer's ``o_proj`` input."""
        return scatter_heads(self.geometry, self.heads, self.per_head())

    def layer_offset(self, layer: int) -> torch.Tensor | None:
        """``[H*d]`` for one layer (``None`` if it has no selected head)."""
        start, end = self._layer_bounds[layer], self._layer_bounds[layer + 1]
        if start == end:
            return None
        rows = self.head_order[start:end]
        g = self.geometry
        c = compensation_vectors(self.beta[rows], self.directions[rows], self.b[rows])
        out = torch.zeros(g.heads, g.head_dim, dtype=c.dtype, device=c.device)
        return out.index_add(0, self.heads[rows, 1], c).reshape(-1)

    def attached(self, model: nn.Module):
        """Context manager: the model runs with this compensation added (unfolded)."""
        return o_proj_input_offsets(model, self.layer_offset)

    @property
    def trainable_parameters(self) -> int:
        return self.beta.numel() + self.b.numel()
