"""A picture of a GPU-suite results directory: speed-up over dense ``F.linear`` against M.

    python -m lcc_kernels.bench_report RESULTS_DIR    # also draws RESULTS_DIR/speedups.png

One panel per weight shape. Each point is dense ``F.linear`` (+ bias) median / a
provider's median at the same M, both measured in the same run (``timings.jsonl``); for
our kernels, the best plan swept with the bias fused. Dashed lines of the same colour are
the bytes bound of our formats (dense bytes / packed bytes per call: the speed-up if both
ran at the same bandwidth); crosses, in the colour of their format, are issue 5's
targets at M = 1 and 16.
"""

from __future__ import annotations

from pathlib import Path

# (provider, weight kind) -> legend label
SERIES = {
    ("ours", "2:4"): "ours 2:4",
    ("ours", "bitmap50"): "ours bitmap 50%",
    ("ours", "bitmap70"): "ours bitmap 70%",
    ("cusparselt", "2:4"): "torch 2:4 (cuSPARSELt)",
    ("cutlass", "2:4"): "torch 2:4 (CUTLASS)",
    ("dense_triton", "dense"): "dense Triton, our tiling",
}
DENSE = ("dense", "dense")


def speedup_series(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """shape -> label -> [(M, dense median / that median)], by M; labels of ``SERIES``,
    plus ``"<label> bytes bound"`` (dense bytes / our bytes) for our formats. Each median is
    the fastest ok row with the bias fused (the rows the acceptance checks read: not the
    with/without-bias pairs)."""
    best: dict[tuple, dict] = {}  # (shape, M, provider, kind) -> its fastest row
    for row in rows:
        if row["status"] != "ok" or not row.get("bias", True) or row.get("tag"):
            continue
        problem = (row["shape"], row["m"], row["provider"], row["kind"])
        if problem not in best or row["median_ms"] < best[problem]["median_ms"]:
            best[problem] = row
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (shape, m, provider, kind), row in sorted(best.items(), key=lambda item: item[0]):
        label = SERIES.get((provider, kind))
        dense = best.get((shape, m, *DENSE))
        if dense is None or label is None:
            continue
        series = out.setdefault(shape, {})
        series.setdefault(label, []).append((m, dense["median_ms"] / row["median_ms"]))
        if provider == "ours" and row.get("bytes") and dense.get("bytes"):
            bound = dense["bytes"] / row["bytes"]
            series.setdefault(f"{label} bytes bound", []).append((m, bound))
    return out


def plot_speedups(out_dir: str | Path, rows: list[dict], targets: list[dict]) -> Path | None:
    """Draw ``speedups.png`` in ``out_dir``; ``targets``: the summary's acceptance checks
    of ``speedup_vs_dense_F.linear``. Returns None when no timing has a dense baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = speedup_series(rows)
    if not series:
        return None
    shapes = sorted(series)
    cols = min(3, len(shapes))
    rows_n = -(-len(shapes) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    colours = {label: f"C{i}" for i, label in enumerate(SERIES.values())}
    for ax, shape in zip(axes.flat, shapes, strict=False):
        for label, points in series[shape].items():
            base = label.removesuffix(" bytes bound")
            ms, values = zip(*points, strict=True)
            bound = base != label
            ax.plot(ms, values, "--" if bound else "o-", color=colours[base],
                    label=None if bound else base, linewidth=0.8 if bound else 1.5,
                    markersize=3)  # fmt: skip
        for target in targets:
            if target.get("shape") == shape:
                colour = colours.get(SERIES.get(("ours", target.get("kind"))), "black")
                ax.plot(target["m"], target["threshold"], "x", color=colour, markersize=8)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("M (rows of x)")
        ax.set_ylabel("speed-up over dense F.linear")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shapes) :]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=3, fontsize=8,
               frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = Path(out_dir) / "speedups.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
