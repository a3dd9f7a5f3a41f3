"""lcc_kernels.bench_report: how the acceptance checks are judged from the GPU suite's
rows (large M as dispatched, the verdict rounds, required checks, timing methods)."""

import json
import os

import pytest
from _suite_helpers import timing, write

from lcc_kernels import acceptance, bench_report
from lcc_kernels.dispatch import DispatchTable

SHAPE = "llama3-8b-o"
H200 = {"gpu": "NVIDIA H200", "sm_count": 132, "copy_bandwidth_bytes_per_s": 4e12}


def _tiled(block_m, block_n, block_k):
    return {
        **timing(SHAPE, 1, "ours", 1.0)["plan"],
        "backend": "tiled",
        "block_m": block_m,
        "block_n": block_n,
        "block_k": block_k,
        "split_k": 1,
    }


def _checks(out, name, shape=SHAPE):
    return {
        (c["m"], c["kind"]): c
        for c in bench_report.summarize(out)["acceptance"]
        if c["check"] == name and c["shape"] == shape
    }


def test_large_m_is_judged_on_what_the_dispatcher_runs(tmp_path):
    """The dispatcher with the run's table falls back to dense where ours is slower: not a
    pass unless our kernels alone meet 0.9x; the winner and the Triton ratio are named."""
    timings = [
        timing(SHAPE, 1024, "dense", 100.0),
        timing(SHAPE, 1024, "ours", 1000.0, "2:4", plan=_tiled(128, 128, 64)),  # 0.1x
        timing(SHAPE, 1024, "ours", 105.0, "bitmap50", plan=_tiled(128, 64, 64)),  # 0.95x
        timing(SHAPE, 1024, "ours", 80.0, "bitmap70", plan=_tiled(128, 64, 64)),  # 1.25x
        timing(SHAPE, 4096, "dense", 400.0),
        # Timed only in the extra tile: a weight in the default tile gets the rules' plan.
        timing(SHAPE, 4096, "ours", 300.0, "bitmap50", plan=_tiled(128, 128, 64)),
    ]
    write(tmp_path, H200, timings)
    checks = _checks(tmp_path, "large_m_dispatched_vs_dense")
    fallback = checks[1024, "2:4"]
    assert (fallback["status"], fallback["measured"]) == ("fallback", 1.0)
    assert fallback["winner"] == "dense F.linear" and fallback["triton_ratio"] == 0.1
    assert "met only by dispatching to dense F.linear" in fallback["reason"]
    both = checks[1024, "bitmap50"]  # dense runs (5% faster), and ours alone meets 0.9x
    assert (both["status"], both["winner"], both["triton_ratio"]) == (
        "pass",
        "dense F.linear",
        pytest.approx(0.9524, abs=1e-4),
    )
    ours = checks[1024, "bitmap70"]
    assert (ours["status"], ours["measured"], ours["winner"]) == ("pass", 1.25, "ours (tiled)")
    missed = checks[4096, "bitmap50"]
    assert (
        missed["status"] == "unmeasured"
        and "ours (tiled), which was not timed" in (missed["reason"])
    )
    info = _checks(tmp_path, "large_m_triton_only_vs_dense (info)")
    assert info[1024, "2:4"]["status"] == "fail" and info[4096, "bitmap50"]["measured"] == (
        pytest.approx(1.3333, abs=1e-4)
    )
    summary = bench_report.summarize(tmp_path)
    assert summary["acceptance_counts"]["fallback"] == 1
    text = bench_report.format_summary(summary)
    assert "fallback" in text and "triton_ratio 0.1" in text and "winner dense F.linear" in text


def test_every_required_check_appears_unmeasured_without_rows(tmp_path):
    """Only M = 1 rows: the large-M, M = 16 and bias checks are still listed."""
    timings = [timing(SHAPE, 1, "dense", 20.0)]
    timings += [timing(SHAPE, 1, "ours", 12.0, kind) for kind in acceptance.SPARSE_KINDS]
    write(tmp_path, H200, timings)
    checks = bench_report.summarize(tmp_path)["acceptance"]
    for shape in acceptance.MAIN_SHAPES:
        for name, m, kind, threshold in acceptance.required_checks():
            found = [
                c
                for c in checks
                if (c["check"], c["shape"], c["m"], c["kind"]) == (name, shape, m, kind)
            ]
            assert len(found) == 1, (name, shape, m, kind)
            assert found[0]["threshold"] == threshold
    bias = [c for c in checks if c["check"] == "bias_epilogue_cost"]
    assert bias and all(c["status"] == "unmeasured" and c["reason"] for c in bias)
    large = [c for c in checks if c["check"] == "large_m_dispatched_vs_dense"]
    assert {(c["m"], c["status"]) for c in large} == {(1024, "unmeasured"), (4096, "unmeasured")}
    env = dict(H200, main_shapes=["smoke-o"])  # a run names its own main shapes
    write(tmp_path, env, timings)
    assert {c["shape"] for c in bench_report.summarize(tmp_path)["acceptance"]} == {
        "smoke-o",
        SHAPE,
    }


def _verdict(m, provider, values, kind="dense", **extra):
    return [
        timing(SHAPE, m, provider, v, kind, tag="verdict", round=r, **extra)
        for r, v in enumerate(values)
    ]


def test_decode_speedup_is_judged_on_the_alternated_re_timing(tmp_path):
    """Best of many candidates against one dense timing says 1.67x; re-timed in turn with
    dense the winner is 1.38x: that fails. Without the rounds the check is unmeasured."""
    candidates = [timing(SHAPE, 1, "ours", us, "2:4", bytes=2e6) for us in (6.0, 6.6, 7.1, 6.9)]
    rows = [timing(SHAPE, 1, "dense", 10.0), *candidates]
    write(tmp_path, H200, rows)
    before = _checks(tmp_path, "speedup_vs_dense_F.linear")[1, "2:4"]
    assert before["status"] == "unmeasured" and before["best_of"] == pytest.approx(1.6667, 1e-4)
    rows += _verdict(1, "dense", [9.0, 9.2, 8.8, 8.9])  # median 8.95
    rows += _verdict(1, "ours", [6.5, 6.4, 6.6, 6.3], "2:4", bytes=2e6)  # median 6.45
    write(tmp_path, H200, rows)
    check = _checks(tmp_path, "speedup_vs_dense_F.linear")[1, "2:4"]
    assert (check["status"], check["measured"], check["rounds"]) == (
        "fail",
        pytest.approx(8.95 / 6.45, abs=1e-4),
        4,
    )
    bandwidth = _checks(tmp_path, "bandwidth_vs_device_copy")[1, "2:4"]
    assert bandwidth["measured"] == pytest.approx(2e6 / 6.45e-6 / 4e12, abs=1e-4)


def test_retimed_rounds_give_their_median_mean_of_the_middle_two_when_even():
    rounds = [timing(SHAPE, 1, "dense", us, round=r) for r, us in enumerate((4.0, 1.0, 3.0, 2.0))]
    merged = acceptance.retimed(rounds, shape=SHAPE, m=1, provider="dense")
    assert (merged["median_ms"], merged["rounds"]) == (pytest.approx(2.5e-3), 4)
    assert acceptance.retimed(rounds[:3], provider="dense")["median_ms"] == pytest.approx(3e-3)
    assert acceptance.retimed(rounds, provider="ours") is None


def test_bias_cost_compares_the_medians_of_its_rounds(tmp_path):
    rows = [
        timing(SHAPE, 1, "ours", us, "2:4", bias=bias, tag="bias_cost", round=r)
        for r, (without, with_bias) in enumerate(((10.0, 10.1), (10.2, 10.4), (9.9, 10.0)))
        for bias, us in ((False, without), (True, with_bias))
    ]
    write(tmp_path, H200, rows)
    check = _checks(tmp_path, "bias_epilogue_cost")[1, "2:4"]
    assert (check["status"], check["measured"], check["rounds"]) == (
        "pass",
        pytest.approx(10.1 / 10.0 - 1, abs=1e-4),
        3,
    )


def test_timings_taken_by_different_methods_are_not_compared(tmp_path):
    rows = _verdict(1, "dense", [10.0, 10.0])
    rows += _verdict(1, "ours", [5.0, 5.0], "2:4", method="eager (RuntimeError)")
    rows += _verdict(1, "ours", [6.0], "bitmap50")
    rows += _verdict(1, "ours", [6.0], "bitmap50", method="eager (RuntimeError)")
    write(tmp_path, H200, rows)
    checks = _checks(tmp_path, "speedup_vs_dense_F.linear")
    two_four = checks[1, "2:4"]
    assert two_four["status"] == "unmeasured" and two_four["mismatched_ratio"] == 2.0
    assert two_four["reason"] == "timed differently: cuda_graph vs eager (RuntimeError)"
    mixed = checks[1, "bitmap50"]  # its own rounds disagree
    assert mixed["status"] == "unmeasured" and "mixed: cuda_graph, eager" in mixed["reason"]


def test_results_are_replaced_whole(tmp_path, monkeypatch):
    write(tmp_path, H200, [timing(SHAPE, 1, "dense", 10.0)])
    (tmp_path / "summary.json").write_text("old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bench_report.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        bench_report.write_results(tmp_path)
    assert (tmp_path / "summary.json").read_text() == "old"
    kept = ["env.json", "summary.json", "timings.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept  # no temporary file left
    monkeypatch.undo()
    summary = bench_report.write_results(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert json.loads((tmp_path / "dispatch_table.json").read_text())["entries"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dispatch_table.json",
        "env.json",
        "summary.json",
        "timings.jsonl",
    ]


def test_results_are_flushed_through_a_temporary_file_of_their_own(tmp_path, monkeypatch):
    """Another writer's temporary file (here, where the fixed name used to be) is left
    alone; each result is flushed to disk before the rename, with the usual file mode."""
    write(tmp_path, H200, [timing(SHAPE, 1, "dense", 10.0)])
    (tmp_path / ".summary.json.tmp").mkdir()
    synced = []
    fsync = bench_report.os.fsync
    monkeypatch.setattr(bench_report.os, "fsync", lambda fd: (synced.append(fd), fsync(fd)))
    summary = bench_report.write_results(tmp_path)
    assert len(synced) == 2 and (tmp_path / ".summary.json.tmp").is_dir()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not os.path.exists(bench_report.PROC_STATUS), reason="Linux /proc only")
def test_results_get_the_mode_the_umask_allows_and_the_umask_is_never_set(tmp_path, monkeypatch):
    """0o027 (not the fallback's 0o022) makes 0o640 files, and writing only reads the mask:
    setting it, even briefly, would give another thread's new files the wrong mode."""
    write(tmp_path, H200, [timing(SHAPE, 1, "dense", 10.0)])
    real_umask, set_to = os.umask, []
    monkeypatch.setattr(os, "umask", lambda mask: (set_to.append(mask), real_umask(mask))[1])
    previous = real_umask(0o027)
    try:
        bench_report.write_results(tmp_path)
        after = real_umask(previous)
    finally:
        real_umask(previous)
    assert set_to == [] and after == 0o027
    for name in ("summary.json", "dispatch_table.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


@pytest.mark.parametrize("status", [None, "Name:\tpython\nPid:\t1\n"], ids=["absent", "no-line"])
def test_without_a_umask_line_to_read_the_usual_mask_is_assumed(tmp_path, monkeypatch, status):
    path = tmp_path / "status"
    if status is not None:
        path.write_text(status)
    monkeypatch.setattr(bench_report, "PROC_STATUS", str(path))
    assert bench_report._umask() == bench_report.DEFAULT_UMASK == 0o022


def test_timings_of_ours_without_a_plan_make_no_table_entry(tmp_path):
    """A plan-less bitmap row has no plan, nor tile, to record: the table still loads."""
    timings = [
        timing(SHAPE, 1, "dense", 10.0),
        timing(SHAPE, 1, "ours", 5.0, "bitmap50", plan=None),
        timing(SHAPE, 1, "ours", 6.0, "2:4"),
    ]
    write(tmp_path, H200, timings)
    table = bench_report.build_dispatch_table(tmp_path)
    assert [(e["format"], e["plan"]["backend"]) for e in table["entries"]] == [("2:4", "skinny")]
    bench_report.write_results(tmp_path)
    dispatch_table = json.loads((tmp_path / "dispatch_table.json").read_text())
    assert DispatchTable.from_dict(dispatch_table).device == H200["gpu"]
