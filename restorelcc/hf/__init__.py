"""Hugging Face integration: per-family descriptions and module swaps."""

from restorelcc import _lazy_attributes

# swap_attention's formats, and the fraction of zeros from which it counts a matrix as
# pruned (restorelcc.hf.swap). Here, so that the command line reads them without torch.
FORMATS = ("auto", "2:4", "bitmap")
MIN_SPARSITY = 0.1

# Public name -> module that defines it, imported on first use (torch-free import).
_LAZY_EXPORTS: dict[str, str] = {
    "swap_attention": "restorelcc.hf.swap",
    "unswap_attention": "restorelcc.hf.swap",
    "SwapReport": "restorelcc.hf.swap",
    "SwapError": "restorelcc.hf.swap_plan",
    "save_packed": "restorelcc.hf.packed_checkpoint",
    "load_packed": "restorelcc.hf.packed_checkpoint",
}

__all__ = ["FORMATS", "MIN_SPARSITY", *_LAZY_EXPORTS]

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY_EXPORTS)
