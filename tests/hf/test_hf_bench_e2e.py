"""benchmarks/bench_e2e.py: the CPU smoke run, its speedup arithmetic (e2e_report.py), and
the optional end-to-end phase of benchmarks/gpu_suite.py."""

import json
import subprocess
import sys
from pathlib import Path

import bench_e2e  # benchmarks/ is on sys.path (tests/conftest.py)
import e2e_report
import pytest
from _hf_swap_helpers import attention

BENCHMARKS = Path(bench_e2e.__file__).parent


def test_smoke_run_writes_every_variant(tmp_path):
    assert bench_e2e.main([str(tmp_path / "e2e"), "--smoke"]) == 0
    result = json.loads((tmp_path / "e2e" / "e2e.json").read_text())
    assert result["schema"] == bench_e2e.SCHEMA and result["status"] == "complete"
    assert {"torch", "transformers", "commit", "device"} <= set(result["metadata"])
    assert result["timing_claims"] is False and result["speedups"] == []
    rows = result["rows"]
    assert {(r["variant"], r["phase"], r["batch"]) for r in rows} == {
        (v, p, b)
        for v in bench_e2e.VARIANTS
        for p, b in (("decode", 1), ("decode", 2), ("prefill", 1), ("decode_eager", 1))
    }
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    variants = result["variants"]
    assert variants["2:4"]["formats"] == variants["2:4+mlp"]["formats"] == ["2:4"]
    assert variants["bitmap50"]["formats"] == variants["bitmap70"]["formats"] == ["bitmap"]
    for name in ("2:4", "2:4+mlp", "bitmap50", "bitmap70"):
        check = variants[name]["check"]
        assert check["ok"] and check["failed"] == [], check
        # every swapped q/k/v/o (and gate/up/down) of the tiny model's two layers
        assert check["projections"] == 2 * (7 if name == "2:4+mlp" else 4)
        assert check["logits_finite"] and check["logits_difference"] < 1e-4
        swap = variants[name]["swap"]
        assert swap["bytes_after"] < swap["bytes_before"]
        assert swap["mlp"] == (name == "2:4+mlp")
    sizes = [variants[v]["weight_bytes"] for v in ("dense", "bitmap50", "bitmap70")]
    assert sizes == sorted(sizes, reverse=True)
    assert variants["2:4+mlp"]["weight_bytes"] < variants["2:4"]["weight_bytes"]


def _drop_bias(model):
    attention(model, 1).o_proj.bias = None  # layer 1's packed o_proj adds no bias


def _wrong_value(model):
    attention(model, 0).packed_qkv.packed.values[3, 5] += 0.25  # one q weight changed


@pytest.mark.parametrize(
    ("edit", "module"),
    [
        (_drop_bias, "model.layers.1.self_attn.o_proj"),
        (_wrong_value, "model.layers.0.self_attn.q_proj"),
    ],
    ids=["bias-dropped", "wrong-value"],
)
def test_a_broken_swap_fails_its_variants_check_naming_the_projection(
    tmp_path, monkeypatch, edit, module
):
    """Each projection is checked against the dense weight and bias nn.Linear held before
    the swap: a packed o_proj that lost its bias, or one packed value that differs from
    the pruned weight, fails the variant's check, named; the run still times it."""
    import restorelcc.hf.swap

    real = restorelcc.hf.swap.swap_attention

    def broken(model, *args, **kwargs):
        report = real(model, *args, **kwargs)
        edit(model)
        return report

    monkeypatch.setattr(restorelcc.hf.swap, "swap_attention", broken)
    monkeypatch.setattr(bench_e2e, "VARIANTS", {"2:4": bench_e2e.VARIANTS["2:4"]})
    assert bench_e2e.main([str(tmp_path / "e2e"), "--smoke"]) == 0
    result = json.loads((tmp_path / "e2e" / "e2e.json").read_text())
    check = result["variants"]["2:4"]["check"]
    assert not check["ok"] and check["failed"] == [module] and check["module"] == module
    assert check["error"] > check["limit"]
    assert {r["status"] for r in result["rows"]} == {"ok"}
    assert e2e_report.summary_table(result).count("False") == len(result["rows"])


def test_a_budget_spent_inside_the_last_variant_is_not_complete(tmp_path, monkeypatch):
    """The budget runs out after the first two jobs of the only variant: the status says
    so (and which jobs were not timed) instead of "complete"."""
    checks = iter([True, True, True])  # the variant's own check, then two jobs
    monkeypatch.setattr(bench_e2e.Bench, "time_left", lambda self: next(checks, False))
    monkeypatch.setattr(bench_e2e, "VARIANTS", {"dense": None})
    assert bench_e2e.main([str(tmp_path / "e2e"), "--smoke"]) == 0
    result = json.loads((tmp_path / "e2e" / "e2e.json").read_text())
    assert [(r["phase"], r["batch"]) for r in result["rows"]] == [("decode", 1), ("decode", 2)]
    assert result["status"] == (
        "budget spent during dense: 2 of its 4 jobs not timed, from prefill batch 1 tokens 12"
    )


def test_a_budget_spent_between_variants_names_the_first_not_run(tmp_path, monkeypatch):
    checks = iter([True] * 5)  # dense: its check and its four jobs
    monkeypatch.setattr(bench_e2e.Bench, "time_left", lambda self: next(checks, False))
    monkeypatch.setattr(bench_e2e, "VARIANTS", {"dense": None, "2:4": bench_e2e.VARIANTS["2:4"]})
    assert bench_e2e.main([str(tmp_path / "e2e"), "--smoke"]) == 0
    result = json.loads((tmp_path / "e2e" / "e2e.json").read_text())
    assert {r["variant"] for r in result["rows"]} == {"dense"} and len(result["rows"]) == 4
    assert result["status"] == "budget spent before 2:4"


def test_speedups_are_dense_over_variant_and_only_on_a_gpu():
    def row(variant, ms, phase="decode"):
        return {
            "variant": variant,
            "phase": phase,
            "batch": 1,
            "tokens": 512,
            "status": "ok",
            "median_ms": ms,
        }

    result = {
        "timing_claims": True,
        "variants": {"dense": {"weight_bytes": 300}, "2:4": {"weight_bytes": 200}},
        "rows": [row("dense", 3.0), row("2:4", 2.0), row("2:4", 9.0, "prefill")],
    }
    assert e2e_report.speedups(result) == [
        {
            "variant": "2:4",
            "phase": "decode",
            "batch": 1,
            "tokens": 512,
            "speedup": 1.5,
            "bytes_ratio": 1.5,
        }
    ]
    assert e2e_report.speedups(dict(result, timing_claims=False)) == []


def test_speedups_never_compare_timings_taken_differently():
    """A CUDA graph replay against an eager fallback (capture failed) measures host
    overhead, not the kernels: no speedup, and the reason."""
    rows = [
        {"variant": "dense", "phase": "decode", "batch": 1, "tokens": 8, "status": "ok"},
        {"variant": "2:4", "phase": "decode", "batch": 1, "tokens": 8, "status": "ok"},
    ]
    rows[0].update(median_ms=3.0, method="cuda_graph")
    rows[1].update(median_ms=2.0, method="eager (RuntimeError)")
    result = {"timing_claims": True, "variants": {"dense": {}, "2:4": {}}, "rows": rows}
    (entry,) = e2e_report.speedups(result)
    assert entry["speedup"] is None
    assert entry["unmeasured"] == "timed differently: dense cuda_graph, 2:4 eager (RuntimeError)"
    rows[1]["method"] = "cuda_graph"
    assert e2e_report.speedups(result)[0]["speedup"] == 1.5


def test_gpu_suite_runs_the_optional_e2e_phase(tmp_path):
    out = tmp_path / "suite"
    command = [
        sys.executable,
        str(BENCHMARKS / "gpu_suite.py"),
        str(out),
        "--smoke",
        "--phases",
        "env",
        "--budget-s",
        "600",
        "--e2e-budget-s",
        "300",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    assert [e.get("status") for e in events if e["phase"] == "e2e"] == [None, "ok"]
    assert json.loads((out / "e2e" / "e2e.json").read_text())["status"] == "complete"
