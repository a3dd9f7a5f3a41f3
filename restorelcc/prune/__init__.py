"""Pruning of decoder-block linears: magnitude, Wanda and SparseGPT; unstructured, N:M and
structured (attention KV groups + MLP channels). Entry point: ``prune_model``;
``check_config(config, check_spec(method, sparsity, pattern))`` makes its checks of the model
from its config alone, before the weights load."""

from restorelcc.prune.api import check_config, prune_model
from restorelcc.prune.masks import Pattern, is_nm, parse_pattern
from restorelcc.prune.report import MatrixReport, PruneReport, matrix_report
from restorelcc.prune.validate import METHODS, PruneArgumentError, PruneSpec, check_spec

__all__ = [
    "METHODS",
    "MatrixReport",
    "Pattern",
    "PruneArgumentError",
    "PruneReport",
    "PruneSpec",
    "check_config",
    "check_spec",
    "is_nm",
    "matrix_report",
    "parse_pattern",
    "prune_model",
]
