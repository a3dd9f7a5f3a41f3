#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU suite, then the GPU tests. What the call brings
# back is OUT (the device tool returns at most 8 files, 2 folders down), so it holds three:
#   <gpu>-<YYYYMMDD>-<commit[:10]>.tgz  the suite's run directory (benchmarks/results/README.md)
#   suite.log, pytest.log               their output (pytest's summary included); suite.log
#                                       starts with nvidia-smi's pre-flight facts (compute
#                                       mode, clocks, power limit), or why there are none
#
#   bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]
#
# Defaults 300, 150 and tests/lcc_kernels tests/hf tests/devices. The tests run on 10
# pytest-xdist workers where it is installed (compiling is most of their time), each test
# then stopped after 150 s where pytest-timeout is (a hang shows as a crashed worker, not
# as a call killed with no summary). At TESTS_S they get SIGINT, which still prints the
# summary of what ran (xdist takes up to 10 s to let its workers go first), and SIGKILL
# GRACE_S later (GPU_RUN_GRACE_S, default 30). Worst case with the defaults, give the call
# timeout_s 600:
#   nvidia-smi pre-flight            15 s (10, then SIGKILL 5 s later)
#   suite: start-up (torch import)  ~15 s
#          children                 240 s (the budget less the 60 s end-to-end share) + 30
#                                         (the last child's timeout past that deadline)
#          end-to-end phase          90 s: to the budget's end (300) + its 60 s grace
#          summary, exit             ~3 s
#   tar                              ~2 s
#   tests                           150 s + 30 s grace
#   total                          ~575 s
# Exit status: the suite's if it failed, else pytest's (2 when stopped by SIGINT); a step
# killed by a signal (status 128+N, e.g. 137 after SIGKILL) or timed out (124) exits 70
# instead, since the device tool reads 124 and 137 as the call itself running out of time;
# the last line gives each step's own status. GPU_RUN_SMOKE=1 runs the same steps on a CPU
# (suite --smoke, tests interpreted) to check this script.
set -u -o pipefail
usage="usage: bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]"
out=$(realpath -m -- "${1:?$usage}")
commit=${2:?$usage}
budget=${3:-300}
tests_s=${4:-150}
grace_s=${GPU_RUN_GRACE_S:-30}
shift $(($# < 4 ? $# : 4))
test_paths=()
for path in "$@"; do test_paths+=("$(realpath -m -- "$path")"); done  # from the caller's cwd
[ ${#test_paths[@]} -gt 0 ] || test_paths=(tests/lcc_kernels tests/hf tests/devices)
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
suite_args=(--budget-s "$budget" --commit "$commit" --e2e-budget-s 60)
if [ "${GPU_RUN_SMOKE:-0}" = 1 ]; then
    export TRITON_INTERPRET=1
    suite_args+=(--smoke)
fi
# Pre-flight: an exclusive-process compute mode or low clocks would show in every number.
query=name,driver_version,compute_mode,clocks.sm,clocks.max.sm,clocks.mem,power.limit
facts=$(timeout -k 5 10 nvidia-smi --query-gpu=$query --format=csv 2>&1)
facts_rc=$?
{
    echo "gpu_run: pre-flight, nvidia-smi --query-gpu=$query"
    echo "$facts"
    [ $facts_rc = 0 ] || echo "gpu_run: nvidia-smi exit $facts_rc (no GPU facts)"
} | tee "$out/suite.log"
# "NVIDIA H200 NVL" -> h200, "NVIDIA A100-SXM4-80GB" -> a100: the first word with a digit
gpu=
[ $facts_rc = 0 ] && gpu=$(echo "$facts" | sed -n 2p | cut -d , -f 1 |
    tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' ' ' | tr ' ' '\n' | grep -m 1 -E '^[a-z]*[0-9]')
gpu=${gpu:-gpu}
[ "${GPU_RUN_SMOKE:-0}" = 1 ] && gpu=cpu
name="$gpu-$(date -u +%Y%m%d)-${commit:0:10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" benchmarks/gpu_suite.py "$work/$name" "${suite_args[@]}" 2>&1 | tee -a "$out/suite.log"
suite_rc=${PIPESTATUS[0]}
tar czf "$out/$name.tgz" -C "$work" "$name"

options=(-q -m "gpu or triton" -p no:cacheprovider --durations=15)
if "$py" -c "import xdist" 2>/dev/null; then
    options+=(-n 10)
    # the thread method ends the process of a hung test: a worker here, which xdist reports
    "$py" -c "import pytest_timeout" 2>/dev/null && options+=(-o timeout=150 -o timeout_method=thread)
fi
# --preserve-status: pytest's own status (2 when interrupted), not timeout's 124
timeout --preserve-status -s INT -k "$grace_s" "$tests_s" "$py" -m pytest "${options[@]}" \
    "${test_paths[@]}" 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
echo "gpu_run: suite exit $suite_rc, tests exit $tests_rc; $out holds $name.tgz, suite.log, pytest.log"
status=$((suite_rc ? suite_rc : tests_rc))
if [ $status = 124 ] || [ $status -gt 128 ]; then
    status=70  # a step was killed: not the device tool's timeout
fi
exit $status
