"""Results of benchmarks/gpu_suite.py -> acceptance checks (lcc_kernels.acceptance), a
measured dispatch table, summary.json and a text summary.

Pure Python over the JSON lines the suite writes (no GPU needed), so stored results can be
re-summarised (and drawn, ``bench_plot``):  python -m lcc_kernels.bench_report RESULTS_DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .acceptance import TORCH_24_PROVIDERS, acceptance_checks, fastest
from .bench import KINDS, plan_tile
from .dispatch import TABLE_SCHEMA, DispatchTable, Plan, m_bucket

# A table entry keeps our Triton kernels unless another backend is this much faster
# (dense and semi_structured cache a second copy of the weight).
TABLE_HYSTERESIS = 0.02
# Where the file-mode mask of written results is read, and what is assumed without it.
PROC_STATUS = "/proc/self/status"
DEFAULT_UMASK = 0o022


def load_rows(out: Path, name: str) -> list[dict]:
    """The JSON lines of OUT_DIR/name ([] if absent)."""
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_env(out: Path) -> dict:
    """OUT_DIR/env.json ({} if absent)."""
    path = out / "env.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summarize(out: Path) -> dict:
    """Acceptance checks, correctness failures and run facts of a results directory."""
    return _summarize(out, load_env(out), load_rows(out, "timings.jsonl"))


def _summarize(out: Path, env: dict, all_rows: list[dict]) -> dict:
    table = DispatchTable.from_dict(_table(env, all_rows))
    checks = acceptance_checks(env, all_rows, table)
    if env.get("smoke"):
        for check in checks:
            check["status"] = "unmeasured (smoke run on a CPU)"
    correctness = load_rows(out, "correctness.jsonl")
    judged = [c["status"] for c in checks if not c["check"].endswith("(info)")]
    phases = load_rows(out, "phases.jsonl")
    return {
        "env": env,
        "correctness": {
            "checks": len(correctness),
            "failed": [c for c in correctness if not c.get("ok") and c.get("status") != "skipped"],
            "skipped": [c for c in correctness if c.get("status") == "skipped"],
        },
        "acceptance": checks,
        "acceptance_counts": {status: judged.count(status) for status in sorted(set(judged))},
        "phases": phases,
        # passes the budget stopped early: their later items have no row at all
        "budget_cuts": [
            {key: e[key] for key in ("phase", "pass", "done", "total")}
            for e in phases
            if e["event"] == "budget"
        ],
        "timing_rows": len(all_rows),
        "timing_errors": sum(r["status"] == "error" for r in all_rows),
        "timing_skipped": sum(r["status"] == "skipped" for r in all_rows),
    }


def build_dispatch_table(out: Path) -> dict:
    """Fastest measured plan per (kind, shape, M bucket), in dispatch.load_table's schema."""
    return _table(load_env(out), load_rows(out, "timings.jsonl"))


def _table(env: dict, all_rows: list[dict]) -> dict:
    """The dispatch table of a run's timing rows (untagged: one job each, bias fused)."""
    timings = [r for r in all_rows if r["status"] == "ok" and r["bias"] and not r.get("tag")]
    # An "ours" row without a plan (the dispatcher chose at call time) names no plan to
    # record, nor a bitmap tile to key it by: it cannot become an entry.
    timings = [r for r in timings if r["provider"] != "ours" or r["plan"] is not None]
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
                options |= {p: fastest(same, provider=p) for p in TORCH_24_PROVIDERS}
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


# Fields of a check printed after its measured value, when present.
_DETAILS = ("backend", "tile", "winner", "triton_ratio", "rounds", "best_of", "reason")


def format_summary(summary: dict) -> str:
    """A short text table of a summary (what the suite prints last)."""
    env = summary["env"]
    failed = summary["correctness"]["failed"]
    counts = ", ".join(f"{n} {status}" for status, n in summary["acceptance_counts"].items())
    cuts = summary.get("budget_cuts", [])  # absent from summaries written before it
    dirty = " (dirty)" if env.get("dirty") else ""
    lines = [
        f"=== lcc_kernels GPU suite: {env.get('gpu')} torch {env.get('torch')} triton "
        f"{env.get('triton')} commit {str(env.get('commit'))[:10]}{dirty} ===",
        f"correctness: {summary['correctness']['checks']} checks, {len(failed)} failed, "
        f"{len(summary['correctness']['skipped'])} skipped",
        *(f"  FAILED {row}" for row in failed),
        *(f"  skipped {row}" for row in summary["correctness"]["skipped"]),
        f"timings: {summary['timing_rows']} rows, {summary['timing_errors']} errors, "
        f"{summary['timing_skipped']} skipped",
        *(
            [f"torch semi-structured CUTLASS: {env['cutlass_semi_structured']}"]
            if env.get("cutlass_semi_structured")
            else []
        ),
        f"cut by the budget: {len(cuts)} passes" + (" (items done / listed)" if cuts else ""),
        *(f"  {c['phase']} {c['pass']} {c['done']}/{c['total']}" for c in cuts),
        f"acceptance (info checks aside): {counts or 'no checks'}",
    ]
    for check in summary["acceptance"]:
        where = f"{check.get('shape')} M={check.get('m')} {check.get('kind')}"
        details = "; ".join(f"{k} {check[k]}" for k in _DETAILS if check.get(k) is not None)
        lines.append(
            f"  {check['status']:<10} {check['check']:<38} {where:<30} measured "
            f"{check.get('measured', '-')} (threshold {check['threshold']})"
            + (f"  [{details}]" if details else "")
        )
    return "\n".join(lines)


def write_results(out: Path) -> dict:
    """Write OUT_DIR/summary.json and dispatch_table.json (each whole or not at all);
    return the summary."""
    env, rows = load_env(out), load_rows(out, "timings.jsonl")
    summary = _summarize(out, env, rows)
    _write_json(out / "summary.json", summary)
    _write_json(out / "dispatch_table.json", _table(env, rows))
    return summary


def _write_json(path: Path, data) -> None:
    """Through a temporary file of its own in the same directory, flushed to disk, and a
    rename, so a reader never sees half a file; the temporary file goes if anything fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; results are shared files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's file-mode mask, read without changing it: setting it to learn it (the
    ``os.umask`` round trip) would let another thread create files under the wrong mask in
    between. Linux shows it in /proc/self/status (``Umask:``, kernel 4.7 and later);
    elsewhere, the usual ``DEFAULT_UMASK``."""
    try:
        with open(PROC_STATUS) as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["Umask"], 8)
    except (OSError, KeyError, ValueError):
        return DEFAULT_UMASK


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
    summary = write_results(out)
    print(format_summary(summary))
    if not args.no_plot:
        targets = [c for c in summary["acceptance"] if c["check"] == "speedup_vs_dense_F.linear"]
        path = plot_speedups(out, load_rows(out, "timings.jsonl"), targets)
        print(f"plot: {path}" if path else "plot: no timing has a dense baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
