"""Wanda and magnitude masks equal a direct, unvectorised computation of their definition.

The reference inputs of layer ``i`` come from an ordinary full forward of a model whose
layers before ``i`` carry the pruned weights and whose later layers are dense, so the test
also checks the block-by-block propagation through already-pruned layers.
"""

import copy
import math

import pytest
import torch

from restorelcc.hf.families import block_linear, decoder_layers, family_of
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model


def loop_mask(weight: torch.Tensor, input_norms: list[float] | None, sparsity, nm):
    """Positions to prune, by plain loops: unstructured |W| ranked over the whole matrix
    (magnitude), |W| * ||X_j|| per row (Wanda), either per group (N:M)."""
    rows, cols = weight.shape
    w = weight.tolist()
    pruned = set()
    if nm is None and input_norms is None:
        count = math.floor(sparsity * rows * cols + 0.5)
        ranked = sorted((abs(w[r][j]), r, j) for r in range(rows) for j in range(cols))
        return {(r, j) for _, r, j in ranked[:count]}
    for r in range(rows):
        score = [abs(w[r][j]) * (input_norms[j] if input_norms else 1.0) for j in range(cols)]
        if nm is None:
            count = math.floor(sparsity * cols + 0.5)
            ranked = sorted(range(cols), key=lambda j: score[j])
            pruned.update((r, j) for j in ranked[:count])
        else:
            n, m = nm
            for start in range(0, cols, m):
                ranked = sorted(range(start, start + m), key=lambda j: score[j])
                pruned.update((r, j) for j in ranked[: m - n])
    return pruned


def layer_inputs(model, layer_index: int, tokens) -> dict[str, torch.Tensor]:
    """Inputs ``[tokens, in]`` of every linear of one block, from a plain model forward."""
    family = family_of(model)
    block = decoder_layers(model)[layer_index]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        block_linear(block, name).register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(
                name, args[0].reshape(-1, args[0].shape[-1])
            )
        )
        for name in family.block_linears
    ]
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    for h in handles:
        h.remove()
    return seen


CASES = [
    ("llama-gqa", 0.5, "unstructured"),
    ("llama-3x5", 0.3, "unstructured"),
    ("llama-gqa", 0.5, "2:4"),
    ("qwen2-gqa", 0.5, "4:8"),
]


@pytest.mark.parametrize("name, sparsity, pattern", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_mask_equals_definition(method, name, sparsity, pattern):
    dense = tiny_model(name)
    pruned = copy.deepcopy(dense)
    tokens = torch.randint(0, 259, (6, 20))
    calibration = tokens if method == "wanda" else None  # magnitude refuses data
    prune_model(pruned, method, sparsity, pattern, calibration=calibration, chunk_size=4)

    family = family_of(dense)
    nm = tuple(map(int, pattern.split(":"))) if ":" in pattern else None
    dense_layers, pruned_layers = decoder_layers(dense), decoder_layers(pruned)
    mixed = copy.deepcopy(dense)
    for i in range(len(dense_layers)):
        norms = None
        if method == "wanda":
            inputs = layer_inputs(mixed, i, tokens)
        for lin in family.block_linears:
            weight = block_linear(dense_layers[i], lin).weight.detach()
            got = block_linear(pruned_layers[i], lin).weight.detach()
            if method == "wanda":
                x = inputs[lin].double()
                norms = [math.sqrt(sum(v * v for v in col)) for col in x.T.tolist()]
            expected = loop_mask(weight, norms, sparsity, nm)
            zeros = {tuple(p) for p in (got == 0).nonzero().tolist()}
            assert zeros == expected, f"layers.{i}.{lin}"
            keep = got != 0
            assert torch.equal(got[keep], weight[keep]), f"layers.{i}.{lin} kept weights changed"
        # the next layer's reference inputs see this layer pruned
        decoder_layers(mixed)[i].load_state_dict(pruned_layers[i].state_dict())


def test_embeddings_and_lm_head_untouched():
    dense = tiny_model("llama-gqa")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5)
    assert torch.equal(pruned.get_input_embeddings().weight, dense.get_input_embeddings().weight)
    assert torch.equal(pruned.lm_head.weight, dense.lm_head.weight)
