"""benchmarks/compile_report.py: the kernels compile for an H100/H200 (sm_90) on this
machine, without spills, and the decode loops stay within their static issue budget.

The ceilings come from the SASS of the main loop (see the report's docstring); they are
upper bounds on the GPU speed-up, so a ceiling below an acceptance target of issue 5 means
the target cannot be met, whatever the GPU run shows. The stored report
of the running triton version (benchmarks/results/compile_sm90.json, or
compile_sm90_triton<version>.json for another version) is the baseline for the loop lengths.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "benchmarks" / "compile_report.py"
RESULTS = ROOT / "benchmarks" / "results"
# The default plans of both Llama-3-8B shapes, one file per triton version they were
# compiled with (the other compile_sm90_* files hold other shapes or every candidate plan).
BASELINES = (RESULTS / "compile_sm90.json", *sorted(RESULTS.glob("compile_sm90_triton*.json")))
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# Static instruction counts move a little with the compiler; more than this is a change.
LOOP_TOLERANCE = 1.10

pytestmark = pytest.mark.skipif(
    not all((TOOLS / tool).exists() for tool in ("ptxas", "cuobjdump", "nvdisasm")),
    reason="triton's bundled NVIDIA tools (ptxas, cuobjdump, nvdisasm) are missing",
)


def compile_report(out, *argv: str) -> dict:
    """Run compile_report.py (compiled, not interpreted) with ``argv``; its JSON report."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(REPORT), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report.json"
    return compile_report(out, "--shapes", "llama3-8b-o", "--m", "1,16")


def test_fp32_default_plans_compile_without_spills(tmp_path):
    """fp32 gets plans of its own (dispatch.default_plan): tl.dot in ieee precision holds
    its operands in registers, where the bf16 plans spilled up to 10 KiB per thread."""
    argv = ["--shapes", "llama3-8b-o", "--kinds", "2:4,bitmap50", "--m", "2,16,1024"]
    fp32 = compile_report(tmp_path / "fp32.json", *argv, "--dtype", "float32")
    assert fp32["dtype"] == "float32"
    launches = fp32["launches"]
    assert {(r["kind"], r["m"]) for r in launches} == {
        (kind, m) for kind in ("2:4", "bitmap50") for m in (2, 16, 1024)
    }
    for launch in launches:
        assert not launch["error"] and launch["spill_bytes"] == 0, launch


def _launch(report: dict, kind: str, m: int) -> dict:
    (launch,) = [
        r
        for r in report["launches"]
        if r["kind"] == kind and r["m"] == m and r["kernel"] == "skinny_linear_kernel"
    ]
    return launch


def test_every_default_plan_compiles_without_spills(report):
    launches = report["launches"]
    assert {r["kind"] for r in launches} == {"dense", "2:4", "bitmap50", "bitmap70"}
    for launch in launches:
        assert not launch["error"] and launch["spill_bytes"] == 0, launch
        assert launch["registers"] > 0 and launch["loop_instructions"] > 0, launch


def test_two_four_decode_leaves_room_for_the_targets(report):
    # Issue 5: M = 1 2:4 >= 1.6x dense, M = 16 >= 1.3x; the ceiling must be above both.
    assert _launch(report, "2:4", 1)["bound_speedup_vs_dense"] >= 1.6
    assert _launch(report, "2:4", 16)["bound_speedup_vs_dense"] >= 1.3
    # The dense Triton kernel is bandwidth-bound, not issue-bound, at decode.
    dense = _launch(report, "dense", 1)
    assert dense["issue_bytes_per_s"] > report["device_model"]["copy_bytes_per_s"]


def test_issue_bound_is_the_loop_time_against_the_bytes_read_once(report):
    # x is re-read for every N tile (from L2): only its one read from HBM may count against
    # the issue time, else a 16-row loop looks able to stream 1.4x the bytes it can.
    device = report["device_model"]
    rate = device["schedulers_per_sm"] * device["sms"] * device["clock_hz"]
    for launch in report["launches"]:
        if launch["kernel"] not in ("skinny_linear_kernel", "stream_linear_kernel"):
            continue
        plan, n, k, m = launch["plan"], launch["n"], launch["k"], launch["m"]
        iterations = launch["loop_iterations"]  # streams: groups of 8 entries per lane
        if plan["backend"] == "skinny":
            assert iterations == -(-n // plan["block_n"]) * -(-k // plan["block_k"])
        issue_s = iterations * -(-m // plan["block_m"]) * launch["loop_instructions"]
        issue_s *= plan["num_warps"] / rate
        ours = launch["bytes_per_iteration"] * iterations + m * k * 2
        assert launch["issue_bytes_per_s"] == pytest.approx(ours / issue_s, rel=1e-3)
        dense_s = (n * k * 2 + m * k * 2) / device["copy_bytes_per_s"]
        ours_s = max(ours / device["copy_bytes_per_s"], issue_s)
        assert launch["bound_speedup_vs_dense"] == pytest.approx(dense_s / ours_s, abs=2e-3)


def test_streams_leave_room_for_the_bitmap_targets(report):
    # Issue 5: M = 1 bitmap 50% >= 1.5x dense, 70% >= 2.3x. The bitmap tiles' decode
    # (a popcount and a gather per position) is issue-bound near 1.1x whatever the
    # density; the streams do work per kept value and are bound by their bytes.
    copy = report["device_model"]["copy_bytes_per_s"]
    for kind, target in (("bitmap50", 1.5), ("bitmap70", 2.3)):
        (streams,) = [
            r
            for r in report["launches"]
            if (r["kind"], r["m"], r["kernel"]) == (kind, 1, "stream_linear_kernel")
        ]
        assert streams["bound_speedup_vs_dense"] >= target, streams
        assert streams["issue_bytes_per_s"] > copy, streams


def test_decode_streams_contiguous_weights_through_cp_async(report):
    # M = 1 (no tl.dot): the default plans of dense and 2:4 pipeline their weight loads
    # (LDGSTS: cp.async into shared memory, tiles ahead); a bitmap's gathered values
    # cannot be, so its plan keeps plain loads rather than pay for staging its words.
    for kind in ("dense", "2:4"):
        loads = _launch(report, kind, 1)["loop_global_loads"]
        assert any(name.startswith("LDGSTS") for name in loads), (kind, loads)
    loads = _launch(report, "bitmap50", 1)["loop_global_loads"]
    assert not any(name.startswith("LDGSTS") for name in loads), loads


def baseline_for(version: str) -> dict | None:
    """The stored bf16 report of ``BASELINES`` compiled with triton ``version`` (None:
    none; reports stored before --dtype existed are bf16)."""
    for path in BASELINES:
        baseline = json.loads(path.read_text())
        if baseline["environment"]["triton"] == version:
            assert baseline.get("dtype", "bfloat16") == "bfloat16", path
            return baseline
    return None


def test_each_stored_baseline_is_found_by_its_triton_version():
    versions = [json.loads(p.read_text())["environment"]["triton"] for p in BASELINES]
    assert len(set(versions)) == len(versions) >= 2, versions  # 3.9 and the H200s' 3.6
    for version in versions:
        assert baseline_for(version)["environment"]["triton"] == version
    assert baseline_for("0.0.0") is None


def test_decode_loops_are_no_longer_than_the_stored_baseline(report):
    baseline = baseline_for(triton.__version__)
    if baseline is None:
        stored = [json.loads(p.read_text())["environment"]["triton"] for p in BASELINES]
        pytest.skip(f"no stored baseline for triton {triton.__version__} (stored: {stored})")
    stored = {
        (r["shape"], r["kind"], r["m"], r["kernel"]): r["loop_instructions"]
        for r in baseline["launches"]
    }
    matched = 0
    for launch in report["launches"]:
        key = (launch["shape"], launch["kind"], launch["m"], launch["kernel"])
        if key in stored:
            matched += 1
            assert launch["loop_instructions"] <= stored[key] * LOOP_TOLERANCE, (key, stored[key])
    assert matched > 0, "no launch of this compile is in the stored baseline"


def test_the_report_records_the_arguments_main_was_given(tmp_path):
    """main(argv) called from Python stores argv as its command, not the caller's."""
    out = tmp_path / "one.json"
    argv = ["--shapes", "llama3-8b-o", "--kinds", "2:4", "--m", "1", "--out", str(out)]
    call = f"import compile_report, sys; sys.exit(compile_report.main({argv!r}))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPORT.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", call, "--unrelated"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"] == " ".join(["python", "benchmarks/compile_report.py", *argv])
    assert [p.name for p in tmp_path.iterdir()] == ["one.json"]  # no temporary file left
