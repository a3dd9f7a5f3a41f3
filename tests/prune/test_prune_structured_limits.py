"""Where structured (and unstructured) pruning cannot do what was asked: the limits named
in the errors are the true ones, and a request that removes nothing is refused."""

import re

import pytest
import torch

from restorelcc.prune import prune_model
from restorelcc.prune.validate import PruneArgumentError
from restorelcc.testing import tiny_model


def _figure(pattern: str, message: str) -> float:
    return float(re.search(pattern, message).group(1))


def test_out_of_reach_with_head_fraction_names_it_and_its_own_limit():
    # llama-gqa: 2 KV groups; head_fraction 0 keeps both, so only MLP channels can go
    with pytest.raises(PruneArgumentError) as error:
        prune_model(tiny_model("llama-gqa"), "magnitude", 0.75, "heads", head_fraction=0.0)
    message = str(error.value)
    assert "out of reach with head_fraction=0.0, which removes 0 of 2 KV groups" in message
    most = _figure(r"removes at most ([0-9.]+) of the block", message)
    assert most < 0.75  # it once said 0.847, as if a KV group went too
    # the figure is what head_fraction 0 does reach
    report = prune_model(
        tiny_model("llama-gqa"), "magnitude", most - 0.002, "heads", head_fraction=0.0
    )
    assert report.structured["kv_heads"] == [2, 2]
    assert abs(report.structured["removed_fraction_of_blocks"] - most) < 0.005


def test_default_takes_more_groups_where_the_mlp_cannot_make_up_the_rest():
    # 4 KV groups of 4096 parameters, an MLP of 8 channels of 192: floor(0.7 * 4) = 2
    # groups leave 4352 parameters, more than the whole MLP, for the channels
    model = tiny_model("llama-mha", intermediate_size=8)
    report = prune_model(model, "magnitude", 0.7, "heads", progress=False)
    assert report.structured["plan"]["kv_groups_removed"] == 3
    assert report.structured["intermediate_size"] == [8, 7]
    assert abs(report.structured["removed_fraction_of_blocks"] - 0.7) < 0.01
    with pytest.raises(PruneArgumentError) as error:
        prune_model(tiny_model("llama-mha", intermediate_size=8), "magnitude", 0.8, "heads")
    most = _figure(r"removes at most ([0-9.]+) of the block", str(error.value))
    assert 0.7 < most < 0.8


@pytest.mark.parametrize("head_fraction", [None, 0.0])
def test_a_structured_sparsity_that_removes_nothing_is_refused(head_fraction):
    with pytest.raises(PruneArgumentError, match="removes nothing") as error:
        prune_model(
            tiny_model("llama-gqa"), "magnitude", 0.001, "heads", head_fraction=head_fraction
        )
    least = _figure(r"pass sparsity=([0-9.e-]+) or more", str(error.value))
    report = prune_model(
        tiny_model("llama-gqa"), "magnitude", least, "heads", head_fraction=head_fraction
    )
    assert report.structured["intermediate_size"] == [200, 199]
    with pytest.raises(PruneArgumentError, match="removes nothing"):
        prune_model(tiny_model("llama-gqa"), "magnitude", least * 0.99, "heads")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_an_unstructured_sparsity_that_rounds_to_no_weight_is_refused(method):
    tokens = None if method == "magnitude" else torch.randint(0, 259, (2, 8))
    tiny = 0.002 if method == "wanda" else 1e-5  # widest row 200, largest matrix 19200
    model = tiny_model("llama-gqa")
    dense = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(PruneArgumentError, match="prunes no weight") as error:
        prune_model(model, method, tiny, calibration=tokens, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(dense, model.parameters(), strict=True))
    least = _figure(r"pass sparsity=([0-9.e-]+) or more", str(error.value))
    report = prune_model(model, method, least, calibration=tokens, progress=False)
    assert 0 < report.overall_sparsity < 0.01


@pytest.mark.parametrize("sparsity", [0.09, 0.3])
def test_a_sparsity_between_two_plans_names_both_and_both_work(sparsity):
    """llama-mha with an MLP of 8 channels: MLP channels alone reach 0.075, and one KV group
    (3 heads do not divide the hidden size) cannot go, two can. It had said "out of reach
    ... at most 0.761" for 0.09."""
    with pytest.raises(PruneArgumentError, match="falls between two plans") as error:
        prune_model(tiny_model("llama-mha", intermediate_size=8), "magnitude", sparsity, "heads")
    below = _figure(r"pass sparsity=([0-9.]+) or less", str(error.value))
    above = _figure(r"or ([0-9.]+) or more", str(error.value))
    assert below < sparsity < above
    for bound in (below, above):
        prune_model(tiny_model("llama-mha", intermediate_size=8), "magnitude", bound, "heads")
