"""RestoreLCC: restore pruned LLMs by lost-component compensation."""

import importlib
import sys

from restorelcc import errors as _errors  # torch-free


def _lazy_attributes(module_name: str, exports: dict[str, str]):
    """A module's ``__getattr__`` and ``__dir__`` that import each of ``exports`` (public
    name -> module that defines it) on first use, so that importing the module imports
    neither torch nor transformers."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | set(exports))

    return __getattr__, __dir__


_LAZY_EXPORTS: dict[str, str] = {
    "load_model": "restorelcc.loading",
    "prune_model": "restorelcc.prune",
    "evaluate_model": "restorelcc.evaluate",
    "instruction_pairs": "restorelcc.data",
    "calibration_batches": "restorelcc.data",
    "restore": "restorelcc.lcc",
    "plan_heads": "restorelcc.lcc",
    "train_heads": "restorelcc.lcc",
    "HeadPlan": "restorelcc.lcc",
    "RestoreConfig": "restorelcc.lcc",
    "TrainConfig": "restorelcc.lcc",
    "Restoration": "restorelcc.lcc",
    # restorelcc.hf's own lazy exports say where the swap's names are defined
    "swap_attention": "restorelcc.hf",
    "unswap_attention": "restorelcc.hf",
    "SwapReport": "restorelcc.hf",
    "save_packed": "restorelcc.hf",
    "load_packed": "restorelcc.hf",
    # the errors a caller catches that are defined beside what raises them; those of
    # restorelcc.errors (RestoreLCCError, the base of all, and the rest) are added below
    "CheckpointError": "restorelcc.loading",
    "AdapterError": "restorelcc.lcc",
    "AdapterMismatchError": "restorelcc.lcc",
    "SwapError": "restorelcc.hf",
    "PruneArgumentError": "restorelcc.prune",
    "OutputPathError": "restorelcc.io",
}
_LAZY_EXPORTS.update(
    (name, _errors.__name__)
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, _errors.RestoreLCCError)
)

__all__ = list(_LAZY_EXPORTS)

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY_EXPORTS)
