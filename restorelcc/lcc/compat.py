"""Check that a pruned model can be restored against a dense one."""

from __future__ import annotations

from torch import nn

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import family_of, head_geometry


def check_compatible(dense: nn.Module, pruned: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` unless ``pruned`` is ``dense`` pruned: same family,
    head geometry, vocabulary and parameter names, the same shapes except that MLP
    intermediate channels may have been removed (structured channel pruning; RestoreLCC
    only compares attention heads, so narrower MLPs are fine).

    Structured pruning that removes attention heads is refused (the per-head correspondence
    RestoreLCC needs would have to be mapped).
    """
    if dense is pruned:
        raise ValueError("dense and pruned are the same model object; pass two models")
    dense_family, pruned_family = family_of(dense).model_type, family_of(pruned).model_type
    if dense_family != pruned_family:
        raise UnsupportedModelError(
            f"the pruned model is a {pruned_family} model but the dense one is {dense_family}"
        )
    dense_geo, pruned_geo = head_geometry(dense), head_geometry(pruned)
    if dense_geo != pruned_geo:
        raise UnsupportedModelError(
            f"the pruned model's attention ({pruned_geo}) differs from the dense model's "
            f"({dense_geo}); structured pruning that removes heads is not supported by restore"
        )
    dense_shapes = {n: tuple(p.shape) for n, p in dense.named_parameters()}
    pruned_shapes = {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    mlp = tuple(f".{linear}." for linear in family_of(dense).mlp_linears)
    for name in sorted(dense_shapes.keys() | pruned_shapes.keys()):
        a, b = dense_shapes.get(name), pruned_shapes.get(name)
        if a != b and not (a and b and any(m in name for m in mlp) and _narrower(a, b)):
            raise UnsupportedModelError(
                f"parameter {name} is {b or 'missing'} in the pruned model but {a or 'missing'} "
                "in the dense model; the pruned model must have the dense model's shapes"
            )


def _narrower(dense_shape: tuple[int, ...], pruned_shape: tuple[int, ...]) -> bool:
    """One dimension (the intermediate channels) smaller, every other equal."""
    if len(dense_shape) != len(pruned_shape):
        return False
    differ = [(a, b) for a, b in zip(dense_shape, pruned_shape, strict=True) if a != b]
    return len(differ) == 1 and 0 < differ[0][1] < differ[0][0]
