"""``check_compatible`` tells the dense model from the pruned one: pruning only adds zeros,
so a pair given the other way round (``restore --dense pruned --pruned dense``) is refused,
while every pruning method and pattern passes the right way round."""

import copy
import warnings

import pytest
import torch

from restorelcc.assets import load_model
from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import head_geometry
from restorelcc.lcc import check_compatible
from restorelcc.prune import prune_model
from restorelcc.testing import save_checkpoint, tiny_model

CALIBRATION = torch.randint(0, 259, (4, 32), generator=torch.Generator().manual_seed(0))


def pruned_pair(method: str, pattern: str, sparsity: float = 0.5, **options):
    """(dense llama-gqa, its copy pruned by ``method`` to ``pattern``)."""
    dense = tiny_model("llama-gqa")
    pruned = copy.deepcopy(dense)
    if method != "magnitude":
        options["calibration"] = CALIBRATION
    prune_model(pruned, method, sparsity, pattern, progress=False, **options)
    return dense, pruned


PAIRS = [
    ("magnitude", "unstructured", 0.5, {}),
    ("wanda", "unstructured", 0.5, {}),
    ("sparsegpt", "unstructured", 0.5, {}),
    ("sparsegpt", "unstructured", 0.05, {}),
    ("magnitude", "2:4", 0.5, {}),
    ("wanda", "2:4", 0.5, {}),
    ("sparsegpt", "2:4", 0.5, {}),
    ("magnitude", "heads", 0.2, {"head_fraction": 0.0}),  # MLP channels only, all heads kept
]


@pytest.mark.parametrize(
    "method, pattern, sparsity, options", PAIRS, ids=[f"{m}-{p}-{s}" for m, p, s, _ in PAIRS]
)
def test_a_pruned_model_passes_and_the_pair_swapped_is_refused(method, pattern, sparsity, options):
    dense, pruned = pruned_pair(method, pattern, sparsity, **options)
    geometry = head_geometry(pruned)
    identity = torch.arange(geometry.heads).expand(geometry.layers, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real dense model: no "is it pruned?" warning
        assert torch.equal(check_compatible(dense, pruned), identity)
    assert torch.equal(check_compatible(dense, copy.deepcopy(pruned).to(torch.bfloat16)), identity)
    # structured: the narrower MLP of the "dense" model already tells
    match = "swapped" if pattern != "heads" else "must have the dense model's shapes"
    with pytest.raises(UnsupportedModelError, match=match):
        check_compatible(pruned, dense)


def test_the_swapped_pair_message_names_the_weight_the_counts_and_both_folders(tmp_path):
    dense, pruned = pruned_pair("magnitude", "unstructured")
    for name, model in (("dense", dense), ("pruned", pruned)):
        save_checkpoint(model, tmp_path / name)
    dense, _ = load_model(tmp_path / "dense")
    pruned, _ = load_model(tmp_path / "pruned")
    weight = pruned.model.layers[0].self_attn.q_proj.weight
    zeros = int((weight == 0).sum())
    with pytest.raises(UnsupportedModelError) as refused:
        check_compatible(pruned, dense)  # dense= and pruned= given the other way round
    assert str(refused.value) == (
        f"layer 0 self_attn.q_proj: the pruned model ({tmp_path / 'dense'}) has no zero the "
        f"dense model ({tmp_path / 'pruned'}) lacks, but {zeros} values where the dense one "
        "has zeros; pruning only adds zeros: are the dense and pruned models (--dense/--pruned, "
        "dense=/pruned= in the API) swapped?"
    )


def test_models_pruned_in_memory_are_not_named_by_the_folder_they_share(tmp_path):
    """A model pruned in memory keeps its dense copy's ``name_or_path``: naming both by it
    would say nothing."""
    save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    dense, _ = load_model(tmp_path / "dense")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5, progress=False)
    with pytest.raises(UnsupportedModelError, match=r"the pruned model has no zero the dense mod"):
        check_compatible(pruned, dense)


def test_the_direction_is_decided_by_the_first_weight_that_differs():
    """Only the MLP pruned: the attention weights are equal and skipped, the MLP ones
    decide (an unpruned pair is still refused as such)."""
    dense = tiny_model("llama-gqa")
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for layer in pruned.model.layers:
            for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                linear.weight[:, ::2] = 0
    check_compatible(dense, pruned)
    swapped = "layer 0 mlp.gate_proj: the pruned model has no zero.*swapped"
    with pytest.raises(UnsupportedModelError, match=swapped):
        check_compatible(pruned, dense)
    with pytest.raises(UnsupportedModelError, match="nothing was pruned"):
        check_compatible(dense, copy.deepcopy(dense))


def test_sparsegpt_on_a_dense_model_with_zeros_of_its_own_is_not_called_swapped():
    """SparseGPT's updates turn some of a dense model's exact zeros into values; it had been
    refused ("fewer zeros in the pruned model") where those outnumbered its own."""
    dense = tiny_model("llama-gqa")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # 40% zeros in the last 32 input columns (a dequantised model, say)
        for layer in dense.model.layers:
            for linear in (*layer.self_attn.children(), *layer.mlp.children()):
                if isinstance(linear, torch.nn.Linear):
                    tail = linear.weight[:, -32:]
                    tail[torch.rand(tail.shape, generator=g) < 0.4] = 0
    calibration = torch.randint(0, 259, (4, 32), generator=torch.Generator().manual_seed(0))
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "sparsegpt", 0.1, calibration=calibration, block_size=32, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 14% zeros (4-bit quantized weights have as many)
        check_compatible(dense, pruned)


def test_a_pruned_checkpoint_given_as_the_dense_model_is_warned_of():
    """restore --dense <a pruned checkpoint>: the pair passes (a further-pruned model does
    add zeros) but the user is told that the "dense" model is already sparse."""
    dense, pruned = pruned_pair("magnitude", "unstructured", 0.5)
    pruned.name_or_path = "pruned-50"
    more = copy.deepcopy(pruned)
    with pytest.warns(UserWarning, match=r"the model \(pruned-50\) already has 50% zeros"):
        prune_model(more, "magnitude", 0.7, progress=False)
    match = r"the dense model \(pruned-50\) has 50% zeros in layer 0"
    with pytest.warns(UserWarning, match=match) as caught:
        check_compatible(pruned, more)
    assert {w.filename for w in caught} == {__file__}  # the user's call, not the package's
