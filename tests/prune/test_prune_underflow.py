"""A weight pruning keeps stays nonzero in the model's dtype (prune/precision.py): SparseGPT's
updated float32 weights that would round to zero in float16 or bfloat16 are stored as the
smallest subnormal, so the saved zeros, and the report's, are the ones the pruning chose."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import restorelcc.prune.api as api
from restorelcc.hf.families import block_linear, decoder_layers, family_of
from restorelcc.prune import prune_model
from restorelcc.prune.calibrate import input_sharing_groups
from restorelcc.prune.precision import cast_keeping_nonzeros, parameters_in, smallest_subnormal
from restorelcc.testing import save_checkpoint, tiny_model

TOKENS = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))


def bit_pattern_one(dtype: torch.dtype) -> float:
    """The value whose bits are 0...01, the smallest positive one, independent of finfo."""
    same_width = {torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return float(torch.tensor(1, dtype=same_width.get(dtype, torch.int32)).view(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_smallest_subnormal_is_the_value_of_bit_pattern_one(dtype):
    assert smallest_subnormal(dtype) == bit_pattern_one(dtype)  # 2**-24, 2**-133, 2**-149
    assert smallest_subnormal(dtype) == float(
        torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype))
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nonzeros_that_round_to_zero_become_the_signed_smallest_subnormal(dtype):
    tiny = bit_pattern_one(dtype)
    values = torch.tensor(
        [tiny / 4, -tiny / 4, tiny / 2, -tiny / 2, 0.0, -0.0, 0.7 * tiny, 1.0, -3.5, math.inf]
        + [math.nan],
        dtype=torch.float32,
    )
    plain = values.to(dtype)
    assert (plain[:4] == 0).all()  # what a plain cast does: half the smallest ties to 0 (even)
    cast = cast_keeping_nonzeros(values, dtype)
    assert cast.dtype == dtype
    assert cast[:4].tolist() == [tiny, -tiny, tiny, -tiny]
    assert torch.equal(cast[4:-1], plain[4:-1])  # zeros, normal values and inf: a plain cast
    assert torch.signbit(cast[5]) and cast[-1].isnan()


def test_a_cast_that_rounds_no_nonzero_to_zero_is_the_plain_cast():
    values = torch.tensor([[0.0, 1e-3], [-2.0, 1e-5]], dtype=torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # 1e-5: subnormal in fp16
        assert torch.equal(cast_keeping_nonzeros(values, dtype), values.to(dtype))
    assert cast_keeping_nonzeros(values.half(), torch.float32).dtype == torch.float32


@pytest.mark.parametrize("keep_nonzeros, expected", [(True, 2**-24), (False, 0.0)])
def test_parameters_go_back_keeping_nonzeros_only_when_asked(keep_nonzeros, expected):
    """Pruning asks (``walk_blocks``); the capture in float32 changes no weight and does not."""
    linear = torch.nn.Linear(3, 2).half()
    with parameters_in(linear, keep_nonzeros=keep_nonzeros):
        linear.weight.data[0, 0] = 1e-8  # float32 inside; below half of float16's 2**-24
    assert linear.weight.dtype == torch.float16
    assert linear.weight[0, 0].item() == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparsegpt_weights_kept_stay_nonzero_in_the_saved_dtype(dtype, tmp_path, monkeypatch):
    """SparseGPT's kept weights, some forced below the dtype's smallest subnormal: the model's
    zeros (what is saved) are exactly those of the pruned float32 matrices, and the
    report counts them."""
    tiny = bit_pattern_one(dtype)
    forced = [tiny / 3, -tiny / 3, tiny / 2]  # each rounds to 0 in a plain cast
    pruned: list[torch.Tensor] = []  # the float32 matrices pruning returned, in call order
    prune_with_factor = api.prune_with_factor

    def forcing_some_kept_weights_tiny(stacked, *args, **kwargs):
        new = prune_with_factor(stacked, *args, **kwargs)
        kept = new[0].nonzero().flatten()  # row 0's kept inputs
        new[0, kept[: len(forced)]] = torch.tensor(forced)
        pruned.append(new.clone())
        return new

    monkeypatch.setattr(api, "prune_with_factor", forcing_some_kept_weights_tiny)
    source = save_checkpoint(tiny_model("llama-gqa").to(dtype), tmp_path / "half")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    report = prune_model(model, "sparsegpt", 0.3, "unstructured", TOKENS, progress=False)

    family = family_of(model.config)
    # unstructured: one call per linear, in the order of the groups of each block
    names = [name for group in input_sharing_groups(family) for name in group]
    layers = decoder_layers(model)
    weights = {
        f"layers.{i}.{name}": block_linear(layer, name).weight
        for i, layer in enumerate(layers)
        for name in names
    }
    assert len(pruned) == len(weights)
    by_name = {m.name: m for m in report.matrices}
    for (name, weight), chosen in zip(weights.items(), pruned, strict=True):
        assert weight.dtype == dtype
        assert torch.equal(weight == 0, chosen == 0), name  # no zero pruning did not choose
        kept = chosen[0].nonzero().flatten()[: len(forced)]
        assert weight[0, kept].tolist() == [tiny, -tiny, tiny], name
        zeros = int((weight == 0).sum())
        assert zeros == by_name[name].zeros == math.floor(0.3 * weight.numel() + 0.5), name
