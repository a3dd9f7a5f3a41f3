"""Structured pruning with ``channel_multiple``: kept MLP channels in whole units, the
count removed rounded to the nearest unit, and every limit message in those units."""

import re

import pytest
from transformers import AutoModelForCausalLM

from restorelcc.prune import prune_model
from restorelcc.prune.validate import PruneArgumentError
from restorelcc.testing import tiny_model

# llama-gqa: 200 MLP channels of 288 parameters per layer, 82,176 block parameters
CHANNEL_PARAMS, LAYER_PARAMS = 288, 82176


def _structured(sparsity: float, multiple: int, **kwargs) -> dict:
    model = tiny_model("llama-gqa", **kwargs)
    report = prune_model(
        model, "magnitude", sparsity, "heads", channel_multiple=multiple, progress=False
    )
    return report.structured


@pytest.mark.parametrize("sparsity", [0.1, 0.2, 0.3, 0.45, 0.5])
@pytest.mark.parametrize("multiple", [3, 8, 16])
def test_kept_channels_are_the_nearest_whole_units(sparsity, multiple):
    single, rounded = _structured(sparsity, 1)["plan"], _structured(sparsity, multiple)["plan"]
    assert rounded["kv_groups_removed"] == single["kv_groups_removed"]
    wanted = (
        sparsity * LAYER_PARAMS - single["kv_groups_removed"] * single["group_params"]
    ) / CHANNEL_PARAMS  # channels, before any rounding
    removed = rounded["channels_removed"]
    assert (200 - removed) % multiple == 0 and 200 - removed >= multiple
    assert abs(removed - wanted) <= multiple / 2
    assert rounded["channel_multiple"] == multiple


def test_a_width_not_a_multiple_loses_its_remainder_too(tmp_path):
    model = tiny_model("llama-gqa", intermediate_size=203)
    report = prune_model(model, "magnitude", 0.02, "heads", channel_multiple=8, progress=False)
    assert report.structured["intermediate_size"] == [203, 200]  # 5.7 channels wanted: 3
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.intermediate_size == 200


def test_a_multiple_of_four_lets_a_later_2_of_4_prune_take_down_proj():
    sparsity = 0.1  # 200 -> 171 channels per layer with single channels: not 2:4-able
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", sparsity, "heads", progress=False)
    with pytest.raises(PruneArgumentError, match="divisible by 4, but layers.0.mlp.down_proj") as e:
        prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    assert "(structured pruning with channel_multiple=4 keeps the MLP width" in str(e.value)
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", sparsity, "heads", channel_multiple=4, progress=False)
    report = prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    assert report.overall_sparsity == pytest.approx(0.5)


def test_limits_are_named_in_units_of_the_multiple():
    with pytest.raises(PruneArgumentError, match="removes nothing") as error:
        _structured(0.01, 8)  # 2.9 channels wanted: rounds to no unit of 8
    message = str(error.value)
    assert "8 MLP channels per layer are 0.028 of the block parameters" in message
    least = float(re.search(r"pass sparsity=([0-9.e-]+) or more", message).group(1))
    assert _structured(least, 8)["intermediate_size"] == [200, 192]
    with pytest.raises(PruneArgumentError, match="out of reach") as error:
        prune_model(
            tiny_model("llama-gqa"), "magnitude", 0.8, "heads", head_fraction=0.0,
            channel_multiple=50,
        )  # fmt: skip
    assert "keeping 50 MLP channels per layer removes at most 0.526" in str(error.value)


def test_between_two_plans_counts_the_remainder_on_both_sides():
    """gemma2-gqa with 37 MLP channels, kept in multiples of 16: 5 always go. The plan
    with a KV group had been given as that group alone."""
    with pytest.raises(PruneArgumentError, match="falls between two plans") as error:
        prune_model(
            tiny_model("gemma2-gqa", intermediate_size=37), "magnitude", 0.29, "heads",
            channel_multiple=16,
        )  # fmt: skip
    message = str(error.value)
    assert "1 KV groups and the 5 channels beyond a multiple of 16 0.3663" in message
    above = float(re.search(r"or ([0-9.]+) or more", message).group(1))
    report = prune_model(
        tiny_model("gemma2-gqa", intermediate_size=37), "magnitude", above, "heads",
        channel_multiple=16,
    )  # fmt: skip
    assert report.structured["plan"]["kv_groups_removed"] == 1
    assert report.structured["intermediate_size"] == [37, 32]
    assert report.structured["removed_fraction_of_blocks"] == pytest.approx(0.3663, abs=1e-4)


@pytest.mark.parametrize(
    "pattern, multiple, message",
    [
        ("heads", 0, "channel_multiple must be a positive integer, got 0"),
        ("heads", 2.5, "channel_multiple must be a positive integer, got 2.5"),
        ("heads", True, "channel_multiple must be a positive integer, got True"),
        ("2:4", 8, "channel_multiple only applies to the 'heads' pattern"),
        ("heads", 200, "channel_multiple=200 leaves no MLP channel that can go: a layer has 200"),
        ("heads", 201, "channel_multiple=201 leaves no MLP channel that can go"),
    ],
)
def test_bad_multiples_are_refused_before_any_weight_changes(pattern, multiple, message):
    model = tiny_model("llama-gqa")
    before = {name: p.clone() for name, p in model.state_dict().items()}
    sparsity = 0.5 if pattern == "2:4" else 0.3
    with pytest.raises(PruneArgumentError, match=re.escape(message)):
        prune_model(model, "magnitude", sparsity, pattern, channel_multiple=multiple)
    assert all(p.equal(before[name]) for name, p in model.state_dict().items())
