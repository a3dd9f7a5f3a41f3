"""RestoreLCC: restore pruned LLMs by lost-component compensation."""

import importlib

# Public name -> module that defines it, imported on first use (keeps `import restorelcc`
# free of torch / transformers imports).
_LAZY_EXPORTS: dict[str, str] = {
    "load_model": "restorelcc.assets",
    "prune_model": "restorelcc.prune",
    "evaluate_model": "restorelcc.evaluate",
    "instruction_pairs": "restorelcc.data",
    "calibration_batches": "restorelcc.data",
    "restore": "restorelcc.lcc",
    "RestoreConfig": "restorelcc.lcc",
    "TrainConfig": "restorelcc.lcc",
    "Restoration": "restorelcc.lcc",
    "swap_attention": "restorelcc.hf.swap",
    "unswap_attention": "restorelcc.hf.swap",
    "SwapReport": "restorelcc.hf.swap",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'restorelcc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
