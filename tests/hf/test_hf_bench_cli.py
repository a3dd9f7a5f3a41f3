"""``restorelcc bench``: the report of swapped and linear timings, the check of each
timed call, the MLP swap, the timing options reaching the timer, the decode-streams bytes,
and a swap checked by a dry run and packed once. Its refusals: test_hf_bench_refusals.py;
the timed calls: test_hf_bench_latency.py."""

import json
import types

import pytest
import torch
from _hf_swap_helpers import attention, prune_attention, prune_mlp

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


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
    ("shift_where", "failing", "said"),
    [
        (
            lambda out: True,
            {"decode", "prefill"},
            "3 of 3 jobs (decode 1x8, decode 2x8, prefill 1x12)",
        ),
        # decode rows only (a decode-only plan): it said "FAILED on every job's call"
        (lambda out: out.shape[-2] == 1, {"decode"}, "2 of 3 jobs (decode 1x8, decode 2x8)"),
    ],
    ids=["everywhere", "decode-only"],
)
def test_the_check_runs_on_each_timed_call(
    pruned_dir, tmp_path, monkeypatch, capsys, shift_where, failing, said
):
    import restorelcc.commands.bench as bench

    monkeypatch.setattr(bench, "swap_pruned_attention", _swap_then_shift_rows(shift_where))
    out = tmp_path / "bench.json"
    rc = main(
        ["bench", "--model", str(pruned_dir), "--batches", "1", "2", "--context", "8",
         "--prefill", "12", "--rounds", "1", "--device", "cpu", "--quiet", "--json", str(out)]
    )  # fmt: skip
    failed = f"projection check FAILED on {said}: model.layers.1.self_attn.o_proj beyond the limit"
    assert rc == 1 and failed in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert not report["check"]["ok"]
    for row in report["rows"]:
        check = row["check"]
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
    assert "projection check ok" in printed and "CPU: the swapped modules" in printed
    report = json.loads(out.read_text())
    assert report["formats"] == ["2:4"] and report["timing_claims"] is False
    assert report["check"]["ok"] and report["dtype"] == "float32"
    assert [(r["phase"], r["batch"], r["tokens"]) for r in report["rows"]] == [
        ("decode", 1, 8),
        ("decode", 3, 8),
        ("prefill", 1, 12),
    ]
    for row in report["rows"]:
        assert row["speedup"] == row["linear_ms"] / row["swapped_ms"]
        assert row["linear"]["median_ms"] == row["linear_ms"] > 0
        assert row["check"]["ok"]
    assert report["weight_bytes"]["swapped"] < report["weight_bytes"]["linear"]
    swap = report["swap"]
    assert swap["bytes_after"] < swap["bytes_before"] and len(swap["groups"]) == 4
    assert {"torch", "commit"} <= set(report["run_metadata"])


@pytest.mark.parametrize("p80", [1.1, 1.5])
def test_rows_whose_timings_scatter_are_flagged(pruned_dir, tmp_path, capsys, monkeypatch, p80):
    """A busy machine makes speedups noise: the spread (p20..p80 over the median) of each
    row is reported, and rows past NOISY_SPREAD are named."""
    import restorelcc.latency

    def scattered(call, device, **options):
        call()
        return {"median_ms": 1.0, "p20_ms": 0.9, "p80_ms": p80, "method": "fake"}

    monkeypatch.setattr(restorelcc.latency, "time_call", scattered)
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(pruned_dir), "--batches", "1", "--context", "8",
            "--prefill", "8", "12", "--rounds", "3", "--device", "cpu", "--quiet",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [row["spread"] for row in rows] == [pytest.approx(p80 - 0.9)] * 3
    # each row as batch x tokens: it said "prefill 1, prefill 1", the prefills not told apart
    flagged = (
        "timings of decode 1x8, prefill 1x8, prefill 1x12 spread over more than 25% of their median"
    )
    assert (flagged in printed) == (p80 - 0.9 > 0.25)
    assert f"{p80 - 0.9:.0%}" in printed  # the table's spread column


@torch.no_grad()
def test_bench_mlp_swaps_and_times_the_mlp_too(tmp_path, capsys):
    model = prune_mlp(prune_attention(tiny_model("llama-gqa"), "unstructured"), "unstructured")
    folder = save_checkpoint(model, tmp_path / "pruned")
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(folder), "--batches", "1", "--context", "4", "--prefill",
            "--rounds", "1", "--device", "cpu", "--quiet", "--json", str(out)]  # fmt: skip
    assert main([*argv, "--mlp"]) == 0
    assert "attention and MLP weights" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["check"]["ok"] and report["swap"]["mlp"] is True
    groups = {(g["layer"], g["group"]): g["format"] for g in report["swap"]["groups"]}
    names = ("qkv", "o_proj", "gate_up", "down_proj")
    assert groups == {(i, n): "bitmap" for i in range(2) for n in names}
    mlp_bytes = report["weight_bytes"]["swapped"]
    assert main(argv) == 0  # the attention alone: the MLP stays dense, more bytes are read
    assert json.loads(out.read_text())["weight_bytes"]["swapped"] > mlp_bytes


def test_eager_reaches_the_timer(pruned_dir, monkeypatch):
    import restorelcc.latency
    from restorelcc.commands.bench import _jobs
    from restorelcc.commands.bench_timing import time_jobs

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
        timings, checks = time_jobs(model, _jobs(args), torch.device("cpu"), args, "x", bar)
        assert timings == [{"median_ms": 1.0, "method": "fake"}] and checks == []
    assert seen == [(3, 7, True), (3, 7, False)]


def test_decode_streams_bytes_swap_the_bitmaps_for_their_layouts():
    from restorelcc.commands.bench_summary import decode_streams_bytes
    from restorelcc.hf.swap import SwappedGroup, SwapReport

    groups = [
        SwappedGroup(0, "qkv", "bitmap", (96, 64), 0.5, 12288, 4000, 4300),
        SwappedGroup(0, "o_proj", "2:4", (64, 64), 0.5, 8192, 2300),  # no streams for 2:4
    ]
    report = SwapReport("auto", "auto", groups, decode_streams=True)
    assert decode_streams_bytes(report, 100_000) == 100_000 - 4000 + 4300
    assert decode_streams_bytes(SwapReport("auto", "auto", groups[1:]), 100_000) is None


def test_bench_checks_with_a_dry_run_and_packs_once_after_the_references(
    pruned_dir, tmp_path, monkeypatch
):
    """The swap used to be done twice (once to fail early, unswapped, then again): its
    checks are now a dry run, and every weight is packed once, after the references."""
    import lcc_kernels
    import restorelcc.commands.bench as bench

    events = []
    real_pack, real_references = lcc_kernels.pack_many, bench.reference_logits

    def pack_many(weights, format, **kwargs):
        events.append("pack")
        return real_pack(weights, format, **kwargs)

    def references(*args):
        events.append("references")
        return real_references(*args)

    monkeypatch.setattr(lcc_kernels, "pack_many", pack_many)
    monkeypatch.setattr(bench, "reference_logits", references)
    argv = ["bench", "--model", str(pruned_dir), "--batches", "1", "--context", "4",
            "--prefill", "--rounds", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    assert events == ["references"] + ["pack"] * 4  # q/k/v and o_proj of 2 layers
    assert json.loads((tmp_path / "b.json").read_text())["swap"]["dry_run"] is False
    events.clear()
    assert main([*argv, "--no-check", "--json", str(tmp_path / "b.json")]) == 0
    assert events == ["pack"] * 4
