"""save_packed / load_packed: a swapped model comes back swapped, bit for bit, without a
dense copy of its packed weights; bad folders are refused by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _hf_packed_helpers import IDS, edit_manifest, edit_weights, saved_packed, tiny_pruned
from _hf_swap_helpers import MLP_PROJECTIONS, PROJECTIONS, add_o_bias, mlp, prune_attention
from safetensors.torch import load_file

from restorelcc.errors import ModelNotFoundError
from restorelcc.hf import load_packed, save_packed, swap_attention, unswap_attention
from restorelcc.hf.attention import PackedLinear
from restorelcc.hf.packed_checkpoint import PACKED_INFO, WEIGHTS
from restorelcc.hf.swap_plan import SwapError
from restorelcc.loading import CheckpointError, load_model
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name, pattern, overrides",
    [
        ("llama-gqa", "2:4", {}),
        ("llama-3x5", "unstructured", {"tie_word_embeddings": True}),
        ("qwen2-gqa", "2:4", {}),  # q/k/v biases
        ("gemma3-gqa", "unstructured", {}),  # embed_scale and two rotary buffers
    ],
)
def test_round_trip_is_bit_for_bit(tmp_path, name, pattern, overrides):
    model = add_o_bias(tiny_pruned(name, pattern, **overrides))
    report = swap_attention(model, mlp=True, layers=[0] if name == "llama-3x5" else None)
    before = model(IDS).logits
    save_packed(model, tmp_path / "packed", byte_tokenizer())

    loaded, tokenizer = load_packed(tmp_path / "packed")
    assert torch.equal(loaded(IDS).logits, before)
    assert tokenizer.padding_side == "right"
    packed = {n for n, m in loaded.named_modules() if isinstance(m, PackedLinear)}
    assert packed == {n for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert len(packed) == sum(g.format != "dense" for g in report.groups)
    if overrides.get("tie_word_embeddings"):
        assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    # unswapped, it is the model that was swapped
    unswap_attention(model), unswap_attention(loaded)
    expected, got = _state(model), _state(loaded)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("dtype", ["auto", torch.float32])
def test_loads_as_load_model_then_swap(tmp_path, dtype):
    """The buffers the empty model computes (rotary frequencies, Gemma's embed_scale) are
    from_pretrained's in the same dtype, and a bf16 packed checkpoint loaded in float32
    is the bf16 dense checkpoint loaded in float32: same logits."""
    model = tiny_pruned("gemma3-gqa", "2:4", torch.bfloat16)
    dense = save_checkpoint(model, tmp_path / "dense")
    swap_attention(model)
    save_packed(model, tmp_path / "packed", byte_tokenizer())
    expected, _ = load_model(dense, dtype=torch.bfloat16 if dtype == "auto" else dtype)
    swap_attention(expected)
    loaded, _ = load_packed(tmp_path / "packed", dtype=dtype)
    assert next(loaded.parameters()).dtype == next(expected.parameters()).dtype
    buffers = dict(expected.named_buffers())
    assert all(torch.equal(b, buffers[n]) for n, b in loaded.named_buffers())
    assert torch.equal(loaded(IDS).logits, expected(IDS).logits)


def test_packed_file_holds_packed_bytes_not_dense_ones(tmp_path):
    model = tiny_pruned("llama-gqa", "2:4", torch.float16)
    dense = save_checkpoint(model, tmp_path / "dense")
    projections = (*PROJECTIONS, *MLP_PROJECTIONS)
    dense_bytes = sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if n.endswith(tuple(f"{name}.weight" for name in projections))
    )
    swap_attention(model, mlp=True)
    save_packed(model, tmp_path / "packed", byte_tokenizer())
    keys = load_file(tmp_path / "packed" / WEIGHTS).keys()
    assert not [k for k in keys if k.endswith(tuple(f"{p}.weight" for p in projections))]
    packed_bytes = sum(m.packed.nbytes for m in model.modules() if isinstance(m, PackedLinear))
    assert packed_bytes < dense_bytes  # 9/16 but for K padded to 64 (96 -> 128 here)
    expected = (dense / "model.safetensors").stat().st_size - dense_bytes + packed_bytes
    saved = (tmp_path / "packed" / WEIGHTS).stat().st_size
    assert abs(saved - expected) < 8192  # the files' headers differ (keys, info tensors)


def test_keeps_swap_options(tmp_path):
    model = tiny_pruned("llama-gqa", "unstructured")
    swap_attention(model, format="bitmap", backend="dense")
    save_packed(model, tmp_path / "packed", byte_tokenizer())
    loaded, _ = load_packed(tmp_path / "packed")
    assert {m.backend for m in loaded.modules() if isinstance(m, PackedLinear)} == {"dense"}


def test_refuses_unswapped_model_and_non_packed_folder(tmp_path):
    model = tiny_pruned("llama-gqa", "2:4")
    with pytest.raises(SwapError, match="no swapped projection.*swap_attention"):
        save_packed(model, tmp_path / "packed", byte_tokenizer())
    assert not (tmp_path / "packed").exists()
    dense = save_checkpoint(model, tmp_path / "dense")
    with pytest.raises(CheckpointError, match=f"not a packed checkpoint.*{PACKED_INFO}"):
        load_packed(dense)
    with pytest.raises(ModelNotFoundError):
        load_packed(tmp_path / "missing")


def test_overwrite_replaces_only_a_packed_checkpoint(tmp_path):
    model = tiny_pruned("llama-gqa", "2:4")
    dense = save_checkpoint(model, tmp_path / "dense")
    swap_attention(model)
    with pytest.raises(FileExistsError, match="not empty"):
        save_packed(model, dense)
    with pytest.raises(FileExistsError, match=f"holds no {PACKED_INFO}"):
        save_packed(model, dense, overwrite=True)
    save_packed(model, tmp_path / "packed", byte_tokenizer())
    save_packed(model, tmp_path / "packed", byte_tokenizer(), overwrite=True)
    load_packed(tmp_path / "packed")
    with pytest.raises(CheckpointError, match="is a packed checkpoint.*load_packed"):
        load_model(tmp_path / "packed")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=2), "format_version 2"),
        (lambda m: m["groups"][0].update(layer=9), "names no group of this model"),
        (lambda m: m["groups"][0].update(format="bitmap"), "does not match its tensors"),
        (lambda m: m["groups"][0].update(backend="fast"), "unknown backend 'fast'"),
        (lambda m: m["groups"].pop(), "unexpected.*o_proj.packed"),
        (lambda m: m["tied"].update({"lm_head.weight": "nowhere"}), "cannot tie"),
        # stored: tying would ignore a tensor (of another shape: test_refuses_a_tie_of_...)
        (lambda m: m["tied"].update({"lm_head.weight": "model.embed_tokens.weight"}), "tie"),
        (  # the manifest's dtype is the embeddings'; a packed module's is in its entry
            lambda m: m.update(dtype="float16"),
            "model.embed_tokens.weight holds torch.float32, not the torch.float16",
        ),
    ],
)
def test_refuses_a_manifest_that_disagrees(tmp_path, edit, message):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_packed(folder)


def test_refuses_a_tie_of_another_shape(tmp_path):
    """model.norm.weight [96] not stored and tied to the embeddings [259, 96]: the load
    would assign it and the forward fail. (Tied while stored, as this case was, it was
    refused as stored before its shape was looked at.)"""
    folder = saved_packed(tmp_path)
    edit_weights(folder, lambda t: t.pop("model.norm.weight"))
    edit_manifest(
        folder, lambda m: m["tied"].update({"model.norm.weight": "model.embed_tokens.weight"})
    )
    with pytest.raises(
        CheckpointError, match="cannot tie model.norm.weight to model.embed_tokens.weight"
    ):
        load_packed(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["groups"][0].pop("format"), "unknown format None"),
        (lambda m: m["groups"][1].update(format=["2:4"]), r"unknown format \['2:4'\]"),
        (lambda m: m["groups"][0].update(decode_streams="yes"), "decode_streams must be"),
        (lambda m: m["groups"][0].update(backend="fast"), "unknown backend 'fast'"),
        (lambda m: m["groups"][0].update(group="qkv_proj"), "names no group of this model"),
        (lambda m: m["groups"][0].update(layer="0"), "names no group of this model"),
    ],
)
def test_packed_swap_refuses_a_malformed_group_entry(tmp_path, edit, message):
    """What bench reads of the manifest before loading: a group without a format had
    raised a TypeError (sorting None with "2:4") out of bench as a traceback."""
    from restorelcc.hf.packed_checkpoint import packed_swap

    folder = saved_packed(tmp_path)
    edit_manifest(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        packed_swap(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("model.norm.weight"), "missing.*model.norm.weight"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected.*extra"),
        (lambda t: t.pop("model.layers.1.self_attn.o_proj.packed.values"), "no valid packed"),
        (
            lambda t: t.update({"model.norm.weight": torch.zeros(5)}),
            "does not fit the config.*size mismatch for model.norm.weight",
        ),
        (  # a folded bias on an unswapped layer is added, of its own size only
            lambda t: t.update({"model.layers.1.mlp.down_proj.bias": torch.zeros(7)}),
            "size mismatch for model.layers.1.mlp.down_proj.bias",
        ),
    ],
)
def test_refuses_weights_that_disagree(tmp_path, edit, message):
    folder = saved_packed(tmp_path)
    edit_weights(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_packed(folder)


def test_refuses_a_config_of_another_shape(tmp_path):
    folder = saved_packed(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_key_value_heads"] = 1  # k and v: 16 rows each, not 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"packed weight is \(160, 96\) split \[96, 32, 32\]"):
        load_packed(folder)


_PEAK_SCRIPT = """
import gc, sys
from restorelcc.hf import load_packed

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

load_packed(sys.argv[1])  # imports and first-call caches out of the measure
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
except OSError as exc:  # not permitted here, or a kernel before 4.0
    print("cannot reset the peak:", exc)
    sys.exit(77)
before = kib("VmRSS")
model, _ = load_packed(sys.argv[1])
print(kib("VmHWM") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_load_peak_memory_is_the_packed_bytes_not_the_dense_ones(tmp_path):
    """Loading a 2:4 fp16 model whose projections are 64 MiB dense (37 MiB packed file)
    rose the peak by ~80 MiB (the file's pages and the tensors read from them); building
    the model with real parameters first would add the 64 MiB of dense projections."""
    model = tiny_model(
        "llama-mha", hidden_size=1024, intermediate_size=4096, head_dim=128,
        num_attention_heads=8, num_key_value_heads=8,
    )  # fmt: skip
    prune_attention(model, "2:4")
    prune_attention(model, "2:4", names=MLP_PROJECTIONS, owner=mlp)
    swap_attention(model.half(), mlp=True)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    file_mib = (folder / WEIGHTS).stat().st_size / 2**20
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "MALLOC_MMAP_THRESHOLD_": str(64 << 10),  # freed blocks go back (see the bands test)
    }
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(folder)], capture_output=True, text=True, env=env
    )
    if result.returncode == 77:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert peak_mib < 2 * file_mib + 16, f"load_packed peaked at +{peak_mib:.0f} MiB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loads_on_cuda_as_the_dense_checkpoint_swapped_there(tmp_path):
    """Packed on the CPU, loaded on the GPU: the streams layout of decode_streams is built
    there, and the kernels (deterministic: split-K partials summed in order) give the
    logits of the dense checkpoint loaded on the GPU and swapped alike."""
    model = tiny_pruned("llama-gqa", "unstructured", torch.bfloat16)
    dense = save_checkpoint(model, tmp_path / "dense")
    swap_attention(model, mlp=True, decode_streams=True)
    save_packed(model, tmp_path / "packed", byte_tokenizer())
    loaded, _ = load_packed(tmp_path / "packed", device="cuda")
    expected, _ = load_model(dense, dtype=torch.bfloat16, device="cuda")
    swap_attention(expected, mlp=True, decode_streams=True)
    streams = [m.streams_bytes for m in loaded.modules() if isinstance(m, PackedLinear)]
    assert streams and all(size > 0 for size in streams)
    for ids in (IDS, IDS[:, :1]):  # prefill on the bitmap tiles, one row on the streams
        ids = ids.cuda()
        assert torch.equal(loaded(ids).logits, expected(ids).logits)


def test_plain_transformers_finds_no_weights_to_load(tmp_path):
    """Not a config with randomly initialised projections: no weights file it reads."""
    from transformers import AutoModelForCausalLM

    with pytest.raises(OSError, match="model.safetensors|no file named"):
        AutoModelForCausalLM.from_pretrained(saved_packed(tmp_path))


def test_refuses_a_bias_that_has_bias_says_is_absent(tmp_path):
    model = tiny_pruned("qwen2-gqa", "2:4")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("v_proj.bias"):
                param.normal_()
    swap_attention(model)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    edit_manifest(folder, lambda m: m["groups"][0].update(has_bias=[True, True, False]))
    with pytest.raises(CheckpointError, match="projection 2 has a nonzero bias but has_bias"):
        load_packed(folder)
