#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU suite, then the GPU tests. What the call brings
# back is OUT (the device tool returns at most 8 files, 2 folders down), so it holds three:
#   <gpu>-<YYYYMMDD>-<commit[:10]>.tgz  the suite's run directory (benchmarks/results/README.md)
#   suite.log, pytest.log               their output (pytest's summary included)
#
#   bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S]]
#
# Defaults 300 and 180. The suite ends at most ~60 s after its budget (its end-to-end
# phase's grace), the tests within TESTS_S + 10: give the call timeout_s 600. The tests
# run on 10 pytest-xdist workers where it is installed (compiling is most of their time),
# each test stopped after 150 s where pytest-timeout is (a hang then shows as a crashed
# worker, not as a call killed with no summary); SIGINT at TESTS_S still prints the
# summary of what ran. GPU_RUN_SMOKE=1 runs the same steps on a CPU (suite --smoke, tests
# interpreted) to check this script.
set -u -o pipefail
usage="usage: bash benchmarks/gpu_run.sh OUT COMMIT [SUITE_BUDGET_S [TESTS_S]]"
out=${1:?$usage}
commit=${2:?$usage}
budget=${3:-300}
tests_s=${4:-180}
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
suite_args=(--budget-s "$budget" --commit "$commit" --e2e-budget-s 60)
if [ "${GPU_RUN_SMOKE:-0}" = 1 ]; then
    export TRITON_INTERPRET=1
    suite_args+=(--smoke)
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
gpu=$(printf '%s' "${gpu:-cpu}" | awk '{print tolower($NF)}')
name="$gpu-$(date -u +%Y%m%d)-${commit:0:10}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" benchmarks/gpu_suite.py "$work/$name" "${suite_args[@]}" 2>&1 | tee "$out/suite.log"
tar czf "$out/$name.tgz" -C "$work" "$name"

options=(-q -m "gpu or triton" -p no:cacheprovider --durations=15)
"$py" -c "import xdist" 2>/dev/null && options+=(-n 10)
"$py" -c "import pytest_timeout" 2>/dev/null && options+=(-o timeout=150 -o timeout_method=thread)
timeout -s INT -k 10 "$tests_s" "$py" -m pytest "${options[@]}" \
    tests/lcc_kernels tests/hf tests/devices 2>&1 | tee "$out/pytest.log"
