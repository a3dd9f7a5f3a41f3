"""A fingerprint of the pruned model a restoration belongs to.

It covers what the restoration depends on: the model family and head geometry, the
sparsity mask of every decoder-block linear, and the ``o_proj`` weights and biases (the
fold multiplies by ``W_o``; a bias already present, e.g. a restoration already folded in,
makes a different model). Weights are hashed after rounding to bf16, so the same
checkpoint loaded in fp32, bf16 or fp16 gives the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

from restorelcc.hf.families import block_linear, decoder_layers, family_of, head_geometry

FINGERPRINT_VERSION = 1


def _bf16_bytes(tensor: torch.Tensor) -> bytes:
    return (
        tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    )


def _mask_bytes(tensor: torch.Tensor) -> bytes:
    return np.packbits((tensor.detach() != 0).cpu().numpy().reshape(-1)).tobytes()


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """``sha256`` hex digest (prefixed with the scheme version) of the pruned model."""
    family = family_of(model)
    g = head_geometry(model)
    digest = hashlib.sha256()
    header = {
        "version": FINGERPRINT_VERSION,
        "model_type": family.model_type,
        "layers": g.layers,
        "heads": g.heads,
        "kv_heads": g.kv_heads,
        "head_dim": g.head_dim,
        "hidden_size": g.hidden_size,
        "vocab_size": model.get_input_embeddings().num_embeddings,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    o_name = f"{family.attention}.{family.o_proj}"
    for index, layer in enumerate(decoder_layers(model)):
        for name in family.block_linears:
            linear = block_linear(layer, name)
            digest.update(f"{index}.{name}:{tuple(linear.weight.shape)}".encode())
            digest.update(_mask_bytes(linear.weight))
            if name == o_name:
                digest.update(_bf16_bytes(linear.weight))
                if linear.bias is not None and bool(linear.bias.any()):  # zero bias == none
                    digest.update(b"bias")
                    digest.update(_bf16_bytes(linear.bias))
    return f"v{FINGERPRINT_VERSION}:{digest.hexdigest()}"
