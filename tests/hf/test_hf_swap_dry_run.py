"""swap_attention(dry_run=True): the real swap's checks and report, no weight packed and
the model untouched. Each dry run is compared with a real swap of an identical model."""

import copy
import json

import pytest
import torch
from _hf_swap_helpers import add_o_bias, attention, mlp, prune_attention, prune_mlp, pruned_model
from torch import nn

import lcc_kernels
import lcc_kernels.formats
from restorelcc.errors import UnsupportedModelError
from restorelcc.hf import attention as attention_module
from restorelcc.hf import swap as swap_module
from restorelcc.hf.swap import SwapError, swap_attention
from restorelcc.testing import tiny_model

TILES = [(64, 64), (16, 32), (1, 32), (128, 128)]


def _snapshot(model) -> dict:
    """Every module, parameter and buffer object by name, with a copy of its data."""
    return {
        "modules": dict(model.named_modules()),
        "parameters": {n: (p, p.detach().clone()) for n, p in model.named_parameters()},
        "buffers": {n: (b, b.clone()) for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def _assert_untouched(model, before: dict) -> None:
    after = _snapshot(model)
    assert after["modules"].keys() == before["modules"].keys()
    for name, module in after["modules"].items():
        assert module is before["modules"][name], name
    for kind in ("parameters", "buffers"):
        assert after[kind].keys() == before[kind].keys()
        for name, (tensor, _) in after[kind].items():
            original, data = before[kind][name]
            assert tensor is original, name
            if tensor.device.type != "meta":  # no data to compare
                assert torch.equal(tensor.view(torch.uint8), data.view(torch.uint8)), name
    assert after["requires_grad"] == before["requires_grad"]


def _mixed_model(name: str = "llama-gqa", o_bias: bool = True):
    """Layer 0 pruned 2:4, the others unstructured (bitmap), MLP too; o_proj biased."""
    model = prune_attention(tiny_model(name), "2:4", layers=[0])
    if o_bias:
        add_o_bias(model)
    later = range(1, len(model.model.layers))
    prune_attention(model, "unstructured", layers=later)
    return prune_mlp(prune_mlp(model, "2:4", layers=[0]), "unstructured", layers=later)


def _without_dry_run(report) -> dict:
    fields = report.to_dict()
    assert fields.pop("dry_run") == report.dry_run
    return fields


@pytest.mark.parametrize("with_mlp", [False, True], ids=["attention", "mlp"])
@pytest.mark.parametrize("format", ["auto", "bitmap"])
def test_a_dry_run_leaves_the_model_untouched(format, with_mlp):
    model = _mixed_model()
    before = _snapshot(model)
    report = swap_attention(model, format, mlp=with_mlp, decode_streams=True, dry_run=True)
    assert report.dry_run and report.swapped_layers == [0, 1]
    _assert_untouched(model, before)
    assert (
        type(attention(model, 0).q_proj) is nn.Linear and type(mlp(model, 1).up_proj) is nn.Linear
    )
    assert not hasattr(attention(model, 0), "packed_qkv")
    swap_attention(model, format, mlp=with_mlp)  # it can still be swapped for real


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("name", ["llama-gqa", "llama-3x5", "qwen2-gqa"])
def test_a_dry_run_reports_what_the_real_swap_reports(name, tile, dtype):
    """Same layers, groups, formats, shapes, densities and bytes: the bitmap's packed bytes
    are counted per tile, and a tile may hold rows of two of q/k/v (llama-gqa: q is 96
    rows, k and v 32; llama-3x5: K = 60, not a whole tile)."""
    model = _mixed_model(name).to(dtype)
    for format in ("auto", "bitmap"):
        planned = swap_attention(model, format, bitmap_tile=tile, mlp=True, dry_run=True)
        real = swap_attention(copy.deepcopy(model), format, bitmap_tile=tile, mlp=True)
        assert planned.dry_run and not real.dry_run
        assert _without_dry_run(planned) == _without_dry_run(real)
        expected = {"2:4", "bitmap"} if format == "auto" else {"bitmap"}
        assert {g.format for g in planned.groups} == expected


@torch.no_grad()
def test_awkward_weights_get_the_real_swaps_bytes():
    """An all-zero o_proj (the bitmap keeps one run of zeros), -0.0 (not a nonzero), NaN (a
    nonzero), a layer left out and a dense MLP."""
    model = pruned_model("llama-gqa", "unstructured")
    attention(model, 0).o_proj.weight.zero_()
    q_proj = attention(model, 1).q_proj.weight
    q_proj[q_proj == 0] = -0.0
    q_proj[3, 5] = float("nan")
    for tile in TILES:
        for layers in (None, [1]):
            kwargs = dict(format="bitmap", layers=layers, bitmap_tile=tile, mlp=True)
            planned = swap_attention(model, **kwargs, dry_run=True)
            real = swap_attention(copy.deepcopy(model), **kwargs)
            assert _without_dry_run(planned) == _without_dry_run(real)
    formats = {(g.layer, g.group): g.format for g in planned.groups}
    assert formats == {(1, "qkv"): "bitmap", (1, "o_proj"): "bitmap"} | {
        (1, group): "dense" for group in ("gate_up", "down_proj")
    }


def _hooked(model):
    attention(model, 1).k_proj.register_forward_hook(lambda *args: None)
    return model


def _already_swapped(model):
    swap_attention(model, layers=[1])
    return model


def _float64_v(model):
    attention(model, 0).v_proj.weight = nn.Parameter(
        torch.zeros(32, 96, dtype=torch.float64), requires_grad=False
    )
    return model


def _bf16_k(model):
    attention(model, 0).k_proj.to(torch.bfloat16)
    return model


def _half_pruned_qkv(_):
    return prune_attention(tiny_model("llama-gqa"), "2:4", names=("q_proj", "v_proj"))


def _on_meta(model):
    return model.to("meta")


def _empty_k(model):
    attention(model, 0).k_proj.weight = nn.Parameter(torch.zeros(0, 96), requires_grad=False)
    return model


def _gpt2(_):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))


def _unstructured(_):
    return prune_attention(tiny_model("llama-gqa"), "unstructured", layers=[1])


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (None, {"format": "3:4"}, ValueError, r"^unknown format '3:4'; expected one of auto,"),
        (None, {"backend": "fastest"}, ValueError, r"^unknown backend 'fastest'; expected"),
        (None, {"bitmap_tile": (8, 48)}, ValueError, r"^bitmap tile must be .* got \(8, 48\)$"),
        (None, {"min_sparsity": 1.0}, ValueError, r"^min_sparsity must be in \[0, 1\), got 1.0$"),
        (None, {"layers": [2]}, ValueError, r"^layer 2 is not a decoder layer index in 0..1$"),
        (None, {"layers": [1, 1]}, ValueError, r"^layers \[1, 1\] name a layer twice$"),
        (_gpt2, {}, UnsupportedModelError, r"^model family 'gpt2' is not supported"),
        (_hooked, {}, SwapError, r"^layer 1 self_attn\.k_proj has forward hooks"),
        (_already_swapped, {}, SwapError, r"^layer 1 is already swapped; unswap_attention"),
        (
            _float64_v,
            {},
            SwapError,
            r"^layer 0 self_attn\.v_proj has dtype torch\.float64; packed weights are fp16/",
        ),
        (
            _bf16_k,
            {},
            SwapError,
            r"^layer 0 qkv matrices have different dtypes "
            r"\['torch\.float32', 'torch\.bfloat16', 'torch\.float32'\]; they are packed as one$",
        ),
        (
            _half_pruned_qkv,
            {},
            SwapError,
            r"^layer 0 self_attn\.k_proj is not pruned .* while layer 0 self_attn\.q_proj is",
        ),
        (_on_meta, {}, SwapError, r"^layer 0 self_attn\.q_proj has its weight on the meta device"),
        (
            _empty_k,
            {},
            SwapError,
            r"^layer 0 self_attn\.k_proj has an empty weight of shape \(0, 96\)$",
        ),
        (
            _unstructured,
            {"format": "2:4"},
            SwapError,
            r"^layer 1 self_attn\.q_proj does not fit the 2:4 format: row 0, columns 12\.\.15 ",
        ),
    ],
    ids=lambda value: getattr(value, "__name__", None) or str(value),
)
def test_a_dry_run_raises_what_the_real_swap_raises(make, kwargs, error, match):
    """Each refusal has its own type and message, and the dry run's is the real swap's."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    if make is not None:
        model = make(model)
    twin = copy.deepcopy(model)
    with pytest.raises(error, match=match) as real:
        swap_attention(twin, **kwargs)
    assert type(real.value) is error  # SwapError is a ValueError too
    before = _snapshot(model)
    with pytest.raises(error) as planned:
        swap_attention(model, **kwargs, dry_run=True)
    assert type(planned.value) is error and str(planned.value) == str(real.value)
    _assert_untouched(model, before)


def test_a_bitmap_too_large_for_its_offsets_is_refused_by_both(monkeypatch):
    """Counted before any packing (int32 tile offsets; 100 values here, not 2**31)."""
    monkeypatch.setattr(lcc_kernels.format_bitmap, "MAX_BITMAP_VALUES", 100)
    test_a_dry_run_raises_what_the_real_swap_raises(
        _unstructured,
        {"format": "bitmap"},
        SwapError,
        r"^layer 1 qkv cannot be packed as bitmap: weight \(160, 96\) has too many nonzeros "
        r"for int32 tile offsets: .* 100 or more$",
    )


def _refuse_packing(monkeypatch) -> None:
    """Every way to pack a weight (or build its streams layout) raises from now on."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight was packed")

    for owner, name in [
        (lcc_kernels, "pack"),
        (lcc_kernels, "pack_many"),
        (lcc_kernels, "prepare_streams"),
        (lcc_kernels.formats, "pack"),
        (lcc_kernels.formats, "_pack_24"),
        (lcc_kernels.formats, "_pack_bitmap"),
    ]:
        monkeypatch.setattr(owner, name, refuse)


def test_a_dry_run_packs_nothing(monkeypatch):
    _refuse_packing(monkeypatch)
    model = _mixed_model()
    report = swap_attention(model, mlp=True, decode_streams=True, dry_run=True)
    assert {g.format for g in report.groups} == {"2:4", "bitmap"}
    assert report.bytes_after < report.bytes_before and report.bytes_streams == 0  # a CPU
    with pytest.raises(AssertionError, match="a weight was packed"):
        swap_attention(model, mlp=True)  # the real swap does reach the patched functions


def test_inspect_swap_previews_the_swap_without_packing(tmp_path, monkeypatch, capsys):
    """inspect --swap used to pack every weight of a throwaway model for its preview."""
    from restorelcc.cli import main
    from restorelcc.testing import save_checkpoint

    model = _mixed_model(o_bias=False)  # a llama checkpoint has none
    save_checkpoint(model, tmp_path / "pruned")
    expected = json.dumps(_without_dry_run(swap_attention(copy.deepcopy(model), mlp=True)))
    _refuse_packing(monkeypatch)
    out = tmp_path / "inspect.json"
    argv = ["inspect", str(tmp_path / "pruned"), "--swap", "auto", "--mlp", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bitmap" in printed and "2:4" in printed and "nothing to swap" not in printed
    preview = json.loads(out.read_text())["swap"]
    assert preview.pop("dry_run") is True and preview.pop("dtype") == "float32"
    assert preview == json.loads(expected)


def test_a_dry_run_does_not_count_the_streams_layouts(monkeypatch):
    """decode_streams builds a layout per bitmap group on a GPU: the real swap counts it,
    the dry run leaves it None (not computed) rather than guessing. (builds_streams stands
    in for a GPU, where modules build one.)"""

    def builds_streams(format, device, decode_streams):
        return decode_streams and format == "bitmap"

    monkeypatch.setattr(attention_module, "builds_streams", builds_streams)
    monkeypatch.setattr(swap_module, "builds_streams", builds_streams)
    model = _mixed_model()
    planned = swap_attention(model, mlp=True, decode_streams=True, dry_run=True)
    real = swap_attention(copy.deepcopy(model), mlp=True, decode_streams=True)
    assert {g.format for g in planned.groups} == {"2:4", "bitmap"}
    for ours, theirs in zip(planned.groups, real.groups, strict=True):
        if ours.format == "bitmap":
            assert ours.bytes_streams is None and theirs.bytes_streams > 0
        else:
            assert ours.bytes_streams == theirs.bytes_streams == 0
        assert ours.bytes_after == theirs.bytes_after
    assert planned.bytes_streams is None and planned.to_dict()["bytes_streams"] is None
    assert "bytes_streams" in planned.table()
