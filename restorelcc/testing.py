"""Tiny random models and a byte-level tokenizer, built in code, for tests and benchmarks.

Nothing here touches the network or the model cache. Shapes are chosen so that bugs that
confuse layers with heads, or query heads with key/value heads, cannot hide.
"""

from __future__ import annotations

from pathlib import Path

import torch

# name -> (model_type, layers, attention heads, key/value heads, head_dim, hidden size)
TINY_SHAPES: dict[str, tuple[str, int, int, int, int, int]] = {
    "llama-mha": ("llama", 2, 4, 4, 16, 64),
    "llama-gqa": ("llama", 2, 6, 2, 16, 96),
    # layers != heads, one KV head, heads * head_dim != hidden: catches index mix-ups
    "llama-3x5": ("llama", 3, 5, 1, 16, 60),
    "qwen2-gqa": ("qwen2", 2, 4, 2, 16, 64),
    "mistral-gqa": ("mistral", 2, 4, 2, 16, 64),
    "qwen3-gqa": ("qwen3", 2, 4, 2, 16, 64),
    "gemma-mha": ("gemma", 2, 4, 4, 16, 48),
    "gemma2-gqa": ("gemma2", 2, 4, 2, 16, 48),
    "gemma3-gqa": ("gemma3_text", 2, 4, 2, 16, 48),
    "olmo-mha": ("olmo", 2, 4, 4, 16, 64),
    "olmo2-gqa": ("olmo2", 2, 4, 2, 16, 64),
    "olmo3-gqa": ("olmo3", 2, 4, 2, 16, 64),
    "smollm3-gqa": ("smollm3", 2, 4, 2, 16, 64),
    "granite-gqa": ("granite", 2, 4, 2, 16, 64),
    "cohere-gqa": ("cohere", 2, 4, 2, 16, 64),
    "cohere2-gqa": ("cohere2", 2, 4, 2, 16, 64),
    "exaone4-gqa": ("exaone4", 2, 4, 2, 16, 64),
    "ernie4_5-gqa": ("ernie4_5", 2, 4, 2, 16, 64),
    "seed_oss-gqa": ("seed_oss", 2, 4, 2, 16, 64),
}


def byte_tokenizer():
    """A byte-level tokenizer (259 tokens: 256 bytes + bos/eos/pad), right padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.padding_side = "right"
    return tokenizer


def tiny_config(name: str = "llama-gqa", vocab_size: int = 259, **overrides):
    """A ``transformers`` config for one of ``TINY_SHAPES``."""
    from transformers import AutoConfig

    if name not in TINY_SHAPES:
        raise ValueError(f"unknown tiny model {name!r}; choose from {sorted(TINY_SHAPES)}")
    model_type, layers, heads, kv_heads, head_dim, hidden = TINY_SHAPES[name]
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    fields.update(overrides)
    return AutoConfig.for_model(model_type, **fields)


def tiny_model(name: str = "llama-gqa", seed: int = 0, **overrides):
    """A randomly initialised causal LM in eval mode, fp32, deterministic for ``seed``."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(name, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Default init is tiny (std 0.02): widen it so pruning visibly changes outputs.
        for param in model.parameters():
            if param.dim() == 2:
                torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
    return model.eval()


def save_checkpoint(model, path: str | Path) -> Path:
    """``model`` and the byte tokenizer saved in the folder ``path`` (the layout the CLI
    loads); returns ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu")  # fmt: skip


def synthetic_pairs(n: int = 24) -> list:
    """``n`` Alpaca-template instruction pairs (``InstructionPair``) naming words of
    ``WORDS``: training data for tiny models, no data wheel needed."""
    from restorelcc.data import InstructionPair

    return [
        InstructionPair(
            f"### Instruction:\nName word {i} of the list.\n\n### Response:",
            f"\n{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]}",
        )
        for i in range(n)
    ]


class ClosedPipe:
    """A standard output whose reader has gone (``| head``): every write fails as a closed
    pipe's does, at once, as an unbuffered one would."""

    def write(self, text):
        import errno

        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        pass
