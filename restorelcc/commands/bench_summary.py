"""What ``restorelcc bench`` reports of its timings: a row per job (both medians, the
speedup, how far the rounds scattered: ``timing_spread``), the weight bytes a decode step
reads (``decode_streams_bytes``, ``fewer_or_more``), and the summary printed after the
report is written (``print_summary``: the table, the rows whose timings are noise by
``NOISY_SPREAD``, the packed checkpoint, the swap, the check of the swapped calls:
``check_lines``)."""

from __future__ import annotations

from restorelcc.commands.bench_timing import job_label
from restorelcc.commands.reports import mib
from restorelcc.commands.swap_options import describe_swap

# A row whose timings' p20..p80 range exceeds this fraction of their median is flagged.
NOISY_SPREAD = 0.25
# Fewer CPU rounds than this have no p20..p80 range to judge (1 round: none at all).
NOISE_CHECK_ROUNDS = 3


def decode_streams_bytes(report, swapped_bytes: int) -> int | None:
    """Weight bytes a decode step of at most 4 rows reads when the bitmap groups run on
    their streams layouts instead (``swapped_bytes`` counts the bitmaps); None when no
    layout was built (no ``decode_streams``, or not on a GPU)."""
    if not report.bytes_streams:
        return None
    replaced = sum(g.bytes_after for g in report.groups if g.bytes_streams)
    return swapped_bytes - replaced + report.bytes_streams


def fewer_or_more(before: int, after: int) -> str:
    """``after`` bytes against ``before``: ``1.50x fewer``, or ``1.03x more``."""
    if after > before:
        return f"{after / before:.2f}x more"
    return f"{before / after:.2f}x fewer"


def timing_spread(timing: dict) -> float:
    """``(p80 - p20) / median`` of a ``time_call`` result: how far its rounds scattered."""
    return (timing["p80_ms"] - timing["p20_ms"]) / timing["median_ms"]


def timing_rows(jobs, linear: list, swapped: list, checks: list) -> list[dict]:
    """A report row per job (phase, batch, tokens) from its ``nn.Linear`` and swapped
    ``time_call`` results, with the check of its swapped call where ``checks`` has one."""
    return [
        {
            "phase": phase,
            "batch": batch,
            "tokens": tokens,
            "linear_ms": base["median_ms"],
            "swapped_ms": ours["median_ms"],
            "speedup": base["median_ms"] / ours["median_ms"],
            "spread": max(timing_spread(base), timing_spread(ours)),
            "linear": base,
            "swapped": ours,
            "check": checks[index] if checks else None,
        }
        for index, ((phase, batch, tokens), base, ours) in enumerate(
            zip(jobs, linear, swapped, strict=True)
        )
    ]


def print_summary(payload: dict, report, out, device, rounds: int) -> None:
    """Print the summary of the bench report ``payload`` written to ``out``: its rows as a
    table, the rows whose timings are noise (on a CPU only with ``rounds`` >=
    ``NOISE_CHECK_ROUNDS``), the packed checkpoint it read, the swap (``report``, a
    ``SwapReport``) with the weight bytes a decode step reads, and the check of the
    swapped calls."""
    from restorelcc.io import format_table

    rows, check, packed = payload["rows"], payload["check"], payload["packed_checkpoint"]
    bytes_linear = payload["weight_bytes"]["linear"]
    bytes_swapped = payload["weight_bytes"]["swapped"]
    columns = ["phase", "batch", "tokens", "linear_ms", "swapped_ms", "speedup", "spread"]
    print(format_table([row | {"spread": f"{row['spread']:.0%}"} for row in rows], columns))
    judged = device.type == "cuda" or rounds >= NOISE_CHECK_ROUNDS
    noisy = [
        job_label(row["phase"], row["batch"], row["tokens"])
        for row in rows
        if row["spread"] > NOISY_SPREAD
    ]
    if noisy and judged:
        print(
            f"timings of {', '.join(noisy)} spread over more than {NOISY_SPREAD:.0%} of their "
            "median (p20 to p80): the machine was busy, so their speedups are noise; run "
            "again on a quiet machine (OMP_NUM_THREADS=1 on a shared CPU)"
        )
    if packed:
        dtypes = f"stored {packed['stored_dtype']}"
        if packed["stored_dtype"] != payload["dtype"]:
            dtypes += f", run in {payload['dtype']}"
        print(
            f"packed checkpoint: read packed ({packed['modules']} packed modules, "
            f"{packed['formats']}; {dtypes}), unpacked for nn.Linear and swapped again as it "
            "was packed"
        )
    streams, streams_read = "", ""
    if report.bytes_streams:
        streams = f" (+ {mib(report.bytes_streams)} of decode streams)"
        decode_bytes = payload["weight_bytes"]["swapped_decode_streams"]
        read = fewer_or_more(bytes_linear, decode_bytes)
        streams_read = f" ({read} on the streams, batch <= 4)"
    print(
        f"{describe_swap(report)}{streams}; weights read per decode step "
        f"{fewer_or_more(bytes_linear, bytes_swapped)}{streams_read}"
    )
    if check is not None:
        print(check_lines(check))
    if device.type != "cuda":
        print(
            "CPU: the swapped modules run the PyTorch reference path; these timings say "
            "nothing of GPU speed."
        )
    print(f"report: {out}  ({payload['wall_s']:.1f} s)")


def _named(names: list[str], most: int = 3) -> str:
    """``names`` joined, the first ``most`` of them and how many more."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_lines(check: dict) -> str:
    """The summary's lines on the check of the swapped calls (``check``: the report's
    ``check``, from ``bench_timing.summarise_checks``): the verdict (how many jobs
    failed, which, and on which projections or non-finite logits), the projection
    furthest from its limit, and the logits' difference from ``nn.Linear``'s, labelled
    as information."""
    jobs, failed = check["jobs"], check["failed_jobs"]
    if check["ok"]:
        verdict = "projection check ok" + (f" on all {jobs} jobs' calls" if jobs > 1 else "")
    else:
        verdict = f"projection check FAILED on {len(failed)} of {jobs} jobs ({', '.join(failed)})"
        if check["failed_projections"]:
            verdict += f": {_named(check['failed_projections'])} beyond the limit"
        if check["non_finite_logits"]:
            verdict += f"; non-finite logits in {', '.join(check['non_finite_logits'])}"
    rule = (
        f"{verdict}. Rule: each swapped projection's output ({check['projections']} per "
        "call), on the input the call gave it, within 2 x nn.Linear's error + atol, both "
        f"against float64; worst {check['module']} ({check['job']}): error "
        f"{check['error']:.3g} (limit {check['limit']:.3g} = 2 x nn.Linear's "
        f"{check['torch_error']:.3g} + atol)"
    )
    return (
        f"{rule}\nfor information, not checked: the swapped logits differ from nn.Linear's "
        f"by up to {check['logits_difference']:.3g} ({check['logits_difference_job']}); "
        "rounding differences compound over the layers"
    )
