"""benchmarks/gpu_run.sh's own behaviour, with stand-ins for python3 and nvidia-smi first on
PATH (_suite_helpers.gpu_run_with_stand_ins; the whole script on the CPU smoke run:
test_kernels_gpu_suite.py; its benchmarks step: test_kernels_gpu_run_bench.py): the
tests' summary printed in the grace after SIGINT comes back, a step killed by a signal
does not exit with the status the device tool reads as its own timeout, and nvidia-smi's
pre-flight facts open suite.log."""

from _suite_helpers import gpu_run_with_stand_ins

FACTS = (
    "name, driver_version, compute_mode, clocks.current.sm [MHz], clocks.max.sm [MHz], "
    "clocks.current.memory [MHz], power.limit [W]\n"
    "NVIDIA H200 NVL, 570.133.20, Exclusive_Process, 345 MHz, 1980 MHz, 3201 MHz, 600.00 W\n"
)


def test_the_summary_printed_in_the_grace_after_sigint_comes_back(tmp_path):
    """xdist prints its summary up to ~15 s after SIGINT: inside the grace, so the call
    ends with pytest's status 2 and the summary in pytest.log (a 10 s grace had killed
    it first: 137, no summary)."""
    done, out, records = gpu_run_with_stand_ins(tmp_path, 1, FAKE_INT_S="12")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_run: suite exit 0, benchmarks exit 0, tests exit 2;" in done.stdout
    assert "1 passed, 1 failed in 3.00s" in (out / "pytest.log").read_text()
    options = (records / "pytest-args").read_text()
    assert "-n 10" in options and "-o timeout=150 -o timeout_method=thread" in options


def test_a_step_killed_by_a_signal_does_not_exit_as_a_timeout(tmp_path):
    """Tests that ignore SIGINT are killed after the grace (137), a suite killed by the
    OOM killer ends with 137 too: either way the call exits 70, which the device tool does
    not read as the call itself running out of time; the last line has each own status."""
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 1, FAKE_INT_S="ignore", GPU_RUN_GRACE_S="1")
    assert done.returncode == 70, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_run: suite exit 0, benchmarks exit 0, tests exit 137;" in done.stdout
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 5, FAKE_SUITE_SIGNAL="KILL")
    assert (
        done.returncode == 70
        and "gpu_run: suite exit 137, benchmarks exit 0, tests exit 0;" in done.stdout
    )
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 5, FAKE_SUITE_EXIT="1")
    assert done.returncode == 1  # a failed suite's own status still comes through


def test_nvidia_smi_pre_flight_facts_open_the_suite_log(tmp_path):
    """Compute mode, clocks and power limit, before the suite's own output; the GPU's name
    in the file name from the same query. A failing nvidia-smi is said, not fatal."""
    smi = f"echo \"$@\" > {tmp_path / 'smi-args'}; printf '%s' '{FACTS}'"
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 5, nvidia_smi=smi)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    query = "name,driver_version,compute_mode,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    assert (tmp_path / "smi-args").read_text().split() == [f"--query-gpu={query}", "--format=csv"]
    log = (out / "suite.log").read_text().splitlines()
    assert log[1:3] == FACTS.splitlines() and log[3].startswith("fake suite ")
    assert next(out.glob("*.tgz")).name.startswith("h200-")
    failing = "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9"
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 5, nvidia_smi=failing)
    log = (out / "suite.log").read_text().splitlines()
    assert log[1:3] == [
        "NVIDIA-SMI has failed: no driver",
        "gpu_run: nvidia-smi exit 9 (no GPU facts)",
    ]
    assert done.returncode == 0 and log[3].startswith("fake suite ")
    assert next(out.glob("*.tgz")).name.startswith("gpu-")
