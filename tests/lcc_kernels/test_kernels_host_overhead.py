"""benchmarks/bench_host_overhead.py: every case's launches reach its recorders (none runs
a kernel), the report names what was timed, and each case has its own F.linear baseline
timed with it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_host_overhead_benchmark_records_one_launch_per_call(tmp_path):
    out = tmp_path / "host.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_host_overhead.py")]
    command += ["--shape", "264", "520", "--number", "20", "--repeat", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["shape"] == [264, 520]
    cases = [(r["format"], r["backend"], r["m"]) for r in report["rows"]]
    assert cases == [("2:4", "skinny", 1), ("bitmap", "skinny", 1), ("bitmap", "streams", 1),
                     ("2:4", "skinny", 2), ("bitmap", "streams", 4)]  # fmt: skip
    for row in report["rows"]:
        assert row["launches"] == 1, row  # serial split-K: one launch, no reduction
        assert row["split_k"] > 1, row  # planned for 132 SMs, not the CPU's few
        assert row["host_us"] > 0 and row["baseline_us"] > 0 and row["vs_F.linear"] > 0
    assert (report["number"], report["repeat"]) == (20, 1)
    assert set(report["load_average"]) == {"before", "after"}
    assert "timed with each case" in report["baseline"]["op"]
    assert "wrote" in done.stdout
