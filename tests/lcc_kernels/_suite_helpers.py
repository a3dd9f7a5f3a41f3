"""Helpers of the GPU-suite tests (benchmarks/gpu_suite.py, lcc_kernels.bench_report):
hand-made timing rows, results directories, and a fault injected into suite processes."""

import json
from pathlib import Path

import gpu_suite  # the suite's modules, from benchmarks/ (on sys.path: tests/conftest.py)
import suite_phases
import suite_plans
import suite_precompile
import suite_runner

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITE = BENCHMARKS / "gpu_suite.py"

__all__ = ["gpu_suite", "suite_phases", "suite_plans", "suite_precompile", "suite_runner"]

SKINNY_PLAN = {
    "backend": "skinny",
    "block_m": 1,
    "block_n": 64,
    "block_k": 128,
    "split_k": 8,
    "num_warps": 4,
    "num_stages": 3,
    "group_m": 8,
    "serial_reduction": True,
    "semi_structured": "cusparselt",
}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def timing(shape, m, provider, median_us, kind="dense", bias=True, **extra):
    """A timing row as the suite writes it (ours: SKINNY_PLAN unless `plan` is given)."""
    return {
        "phase": extra.pop("phase", "acceptance"),
        "shape": shape,
        "n": 4096,
        "k": 4096,
        "m": m,
        "dtype": "bfloat16",
        "kind": kind,
        "provider": provider,
        "plan": extra.pop("plan", SKINNY_PLAN if provider == "ours" else None),
        "bias": bias,
        "tag": extra.pop("tag", ""),
        "status": "ok",
        "median_ms": median_us / 1e3,
        "method": extra.pop("method", "cuda_graph"),
        "bytes": extra.pop("bytes", 0),
        **extra,
    }


def write(out: Path, env: dict, timings: list[dict]) -> None:
    (out / "env.json").write_text(json.dumps(env))
    (out / "timings.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timings))


# Loaded by every Python process started with the directory on PYTHONPATH: in suite
# children, a fatal CUDA error from each streams job of the first smoke shape (48 x 64);
# in compile workers, a long sleep in each job.
INJECTION = """
import sys, time
if "--child" in sys.argv or "--precompile-worker" in sys.argv:
    sys.path.insert(0, {root!r})
    import lcc_kernels.bench as bench
    build_calls = bench.build_calls
    def injected(provider, dense, m, **kwargs):
        if "--precompile-worker" in sys.argv:
            time.sleep(120)
        plan = kwargs.get("plan")
        if plan is not None and plan.backend == "streams" and tuple(dense.shape) == (48, 64):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return build_calls(provider, dense, m, **kwargs)
    bench.build_calls = injected
"""


def injection_dir(tmp_path: Path) -> Path:
    """A directory whose sitecustomize.py injects INJECTION (put it on PYTHONPATH)."""
    directory = tmp_path / "inject"
    directory.mkdir()
    root = str(BENCHMARKS.parent)
    (directory / "sitecustomize.py").write_text(INJECTION.format(root=root))
    return directory


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat ("R", "S", "T" stopped, "Z" zombie), or None
    for no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None
