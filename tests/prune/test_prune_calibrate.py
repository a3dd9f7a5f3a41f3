"""Block-by-block propagation reproduces the model; statistics match direct sums."""

import pytest
import torch

from restorelcc.errors import NonFiniteError
from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.prune import prune_model
from restorelcc.prune.calibrate import collect_input_stats, walk_blocks
from restorelcc.testing import tiny_model


@pytest.mark.parametrize("name", ["llama-gqa", "llama-3x5", "qwen2-gqa", "mistral-gqa"])
def test_walk_without_pruning_reproduces_last_block_output(name):
    model = tiny_model(name)
    tokens = torch.randint(0, 259, (5, 24))
    captured = []
    last = decoder_layers(model)[-1]
    handle = last.register_forward_hook(lambda m, a, out: captured.append(out))
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    handle.remove()
    expected = captured[0][0] if isinstance(captured[0], tuple) else captured[0]

    steps = list(walk_blocks(model, tokens, chunk_size=2))
    assert [s.index for s in steps] == list(range(len(decoder_layers(model))))
    final = steps[-1].forward()  # chunks of 2, 2, 1 samples
    torch.testing.assert_close(torch.cat(final), expected, rtol=1e-5, atol=1e-5)


def test_input_stats_match_direct_sums():
    model = tiny_model("llama-gqa")
    family = family_of(model)
    block = decoder_layers(model)[0]
    hidden = [torch.randn(3, 10, 96), torch.randn(2, 10, 96)]
    seen = {}
    q = block.self_attn.q_proj
    handle = q.register_forward_hook(lambda m, a, o: seen.setdefault("x", []).append(a[0]))
    with collect_input_stats(block, family, gram=True) as stats:
        for h in hidden:
            block(h, position_embeddings=model.model.rotary_emb(h, torch.arange(10)[None]))
    handle.remove()
    x = torch.cat([t.reshape(-1, 96) for t in seen["x"]]).double()
    name = "self_attn.q_proj"
    assert stats[name] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats[name].count == 50
    torch.testing.assert_close(stats[name].sumsq, x.square().sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[name].hessian(), 2 * x.T @ x / 50, rtol=1e-5, atol=1e-6)


def test_walk_runs_each_block_only_as_often_as_needed():
    # per chunk: every block runs once for statistics, and all but the last once more to
    # feed the next block (nothing reads the last block's outputs)
    model = tiny_model("llama-gqa")
    layers = decoder_layers(model)
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda m, a, out, i=i: calls.__setitem__(i, calls[i] + 1))
    for step in walk_blocks(model, torch.randint(0, 259, (5, 12)), chunk_size=2):
        if step.index == 0:
            calls[:] = [0] * len(layers)  # count from here: not the input-capture passes
        step.forward()
    assert calls == [6] * (len(layers) - 1) + [3]  # 3 chunks


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_non_finite_calibration_inputs_are_named(method):
    """An overflow in one block (inf from layer 0 on) fails with the linear whose inputs
    went bad, instead of masks chosen from NaN scores or a bare Cholesky error."""
    model = tiny_model("llama-gqa")
    decoder_layers(model)[0].register_forward_hook(lambda m, a, out: out * float("inf"))
    weights = {n: p.clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 259, (2, 12))
    with pytest.raises(NonFiniteError, match=r"inputs of layers\.1\.self_attn\.q_proj are not"):
        prune_model(model, method, 0.5, calibration=tokens, progress=False)
    after = dict(model.named_parameters())
    layer_1 = [n for n in after if n.startswith("model.layers.1.")]
    assert layer_1 and all(torch.equal(after[n], weights[n]) for n in layer_1)  # not pruned
