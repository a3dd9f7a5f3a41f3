"""RestoreLCC, one step per file.

capture -> components -> probing -> (select) -> train -> fold / adapter. The one call is
``restore(dense, pruned, tokenizer, pairs, RestoreConfig(...)) -> Restoration`` (or its two
steps, ``plan_heads`` then ``train_heads``, which need the dense model for the first only); a
``Restoration`` folds into the pruned model (``.fold``), runs unfolded (``.attached``),
saves as a small adapter (``.save`` / ``Restoration.load``) or exports a merged checkpoint
that plain ``transformers`` loads (``.export_merged``).
"""

from restorelcc.lcc.adapter import export_merged, load_adapter, save_adapter
from restorelcc.lcc.capture import (
    ProbeActivations,
    capture_last_token,
    capture_probe_activations,
    capture_with_continuations,
)
from restorelcc.lcc.compat import check_compatible, match_heads
from restorelcc.lcc.components import Components, lost_components
from restorelcc.lcc.config import RestoreConfig
from restorelcc.lcc.fingerprint import model_fingerprint
from restorelcc.lcc.fold import fold_offsets
from restorelcc.lcc.heads import HeadCompensation, o_proj_input_offsets
from restorelcc.lcc.negatives import mine_negatives
from restorelcc.lcc.pipeline import HeadPlan, plan_heads, restore, train_heads
from restorelcc.lcc.probing import head_count, random_heads, score_heads, select_heads
from restorelcc.lcc.restoration import AdapterError, AdapterMismatchError, Restoration
from restorelcc.lcc.train import TrainConfig, TrainResult, train_response_lm

__all__ = [
    "AdapterError",
    "AdapterMismatchError",
    "Components",
    "HeadCompensation",
    "HeadPlan",
    "ProbeActivations",
    "RestoreConfig",
    "Restoration",
    "TrainConfig",
    "TrainResult",
    "capture_last_token",
    "capture_probe_activations",
    "capture_with_continuations",
    "check_compatible",
    "export_merged",
    "fold_offsets",
    "head_count",
    "load_adapter",
    "lost_components",
    "match_heads",
    "mine_negatives",
    "model_fingerprint",
    "o_proj_input_offsets",
    "plan_heads",
    "random_heads",
    "restore",
    "save_adapter",
    "score_heads",
    "select_heads",
    "train_heads",
    "train_response_lm",
]
