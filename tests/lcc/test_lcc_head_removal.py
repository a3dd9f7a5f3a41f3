"""Restoring a model whose structured pruning removed whole attention heads (SlimGPT-like):
the pruned heads are paired with the dense heads they came from."""

import copy

import pytest
import torch

from restorelcc.baselines import training_free
from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import decoder_layers, head_geometry
from restorelcc.lcc import RestoreConfig, TrainConfig, check_compatible, restore
from restorelcc.lcc.capture import capture_last_token, capture_probe_activations
from restorelcc.lcc.compat import to_pruned_heads
from restorelcc.lcc.tokens import encode_pair, encode_probe_set
from restorelcc.prune import prune_model
from restorelcc.testing import synthetic_pairs, tiny_model


def head_removed(name="llama-gqa", unstructured=0.0):
    """(dense, pruned, expected map): one of the KV groups removed in every layer, the
    remaining weights optionally magnitude-pruned as well. Cohere with its q/k norms on."""
    dense = tiny_model(name, **({"use_qk_norm": True} if name.startswith("cohere") else {}))
    pruned = copy.deepcopy(dense)
    report = prune_model(pruned, "magnitude", 0.3, "heads", head_fraction=0.5)
    if unstructured:
        prune_model(pruned, "magnitude", unstructured)
    heads = head_geometry(dense).heads
    removed = report.structured["removed_per_layer"]
    expected = torch.tensor(
        [[h for h in range(heads) if h not in removed[layer]["heads"]] for layer in removed]
    )
    return dense, pruned, expected


# olmo2/olmo3/cohere: q/k norms spanning the heads, cut with them (had been refused)
@pytest.mark.parametrize(
    "name", ["llama-gqa", "qwen2-gqa", "llama-mha", "olmo2-gqa", "olmo3-gqa", "cohere-gqa"]
)
@pytest.mark.parametrize("unstructured", [0.0, 0.5])
def test_heads_are_paired_with_the_dense_heads_they_came_from(name, unstructured):
    dense, pruned, expected = head_removed(name, unstructured)
    assert head_geometry(pruned).heads < head_geometry(dense).heads
    assert torch.equal(check_compatible(dense, pruned), expected)


def test_first_layer_activations_agree_on_paired_heads(tokenizer):
    """Layer 0 sees the same embeddings in both models, and a kept head's q/k/v are
    unchanged, so its o_proj input equals the paired dense head's: a wrong pairing fails."""
    dense, pruned, _ = head_removed()
    head_map = check_compatible(dense, pruned)
    prompts = [encode_pair(tokenizer, p, 64)[0] for p in synthetic_pairs(6)]
    zd = to_pruned_heads(capture_last_token(dense, prompts, progress=False), head_map)
    zp = capture_last_token(pruned, prompts, progress=False)
    assert zd.shape == zp.shape
    torch.testing.assert_close(zd[:, 0], zp[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(zd[:, 1], zp[:, 1], atol=1e-3)  # later layers differ


def test_probe_activations_use_the_pruned_heads(tokenizer):
    dense, pruned, expected = head_removed()
    pairs = synthetic_pairs(8)
    sequences = encode_probe_set(tokenizer, pairs, [(i + 1) % 8 for i in range(8)], 64)
    mapped = capture_probe_activations(dense, pruned, sequences, progress=False, head_map=expected)
    full = capture_probe_activations(dense, copy.deepcopy(dense), sequences, progress=False)
    layers = torch.arange(expected.shape[0])[:, None]
    for name in ("dense", "positive", "negative"):
        torch.testing.assert_close(
            getattr(mapped, name), getattr(full, name)[:, layers, expected], rtol=0, atol=0
        )


@pytest.mark.parametrize("name", ["llama-gqa", "cohere-gqa"])
def test_restore_and_fold_a_head_removed_model(tokenizer, name):
    dense, pruned, expected = head_removed(name, unstructured=0.5)
    train = TrainConfig(epochs=1, batch_size=4, progress=False)
    config = RestoreConfig(heads=3, probe_pairs=16, negatives="tfidf", train=train)
    restoration = restore(dense, pruned, tokenizer, synthetic_pairs(), config)
    geometry = head_geometry(pruned)
    assert restoration.geometry == geometry
    assert restoration.scores.shape == (geometry.layers, geometry.heads)
    assert restoration.report["dense_heads"] == expected.tolist()
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad(), restoration.attached(pruned):
        expected_logits = pruned(ids).logits
    restoration.fold(pruned)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_training_free_on_a_head_removed_model(tokenizer):
    dense, pruned, _ = head_removed()
    free = training_free(dense, pruned, tokenizer, synthetic_pairs(6), progress=False)
    geometry = head_geometry(pruned)
    assert free.b.shape == (geometry.total_heads, geometry.head_dim)
    # layer 0's paired heads agree exactly (see above), so their mean shift is zero
    assert free.b[: geometry.heads].abs().max() < 1e-5
    assert free.b[geometry.heads :].abs().max() > 1e-3


def test_unpairable_heads_are_refused():
    dense, pruned, _ = head_removed()
    d = head_geometry(pruned).head_dim
    o_proj = decoder_layers(pruned)[1].self_attn.o_proj
    with torch.no_grad():
        o_proj.weight[:, d : 2 * d] = o_proj.weight[:, :d]
    with pytest.raises(UnsupportedModelError, match=r"layer 1: pruned heads \[0, 1\] all match"):
        check_compatible(dense, pruned)
    with torch.no_grad():
        o_proj.weight[:, d : 2 * d] = torch.randn(o_proj.weight.shape[0], d)
    with pytest.raises(UnsupportedModelError, match="layer 1: pruned head 1 matches no dense"):
        check_compatible(dense, pruned)
    other = tiny_model("llama-gqa", seed=1)
    prune_model(other, "magnitude", 0.3, "heads", head_fraction=0.5)
    with pytest.raises(UnsupportedModelError, match="layer 0: pruned head 0 matches no dense"):
        check_compatible(dense, other)
