"""What a pruning run did: per-matrix sparsity, N:M validity, structured shape changes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from restorelcc.prune.masks import Pattern, is_nm

# N:M patterns every report checks (what sparse kernels run); a requested one is added
CHECKED_NM = ((2, 4), (4, 8))


def checked_patterns(requested: Pattern | None = None) -> tuple[tuple[int, int], ...]:
    """``CHECKED_NM`` plus ``requested`` when it is an N:M pattern not already there."""
    if requested is None or requested.kind != "nm" or (requested.n, requested.m) in CHECKED_NM:
        return CHECKED_NM
    return (*CHECKED_NM, (requested.n, requested.m))


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
    calibration: dict | None = None  # {"source", "nsamples", "seqlen"} when used
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
