"""The pruned-model fingerprint: one checkpoint matches itself in every dtype, while a
change of values under the same mask, or of a mask, is refused with a message naming it."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from lcc_helpers import pruned_copy, trained_like

from restorelcc.hf.families import decoder_layers
from restorelcc.lcc import fingerprint as fp
from restorelcc.lcc.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter
from restorelcc.lcc.restoration import AdapterError, AdapterMismatchError, Restoration
from restorelcc.testing import tiny_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def checkpoints():
    """Pruned fp32 checkpoints (as `restorelcc prune` saves them), llama and qwen2 (biases)."""
    return {name: pruned_copy(tiny_model(name)) for name in ("llama-3x5", "qwen2-gqa")}


@pytest.mark.parametrize("name", ["llama-3x5", "qwen2-gqa"])
@pytest.mark.parametrize("made_in", DTYPES)
def test_one_checkpoint_matches_itself_in_every_dtype(checkpoints, tmp_path, name, made_in):
    # `restore --dtype float16` then `eval --adapter` in fp32: the adapter goes via disk.
    checkpoint = checkpoints[name]
    trained_like(copy.deepcopy(checkpoint).to(DTYPES[made_in])).save(tmp_path / "a")
    adapter = load_adapter(tmp_path / "a")
    for used_in in DTYPES.values():
        adapter.check_model(copy.deepcopy(checkpoint).to(used_in))


def test_rounding_stays_well_inside_the_allowance(checkpoints):
    """The estimated difference of every parameter between any two dtypes is under half
    of what is allowed (margin against the sketch's own fluctuation)."""
    checkpoint = checkpoints["llama-3x5"]
    prints = {k: fp.model_fingerprint(copy.deepcopy(checkpoint).to(v)) for k, v in DTYPES.items()}
    worst = 0.0
    for a in prints.values():
        for b in prints.values():
            for x, y in zip(a.items, b.items, strict=True):
                allowed = fp.allowed_difference(x, y, numel=math.prod(x.shape))
                if x.norm:
                    worst = max(worst, fp.sketch_difference(x, y) / allowed)
    assert 0 < worst < 0.5


def _scaled(model, part, factor):
    with torch.no_grad():
        model.get_parameter(part).mul_(factor)
    return model


@pytest.mark.parametrize(
    "part,factor,match",
    [
        ("model.layers.1.mlp.down_proj.weight", 0.5, "values of mlp.down_proj in layer 1"),
        ("model.layers.0.self_attn.q_proj.weight", -1, "values of self_attn.q_proj in layer 0"),
        ("model.layers.2.self_attn.v_proj.weight", 1.05, "values of self_attn.v_proj in layer 2"),
        ("model.layers.0.input_layernorm.weight", 3, "model.layers.0.input_layernorm.weight"),
        ("model.embed_tokens.weight", 2, "model.embed_tokens.weight"),
    ],
    ids=["down_proj-x0.5", "q_proj-sign", "v_proj-x1.05", "norm-x3", "embeddings-x2"],
)
@pytest.mark.parametrize("used_in", ["fp32", "bf16"])
def test_changed_values_under_the_same_mask_are_refused(checkpoints, part, factor, match, used_in):
    checkpoint = checkpoints["llama-3x5"]
    adapter = trained_like(checkpoint)
    changed = _scaled(copy.deepcopy(checkpoint), part, factor).to(DTYPES[used_in])
    assert fp.model_fingerprint(changed).digest == adapter.fingerprint.digest  # same masks
    with pytest.raises(AdapterMismatchError, match=f"different pruned model: .*{match}") as info:
        adapter.check_model(changed)
    assert str(info.value).count(" differ: ") == 1  # only the changed parameter is named


def test_a_dtype_sized_change_names_the_dtype(checkpoints):
    """Weights saved through bfloat16 and loaded as float32 again are a different model for
    a float32 adapter; the message says that the difference is bfloat16 rounding."""
    checkpoint = checkpoints["llama-3x5"]
    adapter = trained_like(checkpoint)
    resaved = copy.deepcopy(checkpoint).to(torch.bfloat16).to(torch.float32)
    with pytest.raises(
        AdapterMismatchError,
        match=r"different pruned model: \d+ parameters differ by about bfloat16 rounding",
    ) as info:
        adapter.check_model(resaved)
    assert "float32 weights on both sides" in str(info.value)


def test_a_changed_mask_is_refused_naming_the_linear(checkpoints):
    checkpoint = checkpoints["llama-3x5"]
    adapter = trained_like(checkpoint)
    changed = copy.deepcopy(checkpoint)
    weight = decoder_layers(changed)[2].mlp.up_proj.weight
    kept = int(torch.count_nonzero(weight))
    with torch.no_grad():
        weight.view(-1)[weight.view(-1).nonzero()[0]] = 0  # one more pruned weight
    for model in (changed, changed.to(torch.bfloat16)):
        with pytest.raises(
            AdapterMismatchError,
            match=rf"sparsity mask of mlp.up_proj in layer 2 differs \({kept} non-zeros in the "
            rf"adapter's model, {kept - 1} in this one\)",
        ):
            adapter.check_model(model)


def test_a_mask_with_the_same_count_at_other_positions_says_so(checkpoints):
    """Two pruned checkpoints of one sparsity keep as many weights: the message says the
    positions differ, not two equal counts as if they were a difference."""
    checkpoint = checkpoints["llama-3x5"]
    adapter = trained_like(checkpoint)
    moved = copy.deepcopy(checkpoint)
    weight = decoder_layers(moved)[0].self_attn.q_proj.weight.view(-1)
    kept = int(torch.count_nonzero(weight))
    kept_at, pruned_at = weight.nonzero()[0], (weight == 0).nonzero()[0]
    with torch.no_grad():  # one kept weight moved to a pruned position
        weight[pruned_at], weight[kept_at] = weight[kept_at], 0
    assert int(torch.count_nonzero(weight)) == kept
    with pytest.raises(AdapterMismatchError) as info:
        adapter.check_model(moved)
    assert (
        f"sparsity mask of self_attn.q_proj in layer 0 differs (the same {kept} non-zeros, at "
        "other positions)" in str(info.value)
    )


def test_float16_flushing_a_tiny_weight_is_named(checkpoints):
    checkpoint = copy.deepcopy(checkpoints["llama-3x5"])
    with torch.no_grad():
        decoder_layers(checkpoint)[1].self_attn.k_proj.weight[0, 0] = 1e-9  # fp16: 0
    adapter = trained_like(checkpoint)
    with pytest.raises(AdapterMismatchError, match="k_proj in layer 1 .*float16 flushes"):
        adapter.check_model(copy.deepcopy(checkpoint).to(torch.float16))
    adapter.check_model(copy.deepcopy(checkpoint).to(torch.bfloat16))


@pytest.mark.parametrize("name", ["llama-3x5", "qwen2-gqa"])
def test_the_fingerprint_does_not_depend_on_the_chunking(checkpoints, monkeypatch, name):
    checkpoint = checkpoints[name]
    whole = fp.model_fingerprint(checkpoint)
    # Chunks of 8 rows (llama-3x5 rows of 60: not a whole number of mask bytes per row).
    monkeypatch.setattr(fp, "CHUNK_ELEMENTS", 100)
    chunked = fp.model_fingerprint(checkpoint)
    assert chunked.digest == whole.digest
    torch.testing.assert_close(chunked.sketches(), whole.sketches(), rtol=1e-12, atol=1e-12)
    assert chunked == whole and not chunked.differences(whole)


@pytest.mark.parametrize("length", [1, 7, 8, 60, 61])
def test_masks_packed_on_a_device_hash_like_on_the_cpu(length):
    """The packing used off the CPU (run here on CPU tensors) gives np.packbits's bytes."""
    bits = torch.rand(length) < 0.5
    assert fp._pack_on_device(bits) == np.packbits(bits.numpy()).tobytes()


def test_an_adapter_of_the_previous_format_is_refused_naming_it(checkpoints, tmp_path):
    trained_like(checkpoints["llama-3x5"]).save(tmp_path / "a")
    config = tmp_path / "a" / ADAPTER_CONFIG
    meta = json.loads(config.read_text())
    assert meta["format"] == 2 and meta["fingerprint"]["version"] == 2
    meta["format"], meta["fingerprint"] = 1, "v1:" + "0" * 64  # as format 1 wrote them
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="adapter format 1 .*re-create the adapter"):
        load_adapter(tmp_path / "a")


def test_a_damaged_fingerprint_record_is_refused(checkpoints, tmp_path):
    trained_like(checkpoints["llama-3x5"]).save(tmp_path / "a")
    config = tmp_path / "a" / ADAPTER_CONFIG
    meta = json.loads(config.read_text())
    meta["fingerprint"]["parameters"][0]["mask"] = "0" * 64
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="digest does not match"):
        load_adapter(tmp_path / "a")
    assert (tmp_path / "a" / ADAPTER_WEIGHTS).is_file()


def test_a_restoration_needs_a_fingerprint_object(checkpoints):
    restoration = trained_like(checkpoints["llama-3x5"])
    with pytest.raises(AdapterError, match="fingerprint must be a ModelFingerprint"):
        Restoration(
            model_type="llama",
            geometry=restoration.geometry,
            heads=restoration.heads,
            directions=restoration.directions,
            beta=restoration.beta,
            b=restoration.b,
            fingerprint="v1:" + "0" * 64,
        )


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_spread_over_two_devices_matches_itself(checkpoints):
    model = copy.deepcopy(checkpoints["llama-3x5"])
    expected = fp.model_fingerprint(model)
    model.to("cuda:0")
    decoder_layers(model)[1:].to("cuda:1")  # as device_map splits a model by layers
    assert not fp.model_fingerprint(model).differences(expected)
