"""Hugging Face integration: per-family descriptions and module swaps."""

# swap_attention's formats, and the fraction of zeros from which it counts a matrix as
# pruned (restorelcc.hf.swap). Here, so that the command line reads them without torch.
FORMATS = ("auto", "2:4", "bitmap")
MIN_SPARSITY = 0.1
