"""Stored benchmark ratios, and the comparison of re-measured ratios against them."""

import json
from collections.abc import Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def stored(name: str) -> dict:
    """The stored benchmark result ``benchmarks/results/<name>``."""
    return json.loads((RESULTS / name).read_text())


def regressions(
    measured: Mapping[str, float], baseline: Mapping[str, float], tolerance: float
) -> dict[str, str]:
    """Per name of ``baseline`` whose ratio regressed, why: a measured ratio above the
    stored one by more than ``tolerance`` (relative: ``measured > stored * (1 +
    tolerance)``), or no measurement at all. A faster ratio is no regression."""
    found = {}
    for name, limit in baseline.items():
        if name not in measured:
            found[name] = "not measured"
        elif measured[name] > limit * (1 + tolerance):
            found[name] = (
                f"ratio {measured[name]:.3f} > stored {limit:.3f} x {1 + tolerance:g} "
                f"= {limit * (1 + tolerance):.3f}"
            )
    return found
