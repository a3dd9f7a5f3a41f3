"""``restorelcc bench --model`` on a packed checkpoint (``restorelcc pack``): read packed,
unpacked in place and swapped again as it was packed, it reports what the pruned dense
folder reports (same swap, bytes and checks), with ``packed_checkpoint``; options
that contradict the folder are refused before the weights load, and a folder whose
packing a swap of its unpacked weights does not give back is refused before the
reference logits."""

import json

import pytest
import torch
from _hf_swap_helpers import prune_attention, prune_mlp

from restorelcc.cli import main
from restorelcc.hf import save_packed, swap_attention
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model

BENCH = ["--batches", "1", "2", "--context", "8", "--prefill", "12", "--rounds", "3",
         "--device", "cpu", "--quiet"]  # fmt: skip


def _pack(source, out, *options) -> None:
    assert main(["pack", "--model", str(source), "--out", str(out), *options, "--quiet"]) == 0


def _bench(model, report, *options) -> int:
    return main(["bench", "--model", str(model), *BENCH, "--json", str(report), *options])


@pytest.fixture
def mlp_pruned_dir(tmp_path):
    """Attention and MLP pruned unstructured: every group packs as a bitmap."""
    model = prune_mlp(prune_attention(tiny_model("llama-gqa"), "unstructured"), "unstructured")
    return save_checkpoint(model, tmp_path / "mlp-pruned")


@pytest.mark.parametrize("case", ["2:4 attention", "bitmap attention and MLP"])
def test_bench_of_a_packed_folder_reports_what_the_pruned_folder_does(
    pruned_dir, mlp_pruned_dir, tmp_path, capsys, case
):
    """bench used to refuse a packed folder (load_model names load_packed)."""
    source, options = (pruned_dir, []) if case == "2:4 attention" else (mlp_pruned_dir, ["--mlp"])
    _pack(source, tmp_path / "packed", *options)
    capsys.readouterr()
    assert _bench(source, tmp_path / "dense.json", *options) == 0
    dense_printed = capsys.readouterr().out
    assert _bench(tmp_path / "packed", tmp_path / "packed.json") == 0  # the folder's --mlp
    printed = capsys.readouterr().out
    dense = json.loads((tmp_path / "dense.json").read_text())
    packed = json.loads((tmp_path / "packed.json").read_text())
    swap_line = next(line for line in dense_printed.splitlines() if line.startswith("swapped"))
    assert swap_line in printed.splitlines()
    assert "packed checkpoint: read packed" in printed and "projection check ok" in printed
    for key in ("swap", "formats", "weight_bytes", "check", "dtype"):
        assert packed[key] == dense[key], key
    jobs = ("phase", "batch", "tokens", "check")
    assert [[row[k] for k in jobs] for row in packed["rows"]] == [
        [row[k] for k in jobs] for row in dense["rows"]
    ]
    modules = 4 if case == "2:4 attention" else 8
    formats = "2:4" if case == "2:4 attention" else "bitmap"
    assert packed["packed_checkpoint"] == {
        "modules": modules,
        "formats": formats,
        "stored_dtype": "float32",
    }
    assert dense["packed_checkpoint"] is None


def test_bench_takes_the_folders_decode_streams(mlp_pruned_dir, tmp_path, capsys):
    """Recorded by pack --decode-streams, the swap runs with them (built on a GPU only);
    --decode-streams itself stays refused on the CPU."""
    _pack(mlp_pruned_dir, tmp_path / "packed", "--decode-streams")
    assert _bench(tmp_path / "packed", tmp_path / "b.json") == 0
    swap = json.loads((tmp_path / "b.json").read_text())["swap"]
    assert swap["decode_streams"] is True and swap["mlp"] is False
    assert swap["bytes_streams"] == 0  # no streams layout on a CPU
    capsys.readouterr()
    assert _bench(tmp_path / "packed", tmp_path / "c.json", "--decode-streams") == 2
    assert "--decode-streams: CUDA only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--format", "bitmap"], "--format bitmap: {} is a packed checkpoint packed with "
         "--format auto (as 2:4), timed as it was packed (leave --format out)"),
        (["--mlp"], "--mlp: {} is a packed checkpoint packed without --mlp"),
        (["--decode-streams"], "--decode-streams: {} is a packed checkpoint packed without "
         "--decode-streams"),
        (["--min-sparsity", "0.2"], "--min-sparsity: {} is a packed checkpoint: the groups it "
         "holds packed are the ones timed"),
        (["--adapter", "restored"], "--adapter: {} is a packed checkpoint; fold the "
         "restoration before packing"),
    ],
)  # fmt: skip
def test_bench_refuses_options_that_contradict_the_packed_folder(
    pruned_dir, tmp_path, capsys, monkeypatch, arguments, message
):
    import restorelcc.hf.packed_checkpoint

    folder = tmp_path / "packed"
    _pack(pruned_dir, folder)

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the options were checked")

    monkeypatch.setattr(restorelcc.hf.packed_checkpoint, "load_packed", refuse)
    capsys.readouterr()
    out = tmp_path / "b.json"
    assert _bench(folder, out, *arguments) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc bench: error:") and message.format(folder) in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_bench_takes_the_one_format_of_the_folders_groups(pruned_dir, tmp_path):
    """Packed with --format auto, every group 2:4: --format 2:4 packs it as it was."""
    _pack(pruned_dir, tmp_path / "packed")
    assert _bench(tmp_path / "packed", tmp_path / "b.json", "--format", "2:4") == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["swap"]["format"] == "2:4" and report["formats"] == ["2:4"]


@torch.no_grad()
def test_a_packing_the_swap_does_not_give_back_is_refused_before_the_references(
    tmp_path, monkeypatch, capsys
):
    """Saved by save_packed with layer 0 a bitmap though it fits 2:4 (no pack report in
    its manifest): the folder's options are read from its groups, "auto" for the mixed
    formats, which packs layer 0 as 2:4: another model than the folder's."""
    import restorelcc.commands.bench as bench
    from restorelcc.hf.packed_checkpoint import packed_swap

    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model, "bitmap", layers=[0])
    swap_attention(model, "2:4", layers=[1])
    folder = save_packed(model, tmp_path / "mixed", byte_tokenizer())
    options = packed_swap(folder)
    assert (options["format"], options["mlp"], options["decode_streams"]) == ("auto", False, False)
    assert options["groups"][(0, "qkv")] == ("bitmap", "auto", False)

    def no_references(*args):
        raise AssertionError("the reference logits were computed before the swap was checked")

    monkeypatch.setattr(bench, "reference_logits", no_references)
    capsys.readouterr()
    assert _bench(folder, tmp_path / "b.json") == 2
    err = capsys.readouterr().err
    assert (
        f"--model {folder}: swapped again with format='auto', mlp=False, decode_streams=False "
        "(as its groups show: it holds 2:4 and bitmap weights and records no pack options), "
        "its unpacked weights give layer 0 o_proj as 2:4 (backend auto, decode_streams False) "
        "where the folder holds it as bitmap (backend auto, decode_streams False): bench "
        "cannot time it as it was packed. Folders saved by save_packed with swap options that "
        "restorelcc pack does not record (layers=, min_sparsity, backend, formats mixed beyond "
        "what --format auto gives) can be evaluated (restorelcc eval --model) but not benched"
    ) in err


@torch.no_grad()
def test_a_folder_saved_without_a_pack_report_is_swapped_as_its_groups_show(tmp_path):
    """save_packed with no info: format, --mlp and decode streams come from its groups."""
    from restorelcc.hf.packed_checkpoint import packed_swap

    model = prune_mlp(prune_attention(tiny_model("llama-gqa"), "unstructured"), "unstructured")
    swap_attention(model, "bitmap", mlp=True)
    folder = save_packed(model, tmp_path / "saved", byte_tokenizer())
    options = packed_swap(folder)
    assert (options["format"], options["mlp"], options["decode_streams"]) == ("bitmap", True, False)
    assert len(options["groups"]) == 2 * 4
    assert _bench(folder, tmp_path / "b.json") == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["swap"]["format"] == "bitmap" and report["swap"]["mlp"] is True
    assert report["check"]["ok"]
