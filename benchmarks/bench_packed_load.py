"""Load time and peak memory of a packed checkpoint against the other ways to the same model.

A packed checkpoint (``restorelcc pack``, ``restorelcc.hf.save_packed``) gives back a
swapped model without a dense copy of its packed weights. This measures what that buys
when loading on the CPU, against the two ways a user gets there otherwise, each load in a
fresh Python process of its own (so that its peak resident size is that path's alone):

- ``packed``: ``load_packed(packed, device="cpu", dtype=--dtype)``;
- ``load_swap``: ``load_model(pruned, dtype=--dtype)``, then ``swap_attention(model,
  --format, mlp=--mlp)``: the same swapped model (the packed folder is written from it);
- ``dense``: ``load_model(pruned, dtype=--dtype)`` alone: the pruned model unswapped, for
  reference.

Each process imports torch, transformers, the model's class and restorelcc first (their
time is not the load's), then times the load and one forward of ``TOKENS`` tokens (a
swapped module's first call included: a model is ready once it has run), and reads its
peak resident size: ``VmHWM`` of ``/proc/self/status``, reset to the resident size after
the imports (``/proc/self/clear_refs``), so the peak is the load's and the forward's own.
Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries it across fork and exec, so a child
reports at least the parent's peak (here the ~1.2 GiB of packing the default model), as a
first run of this script did. The files were just written, so they are read from the
page cache (with their pages resident while mapped): a cold disk read is not measured.
Paths run ``--rounds`` times, one process each per round, the first path rotating from
round to round (``restorelcc.latency.interleaved_rounds``); the ratios are medians of
per-round ratios. Children run with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` =
``--threads`` (default 1: steadier on a shared machine). On the CPU a swapped module
multiplies through the ``reference`` backend (its weight unpacked per call), so
``forward_s`` is not a GPU's.

``--model``: a pruned checkpoint directory, read as it is stored. Without it the default
model is pruned here (Wanda 2:4 on 4 calibration sequences of 64 tokens, ``python -m
restorelcc prune``) into a temporary folder, and that checkpoint (float32, the default
model's cache dtype) is stored again in ``--dtype``, as a real model's pruned checkpoint
is (``prune`` keeps the source's dtype, bf16 for most): both loads then read tensors of
one dtype, and the file comparison is like for like. The packed folder is always written
here (``save_packed`` of the model ``load_swap`` builds); everything is deleted at the end.

    python benchmarks/bench_packed_load.py                 # default model, 2:4 + MLP, bf16
    python benchmarks/bench_packed_load.py --model pruned-24 --format auto --no-mlp --rounds 5

Keys of the JSON (``benchmarks/results/packed_load_cpu.json`` unless ``--out``):
``model`` and ``prune_command`` (the command that pruned the default model, else null);
``dtype``, ``format``, ``mlp``, ``rounds``, ``tokens``, ``child_env`` (the thread variables
the children ran with) and ``child_torch_threads``; ``swap`` (the swap's one-line
description) and ``packed_modules`` (count and formats); ``files``: ``packed_bytes`` (the
packed safetensors file), ``pruned_bytes`` and ``pruned_dtypes`` (the checkpoint's
safetensors files and the dtypes stored in them), ``dense_bytes_at_dtype`` (the pruned
checkpoint's tensors in ``--dtype``) and the ratios ``packed_vs_pruned_file`` and
``packed_vs_dense_at_dtype``; ``paths``: per path, what it runs (``what``) and
``{"median", "min", "max"}`` over rounds of ``ready_s`` (seconds from the load call to the
end of the first forward), ``load_s``, ``forward_s``, ``peak_mib`` (the child's peak
resident size from the end of its imports on, the imported code's memory included),
``load_peak_mib`` (the same up to the end of the load, before the forward),
``peak_increase_mib`` (``peak_mib`` less ``rss_before_mib``, the resident size just before
the load), ``rss_before_mib``, ``resident_after_mib`` (once ready) and ``process_s`` (the
whole child process, start-up and imports included); ``ratios``: ``packed_vs_load_swap``
(the headline) and ``packed_vs_dense``, per metric the median of the per-round ratios
(below 1: the packed load is faster or smaller); ``checks``: ``same_packed_modules``
(``packed`` and ``load_swap`` hold the same packed modules) and ``same_logits`` (their
forwards gave bit-identical logits); ``runs``: every child's figures with its ``round``
and ``position`` in it (``peak_reset``: false where the peak could not be reset, so it
may be the imports' and the increase an upper bound); ``load_average`` before and after;
``run_metadata`` (of this parent process).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packed_load_child import PROC_STATUS, TOKENS

RESULTS = Path(__file__).resolve().parent / "results"
CHILD = Path(__file__).resolve().parent / "packed_load_child.py"  # one load, measured
REPOSITORY = Path(__file__).resolve().parents[1]
PATHS = {
    "packed": "load_packed(packed folder)",
    "load_swap": "load_model(pruned) + swap_attention",
    "dense": "load_model(pruned), no swap",
}
DTYPES = ("bfloat16", "float16", "float32")
METRICS = (
    "ready_s",
    "load_s",
    "forward_s",
    "load_peak_mib",
    "peak_mib",
    "peak_increase_mib",
    "rss_before_mib",
    "resident_after_mib",
    "process_s",
)
RATIO_METRICS = ("ready_s", "load_s", "peak_mib", "peak_increase_mib")
PRUNE_OPTIONS = (
    "--method", "wanda", "--pattern", "2:4", "--sparsity", "0.5",
    "--nsamples", "4", "--seqlen", "64",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, each checked before any model is pruned, packed or loaded; a bad one
    ends the run with a usage error naming it."""
    from restorelcc.commands.options import check_spares_inputs
    from restorelcc.commands.swap_options import add_format_argument
    from restorelcc.io import OutputPathError, check_writable_location

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default=None,
        help="a pruned checkpoint directory (default: the default model, pruned Wanda 2:4 here)",
    )
    add_format_argument(p, "--format", "2:4", "the packed format (as restorelcc pack --format)")
    p.add_argument(
        "--mlp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="swap and pack the MLP projections too (default: on)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype every path loads in")
    p.add_argument("--rounds", type=int, default=3, help="processes per path, order rotating")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the children")
    p.add_argument("--out", default=str(RESULTS / "packed_load_cpu.json"))
    args = p.parse_args(argv)
    for name in ("rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.model is not None:
        problem = pruned_checkpoint_problem(Path(args.model).expanduser())
        if problem:
            p.error(f"--model {args.model}: {problem}")
    if not PROC_STATUS.is_file():
        p.error(f"the resident size is read from {PROC_STATUS}, which this system lacks (Linux)")
    try:
        check_spares_inputs("--out", args.out, {"--model": args.model})
        check_writable_location(args.out, f"--out {args.out}")
    except (ValueError, OutputPathError) as error:
        p.error(str(error))
    return args


def pruned_checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a dense checkpoint directory to load, or None."""
    from restorelcc.hf.packed_checkpoint import is_packed_checkpoint

    if not folder.exists():
        return "no such directory"
    if not folder.is_dir():
        return "a file, not a checkpoint directory"
    if not (folder / "config.json").is_file():
        return "holds no config.json"
    if is_packed_checkpoint(folder):
        return "a packed checkpoint; give the pruned checkpoint it was packed from"
    if not any(folder.glob("*.safetensors")):
        return "holds no *.safetensors weights"
    return None


def child_environment(threads: int | None) -> dict[str, str]:
    """The environment of a child process: this one's, with the repository first on the
    module path and (unless ``threads`` is None) ``threads`` OpenMP/MKL threads."""
    path = os.pathsep.join(p for p in (str(REPOSITORY), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_checked(command: list[str], what: str, threads: int | None = None) -> None:
    """Run ``command`` in ``child_environment(threads)``, its output captured; a failure
    raises naming ``what``, with the end of its output."""
    env = child_environment(threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")


def prune_default(folder: Path) -> list[str]:
    """Prune the default model into ``folder`` with ``restorelcc prune``; its arguments."""
    from restorelcc.assets import DEFAULT_MODEL

    arguments = ["prune", "--model", DEFAULT_MODEL, *PRUNE_OPTIONS, "--out", str(folder)]
    run_checked([sys.executable, "-m", "restorelcc", *arguments, "--quiet"], "pruning")
    return ["restorelcc", *arguments]


def store_in(model_dir: Path, folder: Path, dtype: str) -> None:
    """``model_dir``'s checkpoint written to ``folder`` with its tensors stored in ``dtype``
    (``load_model`` in ``dtype``, ``save_pretrained``): the pruned default model as a
    checkpoint of a real model is stored, in the dtype it runs in."""
    from restorelcc.assets import load_model

    model, tokenizer = load_model(model_dir, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()


def write_packed(model_dir: Path, folder: Path, fmt: str, mlp: bool, dtype: str) -> str:
    """Pack ``model_dir`` into ``folder`` as ``restorelcc pack`` does: loaded in ``dtype``,
    swapped (``fmt``, ``mlp``), saved with ``save_packed``; returns the swap's line
    (``describe_swap``). Raises ``SwapError`` / ``NothingToSwapError`` naming ``--format``
    for a checkpoint that does not pack so."""
    from restorelcc.assets import load_model
    from restorelcc.commands.swap_options import (
        describe_swap,
        swap_errors_named,
        swap_pruned_attention,
    )
    from restorelcc.hf import MIN_SPARSITY, save_packed

    model, tokenizer = load_model(model_dir, dtype=dtype)
    with swap_errors_named("--format", fmt):
        report = swap_pruned_attention(model, "--model", str(model_dir), fmt, MIN_SPARSITY, mlp=mlp)
    save_packed(model, folder, tokenizer)
    del model
    gc.collect()
    return describe_swap(report)


def checkpoint_files(model_dir: Path, packed_dir: Path, dtype: str) -> dict:
    """Bytes on disk of the packed file and of the pruned checkpoint's safetensors files,
    the dtypes stored in the latter, and its tensors' bytes in ``dtype``."""
    import torch
    from safetensors import safe_open

    from restorelcc.hf.packed_checkpoint import WEIGHTS

    pruned_bytes, elements, dtypes = 0, 0, set()
    for path in sorted(model_dir.glob("*.safetensors")):
        pruned_bytes += path.stat().st_size
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no mapping)
                piece = f.get_slice(key)
                dtypes.add(piece.get_dtype())
                elements += math.prod(piece.get_shape())
    packed_bytes = (packed_dir / WEIGHTS).stat().st_size
    dense_bytes = elements * getattr(torch, dtype).itemsize
    return {
        "packed_bytes": packed_bytes,
        "pruned_bytes": pruned_bytes,
        "pruned_dtypes": sorted(dtypes),
        "dense_bytes_at_dtype": dense_bytes,
        "packed_vs_pruned_file": packed_bytes / pruned_bytes,
        "packed_vs_dense_at_dtype": packed_bytes / dense_bytes,
    }


# --- in the parent --------------------------------------------------------------------


def run_child(path: str, spec: dict, threads: int, scratch: Path) -> dict:
    """``packed_load_child.measure_load(path, spec)`` in a fresh Python process with
    ``threads`` threads."""
    out = scratch / f"child-{path}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(CHILD), path, json.dumps(spec), str(out)]
    run_checked(command, f"the {path} child", threads)
    return json.loads(out.read_text())


def measure(spec: dict, rounds: int, threads: int, scratch: Path) -> list[dict]:
    """Every path once per round, each in its own process, the first path rotating
    (``interleaved_rounds``); one dict per child, with its ``round``, ``position`` in the
    round and ``process_s`` (the whole child's wall time)."""
    from restorelcc.latency import interleaved_rounds

    runs: list[dict] = []

    def call(path: str):
        def run() -> None:
            index = len(runs)  # interleaved_rounds runs every path once per round
            place = {"round": index // len(PATHS), "position": index % len(PATHS)}
            runs.append({**run_child(path, spec, threads, scratch), **place})

        return run

    times = interleaved_rounds({path: call(path) for path in PATHS}, rounds, warmup=0)
    for path, seconds in times.items():
        mine = [run for run in runs if run["path"] == path]
        for run, process_s in zip(mine, seconds, strict=True):
            run["process_s"] = process_s
    return runs


def summarise(runs: list[dict]) -> tuple[dict, dict, dict]:
    """(per path: ``{"median", "min", "max"}`` per metric; the ratios of ``packed`` to
    ``load_swap`` and to ``dense``, medians of per-round ratios; the checks)."""
    import statistics

    from restorelcc.latency import median_ratios

    by_path = {path: [r for r in runs if r["path"] == path] for path in PATHS}
    paths = {}
    for path, rows in by_path.items():
        paths[path] = {"what": PATHS[path]}
        for metric in METRICS:
            values = [r[metric] for r in rows]
            paths[path][metric] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    ratios = {}
    for baseline in ("load_swap", "dense"):
        ratios[f"packed_vs_{baseline}"] = {
            metric: median_ratios(
                {path: [r[metric] for r in by_path[path]] for path in ("packed", baseline)},
                baseline,
            )["packed"]
            for metric in RATIO_METRICS
        }
    swapped = by_path["packed"] + by_path["load_swap"]
    checks = {
        "same_packed_modules": len({json.dumps(r["packed_modules"]) for r in swapped}) == 1,
        "same_logits": len({r["logits_sha256"] for r in swapped}) == 1,
    }
    return paths, ratios, checks


def table_rows(paths: dict) -> list[dict]:
    """One printed row per path: medians, and the range of the ready time and the peak."""
    return [
        {
            "path": path,
            "ready_s": figures["ready_s"]["median"],
            "ready_range_s": f"{figures['ready_s']['min']:.3g}-{figures['ready_s']['max']:.3g}",
            "load_s": figures["load_s"]["median"],
            "forward_s": figures["forward_s"]["median"],
            "load_peak_MiB": figures["load_peak_mib"]["median"],
            "peak_MiB": figures["peak_mib"]["median"],
            "increase_MiB": figures["peak_increase_mib"]["median"],
            "increase_range_MiB": (
                f"{figures['peak_increase_mib']['min']:.0f}-"
                f"{figures['peak_increase_mib']['max']:.0f}"
            ),
        }
        for path, figures in paths.items()
    ]


def main(argv: list[str] | None = None) -> int:
    from restorelcc.commands.swap_options import NothingToSwapError
    from restorelcc.hf.swap_plan import SwapError
    from restorelcc.io import atomic_write_json, format_table
    from restorelcc.provenance import load_average, run_metadata

    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-packed-load-") as tmp:
        scratch = Path(tmp)
        prune_command = None
        model_dir = Path(args.model).expanduser() if args.model else scratch / "pruned"
        if args.model is None:
            print(f"pruning the default model into {model_dir}", flush=True)
            prune_command = prune_default(scratch / "pruned-float32")
            store_in(scratch / "pruned-float32", model_dir, args.dtype)
        packed_dir = scratch / "packed"
        try:
            swap = write_packed(model_dir, packed_dir, args.format, args.mlp, args.dtype)
        except (SwapError, NothingToSwapError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        spec = {
            "model": str(model_dir),
            "packed": str(packed_dir),
            "model_type": json.loads((model_dir / "config.json").read_text())["model_type"],
            "dtype": args.dtype,
            "format": args.format,
            "mlp": args.mlp,
        }
        files = checkpoint_files(model_dir, packed_dir, args.dtype)
        load_before = load_average()
        runs = measure(spec, args.rounds, args.threads, scratch)
        load_after = load_average()
    paths, ratios, checks = summarise(runs)
    env = child_environment(args.threads)
    result = {
        "model": str(args.model or f"smollm2-135m pruned here, stored in {args.dtype}"),
        "prune_command": prune_command,
        "dtype": args.dtype,
        "format": args.format,
        "mlp": args.mlp,
        "rounds": args.rounds,
        "tokens": TOKENS,
        "child_env": {name: env[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "child_torch_threads": sorted({r["torch_threads"] for r in runs}),
        "swap": swap,
        "packed_modules": next(r["packed_modules"] for r in runs if r["path"] == "packed"),
        "files": files,
        "paths": paths,
        "ratios": ratios,
        "checks": checks,
        "runs": runs,
        "load_average": {"before": load_before, "after": load_after},
        "run_metadata": run_metadata(),
    }
    out = atomic_write_json(Path(args.out), result)
    print(format_table(table_rows(paths)))
    print(format_table([{"vs": name, **figures} for name, figures in ratios.items()]))
    print(format_table([{k: v for k, v in files.items() if k != "pruned_dtypes"}]))
    for name, ok in checks.items():
        if not ok:
            print(f"warning: check {name} failed (see runs in {out})", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
