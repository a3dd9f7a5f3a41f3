"""Results of benchmarks/gpu_suite.py -> acceptance checks and a measured dispatch table.

Pure Python over the JSON lines the suite writes (no GPU needed), so stored results can be
re-summarised (and drawn, ``bench_plot``):  python -m lcc_kernels.bench_report RESULTS_DIR

Checks (issue 5), each "pass", "fail" or "unmeasured", with the measured value:
  speedup_vs_dense_F.linear          dense time / our best time, bf16: M = 1: 2:4 >= 1.6,
                                     bitmap 50% >= 1.5, bitmap 70% >= 2.3; M = 16: 2:4 >= 1.3
  bandwidth_vs_device_copy           M = 1, bytes moved / time / device copy >= 0.75
  large_m_dispatched_vs_dense        M >= 1024: dense / fastest backend we can dispatch to
                                     (ours, dense, torch 2:4 for 2:4) >= 0.9
  large_m_triton_only_vs_dense (info)  the same for our Triton kernels alone
  speedup_vs_torch_semi_structured   M <= 16, 2:4: faster torch backend / ours >= 2
  bias_epilogue_cost                 our best plan with / without bias - 1 <= 0.02
  eager_call_vs_dense (info)         M = 1, calls issued from Python without a graph:
                                     dense F.linear time / ours (default dispatch) >= 1
  rules_vs_dense (info)              M <= 16: dense / the built-in rules' plan (what runs
                                     without a measured table), against the decode target
                                     where there is one, else 1
  decode_streams_rules_vs_dense (info)  bitmap, M <= 4: the same for the rules' plan with
                                     decode_streams (whether the opt-in should be a default)
"Our best time" is the fastest of the plans the suite swept for that problem (for bitmap
weights, over every tile it packed and the streams backend; the check names the winning
backend and tile).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .bench import KINDS, kind_key, plan_tile
from .dispatch import (
    SKINNY_MAX_M,
    STREAMS_MAX_M,
    TABLE_SCHEMA,
    Plan,
    m_bucket,
    plan_for,
)

SPARSE_KINDS = ("2:4", "bitmap50", "bitmap70")
# A table entry keeps our Triton kernels unless another backend is this much faster
# (dense and semi_structured cache a second copy of the weight).
TABLE_HYSTERESIS = 0.02


def load_rows(out: Path, name: str) -> list[dict]:
    """The JSON lines of OUT_DIR/name ([] if absent)."""
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fastest(rows: list[dict], **match) -> dict | None:
    """The ok timing row with the lowest median among those whose fields equal `match`."""
    found = [
        r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())
    ]
    return min(found, key=lambda r: r["median_ms"]) if found else None


def _ratio_check(name, threshold, numerator, denominator, **where) -> dict:
    """measured = numerator time / denominator time (a speed-up of the denominator)."""
    if numerator is None or denominator is None:
        return {"check": name, **where, "threshold": threshold, "status": "unmeasured"}
    measured = numerator["median_ms"] / denominator["median_ms"]
    return {
        "check": name,
        **where,
        "threshold": threshold,
        "measured": round(measured, 4),
        "status": "pass" if measured >= threshold else "fail",
    }


# (M, weight kind, least speed-up over dense F.linear) required at decode, issue 5.
DECODE_SPEEDUPS = ((1, "2:4", 1.6), (1, "bitmap50", 1.5), (1, "bitmap70", 2.3), (16, "2:4", 1.3))
MIN_COPY_FRACTION = 0.75  # M = 1 achieved bandwidth / measured device copy
MIN_LARGE_M_RATIO = 0.9  # M >= 1024: never slower than 0.9x dense
MIN_SPEEDUP_VS_SEMI = 2.0  # M <= 16, 2:4: vs the faster torch semi-structured backend
MAX_BIAS_COST = 0.02  # bias epilogue: time with / without - 1
MIN_EAGER_RATIO = 1.0  # info: an uncaptured call no slower than an uncaptured F.linear


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _decode_checks(rows, shape) -> list[dict]:
    checks = []
    for m, kind, threshold in DECODE_SPEEDUPS:
        dense = fastest(rows, shape=shape, m=m, provider="dense")
        ours = fastest(rows, shape=shape, m=m, provider="ours", kind=kind, bias=True)
        where = {"shape": shape, "m": m, "kind": kind}
        tile = ours and plan_tile(kind, ours["plan"])
        if tile:
            where["tile"] = list(tile)
        if ours:
            where["backend"] = ours["plan"]["backend"]
        checks.append(_ratio_check("speedup_vs_dense_F.linear", threshold, dense, ours, **where))
    return checks


def _bandwidth_checks(rows, shape, copy_bw) -> list[dict]:
    checks = []
    for kind in SPARSE_KINDS:
        ours = fastest(rows, shape=shape, m=1, provider="ours", kind=kind, bias=True)
        check = {
            "check": "bandwidth_vs_device_copy",
            "shape": shape,
            "m": 1,
            "kind": kind,
            "threshold": MIN_COPY_FRACTION,
            "status": "unmeasured",
        }
        if ours and copy_bw:
            fraction = ours["bytes"] / (ours["median_ms"] * 1e-3) / copy_bw
            check.update(
                measured=round(fraction, 4),
                status="pass" if fraction >= MIN_COPY_FRACTION else "fail",
            )
        checks.append(check)
    return checks


def _large_m_checks(rows, shape) -> list[dict]:
    checks = []
    for m in sorted({r["m"] for r in rows if r["shape"] == shape and r["m"] >= 1024}):
        dense = fastest(rows, shape=shape, m=m, provider="dense")
        for kind in SPARSE_KINDS:
            ours = fastest(rows, shape=shape, m=m, provider="ours", kind=kind, bias=True)
            torch_24 = ("cusparselt", "cutlass") if kind == "2:4" else ()
            options = [ours, dense] + [
                fastest(rows, shape=shape, m=m, provider=p) for p in torch_24
            ]
            options = [o for o in options if o]
            dispatched = min(options, key=lambda r: r["median_ms"]) if options else None
            checks.append(
                _ratio_check(
                    "large_m_dispatched_vs_dense",
                    MIN_LARGE_M_RATIO,
                    dense,
                    dispatched,
                    shape=shape,
                    m=m,
                    kind=kind,
                    winner=dispatched and dispatched["provider"],
                )
            )
            checks.append(
                _ratio_check(
                    "large_m_triton_only_vs_dense (info)",
                    MIN_LARGE_M_RATIO,
                    dense,
                    ours,
                    shape=shape,
                    m=m,
                    kind=kind,
                )
            )
    return checks


def _semi_structured_checks(rows, shape) -> list[dict]:
    checks = []
    for m in sorted({r["m"] for r in rows if r["shape"] == shape and r["m"] <= 16}):
        ours = fastest(rows, shape=shape, m=m, provider="ours", kind="2:4", bias=True)
        torch_rows = [
            fastest(rows, shape=shape, m=m, provider=p) for p in ("cusparselt", "cutlass")
        ]
        torch_rows = [r for r in torch_rows if r]
        torch_best = min(torch_rows, key=lambda r: r["median_ms"]) if torch_rows else None
        checks.append(
            _ratio_check(
                "speedup_vs_torch_semi_structured",
                MIN_SPEEDUP_VS_SEMI,
                torch_best,
                ours,
                shape=shape,
                m=m,
                kind="2:4",
            )
        )
    return checks


def _bias_checks(bias_rows, shape) -> list[dict]:
    checks = []
    for m in sorted({r["m"] for r in bias_rows if r["shape"] == shape}):
        for kind in SPARSE_KINDS:
            with_bias, without = (
                [
                    r["median_ms"]
                    for r in bias_rows
                    if r["status"] == "ok"
                    and (r["shape"], r["m"], r["kind"], r["bias"]) == (shape, m, kind, bias)
                ]
                for bias in (True, False)
            )
            check = {
                "check": "bias_epilogue_cost",
                "shape": shape,
                "m": m,
                "kind": kind,
                "threshold": MAX_BIAS_COST,
                "status": "unmeasured",
            }
            if with_bias and without:
                cost = _median(with_bias) / _median(without) - 1
                check.update(
                    measured=round(cost, 4), status="pass" if cost <= MAX_BIAS_COST else "fail"
                )
            checks.append(check)
    return checks


def _eager_checks(eager_rows, shape) -> list[dict]:
    if not any(r["shape"] == shape for r in eager_rows):
        return []  # a run from before eager timings, or one whose budget ran out first
    dense = fastest(eager_rows, shape=shape, provider="dense")
    return [
        _ratio_check(
            "eager_call_vs_dense (info)",
            MIN_EAGER_RATIO,
            dense,
            fastest(eager_rows, shape=shape, provider="ours", kind=kind),
            shape=shape,
            m=1,
            kind=kind,
        )
        for kind in SPARSE_KINDS
    ]


# A device name no table is registered under: plan_for gives the built-in rules' plan.
_RULES_ONLY = "(built-in rules)"


def _rules_checks(rows, shape, sm_count: int | None) -> list[dict]:
    """Decode problems timed with the plan the built-in rules choose (the suite times it
    first among each problem's candidates), with and without decode_streams."""
    if not sm_count:
        return []
    targets = {(m, kind): threshold for m, kind, threshold in DECODE_SPEEDUPS}
    checks = []
    for m in sorted({r["m"] for r in rows if r["shape"] == shape and r["m"] <= SKINNY_MAX_M}):
        dense = fastest(rows, shape=shape, m=m, provider="dense")
        for kind in SPARSE_KINDS:
            mine = [
                r
                for r in rows
                if (r["shape"], r["m"], r["provider"], r["kind"]) == (shape, m, "ours", kind)
                and r["bias"]
            ]
            if not mine:
                continue
            key = kind_key(kind, mine[0]["dtype"], mine[0]["n"], mine[0]["k"])
            names = {"rules_vs_dense (info)": False}
            if key.format == "bitmap" and m <= STREAMS_MAX_M:
                names["decode_streams_rules_vs_dense (info)"] = True
            for name, decode_streams in names.items():
                plan = plan_for(m, key, _RULES_ONLY, sm_count, decode_streams=decode_streams)
                ours = fastest(mine, plan=plan.to_dict())
                where = {"shape": shape, "m": m, "kind": kind, "backend": plan.backend}
                threshold = targets.get((m, kind), 1.0)
                checks.append(_ratio_check(name, threshold, dense, ours, **where))
    return checks


def summarize(out: Path) -> dict:
    """Acceptance checks, correctness failures and run facts of a results directory."""
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    all_rows = load_rows(out, "timings.jsonl")
    rows = [r for r in all_rows if r.get("tag") not in ("bias_cost", "eager")]
    bias_rows = [r for r in all_rows if r.get("tag") == "bias_cost"]
    eager_rows = [r for r in all_rows if r.get("tag") == "eager"]
    checks = []
    for shape in sorted({r["shape"] for r in rows if r["phase"] != "shapes"}):
        checks += _decode_checks(rows, shape)
        checks += _bandwidth_checks(rows, shape, env.get("copy_bandwidth_bytes_per_s"))
        checks += _large_m_checks(rows, shape)
        checks += _semi_structured_checks(rows, shape)
        checks += _bias_checks(bias_rows, shape)
        checks += _eager_checks(eager_rows, shape)
        checks += _rules_checks(rows, shape, env.get("sm_count"))
    if env.get("smoke"):
        for check in checks:
            check["status"] = "unmeasured (smoke run on a CPU)"
    correctness = load_rows(out, "correctness.jsonl")
    return {
        "env": env,
        "correctness": {
            "checks": len(correctness),
            "failed": [c for c in correctness if not c.get("ok") and c.get("status") != "skipped"],
            "skipped": [c for c in correctness if c.get("status") == "skipped"],
        },
        "acceptance": checks,
        "phases": load_rows(out, "phases.jsonl"),
        "timing_rows": len(all_rows),
        "timing_errors": sum(r["status"] != "ok" for r in all_rows),
    }


def build_dispatch_table(out: Path) -> dict:
    """Fastest measured plan per (kind, shape, M bucket), in dispatch.load_table's schema."""
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    timings = [
        r
        for r in load_rows(out, "timings.jsonl")
        if r["status"] == "ok" and r["bias"] and r.get("tag") != "eager"
    ]
    entries = []
    problems = sorted({(r["shape"], r["n"], r["k"], r["m"], r["dtype"]) for r in timings})
    for shape, n, k, m, dtype in problems:
        same = [r for r in timings if (r["shape"], r["m"]) == (shape, m)]
        mine = [r for r in same if r["provider"] == "ours"]
        for kind, tile in sorted(
            {(r["kind"], plan_tile(r["kind"], r["plan"])) for r in mine if not _any_tile(r)},
            key=repr,
        ):
            # One entry per bitmap tile: a weight is looked up with the tile it was packed in.
            ours = fastest(
                [r for r in mine if plan_tile(kind, r["plan"]) == tile or _any_tile(r)], kind=kind
            )
            options = {"ours": ours, "dense": fastest(same, provider="dense")}
            if kind == "2:4":
                options |= {p: fastest(same, provider=p) for p in ("cusparselt", "cutlass")}
            options = {name: row for name, row in options.items() if row}
            winner = min(options, key=lambda name: options[name]["median_ms"])
            if options[winner]["median_ms"] > ours["median_ms"] * (1 - TABLE_HYSTERESIS):
                winner = "ours"
            if winner == "ours":
                plan = Plan.from_dict(ours["plan"])
            elif winner == "dense":
                plan = Plan("dense")
            else:
                plan = Plan("semi_structured", semi_structured=winner)
            fmt, keep = KINDS[kind]
            entries.append(
                {
                    "format": fmt,
                    "dtype": dtype,
                    "n": n,
                    "k": k,
                    "tile": list(tile) if tile else None,
                    "density": keep if fmt == "bitmap" else None,
                    "m_bucket": m_bucket(m),
                    "measured_m": m,
                    "plan": plan.to_dict(),
                    "median_ms": options[winner]["median_ms"],
                    "alternatives_ms": {name: row["median_ms"] for name, row in options.items()},
                }
            )
    return {
        "schema": TABLE_SCHEMA,
        "device": env.get("gpu", "unknown"),
        "torch": env.get("torch"),
        "triton": env.get("triton"),
        "commit": env.get("commit"),
        "created_utc": env.get("time_utc"),
        "entries": entries,
    }


def _any_tile(row: dict) -> bool:
    """Whether the row's plan runs on a bitmap weight of any tile (streams re-lay it out)."""
    return row["plan"] is not None and row["plan"]["backend"] == "streams"


def format_summary(summary: dict) -> str:
    """A short text table of a summary (what the suite prints last)."""
    env = summary["env"]
    failed = summary["correctness"]["failed"]
    lines = [
        f"=== lcc_kernels GPU suite: {env.get('gpu')} torch {env.get('torch')} triton "
        f"{env.get('triton')} commit {str(env.get('commit'))[:10]} ===",
        f"correctness: {summary['correctness']['checks']} checks, {len(failed)} failed, "
        f"{len(summary['correctness']['skipped'])} skipped",
        *(f"  FAILED {row}" for row in failed),
        *(f"  skipped {row}" for row in summary["correctness"]["skipped"]),
        f"timings: {summary['timing_rows']} rows, {summary['timing_errors']} errors",
    ]
    for check in summary["acceptance"]:
        where = f"{check.get('shape')} M={check.get('m')} {check.get('kind')}"
        lines.append(
            f"  {check['status']:<10} {check['check']:<38} {where:<30} measured "
            f"{check.get('measured', '-')} (threshold {check['threshold']})"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Re-summarise a stored results directory and draw its speed-ups:
    python -m lcc_kernels.bench_report DIR [--no-plot]."""
    import argparse

    from .bench_plot import plot_speedups

    parser = argparse.ArgumentParser(prog="python -m lcc_kernels.bench_report")
    parser.add_argument("out", type=Path, help="a gpu_suite results directory")
    parser.add_argument("--no-plot", action="store_true", help="skip speedups.png")
    args = parser.parse_args(argv)
    out = args.out
    if not (out / "timings.jsonl").is_file():
        parser.error(f"{out} holds no timings.jsonl (not a gpu_suite results directory)")
    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "dispatch_table.json").write_text(json.dumps(build_dispatch_table(out), indent=2))
    print(format_summary(summary))
    if not args.no_plot:
        targets = [c for c in summary["acceptance"] if c["check"] == "speedup_vs_dense_F.linear"]
        path = plot_speedups(out, load_rows(out, "timings.jsonl"), targets)
        print(f"plot: {path}" if path else "plot: no timing has a dense baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
