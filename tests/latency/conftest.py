"""tests/latency: the benchmark scripts of benchmarks/ are imported as modules (their
measuring functions are what the regression tests re-run)."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
