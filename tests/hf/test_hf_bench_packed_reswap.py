"""``restorelcc bench --model`` on packed folders whose re-swap cannot give back what they
hold (``save_packed`` folders swapped with ``layers=``, ``min_sparsity``...): refused as
folders bench cannot time as they were packed, not with the swap's advice of options that
bench refuses; a folder that records no pack options is not said to be "packed with
--format"; a folder without config.json named as a dense one is; the dtype a folder is
stored in against the one it runs in."""

import json

import pytest
import torch
from _hf_packed_helpers import NOT_BENCHED, NOTHING_RECORDED, bench_folder, bench_refusal
from _hf_swap_helpers import PROJECTIONS, attention, prune_attention

from restorelcc.cli import main
from restorelcc.hf import save_packed, swap_attention
from restorelcc.hf.families import decoder_layers
from restorelcc.testing import byte_tokenizer, tiny_model


@pytest.fixture
def no_references(monkeypatch):
    import restorelcc.commands.bench as bench

    def refuse(*args):
        raise AssertionError("the reference logits were computed before the swap was checked")

    monkeypatch.setattr(bench, "reference_logits", refuse)


@torch.no_grad()
def _mixed_layers(tmp_path, info=None):
    """Layer 0 pruned unstructured (no 2:4 fit), layer 1 2:4; only layer 1 swapped
    (``layers=[1]``), saved by save_packed with ``info``."""
    model = prune_attention(tiny_model("llama-gqa"), "unstructured", layers=[0])
    prune_attention(model, "2:4", layers=[1])
    swap_attention(model, layers=[1])
    return save_packed(model, tmp_path / "mixed", byte_tokenizer(), info=info)


@pytest.mark.parametrize("recorded", [False, True], ids=["save_packed", "info-recorded"])
@pytest.mark.parametrize("given", [[], ["--format", "auto"]], ids=["no-format", "format-auto"])
def test_a_reswap_that_fails_says_bench_cannot_time_the_folder(
    tmp_path, capsys, no_references, recorded, given
):
    """It said '--format 2:4: ... does not fit the 2:4 format ...; use --format auto ... or
    --format bitmap', both of which bench then replaced or refused."""
    info = {"swap": {"format": "2:4", "mlp": False, "decode_streams": False}}
    folder = _mixed_layers(tmp_path, info if recorded else None)
    err = bench_refusal(tmp_path, capsys, folder, *given)
    options = (
        "--format 2:4 (as it records)"
        if recorded
        else "format='2:4', mlp=False, decode_streams=False (as its groups show: it holds 2:4 "
        f"weights and {NOTHING_RECORDED})"
    )
    assert err.startswith(
        f"--model {folder}: bench cannot time this folder as it was packed: swapping its "
        f"unpacked weights again with {options} fails: layer 0 self_attn.q_proj does not fit "
        "the 2:4 format: "
    )
    assert err.endswith(f". {NOT_BENCHED}")
    assert "use --format" not in err and "--format 2:4:" not in err


def test_a_recorded_auto_folder_names_the_format_given_and_the_one_recorded(
    tmp_path, capsys, no_references
):
    """Recorded as --format auto: swapped again so, layer 0 packs as a bitmap where the
    folder holds it dense; with --format 2:4 (its one format), layer 0 does not fit."""
    info = {"swap": {"format": "auto", "mlp": False, "decode_streams": False}}
    folder = _mixed_layers(tmp_path, info)
    assert bench_refusal(tmp_path, capsys, folder) == (
        f"--model {folder}: swapped again with --format auto (as it records), its unpacked "
        "weights give layer 0 o_proj as bitmap (backend auto, decode_streams False) where the "
        f"folder holds it as dense: bench cannot time it as it was packed. {NOT_BENCHED}"
    )
    err = bench_refusal(tmp_path, capsys, folder, "--format", "2:4")
    assert err.startswith(
        f"--model {folder}: bench cannot time this folder as it was packed: swapping its "
        "unpacked weights again with --format 2:4 (it records --format auto) fails: layer 0 "
        "self_attn.q_proj does not fit the 2:4 format: "
    )


@torch.no_grad()
def test_a_folder_packed_below_the_default_min_sparsity_is_refused_so(
    tmp_path, capsys, no_references
):
    """Swapped with min_sparsity=0.01 on 5% zeros: the re-swap (the default 10%) packs
    nothing. It said '--model: ... has no pruned attention layer to swap ... prune it
    first'."""
    model = tiny_model("llama-gqa")
    for layer in range(len(decoder_layers(model))):
        for name in PROJECTIONS:
            weight = getattr(attention(model, layer), name).weight
            weight[weight.abs() <= weight.abs().flatten().quantile(0.05)] = 0
    swap_attention(model, min_sparsity=0.01)
    folder = save_packed(model, tmp_path / "low", byte_tokenizer())
    err = bench_refusal(tmp_path, capsys, folder)
    assert err == (
        f"--model {folder}: bench cannot time this folder as it was packed: swapping its "
        "unpacked weights again with format='bitmap', mlp=False, decode_streams=False (as its "
        f"groups show: it holds bitmap weights and {NOTHING_RECORDED}) fails: no attention "
        f"projection has 10% zeros or more. {NOT_BENCHED}"
    )


@torch.no_grad()
def test_decode_streams_a_reswap_gives_no_bitmap_for_are_refused_so(
    tmp_path, capsys, no_references
):
    """Layer 0 fits 2:4 but was swapped as a bitmap with decode streams: formats mixed,
    the re-swap (auto) packs it 2:4, no bitmap for the folder's decode streams. It said
    '--decode-streams: ... has no weight packed as a bitmap', an option not given."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model, "bitmap", layers=[0], decode_streams=True)
    swap_attention(model, "2:4", layers=[1])
    folder = save_packed(model, tmp_path / "streams", byte_tokenizer())
    err = bench_refusal(tmp_path, capsys, folder)
    assert err == (
        f"--model {folder}: bench cannot time this folder as it was packed: swapping its "
        "unpacked weights again with format='auto', mlp=False, decode_streams=True (as its "
        f"groups show: it holds 2:4 and bitmap weights and {NOTHING_RECORDED}) fails: it packs "
        f"no weight as a bitmap (2:4) for decode streams to lay out. {NOT_BENCHED}"
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--format", "bitmap"], "--format bitmap: {} is a packed checkpoint holding 2:4 "
         "weights (no pack options recorded), timed as it was packed (leave --format out)"),
        (["--mlp"], "--mlp: {} is a packed checkpoint with no MLP projection packed (no pack "
         "options recorded), timed as it was packed"),
        (["--decode-streams"], "--decode-streams: {} is a packed checkpoint with no weight "
         "running decode streams (no pack options recorded), timed as it was packed"),
    ],
)  # fmt: skip
@torch.no_grad()
def test_options_contradicting_a_save_packed_folder_name_what_it_holds(
    tmp_path, capsys, given, message
):
    """Its options are read from its groups: it was not 'packed with --format 2:4'."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model)
    folder = save_packed(model, tmp_path / "saved", byte_tokenizer())
    err = bench_refusal(tmp_path, capsys, folder, *given)
    assert err == message.format(folder)


def test_a_packed_folder_without_config_is_named_as_a_dense_one_is(pruned_dir, tmp_path, capsys):
    """packed_swap read the config without resolve_model's checks: transformers'
    'Unrecognized model ... Should have a model_type key'."""
    from restorelcc.errors import ModelNotFoundError
    from restorelcc.hf.packed_checkpoint import packed_swap

    folder = tmp_path / "packed"
    assert main(["pack", "--model", str(pruned_dir), "--out", str(folder), "--quiet"]) == 0
    (folder / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="is a directory but holds no config.json"):
        packed_swap(folder)
    err = bench_refusal(tmp_path, capsys, folder)
    assert err == f"{folder} is a directory but holds no config.json"


@pytest.mark.parametrize(("dtype", "shown"), [("float32", "stored bfloat16, run in float32"),
                                              ("bfloat16", "stored bfloat16")])  # fmt: skip
def test_bench_names_the_stored_dtype_and_the_one_run_in(
    pruned_dir, tmp_path, capsys, dtype, shown
):
    """Packed in bf16 and run in float32 (the CPU default), bench said nothing of the
    cast while it printed 'swapped again as it was packed'."""
    from restorelcc.hf.packed_checkpoint import packed_swap

    folder = tmp_path / "packed"
    pack = ["pack", "--model", str(pruned_dir), "--out", str(folder), "--dtype", "bfloat16"]
    assert main([*pack, "--quiet"]) == 0
    capsys.readouterr()
    assert bench_folder(folder, tmp_path, "--dtype", dtype) == 0
    printed = capsys.readouterr().out
    assert (
        f"packed checkpoint: read packed (4 packed modules, 2:4; {shown}), unpacked for "
        "nn.Linear and swapped again as it was packed"
    ) in printed.splitlines()
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["dtype"] == dtype
    assert report["packed_checkpoint"] == {
        "modules": 4,
        "formats": "2:4",
        "stored_dtype": "bfloat16",
    }
    options = packed_swap(folder)
    assert (options["dtype"], options["recorded"]) == ("bfloat16", True)


@torch.no_grad()
def test_packed_swap_says_whether_the_options_were_recorded(pruned_dir, tmp_path):
    from restorelcc.hf.packed_checkpoint import packed_swap

    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model)
    saved = packed_swap(save_packed(model, tmp_path / "saved", byte_tokenizer()))
    assert (saved["recorded"], saved["dtype"], saved["format"]) == (False, "float32", "2:4")
    assert main(["pack", "--model", str(pruned_dir), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    packed = packed_swap(tmp_path / "p")
    assert (packed["recorded"], packed["dtype"], packed["format"]) == (True, "float32", "auto")
