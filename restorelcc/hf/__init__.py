"""Hugging Face integration: per-family descriptions and module swaps."""
