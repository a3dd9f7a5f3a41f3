"""What a pruning run did: per-matrix sparsity, N:M validity, structured shape changes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from restorelcc.hf.families import block_linear, decoder_layers, family_of
from restorelcc.prune.masks import Pattern, is_nm

# N:M patterns every report checks (what sparse kernels run); a requested one is added
CHECKED_NM = ((2, 4), (4, 8))
# The zeros in a weight from which a model reads as pruned already: real checkpoints hold
# ~0.05%, symmetric 4-bit quantization maps 11-16% of weights to 0, pruning 50% or more.
PRUNED_ZEROS = 0.25


def checked_patterns(requested: Pattern | None = None) -> tuple[tuple[int, int], ...]:
    """``CHECKED_NM`` plus ``requested`` when it is an N:M pattern not already there."""
    if requested is None or requested.kind != "nm" or (requested.n, requested.m) in CHECKED_NM:
        return CHECKED_NM
    return (*CHECKED_NM, (requested.n, requested.m))


def pruned_zeros(weight: torch.Tensor) -> float | None:
    """The fraction of zeros of ``weight`` where it is as sparse as a pruned one
    (``PRUNED_ZEROS`` or more); None where it has fewer, or no entries at all."""
    if weight.numel() == 0:
        return None
    zeros = 1 - int(torch.count_nonzero(weight.detach())) / weight.numel()
    return zeros if zeros >= PRUNED_ZEROS else None


def first_pruned_weight(model: torch.nn.Module) -> tuple[int, str, float] | None:
    """``(layer, linear name, fraction of zeros)`` of the first decoder-block linear weight
    of ``model``, in layer order, that ``pruned_zeros`` reads as pruned; None where none
    does (a dense model: every weight read)."""
    family = family_of(model)
    for layer, block in enumerate(decoder_layers(model)):
        for name in family.block_linears:
            zeros = pruned_zeros(block_linear(block, name).weight)
            if zeros is not None:
                return layer, name, zeros
    return None


def model_folder(model: torch.nn.Module) -> str:
    """`` (folder)``: the ``name_or_path`` that loading ``model`` from a folder sets, or
    ``""`` where it has none."""
    folder = str(getattr(model, "name_or_path", "") or "")
    return f" ({folder})" if folder else ""


@dataclass
class MatrixReport:
    """Sparsity of one weight matrix ``[out, in]``."""

    name: str
    shape: tuple[int, int]
    zeros: int
    sparsity: float
    row_zeros_min: int
    row_zeros_max: int
    nm: dict[str, bool]  # "2:4" -> every group of 4 inputs has at most 2 nonzeros


def matrix_report(
    name: str, weight: torch.Tensor, patterns: tuple[tuple[int, int], ...] = CHECKED_NM
) -> MatrixReport:
    """Zeros of ``weight`` ``[out, in]``, per row, and whether it is N:M for each
    ``(n, m)`` in ``patterns``."""
    zero = weight.detach() == 0
    per_row = zero.sum(dim=1)
    return MatrixReport(
        name=name,
        shape=(int(weight.shape[0]), int(weight.shape[1])),
        zeros=int(per_row.sum()),
        sparsity=float(zero.float().mean()),
        row_zeros_min=int(per_row.min()),
        row_zeros_max=int(per_row.max()),
        nm={f"{n}:{m}": is_nm(weight, n, m) for n, m in patterns},
    )


@dataclass
class PruneReport:
    """The outcome of ``prune_model``; ``to_dict()`` is its JSON form."""

    method: str
    pattern: str
    sparsity: float  # requested: fraction of weights (or, for 'heads', of parameters) removed
    matrices: list[MatrixReport]
    seconds: float
    # {"source", "origin", "seed", "nsamples", "seqlen", "chunk_size"} when used
    calibration: dict | None = None
    structured: dict | None = None  # removed heads / channels and parameter counts
    evaluation: dict | None = field(default=None)

    @property
    def overall_sparsity(self) -> float:
        """Zeros over all pruned matrices / their elements."""
        return overall_sparsity(self.matrices)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["overall_sparsity"] = self.overall_sparsity
        return out

    def summary_rows(self) -> list[dict]:
        """One row per linear name (q_proj, ...) aggregated over layers, for a table."""
        return summarize(self.matrices)


def overall_sparsity(matrices: list[MatrixReport]) -> float:
    """Zeros over all ``matrices`` / their elements."""
    total = sum(m.shape[0] * m.shape[1] for m in matrices)
    return sum(m.zeros for m in matrices) / max(total, 1)


def summarize(matrices: list[MatrixReport]) -> list[dict]:
    """One row per linear name (``layers.<i>.`` stripped) aggregated over layers."""
    groups: dict[str, list[MatrixReport]] = {}
    for m in matrices:
        groups.setdefault(m.name.split(".", 2)[-1], []).append(m)
    patterns = list(dict.fromkeys(key for m in matrices for key in m.nm))
    rows = []
    for name, ms in groups.items():
        elements = sum(m.shape[0] * m.shape[1] for m in ms)
        shapes = sorted({"x".join(map(str, m.shape)) for m in ms})
        rows.append(
            {
                "matrix": name,
                "layers": len(ms),
                "shape": ",".join(shapes),
                "sparsity": sum(m.zeros for m in ms) / max(elements, 1),
                "row_zeros": f"{min(m.row_zeros_min for m in ms)}-"
                f"{max(m.row_zeros_max for m in ms)}",
                **{key: all(m.nm.get(key, False) for m in ms) for key in patterns},
            }
        )
    return rows
