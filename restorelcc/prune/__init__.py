"""Pruning of decoder-block linears: magnitude, Wanda and SparseGPT; unstructured, N:M and
structured (attention KV groups + MLP channels). Entry point: ``prune_model``."""

from restorelcc.prune.api import prune_model
from restorelcc.prune.masks import Pattern, is_nm, parse_pattern
from restorelcc.prune.report import MatrixReport, PruneReport, matrix_report
from restorelcc.prune.validate import METHODS, PruneArgumentError

__all__ = [
    "METHODS",
    "MatrixReport",
    "Pattern",
    "PruneArgumentError",
    "PruneReport",
    "is_nm",
    "matrix_report",
    "parse_pattern",
    "prune_model",
]
