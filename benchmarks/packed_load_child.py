"""The child process of ``bench_packed_load.py``: one load of one path, measured.

    python benchmarks/packed_load_child.py PATH SPEC_JSON OUT

imports what every path runs, resets its peak resident size, loads ``PATH`` (``packed``,
``load_swap`` or ``dense``) as ``SPEC_JSON`` says, runs one forward of ``TOKENS`` tokens and
writes its seconds, resident sizes, packed modules and a digest of the logits to ``OUT``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
from pathlib import Path

TOKENS = 8  # the forward that makes a model ready: [1, TOKENS] token ids
PROC_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``: the resident size now)."""
    with open(PROC_STATUS) as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"{PROC_STATUS} has no {field} line")


def _import_model_code(model_type: str) -> None:
    """Import what every path runs (torch, transformers and the model's class, safetensors,
    accelerate, the kernels and restorelcc's loaders), so the timed part imports nothing."""
    import accelerate  # noqa: F401 (load_packed builds the model empty with it)
    import safetensors.torch  # noqa: F401
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    import lcc_kernels  # noqa: F401
    import restorelcc.hf.packed_checkpoint  # noqa: F401
    import restorelcc.hf.swap  # noqa: F401
    import restorelcc.loading  # noqa: F401

    getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


def _load(path: str, spec: dict):
    """The model ``path`` (a key of ``PATHS``) loads, as ``spec`` says."""
    from restorelcc.assets import load_model
    from restorelcc.hf import load_packed, swap_attention

    if path == "packed":
        return load_packed(spec["packed"], device="cpu", dtype=spec["dtype"])[0]
    model, _ = load_model(spec["model"], dtype=spec["dtype"])
    if path == "load_swap":
        swap_attention(model, spec["format"], mlp=spec["mlp"])
    return model


def _reset_peak() -> bool:
    """Reset this process's peak resident size (``VmHWM``) to its resident size now
    (Linux >= 4.0); False where that is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def measure_load(path: str, spec: dict) -> dict:
    """Load ``path`` in this process and run one forward of ``TOKENS`` tokens: seconds,
    resident sizes (MiB) around it, the packed modules and a digest of the logits."""
    import torch

    from restorelcc.hf.packed_checkpoint import packed_modules

    _import_model_code(spec["model_type"])
    gc.collect()
    peak_reset = _reset_peak()
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    model = _load(path, spec)
    loaded = time.perf_counter()
    load_peak = _status_kib("VmHWM")
    ids = torch.arange(TOKENS).unsqueeze(0) % model.config.vocab_size
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    ready = time.perf_counter()
    peak = _status_kib("VmHWM")
    return {
        "path": path,
        "ready_s": ready - start,
        "load_s": loaded - start,
        "forward_s": ready - loaded,
        "rss_before_mib": rss_before / 1024,
        "load_peak_mib": load_peak / 1024,
        "peak_mib": peak / 1024,
        "peak_increase_mib": (peak - rss_before) / 1024,
        "peak_reset": peak_reset,
        "resident_after_mib": _status_kib("VmRSS") / 1024,
        "torch_threads": torch.get_num_threads(),
        "packed_modules": packed_modules(model),
        "logits_sha256": hashlib.sha256(logits.float().numpy().tobytes()).hexdigest(),
    }


def child_main(argv: list[str]) -> int:
    """The child's entry: ``PATH SPEC_JSON OUT``; writes ``measure_load``'s dict to OUT."""
    from restorelcc.io import atomic_write_json

    path, spec, out = argv
    atomic_write_json(out, measure_load(path, json.loads(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
