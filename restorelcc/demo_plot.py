"""The demo's figure: perplexity and mean accuracy per method, one row of panels per
sparsity pattern, each against the dense model's (``restorelcc demo``'s ``plot.png``)."""

from __future__ import annotations

from pathlib import Path


def plot(report: dict, path: str | Path) -> Path:
    """Perplexity and mean accuracy per method and pattern, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from restorelcc.demo_table import differs_from_plain

    rows = report["rows"]
    accuracy = "mean zero-shot accuracy"
    if differs_from_plain(report["accuracy_metric"]):  # acc_norm for some task: not the paper's
        accuracy = "mean accuracy (headline metrics)"
    dense = rows[0]
    patterns = list(dict.fromkeys(r["pattern"] for r in rows[1:]))
    fig, axes = plt.subplots(len(patterns), 2, figsize=(10, 3.2 * len(patterns)), squeeze=False)
    for i, pattern in enumerate(patterns):
        group = [r for r in rows if r["pattern"] == pattern]
        names = [r["method"] for r in group]
        for ax, key, label in (
            (axes[i][0], "perplexity", "perplexity (lower is better)"),
            (axes[i][1], "mean_accuracy", accuracy),
        ):
            ax.bar(names, [r[key] for r in group], color="tab:blue")
            ax.axhline(dense[key], color="tab:green", linestyle="--", label="dense")
            ax.set_title(f"{pattern}: {label}", fontsize=10)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
            ax.legend(fontsize=8)
        axes[i][0].set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
