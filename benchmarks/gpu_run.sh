#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU suite, then the GPU tests. What the call brings
# back is OUT (the device tool returns at most 8 files, 2 folders down), so it holds three:
#   <gpu>-<YYYYMMDD>-<commit[:10]>.tgz  the suite's run directory (benchmarks/results/README.md)
#   suite.log, pytest.log               their output (pytest's summary included)
#
#   bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]
#
# Defaults 300, 180 and tests/lcc_kernels tests/hf tests/devices. The suite ends at most
# ~60 s after its budget (its end-to-end phase's grace), the tests within TESTS_S + 10:
# give the call timeout_s 600. The tests run on 10 pytest-xdist workers where it is
# installed (compiling is most of their time), each test then stopped after 150 s where
# pytest-timeout is (a hang shows as a crashed worker, not as a call killed with no
# summary); SIGINT at TESTS_S still prints the summary of what ran. Exit status: the
# suite's if it failed, else pytest's. GPU_RUN_SMOKE=1 runs the same steps on a CPU
# (suite --smoke, tests interpreted) to check this script.
set -u -o pipefail
usage="usage: bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S [TEST_PATH...]]]"
out=$(realpath -m -- "${1:?$usage}")
commit=${2:?$usage}
budget=${3:-300}
tests_s=${4:-180}
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
# "NVIDIA H200 NVL" -> h200, "NVIDIA A100-SXM4-80GB" -> a100: the first word with a digit
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 |
    tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' ' ' | tr ' ' '\n' | grep -m 1 -E '^[a-z]*[0-9]')
gpu=${gpu:-gpu}
[ "${GPU_RUN_SMOKE:-0}" = 1 ] && gpu=cpu
name="$gpu-$(date -u +%Y%m%d)-${commit:0:10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" benchmarks/gpu_suite.py "$work/$name" "${suite_args[@]}" 2>&1 | tee "$out/suite.log"
suite_rc=${PIPESTATUS[0]}
tar czf "$out/$name.tgz" -C "$work" "$name"

options=(-q -m "gpu or triton" -p no:cacheprovider --durations=15)
if "$py" -c "import xdist" 2>/dev/null; then
    options+=(-n 10)
    # the thread method ends the process of a hung test: a worker here, which xdist reports
    "$py" -c "import pytest_timeout" 2>/dev/null && options+=(-o timeout=150 -o timeout_method=thread)
fi
# --preserve-status: pytest's own status (2 when interrupted), not timeout's 124
timeout --preserve-status -s INT -k 10 "$tests_s" "$py" -m pytest "${options[@]}" \
    "${test_paths[@]}" 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
echo "gpu_run: suite exit $suite_rc, tests exit $tests_rc; $out holds $name.tgz, suite.log, pytest.log"
exit $((suite_rc ? suite_rc : tests_rc))
