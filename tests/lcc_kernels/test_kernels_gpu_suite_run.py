"""benchmarks/gpu_run.sh's own behaviour, with stand-ins for python3 and nvidia-smi first on
PATH (the whole script on the CPU smoke run: test_kernels_gpu_suite.py): the tests'
summary printed in the grace after SIGINT comes back, a step killed by a signal does not
exit with the status the device tool reads as its own timeout, and nvidia-smi's
pre-flight facts open suite.log."""

import os
import subprocess
import tempfile
from pathlib import Path

from _suite_helpers import SUITE

SCRIPT = SUITE.parent / "gpu_run.sh"
# The python3 the script finds: `gpu_suite.py OUT ...` makes OUT (exit FAKE_SUITE_EXIT, or
# killed by signal FAKE_SUITE_SIGNAL); `-c ...` (import xdist, pytest_timeout) succeeds;
# `-m pytest ...` writes its arguments to FAKE_ARGS and passes at once, or with FAKE_INT_S
# sleeps: on SIGINT it prints a summary FAKE_INT_S seconds later (as xdist's teardown
# does) and exits 2, or with FAKE_INT_S=ignore it ignores SIGINT.
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$1" in
    -c) exit 0 ;;
    -m)
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
        mkdir -p "$2" && echo "{}" > "$2/env.json" && echo "fake suite $*"
        [ -z "${FAKE_SUITE_SIGNAL:-}" ] || kill -s "$FAKE_SUITE_SIGNAL" $$
        exit "${FAKE_SUITE_EXIT:-0}"
        ;;
esac
"""
FACTS = (
    "name, driver_version, compute_mode, clocks.current.sm [MHz], clocks.max.sm [MHz], "
    "clocks.current.memory [MHz], power.limit [W]\n"
    "NVIDIA H200 NVL, 570.133.20, Exclusive_Process, 345 MHz, 1980 MHz, 3201 MHz, 600.00 W\n"
)


def _run(tmp_path, tests_s, nvidia_smi=None, **env):
    """gpu_run.sh OUT COMMIT 300 TESTS_S with the stand-ins, in a new directory of
    tmp_path: (result, OUT, FAKE_ARGS)."""
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/usr/bin/env bash\n{nvidia_smi}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out, args = tmp_path / "out", tmp_path / "pytest-args"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    env.pop("GPU_RUN_SMOKE", None)
    env["FAKE_ARGS"] = str(args)
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), "0123456789abcdef", "300", str(tests_s)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    return done, out, args


def test_the_summary_printed_in_the_grace_after_sigint_comes_back(tmp_path):
    """xdist prints its summary up to ~15 s after SIGINT: inside the grace, so the call
    ends with pytest's status 2 and the summary in pytest.log (a 10 s grace had killed
    it first: 137, no summary)."""
    done, out, args = _run(tmp_path, 1, FAKE_INT_S="12")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_run: suite exit 0, tests exit 2;" in done.stdout
    assert "1 passed, 1 failed in 3.00s" in (out / "pytest.log").read_text()
    options = args.read_text()
    assert "-n 10" in options and "-o timeout=150 -o timeout_method=thread" in options


def test_a_step_killed_by_a_signal_does_not_exit_as_a_timeout(tmp_path):
    """Tests that ignore SIGINT are killed after the grace (137), a suite killed by the
    OOM killer ends with 137 too: either way the call exits 70, which the device tool does
    not read as the call itself running out of time; the last line has each own status."""
    done, out, _ = _run(tmp_path, 1, FAKE_INT_S="ignore", GPU_RUN_GRACE_S="1")
    assert done.returncode == 70, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_run: suite exit 0, tests exit 137;" in done.stdout
    done, out, _ = _run(tmp_path, 5, FAKE_SUITE_SIGNAL="KILL")
    assert done.returncode == 70 and "gpu_run: suite exit 137, tests exit 0;" in done.stdout
    done, out, _ = _run(tmp_path, 5, FAKE_SUITE_EXIT="1")
    assert done.returncode == 1  # a failed suite's own status still comes through


def test_nvidia_smi_pre_flight_facts_open_the_suite_log(tmp_path):
    """Compute mode, clocks and power limit, before the suite's own output; the GPU's name
    in the file name from the same query. A failing nvidia-smi is said, not fatal."""
    smi = f"echo \"$@\" > {tmp_path / 'smi-args'}; printf '%s' '{FACTS}'"
    done, out, _ = _run(tmp_path, 5, nvidia_smi=smi)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    query = "name,driver_version,compute_mode,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    assert (tmp_path / "smi-args").read_text().split() == [f"--query-gpu={query}", "--format=csv"]
    log = (out / "suite.log").read_text().splitlines()
    assert log[1:3] == FACTS.splitlines() and log[3].startswith("fake suite ")
    assert sorted(p.name for p in out.iterdir())[0].startswith("h200-")
    failing = "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9"
    done, out, _ = _run(tmp_path, 5, nvidia_smi=failing)
    log = (out / "suite.log").read_text().splitlines()
    assert log[1:3] == [
        "NVIDIA-SMI has failed: no driver",
        "gpu_run: nvidia-smi exit 9 (no GPU facts)",
    ]
    assert done.returncode == 0 and log[3].startswith("fake suite ")
    assert sorted(p.name for p in out.iterdir())[0].startswith("gpu-")
