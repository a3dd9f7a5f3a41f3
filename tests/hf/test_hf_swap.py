"""swap_attention / unswap_attention on every tiny family: logits, one launch for q/k/v,
unswap bit for bit, generation with a KV cache, state dicts, independent instances."""

import copy
import io
import re

import pytest
import torch
from _hf_swap_helpers import (
    FAMILIES,
    PATTERNS,
    add_o_bias,
    assert_generation_matches,
    assert_matches,
    attention,
    linear_state,
    logits,
    prune_attention,
    pruned_model,
    random_ids,
    same_bits,
)
from safetensors.torch import load_file, save_file
from torch import nn

import lcc_kernels
from lcc_kernels.weight_cache import LAST_STREAMS
from restorelcc import SwapReport, swap_attention, unswap_attention
from restorelcc.hf import attention as attention_module
from restorelcc.hf.attention import PackedProjections, ProjectionView, SparseLinear
from restorelcc.testing import TINY_SHAPES, tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", FAMILIES)
def test_swapped_logits_match_the_pruned_model(name, pattern, dtype):
    pruned = pruned_model(name, pattern)
    swapped = copy.deepcopy(pruned)
    report = swap_attention(swapped)  # fp32, then converted: the buffers follow .to()
    swapped.to(dtype)
    layers = len(report.swapped_layers)
    assert layers == TINY_SHAPES[name][1]
    assert {g.format for g in report.groups} == {PATTERNS[pattern]}
    qkv = attention(swapped, 0).packed_qkv
    assert qkv.packed.dtype == dtype and qkv.packed.format == PATTERNS[pattern]
    assert isinstance(attention(swapped, 0).o_proj, SparseLinear)
    assert_matches(swapped, pruned, random_ids(), dtype)


def test_qwen2_qkv_biases_are_carried():
    pruned = pruned_model("qwen2-gqa", "2:4")
    assert attention(pruned, 0).q_proj.bias is not None  # the family's own q/k/v biases
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped)
    owner = attention(swapped, 1).packed_qkv
    source = attention(pruned, 1)
    expected = torch.cat([source.q_proj.bias, source.k_proj.bias, source.v_proj.bias])
    assert owner.has_bias == (True, True, True) and torch.equal(owner.bias, expected)
    assert_matches(swapped, pruned, random_ids(), torch.float32)


@pytest.mark.parametrize("mlp", [False, True])
def test_one_launch_per_packed_group(monkeypatch, mlp):
    model = pruned_model("llama-gqa", "unstructured", mlp=mlp)
    swap_attention(model, mlp=mlp)
    rows = []
    real = lcc_kernels.sparse_linear

    def spy(x, weight, bias=None, **kwargs):
        rows.append((x.shape[:-1].numel(), weight.shape))
        return real(x, weight, bias, **kwargs)

    monkeypatch.setattr(lcc_kernels, "sparse_linear", spy)
    logits(model, random_ids(2, 5))
    hidden, qkv_n, inner = 96, (6 + 2 + 2) * 16, 2 * 96 + 8
    per_layer = [(qkv_n, hidden), (hidden, 96)]  # q/k/v as one, o_proj
    if mlp:
        per_layer += [(2 * inner, hidden), (hidden, inner)]  # gate/up as one, down_proj
    assert rows == [(10, shape) for shape in per_layer] * 2


def test_views_recompute_when_called_alone_or_twice():
    model = pruned_model("llama-mha", "2:4")
    reference = copy.deepcopy(model)
    swap_attention(model)
    x = torch.randn(3, 64)
    new, old = attention(model, 0), attention(reference, 0)
    with torch.no_grad():
        assert torch.allclose(new.k_proj(x), old.k_proj(x), atol=1e-6)  # k alone
        assert torch.allclose(new.k_proj(x), old.k_proj(x), atol=1e-6)  # k again
        q = new.q_proj(x)
        x.add_(1.0)  # modified in place: v must not reuse the pending result
        assert torch.allclose(new.v_proj(x), old.v_proj(x), atol=1e-6)
        assert torch.allclose(q, old.q_proj(x - 1.0), atol=1e-5)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", FAMILIES)
def test_unswap_gives_back_bit_identical_linears(name, pattern):
    pruned = pruned_model(name, pattern)
    model = copy.deepcopy(pruned)
    swap_attention(model)
    model.half()  # unswap gives back what the model holds now, at its dtype
    assert unswap_attention(model) == list(range(TINY_SHAPES[name][1]))
    before, after = linear_state(pruned.half()), linear_state(model)
    assert before.keys() == after.keys()
    for key in before:
        assert same_bits(before[key], after[key]), key
    assert all(not hasattr(attention(model, i), "packed_qkv") for i in range(2))
    assert_matches(model, pruned.float(), random_ids(), torch.float16)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_projections_clamped_in_place_keep_autograd_working(pattern):
    # OLMo's clip_qkv clamps q, k and v in place: split's views would refuse it under autograd
    pruned = add_o_bias(prune_attention(tiny_model("olmo-mha", clip_qkv=0.5), pattern))
    model = copy.deepcopy(pruned)
    swap_attention(model)
    ids = random_ids()
    torch.testing.assert_close(model(ids).logits, pruned(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mlp", [False, True])
def test_unswap_keeps_what_was_frozen_frozen(mlp):
    model = pruned_model("qwen2-gqa", "2:4")  # q/k/v biases too
    model.requires_grad_(False)
    attention(model, 0).q_proj.weight.requires_grad_(True)  # one trainable, to tell apart
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    swap_attention(model, mlp=mlp)
    unswap_attention(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_converting_a_swapped_model_to_float64_names_the_remedy():
    model = pruned_model("llama-gqa", "2:4")
    swap_attention(model)
    with pytest.raises(ValueError, match="not torch.float64: call unswap_attention"):
        model.double()


def test_a_no_op_conversion_keeps_the_streams_layouts_and_a_real_one_rebuilds():
    pruned = pruned_model("llama-gqa", "unstructured")
    model = copy.deepcopy(pruned)
    swap_attention(model, "bitmap")
    owner = attention(model, 0).packed_qkv
    layout = lcc_kernels.prepare_streams(owner.packed)  # built by hand: a CPU builds none
    model.float().to("cpu")  # nothing changes: nothing is rebuilt
    assert lcc_kernels.prepare_streams(owner.packed) is layout
    model.half()
    assert owner.packed.values.dtype == torch.float16 and not owner.packed.cache
    assert lcc_kernels.prepare_streams(owner.packed).values.dtype == torch.float16
    assert_matches(model, pruned, random_ids(), torch.float16)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copied_module_builds_its_streams_layout_again(monkeypatch, how):
    """Packed weights pickle without their derived layouts: a module with decode_streams
    builds its streams layout again, as compiled and captured decode need it there.
    (builds_streams stands in for a GPU, where modules build one.)"""
    monkeypatch.setattr(
        attention_module, "builds_streams", lambda fmt, device, wanted: wanted and fmt == "bitmap"
    )
    weight = torch.randn(24, 64) * (torch.rand(24, 64) > 0.6)
    module = SparseLinear(lcc_kernels.pack(weight, "bitmap"), None, decode_streams=True)
    if how == "deepcopy":
        copied = copy.deepcopy(module)
    else:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    assert LAST_STREAMS in copied.packed.cache and copied.packed.cache is not module.packed.cache
    assert copied.streams_bytes == module.streams_bytes > 0


def test_generate_uses_the_kv_cache_and_matches(monkeypatch):
    pruned = pruned_model("mistral-gqa", "unstructured")
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped)
    prompt = random_ids(1, 6)
    rows = []
    real = lcc_kernels.sparse_linear
    monkeypatch.setattr(
        lcc_kernels,
        "sparse_linear",
        lambda x, w, b=None, **kw: rows.append(x.shape[:-1].numel()) or real(x, w, b, **kw),
    )
    assert_generation_matches(swapped, pruned, prompt, 5, torch.float32)
    # prefill over 6 rows, then one row per new token: the cache path ran
    assert rows[:4] == [6] * 4 and set(rows[4:]) == {1}


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", ["llama-3x5", "qwen2-gqa"])  # qwen2: q/k/v biases
def test_state_dict_is_the_unswapped_models(name, pattern):
    pruned = pruned_model(name, pattern)
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped)
    plain, ours = pruned.state_dict(), swapped.state_dict()
    assert list(ours) == list(plain)
    assert all(torch.equal(ours[k], plain[k]) for k in plain)


def test_save_pretrained_of_a_swapped_model_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    pruned = prune_attention(tiny_model("qwen2-gqa"), "2:4")
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped)
    swapped.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = random_ids()
    assert torch.equal(logits(loaded, ids), logits(pruned, ids))


def test_plain_state_dict_loads_into_a_swapped_model_through_safetensors(tmp_path):
    source = pruned_model("llama-3x5", "unstructured")
    save_file(source.state_dict(), tmp_path / "plain.safetensors")
    state = load_file(tmp_path / "plain.safetensors")
    ids = random_ids()
    target = pruned_model("llama-3x5", "unstructured", seed=1)
    swap_attention(target)
    assert not torch.equal(logits(target, ids), logits(source, ids))
    target.load_state_dict(state)
    assert attention(target, 2).packed_qkv.packed.format == "bitmap"  # repacked, format kept
    assert_matches(target, source, ids, torch.float32)
    swapped_state = target.state_dict()
    assert all(torch.equal(swapped_state[k], v) for k, v in state.items())


def test_partial_load_replaces_only_what_it_names():
    target = pruned_model("llama-gqa", "2:4")
    swap_attention(target)
    before = target.state_dict()
    new_q = prune_attention(tiny_model("llama-gqa", seed=3), "2:4").model.layers[0].self_attn
    key = "model.layers.0.self_attn.q_proj.weight"
    result = target.load_state_dict({key: new_q.q_proj.weight}, strict=False)
    assert key not in result.missing_keys and len(result.missing_keys) == len(before) - 1
    after = target.state_dict()
    assert torch.equal(after[key], new_q.q_proj.weight)
    assert all(torch.equal(after[k], before[k]) for k in before if k != key)


def test_state_dicts_that_do_not_fit_are_refused():
    target = pruned_model("llama-mha", "2:4")
    swap_attention(target)
    with pytest.raises(
        RuntimeError,
        match=r"size mismatch for model\.layers\.0\.self_attn\.k_proj\.weight: copying a "
        r"param with shape \(32, 64\) from checkpoint, the shape in current model is \(64, 64\)",
    ):
        target.load_state_dict(pruned_model("qwen2-gqa", "2:4").state_dict(), strict=False)
    unstructured = pruned_model("llama-mha", "unstructured").state_dict()
    with pytest.raises(RuntimeError, match=r"q_proj\.weight does not fit this 2:4 module") as error:
        target.load_state_dict(unstructured)
    k_row = re.search(
        r"k_proj\.weight does not fit this 2:4 module: .*? row (\d+)", str(error.value)
    )
    assert int(k_row.group(1)) < 64  # a row of k_proj, not of the stacked q/k/v
    state = pruned_model("llama-mha", "2:4").state_dict()
    del state["model.layers.1.self_attn.v_proj.weight"]
    state["model.layers.1.self_attn.packed_qkv.packed_values"] = torch.zeros(3)
    with pytest.raises(
        RuntimeError, match=r"Missing key.*v_proj\.weight(.|\n)*Unexpected key.*packed_values"
    ):
        target.load_state_dict(state)


def test_two_instances_swapped_differently_do_not_interfere():
    first_pruned, second_pruned = (
        pruned_model("llama-mha", "2:4"),
        pruned_model("llama-mha", "unstructured", 1),
    )
    first, second = copy.deepcopy(first_pruned), copy.deepcopy(second_pruned)
    swap_attention(first, "2:4")
    swap_attention(second, "bitmap", layers=[1])
    assert isinstance(attention(second, 0).q_proj, nn.Linear)
    assert isinstance(attention(second, 1).q_proj, ProjectionView)
    assert attention(first, 1).packed_qkv.packed.format == "2:4"
    assert attention(second, 1).packed_qkv.packed.format == "bitmap"
    copied = copy.deepcopy(second)  # views follow their own owner into the copy
    assert attention(copied, 1).v_proj.owner is attention(copied, 1).packed_qkv
    assert attention(copied, 1).packed_qkv is not attention(second, 1).packed_qkv
    unswap_attention(first)
    assert isinstance(attention(first, 1).q_proj, nn.Linear)
    assert isinstance(attention(second, 1).packed_qkv, PackedProjections)
    assert_matches(second, second_pruned, random_ids(), torch.float32)
    assert_matches(first, first_pruned, random_ids(), torch.float32)
    unswap_attention(second)
    assert_matches(copied, second_pruned, random_ids(), torch.float32)


def test_dense_groups_are_left_alone_and_reported():
    model = add_o_bias(tiny_model("llama-gqa"))
    prune_attention(model, "2:4", layers=[1], names=("q_proj", "k_proj", "v_proj"))
    reference = copy.deepcopy(model)
    report = swap_attention(model)
    assert isinstance(report, SwapReport)
    formats = {(g.layer, g.group): g.format for g in report.groups}
    assert formats == {
        (0, "qkv"): "dense",
        (0, "o_proj"): "dense",
        (1, "qkv"): "2:4",
        (1, "o_proj"): "dense",
    }
    assert type(attention(model, 0).q_proj) is nn.Linear
    assert type(attention(model, 1).o_proj) is nn.Linear
    dense_qkv = (6 + 2 + 2) * 16 * 96 * 4
    assert report.bytes_before == 2 * dense_qkv + 2 * 96 * 96 * 4
    assert (
        report.bytes_after
        == report.bytes_before - dense_qkv + attention(model, 1).packed_qkv.packed.nbytes
    )
    assert report.swapped_layers == [1] and "all" in report.table()
    assert report.to_dict()["groups"][2]["format"] == "2:4"
    assert_matches(model, reference, random_ids(), torch.float32)
    assert unswap_attention(model) == [1]


@torch.no_grad()
def _zero_a_few(model, fraction: float, names=("q_proj", "k_proj", "v_proj", "o_proj")):
    """Set ``fraction`` of each named projection's weights to exactly 0, as real checkpoints
    have a few (not a pruning)."""
    for layer in range(len(model.model.layers)):
        for name in names:
            weight = getattr(attention(model, layer), name).weight
            flat = weight.view(-1)
            flat[torch.randperm(flat.numel())[: max(1, round(fraction * flat.numel()))]] = 0
    return model


def test_a_few_exact_zeros_do_not_make_a_matrix_pruned():
    model = _zero_a_few(tiny_model("llama-gqa"), 0.01)
    report = swap_attention(model)
    assert {g.format for g in report.groups} == {"dense"} and report.swapped_layers == []
    assert report.bytes_after == report.bytes_before
    assert type(attention(model, 0).q_proj) is nn.Linear
    packed_anyway = swap_attention(model, min_sparsity=0.0)  # the old rule: any zero
    assert {g.format for g in packed_anyway.groups} == {"bitmap"}
    assert packed_anyway.bytes_after > packed_anyway.bytes_before  # why it is not the default


def test_min_sparsity_decides_what_counts_aspruned_model():
    model = prune_attention(tiny_model("llama-gqa"), "unstructured")  # 60% zeros
    assert {g.format for g in swap_attention(copy.deepcopy(model)).groups} == {"bitmap"}
    assert {g.format for g in swap_attention(model, min_sparsity=0.7).groups} == {"dense"}
    with pytest.raises(ValueError, match=r"min_sparsity must be in \[0, 1\), got 1"):
        swap_attention(model, min_sparsity=1)
