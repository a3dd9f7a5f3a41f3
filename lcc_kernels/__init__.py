"""Fused sparse linear Triton kernels for the attention block of pruned models."""
