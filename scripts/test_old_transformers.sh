#!/usr/bin/env bash
# The tests that touch transformers' forward arguments (KV cache, logits_to_keep) and the
# pipeline on one device (tests/devices), under an older transformers than the one .venv
# resolves: 5.17, the version on the lent GPU machines. It goes in a side directory put
# first on PYTHONPATH; .venv is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OLD="transformers==5.17.0 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0"
side="$VENV/old-transformers"
want="$(echo "$OLD" | sha256sum | cut -c1-16)"
if [ ! -f "$side/.installed" ] || [ "$(cat "$side/.installed")" != "$want" ]; then
    rm -rf "$side"
    # --no-deps: everything else those need is already in .venv, and must not be shadowed.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$side" $OLD
    echo "$want" > "$side/.installed"
fi
PYTHONPATH="$side" "$VENV/bin/python" -c \
    "import transformers; assert transformers.__version__ == '5.17.0', transformers.__version__"
PYTHONPATH="$side" TRITON_INTERPRET=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/hf tests/eval tests/devices tests/lcc/test_lcc_capture.py tests/lcc/test_lcc_pipeline.py \
    tests/lcc/test_lcc_train.py
