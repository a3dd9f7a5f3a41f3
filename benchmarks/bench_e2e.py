#!/usr/bin/env python
"""End-to-end latency of a model whose attention is swapped for the sparse kernels.

    python benchmarks/bench_e2e.py OUT_DIR [--budget-s 150] [--layers 4] [--mlp 14336]
        [--context 512] [--batches 1 16] [--prefill 1024] [--dispatch-table T] [--commit SHA]
    python benchmarks/bench_e2e.py OUT_DIR --smoke    # CPU, tiny model, reference path

No new work starts after --budget-s (not yet timed on a GPU; gpu_suite.py runs it as its
optional last phase with --e2e-budget-s, after its workers have compiled the kernels).

A Llama-3-8B-shaped model (hidden 4096, 32 heads, 8 KV heads, head_dim 128, MLP 14336)
with a few layers and random weights is built from its config, in bf16. Its attention
q/k/v/o (and in ``+mlp`` variants its MLP gate/up/down) are pruned by magnitude to each
variant, swapped with ``swap_attention`` and timed, then unswapped and restored:

    dense      the unpruned model, plain nn.Linear (cuBLAS)
    2:4        2:4 pruned attention, packed 2:4
    2:4+mlp    2:4 pruned attention and MLP, both packed (swap_attention(mlp=True))
    bitmap50   50% unstructured attention, packed bitmap
    bitmap70   70% unstructured attention, packed bitmap

Timings: a decode step (batch B, one new token after a context of C tokens in a static
KV cache) and a prefill (T tokens), each from CUDA-graph replays timed back to
back (``restorelcc.latency``, shared with ``restorelcc bench``; eager
if capture fails, which the row's ``method`` says); then ``decode_eager``, the first
decode batch stepped from Python without a graph (``eager_loop``), as an uncompiled
``generate`` runs, host overhead included. The lm_head (and but for ``+mlp``, the
MLP) stays dense, so the end-to-end gain is bounded by ``bytes_ratio`` (weight bytes read
per decode step, dense / swapped). Each variant's logits are also checked against the
unswapped pruned model (the kernels.md rule: error vs a wider-precision oracle <= 2 x
PyTorch's own + atol).

Results: OUT_DIR/e2e.json (rewritten after every row; schema ``restorelcc.bench_e2e/1``),
with ``run_metadata()``. Its ``status``: ``running`` until the end, then ``complete``
(every job of every variant timed), ``budget spent before <variant>`` or ``budget spent
during <variant>: ...`` (which jobs were not timed). On a CPU (``--smoke``) the timings
only exercise the code: ``timing_claims`` is false and no speedups are computed.

This script runs the variants and writes the results; e2e_model.py builds and prunes the
model, e2e_report.py computes the speedups and the summary table.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e_model import LLAMA3_8B, Setup, block_linears, build_model, prune_blocks, setup_for  # noqa: E402
from e2e_report import speedups, summary_table  # noqa: E402

SCHEMA = "restorelcc.bench_e2e/1"
# variant -> (pruning pattern, sparsity, swap format, MLP too); None: the dense model as
# it is. In this order: a budget that runs out cuts the last ones.
VARIANTS = {
    "dense": None,
    "2:4": ("2:4", 0.5, "2:4", False),
    "2:4+mlp": ("2:4", 0.5, "2:4", True),
    "bitmap50": ("unstructured", 0.5, "bitmap", False),
    "bitmap70": ("unstructured", 0.7, "bitmap", False),
}


class Bench:
    """Runs the variants in order, appending rows and rewriting e2e.json after each."""

    def __init__(
        self, out: Path, setup: Setup, deadline: float, commit: str | None, table: str | None
    ) -> None:
        import torch

        from lcc_kernels.bench import environment
        from restorelcc.provenance import run_metadata

        self.torch = torch
        self.out, self.setup, self.deadline = out, setup, deadline
        self.device = torch.device(
            "cuda" if torch.cuda.is_available() and not setup.smoke else "cpu"
        )
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        metadata = run_metadata()
        metadata["commit"] = commit or metadata["commit"]
        self.result = {
            "schema": SCHEMA,
            "metadata": metadata,
            "environment": environment(self.device, commit),
            "setup": asdict(setup),
            "dtype": str(self.dtype).removeprefix("torch."),
            "dispatch_table": table,
            "timing_claims": self.device.type == "cuda",
            "variants": {},
            "rows": [],
            "status": "running",
        }
        self.generator = torch.Generator(device=self.device).manual_seed(0)

    def save(self) -> None:
        from restorelcc.io import atomic_write_json

        atomic_write_json(self.out / "e2e.json", self.result)

    def time_left(self) -> bool:
        return time.time() < self.deadline

    def run(self) -> dict:
        from restorelcc.hf.swap import swap_attention, unswap_attention
        from restorelcc.latency import check_call, dense_projections, weight_bytes

        torch = self.torch
        model = build_model(self.setup, self.device, self.dtype)
        originals = {k: m.weight.detach().clone() for k, m in block_linears(model).items()}
        ids = torch.randint(
            0,
            model.config.vocab_size,
            (1, self.setup.check_tokens),
            device=self.device,
            generator=self.generator,
        )
        for variant, spec in VARIANTS.items():
            if not self.time_left():
                self.result["status"] = f"budget spent before {variant}"
                break
            info = self.result["variants"].setdefault(variant, {})
            swapped = False
            try:
                if spec is not None:
                    pattern, sparsity, fmt, mlp = spec
                    prune_blocks(model, originals, pattern, sparsity, mlp)
                    plain, dense = model(ids).logits, dense_projections(model)
                    report = swap_attention(model, fmt, mlp=mlp)
                    swapped = True
                    info["swap"] = {k: v for k, v in report.to_dict().items() if k != "groups"}
                    info["formats"] = report.packed_formats
                    info["check"] = check_call(model, lambda: model(ids).logits, dense, plain)
                    del plain, dense  # the dense weights stay alive while referenced
                info["weight_bytes"] = weight_bytes(model)
                self.save()
                self.time_variant(variant, model)
            except Exception as error:  # one variant failing must not end the run
                info["error"] = f"{type(error).__name__}: {error}"[:600]
            finally:
                # A swap that raised has put the model back itself (and unswap_attention
                # refuses a model with nothing swapped): the next variant starts unswapped.
                if swapped:
                    unswap_attention(model)
                self.save()
            if self.result["status"] != "running":  # the budget ran out inside the variant
                break
        if self.result["status"] == "running":
            self.result["status"] = "complete"
        self.result["speedups"] = speedups(self.result)
        self.save()
        return self.result

    def time_variant(self, variant: str, model) -> None:
        """Time every job of ``variant``; a budget that runs out first sets ``status`` to
        say which job and those after it were not timed."""
        jobs = [("decode", b, self.setup.context) for b in self.setup.decode_batches]
        jobs += [("prefill", 1, t) for t in self.setup.prefill_tokens]
        jobs.append(("decode_eager", self.setup.decode_batches[0], self.setup.context))
        for index, (phase, batch, tokens) in enumerate(jobs):
            if not self.time_left():
                self.result["status"] = (
                    f"budget spent during {variant}: {len(jobs) - index} of its {len(jobs)} "
                    f"jobs not timed, from {phase} batch {batch} tokens {tokens}"
                )
                return
            row = {"variant": variant, "phase": phase, "batch": batch, "tokens": tokens}
            try:
                row.update(self.time_job(model, phase, batch, tokens), status="ok")
            except Exception as error:  # recorded; the other jobs still run
                row.update(status="error", error=f"{type(error).__name__}: {error}"[:600])
            self.result["rows"].append(row)
            self.save()
            print(
                f"{variant:9s} {phase:7s} batch {batch:3d} tokens {tokens:5d} "
                f"{row.get('median_ms', float('nan')):.4f} ms {row['status']}",
                flush=True,
            )

    def time_job(self, model, phase: str, batch: int, tokens: int) -> dict:
        from restorelcc.latency import decode_step, prefill, time_call

        if phase == "prefill":
            call = prefill(model, tokens, self.generator)
        else:
            call = decode_step(model, batch, tokens, self.generator)
        eager = phase == "decode_eager"
        return time_call(call, self.device, rounds=2, rep_ms=self.setup.rep_ms, eager=eager)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory for e2e.json (created)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model on the CPU, reference path; no timing claims. Its sizes are fixed: "
        "--layers, --vocab, --mlp, --context, --batches, --prefill and --dispatch-table are "
        "ignored",
    )
    parser.add_argument(
        "--budget-s", type=float, default=150.0, help="start no new work after this many seconds"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument(
        "--mlp", type=int, default=LLAMA3_8B["intermediate_size"], help="MLP intermediate size"
    )
    parser.add_argument("--context", type=int, default=512, help="KV cache tokens at decode")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 16], help="decode batch sizes"
    )
    parser.add_argument(
        "--prefill", type=int, nargs="+", default=[1024], help="prefill lengths (batch 1)"
    )
    parser.add_argument(
        "--dispatch-table",
        default=None,
        help="a gpu_suite dispatch_table.json to load (skipped if absent)",
    )
    parser.add_argument("--commit", default=None, help="commit to record (no .git in copies)")
    args = parser.parse_args(argv)
    for name in ("layers", "vocab", "mlp", "context"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.batches + args.prefill) < 1:
        parser.error("--batches and --prefill must be >= 1")
    started = time.time()
    import torch

    table = None
    if args.dispatch_table and Path(args.dispatch_table).is_file() and not args.smoke:
        import lcc_kernels

        lcc_kernels.load_table(args.dispatch_table)
        table = str(args.dispatch_table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.smoke:
        # Tiny matrices gain nothing from threads, and on a busy CPU OpenMP's waiting
        # turns microseconds into tens of milliseconds per call.
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            bench = Bench(out, setup_for(args), started + args.budget_s, args.commit, table)
            result = bench.run()
    finally:
        torch.set_num_threads(threads)
    print(summary_table(result))
    print(
        f"({result['status']}; {time.time() - started:.0f} s; "
        f"{'' if result['timing_claims'] else 'CPU: no timing claims; '}{out / 'e2e.json'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
