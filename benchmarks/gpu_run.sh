#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU suite, a trimmed pytest-benchmark run, then the
# GPU tests. What the call brings back is OUT (the device tool returns at most 8 files, 2
# folders down), so it holds four:
#   <gpu>-<YYYYMMDD>-<commit[:10]>.tgz  the suite's run directory (benchmarks/results/README.md)
#                                       with bench_kernels.json, the benchmarks' results
#   suite.log, bench.log, pytest.log    their output (pytest's summaries included); suite.log
#                                       starts with nvidia-smi's pre-flight facts (compute
#                                       mode, clocks, power limit), or why there are none
#
#   bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]
#
# COMMIT: pass `$(git rev-parse HEAD)$(git diff --quiet HEAD || echo -dirty)`. The tree
# travels without .git but with its uncommitted edits, so the suffix is all that records
# them (env.json's `dirty` reads it); the whole string is recorded, file names take its
# first 10 characters. Exported as LCC_COMMIT for the benchmarks' JSON.
# Defaults 270, 150 and tests/lcc_kernels tests/hf tests/devices.
# The benchmarks: benchmarks/bench_kernels.py's test_linear at the Llama-3-8B attention
# shapes and M = 1, 16 and 1024, every provider, M by M, and test_device_copy (the
# bandwidth floor), with --benchmark-json into the run directory before it is packed. At
# GPU_RUN_BENCH_S (default 45) they get SIGINT (pytest-benchmark still writes what ran),
# and SIGKILL GPU_RUN_BENCH_GRACE_S (default 15) later. On a CPU every benchmark skips:
# the step passes and says there is no JSON.
# The tests run on 10 pytest-xdist workers where it is installed (compiling is most of
# their time), each test then stopped after 150 s where pytest-timeout is (a hang shows as
# a crashed worker, not as a call killed with no summary). At TESTS_S they get SIGINT,
# which still prints the summary of what ran (xdist takes up to 10 s to let its workers go
# first), and SIGKILL GRACE_S later (GPU_RUN_GRACE_S, default 30).
# The suite's end-to-end phase is off: GPU_RUN_E2E_S=S (60 before) keeps the budget's last
# S s for it, and its process may end 60 s past the budget, 30 s later than the children
# can: then give SUITE_BUDGET_S 30 s less.
# Worst case with the defaults, give the call timeout_s 600:
#   nvidia-smi pre-flight            15 s (10, then SIGKILL 5 s later)
#   suite: start-up (torch import)  ~15 s
#          children                 300 s: the budget (270) + 30 (the last child's timeout
#                                         past it)
#          summary, exit             ~3 s
#   benchmarks                       60 s: 45 s + 15 s grace
#   tar                              ~2 s
#   tests                           180 s: 150 s + 30 s grace
#   total                          ~575 s
# Exit status: the first step's that failed (suite, benchmarks, tests; pytest's 2: stopped
# by SIGINT); a step killed by a signal (status 128+N, e.g. 137 after SIGKILL) or timed out
# (124) exits 70 instead, since the device tool reads 124 and 137 as the call itself
# running out of time; the last line gives each step's own status. GPU_RUN_SMOKE=1 runs
# the same steps on a CPU (suite --smoke, tests interpreted) to check this script.
set -u -o pipefail
usage="usage: bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]"
out=$(realpath -m -- "${1:?$usage}")
commit=${2:?$usage}
budget=${3:-270}
tests_s=${4:-150}
grace_s=${GPU_RUN_GRACE_S:-30}
bench_s=${GPU_RUN_BENCH_S:-45}
bench_grace_s=${GPU_RUN_BENCH_GRACE_S:-15}
shift $(($# < 4 ? $# : 4))
test_paths=()
for path in "$@"; do test_paths+=("$(realpath -m -- "$path")"); done  # from the caller's cwd
[ ${#test_paths[@]} -gt 0 ] || test_paths=(tests/lcc_kernels tests/hf tests/devices)
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1 LCC_COMMIT=$commit
suite_args=(--budget-s "$budget" --commit "$commit" --e2e-budget-s "${GPU_RUN_E2E_S:-0}")
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

mkdir -p "$work/$name"  # where the suite died before making it
bench_json=$work/$name/bench_kernels.json
LCC_BENCH_M=1,16,1024 timeout --preserve-status -s INT -k "$bench_grace_s" "$bench_s" \
    "$py" -m pytest -q -p no:cacheprovider benchmarks/bench_kernels.py \
    -k "test_linear or test_device_copy" --benchmark-enable --benchmark-json="$bench_json" \
    2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
if [ -s "$bench_json" ]; then
    echo "gpu_run: benchmarks exit $bench_rc, results in $name.tgz: $name/bench_kernels.json"
elif [ $bench_rc = 0 ]; then
    echo "gpu_run: benchmarks exit 0, none ran (bench_kernels skips them without a CUDA" \
        "device): no bench_kernels.json"
else
    echo "gpu_run: benchmarks exit $bench_rc, no bench_kernels.json (bench.log says why)"
fi | tee -a "$out/bench.log"
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
echo "gpu_run: suite exit $suite_rc, benchmarks exit $bench_rc, tests exit $tests_rc;" \
    "$out holds $name.tgz, suite.log, bench.log, pytest.log"
status=$((suite_rc ? suite_rc : bench_rc ? bench_rc : tests_rc))
if [ $status = 124 ] || [ $status -gt 128 ]; then
    status=70  # a step was killed: not the device tool's timeout
fi
exit $status
