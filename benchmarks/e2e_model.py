"""The model bench_e2e.py times: its sizes (Setup, from the command line), a randomly
initialised Llama-3-8B-shaped causal LM with an o_proj bias, its block linears, and their
magnitude pruning to a variant's pattern."""

from __future__ import annotations

from dataclasses import dataclass

# Llama-3-8B, but few layers and a smaller vocabulary, so that attention is not hidden
# behind a 1 GB lm_head in a 4-layer model.
LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=500000.0,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class Setup:
    """What to build and time."""

    layers: int
    vocab: int
    mlp: int  # intermediate size (14336 in Llama-3-8B; smaller makes attention weigh more)
    context: int  # tokens already in the KV cache at a decode step
    decode_batches: tuple[int, ...]
    prefill_tokens: tuple[int, ...]
    check_tokens: int  # prompt length of the check of each swapped variant
    rep_ms: int
    smoke: bool


def setup_for(args) -> Setup:
    if args.smoke:
        return Setup(2, 259, 0, 8, (1, 2), (12,), 6, 1, True)
    return Setup(
        args.layers,
        args.vocab,
        args.mlp,
        args.context,
        tuple(args.batches),
        tuple(args.prefill),
        32,
        100,
        False,
    )


def build_model(setup: Setup, device, dtype):
    """A randomly initialised causal LM in eval mode on ``device``, with an o_proj bias
    in every layer (what a folded restoration adds)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if setup.smoke:
        from restorelcc.testing import tiny_model

        model = tiny_model("llama-gqa").to(device, dtype)
    else:
        config = AutoConfig.for_model(
            "llama",
            num_hidden_layers=setup.layers,
            vocab_size=setup.vocab,
            **dict(LLAMA3_8B, intermediate_size=setup.mlp),
        )
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    for (_, name), linear in block_linears(model).items():
        if name.endswith(".o_proj"):
            bias = 0.02 * torch.randn(linear.out_features, device=device, dtype=dtype)
            linear.bias = torch.nn.Parameter(bias)
    return model


def block_linears(model) -> dict[tuple[int, str], object]:
    """(layer, name in the block: "self_attn.q_proj"... "mlp.down_proj") -> that
    nn.Linear, for the attention's and the MLP's projections of each block."""
    from restorelcc.hf.families import block_linear, decoder_layers, family_of

    names = family_of(model).block_linears
    return {
        (i, name): block_linear(block, name)
        for i, block in enumerate(decoder_layers(model))
        for name in names
    }


def prune_blocks(model, originals: dict, pattern: str, sparsity: float, mlp: bool) -> None:
    """Reset every block linear to ``originals``, then zero the smallest-magnitude weights
    of q/k/v/o (with ``mlp``, also of gate/up/down)."""
    from restorelcc.hf.families import family_of
    from restorelcc.prune.magnitude import magnitude_mask
    from restorelcc.prune.masks import parse_pattern

    family = family_of(model)
    pruned = family.block_linears if mlp else family.attention_linears
    for key, linear in block_linears(model).items():
        weight = linear.weight.data
        weight.copy_(originals[key])
        if key[1] in pruned:
            weight.masked_fill_(magnitude_mask(weight, sparsity, parse_pattern(pattern)), 0)
