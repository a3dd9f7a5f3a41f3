"""What bench_e2e.py derives from its rows: the speedups over the dense model (with the
weight-bytes bound) and the printed summary table."""

from __future__ import annotations


def speedups(result: dict) -> list[dict]:
    """dense median / variant median per job, and the bytes bound; none without a GPU.
    Two timings taken by different methods (a CUDA graph, eager after a failed capture)
    give no speedup (None), and `unmeasured` says why."""
    if not result["timing_claims"]:
        return []
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    dense = {(r["phase"], r["batch"], r["tokens"]): r for r in rows if r["variant"] == "dense"}
    dense_bytes = result["variants"].get("dense", {}).get("weight_bytes")
    out = []
    for row in rows:
        base = dense.get((row["phase"], row["batch"], row["tokens"]))
        if row["variant"] == "dense" or base is None:
            continue
        variant_bytes = result["variants"][row["variant"]].get("weight_bytes")
        entry = {
            "variant": row["variant"],
            "phase": row["phase"],
            "batch": row["batch"],
            "tokens": row["tokens"],
            "speedup": base["median_ms"] / row["median_ms"],
            "bytes_ratio": dense_bytes / variant_bytes if dense_bytes and variant_bytes else None,
        }
        if base.get("method") != row.get("method"):
            entry["speedup"] = None
            entry["unmeasured"] = f"timed differently: dense {base.get('method')}, " + (
                f"{row['variant']} {row.get('method')}"
            )
        out.append(entry)
    return out


def summary_table(result: dict) -> str:
    from restorelcc.io import format_table

    ratios = {
        (s["variant"], s["phase"], s["batch"], s["tokens"]): s for s in result.get("speedups", [])
    }
    rows = []
    for row in result["rows"]:
        ratio = ratios.get((row["variant"], row["phase"], row["batch"], row["tokens"]), {})
        check = result["variants"].get(row["variant"], {}).get("check", {})
        rows.append(
            {
                **row,
                "speedup": ratio.get("speedup"),
                "bytes_ratio": ratio.get("bytes_ratio"),
                "check_ok": check.get("ok"),
            }
        )
    return format_table(
        rows,
        [
            "variant",
            "phase",
            "batch",
            "tokens",
            "median_ms",
            "method",
            "speedup",
            "bytes_ratio",
            "check_ok",
            "status",
        ],
    )
