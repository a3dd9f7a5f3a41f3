"""Helpers of the GPU-suite tests (benchmarks/gpu_suite.py, lcc_kernels.bench_report):
hand-made timing rows, results directories, a fault injected into suite processes, and
benchmarks/gpu_run.sh run with stand-ins for python3 and nvidia-smi."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import gpu_suite  # the suite's modules, from benchmarks/ (on sys.path: tests/conftest.py)
import suite_phases
import suite_plans
import suite_precompile
import suite_runner

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITE = BENCHMARKS / "gpu_suite.py"
GPU_RUN = BENCHMARKS / "gpu_run.sh"

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


# The python3 gpu_run.sh finds: `gpu_suite.py OUT ...` makes OUT and writes its arguments
# to FAKE_SUITE_ARGS (exit FAKE_SUITE_EXIT, or killed by signal FAKE_SUITE_SIGNAL); `-c ...`
# (import xdist, pytest_timeout) succeeds. `-m pytest ... bench_kernels.py ...` writes its
# arguments and LCC_* variables to FAKE_BENCH_ARGS and {"commit": LCC_COMMIT} to its
# --benchmark-json (not with FAKE_BENCH_JSON=0), at once, or with FAKE_BENCH_INT_S on
# SIGINT, then exits 2 (pytest-benchmark writes what ran when interrupted). Any other
# `-m pytest ...` writes its arguments to FAKE_ARGS and passes at once, or with FAKE_INT_S
# sleeps: on SIGINT it prints a summary FAKE_INT_S seconds later (as xdist's teardown does)
# and exits 2, or with FAKE_INT_S=ignore it ignores SIGINT.
FAKE_PYTHON = r"""#!/usr/bin/env bash
bench() {
    { echo "$@"; env | grep '^LCC_' | sort; } > "$FAKE_BENCH_ARGS"
    for arg; do case "$arg" in --benchmark-json=*) json=${arg#*=} ;; esac; done
    results() { [ "${FAKE_BENCH_JSON:-1}" = 0 ] || echo "{\"commit\": \"$LCC_COMMIT\"}" > "$json"; }
    if [ -n "${FAKE_BENCH_INT_S:-}" ]; then
        sleep 600 &
        trap 'kill $!; results; echo "== 3 passed in 9.00s =="; exit 2' INT
        wait
    fi
    results; echo "== 55 passed in 9.00s =="; exit 0
}
case "$1" in
    -c) exit 0 ;;
    -m)
        case "$*" in *bench_kernels.py*) bench "$@" ;; esac
        echo "$@" > "$FAKE_ARGS"
        case "${FAKE_INT_S:-}" in
            "") echo "== 1 passed in 0.10s =="; exit 0 ;;
            ignore) trap '' INT; sleep 600 ;;
        esac
        sleep 600 &
        trap 'kill $!; sleep "$FAKE_INT_S"; echo "== 1 passed, 1 failed in 3.00s =="; exit 2' INT
        wait
        ;;
    *)
        echo "$@" > "$FAKE_SUITE_ARGS"
        mkdir -p "$2" && echo "{}" > "$2/env.json" && echo "fake suite $*"
        [ -z "${FAKE_SUITE_SIGNAL:-}" ] || kill -s "$FAKE_SUITE_SIGNAL" $$
        exit "${FAKE_SUITE_EXIT:-0}"
        ;;
esac
"""


def gpu_run_with_stand_ins(tmp_path, tests_s, nvidia_smi=None, commit="0123456789abcdef", **env):
    """gpu_run.sh OUT COMMIT 270 TESTS_S with FAKE_PYTHON (and `nvidia_smi`, a bash body,
    if given) first on PATH, in a new directory of tmp_path: (result, OUT, directory with
    the stand-ins' records: pytest-args, bench-args, suite-args)."""
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/usr/bin/env bash\n{nvidia_smi}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out = tmp_path / "out"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_RUN_", "LCC_"))}
    records = {"FAKE_ARGS": "pytest-args", "FAKE_BENCH_ARGS": "bench-args"}
    records["FAKE_SUITE_ARGS"] = "suite-args"
    env = {
        **inherited,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        **{key: str(tmp_path / name) for key, name in records.items()},
        **env,
    }
    done = subprocess.run(
        ["bash", str(GPU_RUN), str(out), commit, "270", str(tests_s)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    return done, out, tmp_path
