"""``restorelcc bench`` and ``restorelcc.latency``: the timed calls compute what a plain
forward computes, the logits check can fail, and the command's report and errors."""

import json
import types

import pytest
import torch
from _hf_swap_helpers import attention, prune_attention, prune_mlp

from restorelcc.cli import main
from restorelcc.latency import decode_step, prefill, time_call
from restorelcc.testing import byte_tokenizer, tiny_model


def _save(model, path):
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def pruned_dir(tmp_path):
    return _save(prune_attention(tiny_model("llama-gqa"), "2:4"), tmp_path / "pruned")


@torch.no_grad()
def test_decode_step_is_a_repeatable_step_after_its_context():
    model = tiny_model("llama-3x5").eval()
    step = decode_step(model, batch=2, context=7, generator=torch.Generator().manual_seed(3))
    first, second = step(), step()  # the cache is reset between calls
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, model.config.vocab_size, (2, 7), generator=generator)
    token = torch.randint(0, model.config.vocab_size, (2, 1), generator=generator)
    full = model(torch.cat([context, token], dim=1)).logits[:, -1:]
    assert first.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, second)


@torch.no_grad()
def test_prefill_is_the_last_logits_of_a_plain_forward():
    model = tiny_model("qwen2-gqa").eval()
    run = prefill(model, tokens=9, generator=torch.Generator().manual_seed(5))
    ids = torch.randint(
        0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(run(), model(ids).logits[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(), model(ids).logits[:, -1:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_calls_repeat_on_a_sliding_window_cache():
    """Mistral's static cache layers slide: they also keep their length as a Python int,
    which the reset must rewind too (else later calls roll the cache)."""
    model = tiny_model("mistral-gqa").eval()
    step = decode_step(model, batch=2, context=7, generator=torch.Generator().manual_seed(3))
    first, second, third = step(), step(), step()
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, model.config.vocab_size, (2, 7), generator=generator)
    token = torch.randint(0, model.config.vocab_size, (2, 1), generator=generator)
    full = model(torch.cat([context, token], dim=1)).logits[:, -1:]
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, second) and torch.equal(first, third)
    run = prefill(model, tokens=9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(run(), run())


def test_time_call_on_the_cpu_counts_its_rounds():
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), rounds=4)
    assert len(calls) == 5  # one warm-up
    assert 0 <= timing["p20_ms"] <= timing["median_ms"] <= timing["p80_ms"]
    assert timing["method"] == "wall clock, 4 rounds"
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        time_call(lambda: None, torch.device("cpu"), rounds=0)


def _swap_then_shift_rows(shift_where):
    """A swap (as bench does it) that then adds 1e-3 to layer 1's o_proj output wherever
    ``shift_where(output)`` says (a compensation applied twice, say)."""
    import restorelcc.commands.bench as bench

    real = bench.swap_pruned_attention

    def swap(model, *args, dry_run=False):
        report = real(model, *args, dry_run=dry_run)
        if dry_run:  # nothing swapped to shift
            return report
        o_proj = attention(model, 1).o_proj

        def shifted(x):  # an instance attribute: no hook, which unswap would refuse
            out = type(o_proj).forward(o_proj, x)
            return out + 1e-3 if shift_where(out) else out

        o_proj.forward = shifted
        return report

    return swap


@pytest.mark.parametrize(
    ("shift_where", "failing"),
    [
        (lambda out: True, {"decode", "prefill"}),
        (lambda out: out.shape[-2] == 1, {"decode"}),  # decode rows only: a decode-only plan
    ],
    ids=["everywhere", "decode-only"],
)
def test_the_logits_check_runs_on_each_timed_call(
    pruned_dir, tmp_path, monkeypatch, capsys, shift_where, failing
):
    import restorelcc.commands.bench as bench

    monkeypatch.setattr(bench, "swap_pruned_attention", _swap_then_shift_rows(shift_where))
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "--model", str(pruned_dir), "--batches", "1", "2", "--context", "8",
         "--prefill", "12", "--rounds", "1", "--device", "cpu", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 1 and "logits check FAILED" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert not report["logits_check"]["ok"]
    for row in report["rows"]:
        check = row["logits_check"]
        assert check["ok"] == (row["phase"] not in failing), row
        assert check["ok"] or check["error"] > check["limit"]


def test_bench_reports_swapped_and_linear_timings(pruned_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "--model", str(pruned_dir), "--batches", "1", "3", "--context", "8",
         "--prefill", "12", "--rounds", "2", "--device", "cpu", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()  # --quiet held only during the command
    captured = capsys.readouterr()
    assert captured.err == ""
    printed = captured.out
    assert "logits check ok" in printed and "CPU: the swapped modules" in printed
    report = json.loads(out.read_text())
    assert report["formats"] == ["2:4"] and report["timing_claims"] is False
    assert report["logits_check"]["ok"] and report["dtype"] == "float32"
    assert [(r["phase"], r["batch"], r["tokens"]) for r in report["rows"]] == [
        ("decode", 1, 8),
        ("decode", 3, 8),
        ("prefill", 1, 12),
    ]
    for row in report["rows"]:
        assert row["speedup"] == row["linear_ms"] / row["swapped_ms"]
        assert row["linear"]["median_ms"] == row["linear_ms"] > 0
        assert row["logits_check"]["ok"]
    assert report["weight_bytes"]["swapped"] < report["weight_bytes"]["linear"]
    swap = report["swap"]
    assert swap["bytes_after"] < swap["bytes_before"] and len(swap["groups"]) == 4
    assert {"torch", "commit"} <= set(report["run_metadata"])


@torch.no_grad()
def test_bench_mlp_swaps_and_times_the_mlp_too(tmp_path, capsys):
    model = prune_mlp(prune_attention(tiny_model("llama-gqa"), "unstructured"), "unstructured")
    folder = _save(model, tmp_path / "pruned")
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(folder), "--batches", "1", "--context", "4", "--prefill",
            "--rounds", "1", "--device", "cpu", "--quiet", "--json", str(out)]  # fmt: skip
    assert main([*argv, "--mlp"]) == 0
    assert "attention and MLP weights" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["logits_check"]["ok"] and report["swap"]["mlp"] is True
    groups = {(g["layer"], g["group"]): g["format"] for g in report["swap"]["groups"]}
    names = ("qkv", "o_proj", "gate_up", "down_proj")
    assert groups == {(i, n): "bitmap" for i in range(2) for n in names}
    mlp_bytes = report["weight_bytes"]["swapped"]
    assert main(argv) == 0  # the attention alone: the MLP stays dense, more bytes are read
    assert json.loads(out.read_text())["weight_bytes"]["swapped"] > mlp_bytes


def test_eager_reaches_the_timer(pruned_dir, monkeypatch):
    import restorelcc.latency
    from restorelcc.commands.bench import _jobs, _time_jobs

    seen = []

    def fake_time_call(call, device, *, rounds, rep_ms, eager=False):
        seen.append((rounds, rep_ms, eager))
        return {"median_ms": 1.0, "method": "fake"}

    monkeypatch.setattr(restorelcc.latency, "time_call", fake_time_call)
    model = tiny_model("llama-gqa").eval()
    for eager in (True, False):
        args = types.SimpleNamespace(batches=[1], context=4, prefill=[], rounds=3, rep_ms=7,
                                     eager=eager)  # fmt: skip
        bar = types.SimpleNamespace(set_postfix_str=lambda text: None, update=lambda: None)
        timings, checks = _time_jobs(model, _jobs(args), torch.device("cpu"), args, "x", bar)
        assert timings == [{"median_ms": 1.0, "method": "fake"}] and checks == []
    assert seen == [(3, 7, True), (3, 7, False)]


@pytest.fixture
def no_weights_load(monkeypatch):
    import restorelcc.assets

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before the options were checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", refuse)


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
    pruned_dir, tmp_path, capsys, no_weights_load, arguments, message
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

    from restorelcc.commands.bench import _positions

    config = LlamaConfig(max_position_embeddings=8192)
    config.rope_parameters = scaling
    assert _positions(config) == positions


def test_cuda_timings_refuse_rounds_and_streams_without_bitmaps():
    from restorelcc.cli import build_parser
    from restorelcc.commands.bench import _check_timing_options

    def check(*arguments):
        args = build_parser().parse_args(["bench", "--model", "m", *arguments])
        _check_timing_options(args, torch.device("cuda"))

    check("--eager", "--rep-ms", "5", "--decode-streams")  # all used on CUDA
    with pytest.raises(ValueError, match="^--rounds: CPU only; on CUDA each job is timed for"):
        check("--rounds", "3")
    with pytest.raises(ValueError, match="--decode-streams: it lays out bitmap weights"):
        check("--format", "2:4", "--decode-streams")


def test_decode_streams_are_refused_where_no_weight_is_a_bitmap():
    from restorelcc.commands.bench import _check_decode_streams
    from restorelcc.hf.swap import SwappedGroup, SwapReport

    args = types.SimpleNamespace(decode_streams=True, model="m")
    bitmap = SwappedGroup(0, "qkv", "bitmap", (96, 64), 0.5, 12288, 4000, 4300)
    two_four = SwappedGroup(0, "o_proj", "2:4", (64, 64), 0.5, 8192, 2300)
    _check_decode_streams(args, SwapReport("auto", "auto", [bitmap, two_four]))
    with pytest.raises(ValueError, match=r"m has no weight packed as a bitmap \(formats: 2:4\)"):
        _check_decode_streams(args, SwapReport("auto", "auto", [two_four]))
    _check_decode_streams(types.SimpleNamespace(decode_streams=False), SwapReport("auto", "auto"))


def test_nothing_to_swap_fails_before_the_reference_logits(tmp_path, monkeypatch, capsys):
    import restorelcc.commands.bench as bench

    def no_references(*args):
        raise AssertionError("the reference logits were computed before the swap was checked")

    monkeypatch.setattr(bench, "_reference_logits", no_references)
    dense = _save(tiny_model("llama-gqa"), tmp_path / "dense")
    capsys.readouterr()
    argv = ["bench", "--model", str(dense), "--context", "8", "--prefill", "8", "--quiet"]
    assert main([*argv, "--json", str(tmp_path / "b")]) == 2
    assert "no attention projection is pruned" in capsys.readouterr().err


def test_decode_streams_bytes_swap_the_bitmaps_for_their_layouts():
    from restorelcc.commands.bench import decode_streams_bytes
    from restorelcc.hf.swap import SwappedGroup, SwapReport

    groups = [
        SwappedGroup(0, "qkv", "bitmap", (96, 64), 0.5, 12288, 4000, 4300),
        SwappedGroup(0, "o_proj", "2:4", (64, 64), 0.5, 8192, 2300),  # no streams for 2:4
    ]
    report = SwapReport("auto", "auto", groups, decode_streams=True)
    assert decode_streams_bytes(report, 100_000) == 100_000 - 4000 + 4300
    assert decode_streams_bytes(SwapReport("auto", "auto", groups[1:]), 100_000) is None


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
        _save(tiny_model("llama-gqa"), path)
    elif make == "unstructured":
        _save(prune_attention(tiny_model("llama-gqa"), "unstructured"), path)
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


def test_no_memory_for_the_check_says_to_skip_it(pruned_dir, tmp_path, monkeypatch, capsys):
    import restorelcc.commands.bench as bench

    def out_of_memory(model):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench, "copy", types.SimpleNamespace(deepcopy=out_of_memory))
    argv = ["bench", "--model", str(pruned_dir), "--context", "8", "--prefill", "8"]
    assert main([*argv, "--quiet", "--json", str(tmp_path / "b.json")]) == 2
    assert "rerun with --no-check" in capsys.readouterr().err


def test_an_unsupported_family_fails_before_the_weights_load(tmp_path, monkeypatch, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    import restorelcc.assets

    path = _save(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=259)),
                 tmp_path / "gpt2")  # fmt: skip

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the family was checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", no_weights)
    capsys.readouterr()
    assert main(["bench", "--model", str(path), "--json", str(tmp_path / "b.json")]) == 2
    assert "model family 'gpt2' is not supported" in capsys.readouterr().err


def test_bench_checks_with_a_dry_run_and_packs_once_after_the_references(
    pruned_dir, tmp_path, monkeypatch
):
    """The swap used to be done twice (once to fail early, unswapped, then again): its
    checks are now a dry run, and every weight is packed once, after the references."""
    import lcc_kernels
    import restorelcc.commands.bench as bench

    events = []
    real_pack, real_references = lcc_kernels.pack_many, bench._reference_logits

    def pack_many(weights, format, **kwargs):
        events.append("pack")
        return real_pack(weights, format, **kwargs)

    def references(*args):
        events.append("references")
        return real_references(*args)

    monkeypatch.setattr(lcc_kernels, "pack_many", pack_many)
    monkeypatch.setattr(bench, "_reference_logits", references)
    argv = ["bench", "--model", str(pruned_dir), "--batches", "1", "--context", "4",
            "--prefill", "--rounds", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    assert events == ["references"] + ["pack"] * 4  # q/k/v and o_proj of 2 layers
    assert json.loads((tmp_path / "b.json").read_text())["swap"]["dry_run"] is False
    events.clear()
    assert main([*argv, "--no-check", "--json", str(tmp_path / "b.json")]) == 0
    assert events == ["pack"] * 4


def test_decode_streams_are_checked_on_the_dry_run_report():
    from restorelcc.commands.bench import _check_decode_streams
    from restorelcc.hf.swap import swap_attention

    args = types.SimpleNamespace(decode_streams=True, model="m")
    model_24 = prune_attention(tiny_model("llama-gqa"), "2:4")
    planned = swap_attention(model_24, decode_streams=True, dry_run=True)
    with pytest.raises(ValueError, match=r"m has no weight packed as a bitmap \(formats: 2:4\)"):
        _check_decode_streams(args, planned)
    unstructured = prune_attention(tiny_model("llama-gqa"), "unstructured", layers=[1])
    planned = swap_attention(unstructured, decode_streams=True, dry_run=True)
    _check_decode_streams(args, planned)  # layer 1's groups would be bitmaps
