"""lcc_kernels.bench_report on hand-made GPU-suite rows: the summary judges each acceptance
ratio (decode on the verdict rounds, large M as dispatched, bias cost, eager calls for
information), the dispatch table picks the winners, and failed and skipped correctness
checks are counted apart."""

import json
import time

import pytest
from _suite_helpers import lines, suite_phases, suite_plans, suite_runner, timing, write

from lcc_kernels import bench_report
from lcc_kernels.dispatch import DispatchTable


def _rounds(shape, m, provider, median_us, kind="dense", **extra):
    """Three verdict rounds around `median_us` (their true median)."""
    return [
        timing(shape, m, provider, median_us * f, kind, tag="verdict", round=r, **extra)
        for r, f in enumerate((1.0, 1.02, 0.98))
    ]


def test_summary_judges_ratios_and_the_table_picks_winners(tmp_path):
    shape = "llama3-8b-o"
    eager = {"tag": "eager", "method": "eager_loop"}
    timings = [
        timing(shape, 1, "dense", 10.0),
        timing(shape, 1, "ours", 6.0, "2:4", bytes=19e6),
        timing(shape, 1, "ours", 7.5, "bitmap50"),
        timing(shape, 1, "cusparselt", 20.0, "2:4"),
        timing(shape, 1, "cutlass", 11.0, "2:4"),
        # The verdict rounds: what the decode checks judge.
        *_rounds(shape, 1, "dense", 10.0),
        *_rounds(shape, 1, "ours", 6.0, "2:4", bytes=19e6),  # 1.67x: pass
        *_rounds(shape, 1, "ours", 7.5, "bitmap50"),  # 1.33x: fail
        *_rounds(shape, 1, "cusparselt", 20.0, "2:4"),
        *_rounds(shape, 1, "cutlass", 11.0, "2:4"),  # ours 1.83x faster: fail (needs 2x)
        timing(shape, 1, "ours", 6.0, "2:4", tag="bias_cost"),
        timing(shape, 1, "ours", 5.94, "2:4", bias=False, tag="bias_cost"),  # 1%: pass
        timing(shape, 1024, "dense", 1.0),
        timing(shape, 1024, "ours", 1.5, "2:4"),
        timing(shape, 1024, "cutlass", 0.8, "2:4"),
        # Uncaptured calls: informative only, never in the table or the graph-timed checks.
        timing(shape, 1, "dense", 12.0, **eager),
        timing(shape, 1, "ours", 15.0, "2:4", plan=None, **eager),
        timing(shape, 1, "ours", 1.0, "bitmap50", plan=None, **eager),
    ]
    write(tmp_path, {"gpu": "NVIDIA H200", "copy_bandwidth_bytes_per_s": 4e12}, timings)
    checks = bench_report.summarize(tmp_path)["acceptance"]

    def status(name, m, kind):
        found = [
            c
            for c in checks
            if (c["check"], c["shape"], c["m"], c["kind"]) == (name, shape, m, kind)
        ]
        assert len(found) == 1, (name, m, kind)
        return found[0]["status"], found[0].get("measured")

    assert status("speedup_vs_dense_F.linear", 1, "2:4") == (
        "pass",
        pytest.approx(1.6667, abs=1e-3),
    )
    assert status("speedup_vs_dense_F.linear", 1, "bitmap50")[0] == "fail"
    assert status("speedup_vs_dense_F.linear", 1, "bitmap70")[0] == "unmeasured"
    assert status("bandwidth_vs_device_copy", 1, "2:4") == ("pass", pytest.approx(0.7917, abs=1e-3))
    assert status("speedup_vs_torch_semi_structured", 1, "2:4")[0] == "fail"
    assert status("bias_epilogue_cost", 1, "2:4") == ("pass", pytest.approx(0.0101, abs=1e-3))
    # The dispatcher runs CUTLASS there (1.25x dense); our kernels alone are at 0.67x.
    assert status("large_m_dispatched_vs_dense", 1024, "2:4") == ("fallback", 1.25)
    assert status("large_m_triton_only_vs_dense (info)", 1024, "2:4")[0] == "fail"
    assert status("eager_call_vs_dense (info)", 1, "2:4") == ("fail", 0.8)
    assert status("eager_call_vs_dense (info)", 1, "bitmap70")[0] == "unmeasured"

    table = bench_report.build_dispatch_table(tmp_path)
    plans = {(e["format"], e["density"], e["m_bucket"]): e["plan"] for e in table["entries"]}
    assert plans["2:4", None, 1]["backend"] == "skinny"
    assert plans["2:4", None, 1024] == {
        **plans["2:4", None, 1024],
        "backend": "semi_structured",
        "semi_structured": "cutlass",
    }
    assert plans["bitmap", 0.5, 1]["backend"] == "skinny"  # dense is slower there
    assert DispatchTable.from_dict(table).device == "NVIDIA H200"


def test_summary_counts_failed_and_skipped_checks_apart(tmp_path):
    write(tmp_path, {"gpu": "NVIDIA H200"}, [])
    rows = [
        {"name": "cuda_graph_replay", "ok": True, "status": "ok"},
        {"name": "split_k_bitwise_determinism", "ok": False, "status": "ok"},
        {"name": "semi_structured_round_trip_cutlass", "ok": False, "status": "error"},
        {"name": "compiled_cuda_graphs", "status": "skipped", "reason": "budget"},
    ]
    (tmp_path / "correctness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = bench_report.summarize(tmp_path)
    assert [r["name"] for r in summary["correctness"]["failed"]] == [r["name"] for r in rows[1:3]]
    assert summary["correctness"]["skipped"] == rows[3:]
    assert "4 checks, 2 failed, 1 skipped" in bench_report.format_summary(summary)


def test_the_compiled_check_starts_only_with_its_reserve_of_the_correctness_cap(tmp_path):
    """torch.compile cannot be cut short once started: with less than its reserve left of
    the phase cap (though the whole budget has plenty), it is skipped for the budget."""
    runner = suite_runner.Runner(tmp_path, suite_plans.config(True), deadline=float("inf"))
    runner.phase = "correctness"
    (compiled,) = [p for p in suite_phases.correctness_passes(runner) if p.name == "compiled"]
    reasons = []
    for left_s in (suite_phases.COMPILED_CHECK_RESERVE_S - 5, 1e4):
        runner.phase_deadline = time.time() + left_s
        suite_phases.run_passes(runner, [compiled])
        row = lines(tmp_path / "correctness.jsonl")[-1]
        assert row["name"] == "compiled_cuda_graphs"
        reasons.append(row.get("reason"))
    assert reasons[0] == "budget" and reasons[1] != "budget"  # "needs CUDA" on a CPU


def test_semi_structured_checks_are_required_only_at_the_issues_m(tmp_path):
    """Issue 5's "M <= 16" problems are M = 1 and 16 (SEMI_STRUCTURED_M): the sweep's rows
    at M = 2, 4 and 8 give informational checks, which acceptance_counts leaves out, so
    that it counts each main shape's required checks once."""
    from lcc_kernels import acceptance

    shape = "llama3-8b-o"
    providers = (("dense", 10.0, "dense"), ("cusparselt", 20.0, "2:4"), ("ours", 6.0, "2:4"))
    timings = [timing(shape, m, p, us, kind) for m in (1, 2, 4, 8, 16) for p, us, kind in providers]
    write(tmp_path, {"gpu": "NVIDIA H200", "sm_count": 132}, timings)
    summary = bench_report.summarize(tmp_path)
    semi = {
        c["m"]: c["check"]
        for c in summary["acceptance"]
        if c["check"].startswith("speedup_vs_torch_semi_structured") and c["shape"] == shape
    }
    name = "speedup_vs_torch_semi_structured"
    assert semi == {m: name + ("" if m in (1, 16) else " (info)") for m in (1, 2, 4, 8, 16)}
    required = len(acceptance.MAIN_SHAPES) * len(acceptance.required_checks())
    assert sum(summary["acceptance_counts"].values()) == required


def test_a_pass_cut_by_the_budget_is_logged_and_summarised(tmp_path, monkeypatch):
    """The review's starved run: the budget stopped timing passes with no row, a phase
    end "ok" and 0 skipped. Each cut pass now logs a "budget" event (items done / listed)
    that summary.json and the text summary report."""
    runner = suite_runner.Runner(tmp_path, suite_plans.config(True), deadline=float("inf"))
    runner.phase = "sweep"
    ran = []
    monkeypatch.setattr(runner, "run", lambda job, quick=False: ran.append(job))
    monkeypatch.setattr(runner, "time_left", lambda *args: len(ran) < 1)  # spent after one
    jobs = [suite_plans.Job("smoke-o", m, "dense", "dense") for m in (2, 3, 4)]
    passes = [suite_plans.Pass("required", lambda rows: jobs)]
    passes.append(suite_plans.Pass("candidates", lambda rows: jobs[:2]))
    suite_phases.run_passes(runner, passes)
    assert ran == jobs[:1]
    write(tmp_path, {"gpu": "NVIDIA H200"}, [])
    summary = bench_report.write_results(tmp_path)
    cuts = [
        {"phase": "sweep", "pass": "required", "done": 1, "total": 3},
        {"phase": "sweep", "pass": "candidates", "done": 0, "total": 2},
    ]
    assert summary["budget_cuts"] == cuts
    assert json.loads((tmp_path / "summary.json").read_text())["budget_cuts"] == cuts
    text = bench_report.format_summary(summary).splitlines()
    at = text.index("cut by the budget: 2 passes (items done / listed)")
    assert text[at + 1 : at + 3] == ["  sweep required 1/3", "  sweep candidates 0/2"]


def test_a_run_the_budget_did_not_cut_says_so(tmp_path):
    write(tmp_path, {"gpu": "NVIDIA H200"}, [])
    summary = bench_report.summarize(tmp_path)
    assert summary["budget_cuts"] == []
    assert "cut by the budget: 0 passes" in bench_report.format_summary(summary).splitlines()


def test_cutlass_left_out_on_hopper_is_recorded_and_said(tmp_path, monkeypatch):
    """On sm_90 the CUTLASS 2:4 jobs make no row at all: env.json says why and the summary
    prints it, where a GPU that runs them says nothing."""
    runner = suite_runner.Runner(tmp_path, suite_plans.config(True), deadline=float("inf"))
    monkeypatch.setattr("lcc_kernels.bench.copy_bandwidth", lambda device: 4e12)
    monkeypatch.setattr(
        "lcc_kernels.bench.environment",
        lambda device, commit: {"gpu": "NVIDIA H200", "capability": [9, 0], "torch": "2.11",
                                "triton": "3.6", "commit": commit},
    )  # fmt: skip
    texts = []
    for supported in (False, True):
        runner.cutlass_matmul = supported
        suite_phases.phase_env(runner, "0123456789abcdef")
        env = json.loads((tmp_path / "env.json").read_text())
        texts.append(bench_report.format_summary(bench_report.summarize(tmp_path)))
    expected = (
        "torch semi-structured CUTLASS: not run: torch runs its CUTLASS 2:4 matmul on "
        "compute capability 8.x only, this device's is 9.0"
    )
    assert expected in texts[0].splitlines()
    assert env["cutlass_semi_structured"] is None and "CUTLASS" not in texts[1]
