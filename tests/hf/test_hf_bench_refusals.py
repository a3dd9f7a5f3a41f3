"""``restorelcc bench`` refuses with one clear line, before loading the weights where it
can: options it would ignore on the device or cannot run (positions beyond the model's,
rope scaling counted), CUDA-only options, decode streams without bitmap weights, nothing
pruned to swap, a weight that does not fit the format, a missing model, bad numbers, an
unsupported family, and no memory left for the check."""

import types

import pytest
import torch
from _hf_swap_helpers import prune_attention

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--eager"], "--eager: CUDA only; on the cpu the calls are timed by the wall clock"),
        (["--rep-ms", "5"], "--rep-ms: CUDA only"),
        (["--decode-streams", "--eager"], "--eager, --decode-streams: CUDA only"),
        (
            ["--context", "256"],
            "--context 256: a decode step after 256 cached tokens needs 257 positions; ",
        ),  # fmt: skip
        (["--context", "8", "--prefill", "64", "257"], "--prefill 257: more tokens than the 256"),
    ],
)
def test_bench_refuses_what_it_would_ignore_or_cannot_run_before_loading(
    pruned_dir, tmp_path, capsys, no_model_loads, arguments, message
):
    """--eager and --rep-ms used to be ignored on a CPU (the report saying eager: true);
    a --context beyond max_position_embeddings (256) ran."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(pruned_dir), "--device", "cpu", "--json", str(out)]
    assert main([*argv, *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc bench: error:") and message in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    ("scaling", "positions"),
    [
        (None, 8192),
        ({"rope_type": "default", "rope_theta": 1e4}, 8192),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}, 32768),
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 1024}, 8192),
        ({"rope_type": "dynamic", "factor": 2.0}, 16384),
    ],
)
def test_positions_follow_a_configured_rope_scaling(scaling, positions):
    """A YaRN model serves original x factor positions beyond max_position_embeddings."""
    from transformers import LlamaConfig

    from restorelcc.hf.families import model_positions

    config = LlamaConfig(max_position_embeddings=8192)
    config.rope_parameters = scaling
    assert model_positions(config) == positions


def test_cuda_timings_refuse_rounds_and_streams_without_bitmaps():
    from restorelcc.cli import build_parser
    from restorelcc.commands.bench import _check_timing_options

    def check(*arguments):
        args = build_parser().parse_args(["bench", "--model", "m", *arguments])
        _check_timing_options(args, torch.device("cuda"))

    check("--eager", "--rep-ms", "5", "--decode-streams")  # all used (--rep-ms by --eager too)
    with pytest.raises(ValueError, match="^--rounds: CPU only; on CUDA each job is timed for"):
        check("--rounds", "3")
    with pytest.raises(ValueError, match="--decode-streams: it lays out bitmap weights"):
        check("--format", "2:4", "--decode-streams")


def test_decode_streams_are_refused_where_no_weight_is_a_bitmap():
    from restorelcc.commands.swap_options import check_decode_streams
    from restorelcc.hf.swap import SwappedGroup, SwapReport

    args = types.SimpleNamespace(decode_streams=True, model="m")
    bitmap = SwappedGroup(0, "qkv", "bitmap", (96, 64), 0.5, 12288, 4000, 4300)
    two_four = SwappedGroup(0, "o_proj", "2:4", (64, 64), 0.5, 8192, 2300)
    check_decode_streams(args, SwapReport("auto", "auto", [bitmap, two_four]))
    with pytest.raises(ValueError, match=r"m has no weight packed as a bitmap \(formats: 2:4\)"):
        check_decode_streams(args, SwapReport("auto", "auto", [two_four]))
    check_decode_streams(types.SimpleNamespace(decode_streams=False), SwapReport("auto", "auto"))


def test_nothing_to_swap_fails_before_the_reference_logits(tmp_path, monkeypatch, capsys):
    import restorelcc.commands.bench as bench

    def no_references(*args):
        raise AssertionError("the reference logits were computed before the swap was checked")

    monkeypatch.setattr(bench, "reference_logits", no_references)
    dense = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "dense")
    capsys.readouterr()
    argv = ["bench", "--model", str(dense), "--context", "8", "--prefill", "8", "--quiet"]
    assert main([*argv, "--json", str(tmp_path / "b")]) == 2
    assert "no attention projection is pruned" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "arguments", "message"),
    [
        ("dense", [], "no attention projection is pruned"),
        ("unstructured", ["--format", "2:4"], "does not fit the 2:4 format"),
        ("missing", [], "cannot resolve model"),
    ],
)
def test_bench_refuses_with_one_line(make, arguments, message, tmp_path, capsys):
    path = tmp_path / make
    if make == "dense":
        save_checkpoint(tiny_model("llama-gqa"), path)
    elif make == "unstructured":
        save_checkpoint(prune_attention(tiny_model("llama-gqa"), "unstructured"), path)
    out = tmp_path / "bench.json"
    capsys.readouterr()  # the saving above
    argv = ["bench", "--model", str(path), "--context", "8", "--prefill", "8", "--quiet"]
    rc = main([*argv, "--json", str(out), *arguments])
    assert rc == 2
    err = capsys.readouterr().err.strip()  # --quiet: not even transformers' loading bar
    assert err.startswith("restorelcc bench: error:") and message in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_bench_rejects_bad_numbers(pruned_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", str(pruned_dir), "--batches", "0"])
    assert exit_info.value.code == 2
    assert "0 is not positive" in capsys.readouterr().err


# Memory running out as torch says it: CUDA's error, and the CPU allocator's RuntimeError.
OUT_OF_MEMORY = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 100000000000000 bytes. Error code 12"
    ),
}


@pytest.mark.parametrize("kind", sorted(OUT_OF_MEMORY))
def test_no_memory_for_the_check_says_what_it_holds_and_to_skip_it(
    pruned_dir, tmp_path, monkeypatch, capsys, kind
):
    """The CPU allocator's error, a plain RuntimeError, went through as a traceback (only
    CUDA's OutOfMemoryError was caught). Here the check's float64 copies fail."""

    def out_of_memory(self, *args, **kwargs):
        raise OUT_OF_MEMORY[kind]()

    monkeypatch.setattr(torch.Tensor, "double", out_of_memory)
    argv = ["bench", "--model", str(pruned_dir), "--context", "8", "--prefill", "8"]
    assert main([*argv, "--quiet", "--json", str(tmp_path / "b.json")]) == 2
    from restorelcc.commands.bench_timing import CHECK_MEMORY

    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("restorelcc bench: error: out of memory for the check of the swapped")
    assert f"which holds {CHECK_MEMORY}; rerun with --no-check" in err


@pytest.mark.parametrize("kind", sorted(OUT_OF_MEMORY))
def test_no_memory_to_swap_beside_the_dense_weights_says_to_skip_the_check(
    pruned_dir, tmp_path, monkeypatch, capsys, kind
):
    """The check keeps the dense projections while the swap packs them; without it the
    same error is the swap's own, not blamed on the check."""
    import lcc_kernels

    def out_of_memory(*args, **kwargs):
        raise OUT_OF_MEMORY[kind]()

    monkeypatch.setattr(lcc_kernels, "pack_many", out_of_memory)
    argv = ["bench", "--model", str(pruned_dir), "--context", "8", "--prefill", "8", "--quiet"]
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 2
    assert "rerun with --no-check" in capsys.readouterr().err
    with pytest.raises(type(OUT_OF_MEMORY[kind]()), match="allocate"):
        main([*argv, "--no-check", "--json", str(tmp_path / "b.json")])


def test_an_unsupported_family_fails_before_the_weights_load(
    tmp_path, gpt2_checkpoint, no_model_loads, capsys
):
    path = gpt2_checkpoint
    capsys.readouterr()
    assert main(["bench", "--model", str(path), "--json", str(tmp_path / "b.json")]) == 2
    assert "model family 'gpt2' is not supported" in capsys.readouterr().err


def test_decode_streams_are_checked_on_the_dry_run_report():
    from restorelcc.commands.swap_options import check_decode_streams
    from restorelcc.hf.swap import swap_attention

    args = types.SimpleNamespace(decode_streams=True, model="m")
    model_24 = prune_attention(tiny_model("llama-gqa"), "2:4")
    planned = swap_attention(model_24, decode_streams=True, dry_run=True)
    with pytest.raises(ValueError, match=r"m has no weight packed as a bitmap \(formats: 2:4\)"):
        check_decode_streams(args, planned)
    unstructured = prune_attention(tiny_model("llama-gqa"), "unstructured", layers=[1])
    planned = swap_attention(unstructured, decode_streams=True, dry_run=True)
    check_decode_streams(args, planned)  # layer 1's groups would be bitmaps
