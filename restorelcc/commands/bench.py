"""``restorelcc bench``: latency of a pruned (or restored) model before and after the swap.

The model is loaded once. Every job (a decode step per ``--batches`` value after
``--context`` cached tokens, a prefill per ``--prefill`` value) is timed with the
attention (with ``--mlp``, also the MLP) swapped, and again after ``unswap_attention``,
with ``nn.Linear`` (cuBLAS on a GPU) on the same pruned weights. Before a swapped job is
timed, that very call (same random tokens, same static-cache path, same kernel plan) is
checked: every swapped projection's output, on the input the call gave it, against its
dense weight in float64 by the kernels.md rule (``bench_timing``; its verdict sets the
exit status), and the call's logits against the ``nn.Linear`` model's, as information
only (over many layers rounding differences compound: no per-operation rule holds
there). Swapped and ``nn.Linear`` timings are taken one after the other, not
interleaved: the swap is in place, and a second copy of the model would double its
memory.
On a GPU each call is timed from CUDA-graph replays for ``--rep-ms`` (no host overhead,
as in compiled or captured decode); ``--eager`` times calls issued from Python instead,
for ``--rep-ms`` too. On a CPU, ``--rounds`` calls are timed by the wall clock (fewer
than 3 leave the noise check, which names the rows whose timings scatter, nothing to
judge: a warning says so). Options that the device would ignore are refused, as are a
value given twice in ``--batches`` or ``--prefill``, ``--context``/``--prefill`` beyond
the model's positions and a model with nothing to swap or a weight the format does not
fit: a dry run of the swap (``swap_attention(dry_run=True)``: its checks, nothing packed)
finds them before the reference logits are computed, and the model is then swapped once.
A packed checkpoint (``restorelcc pack``) is read packed (``load_packed``) and unpacked in
place (``unswap_attention``: its dense pruned weights exactly, one copy of the model held);
from there it runs as a dense folder does, swapped again with the options it was packed
with (``packed_swap``: format, ``--mlp``, decode streams, as ``restorelcc pack`` records them
or, in a ``save_packed`` folder that records none, as its groups show them), and the swap
must pack the very groups, in the very formats, that the folder holds: one that fails or
packs otherwise is refused (a folder saved with swap options that pack does not record,
such as ``layers=``, ``min_sparsity`` or ``backend``, is for ``eval --model``). Options that
contradict the folder (``--format`` other than auto or its format, ``--mlp`` or
``--decode-streams`` where it was packed without them, ``--min-sparsity``, ``--adapter``)
are refused.
Speedup = ``nn.Linear`` time / swapped time. On a CPU the swapped modules run the
PyTorch reference path, so CPU figures say nothing of GPU speed (the report says so).
This module holds the options, their checks and the run; the timing and the check of the
swapped calls: ``bench_timing``; the report's rows and printed summary:
``bench_summary``; packed checkpoints: ``bench_packed``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

from restorelcc.commands.adapter_options import (
    adapter_input,
    adapter_summary,
    add_adapter_argument,
    read_adapter,
)
from restorelcc.commands.bench_packed import check_packed_options, swap_as_packed
from restorelcc.commands.bench_summary import (
    NOISE_CHECK_ROUNDS,
    NOISY_SPREAD,
    decode_streams_bytes,
    print_summary,
    timing_rows,
)
from restorelcc.commands.bench_timing import (
    CHECK_MEMORY,
    memory_for_the_check,
    reference_logits,
    summarise_checks,
    time_jobs,
)
from restorelcc.commands.dtypes import add_dtype_argument, resolve_dtype
from restorelcc.commands.model_options import check_adapter_options
from restorelcc.commands.options import (
    add_device_argument,
    add_quiet_argument,
    check_spares_inputs,
    positive_int,
    refuse_unused,
    remember_defaults,
    resolve_device,
)
from restorelcc.commands.reports import DEFAULT_REPORT_HELP, report_path, write_report
from restorelcc.commands.swap_options import (
    add_format_argument,
    add_mlp_argument,
    check_decode_streams,
    swap_errors_named,
    swap_pruned_attention,
)
from restorelcc.errors import warn_user
from restorelcc.hf import MIN_SPARSITY

# Timing options that one kind of device ignores: refused there (given other than defaults).
CUDA_ONLY = ("rep_ms", "eager", "decode_streams")
CPU_ONLY = ("rounds",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="decode and prefill latency of a pruned model, swapped vs nn.Linear",
        description="Time decode steps and prefills of a pruned or restored model with its "
        "attention swapped for the packed sparse kernels, against the same model with "
        "nn.Linear projections, after checking each swapped projection's output on the "
        "timed calls against float64 (as the kernels are checked).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="pruned model name or directory, or a packed checkpoint (restorelcc pack: "
        "timed as it was packed)",
    )
    add_adapter_argument(p)
    add_format_argument(p, "--format", "auto", "packed format of the swap")
    p.add_argument(
        "--batches",
        type=positive_int,
        nargs="+",
        default=[1, 16],
        help="decode batch sizes, each once",
    )
    p.add_argument(
        "--context", type=positive_int, default=512, help="cached tokens before a decode step"
    )
    p.add_argument(
        "--prefill", type=positive_int, nargs="*", default=[512], help="prefill lengths, each once"
    )
    add_dtype_argument(p)
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=10,
        help="CPU only: timed calls per job (3 or more for the noise check)",
    )
    p.add_argument(
        "--rep-ms",
        type=positive_int,
        default=200,
        help="CUDA only: timing window per job (ms), of graph replays or of --eager calls",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="CUDA only: time calls issued from Python one after another (host overhead "
        "included, as an uncompiled generate runs) instead of CUDA-graph replays",
    )
    p.add_argument(
        "--min-sparsity",
        type=float,
        default=MIN_SPARSITY,
        help="fraction of zeros from which a matrix counts as pruned",
    )
    p.add_argument(
        "--decode-streams",
        action="store_true",
        help="CUDA only: bitmap weights run decode (up to 4 rows) on a streams layout of "
        "their kept values: ~1.1x the bitmap's bytes more memory (lcc_kernels.streams); "
        "refused where no weight is packed as a bitmap",
    )
    add_mlp_argument(p)
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check of the swapped calls (each swapped projection's output against "
        f"float64 and nn.Linear's error); it holds {CHECK_MEMORY}",
    )
    add_device_argument(p)
    p.add_argument("--json", default=None, help=DEFAULT_REPORT_HELP.format(command="bench"))
    add_quiet_argument(p)
    p.set_defaults(func=run)
    remember_defaults(p, (*CUDA_ONLY, *CPU_ONLY, "min_sparsity"))


def _check_job_values(args: argparse.Namespace) -> None:
    """Refuse a value given twice in ``--batches`` or ``--prefill``: the same job would
    be timed twice."""
    for option, values in (("--batches", args.batches), ("--prefill", args.prefill)):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            shown = " ".join(map(str, values))
            raise ValueError(
                f"{option} {shown}: {', '.join(map(str, repeated))} given more than once; "
                "each value is one job, timed once"
            )


def _check_timing_options(args: argparse.Namespace, device) -> None:
    """Refuse the timing options that ``device`` would ignore; on a CPU, warn that
    ``--rounds`` below ``NOISE_CHECK_ROUNDS`` leaves the noise check nothing to judge."""
    if device.type == "cuda":
        refuse_unused(args, CPU_ONLY, "CPU only; on CUDA each job is timed for --rep-ms")
        if args.format == "2:4":
            refuse_unused(
                args, ("decode_streams",), "it lays out bitmap weights; --format 2:4 has none"
            )
    else:
        refuse_unused(
            args,
            CUDA_ONLY,
            f"CUDA only; on the {device.type} the calls are timed by the wall clock "
            "(--rounds) on the PyTorch reference path",
        )
        if args.rounds < NOISE_CHECK_ROUNDS:
            warn_user(
                f"--rounds {args.rounds}: the noise check (timings spread over more than "
                f"{NOISY_SPREAD:.0%} of their median) needs --rounds {NOISE_CHECK_ROUNDS} or "
                "more; these timings are not checked for noise",
            )


def _swap(model, args: argparse.Namespace, dry_run: bool = False, packed: dict | None = None):
    """Swap ``model`` in place as the options ask (``dry_run``: the swap's checks only,
    nothing packed, the model unchanged); its ``SwapReport``. ``packed``: the
    ``packed_swap`` of the packed checkpoint ``--model``, whose groups the swap must pack
    as it holds them (``bench_packed.swap_as_packed``). Raises ``NothingToSwapError``
    where nothing is pruned, ``ValueError`` for ``--decode-streams`` without bitmap
    weights, ``SwapError`` naming ``--format``."""

    def swap():
        return swap_pruned_attention(
            model,
            "--model",
            args.model,
            args.format,
            args.min_sparsity,
            args.decode_streams,
            args.mlp,
            dry_run=dry_run,
        )

    if packed is not None:
        return swap_as_packed(swap, args, packed)
    with swap_errors_named("--format", args.format):
        report = swap()
    check_decode_streams(args, report)
    return report


def _check_positions(args: argparse.Namespace, config) -> None:
    """Refuse a ``--context`` or ``--prefill`` beyond the model's positions."""
    from restorelcc.hf.families import check_length_fits, model_positions

    limit = model_positions(config)
    if limit is not None and args.context + 1 > limit:
        raise ValueError(
            f"--context {args.context}: a decode step after {args.context} cached tokens "
            f"needs {args.context + 1} positions; {args.model} has {limit}"
        )
    longest = max(args.prefill, default=0)
    check_length_fits(longest, config, f"--prefill {longest}")


def _jobs(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(phase, batch, tokens) for every timed call."""
    return [("decode", b, args.context) for b in args.batches] + [
        ("prefill", 1, t) for t in args.prefill
    ]


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from restorelcc.assets import load_config, load_model, model_origin
    from restorelcc.hf.families import family_of
    from restorelcc.hf.packed_checkpoint import (
        is_packed_checkpoint,
        load_packed,
        packed_modules,
        packed_swap,
    )
    from restorelcc.hf.swap import unswap_attention
    from restorelcc.latency import weight_bytes
    from restorelcc.provenance import run_metadata

    start = time.perf_counter()
    check_adapter_options(args, "time")
    folder = packed_swap(args.model) if is_packed_checkpoint(args.model) else None
    if folder is not None:
        check_packed_options(args, folder)
    out = report_path(args, "bench")
    adapter = adapter_input(args.adapter)
    check_spares_inputs("--json", out, {"--model": args.model, "--adapter": adapter})
    if not 0 <= args.min_sparsity < 1:
        raise ValueError(f"--min-sparsity must be in [0, 1), got {args.min_sparsity}")
    _check_job_values(args)
    device = resolve_device(args.device)
    _check_timing_options(args, device)
    if folder is not None:  # the swap as the folder was packed, where not given
        if args.format == "auto":
            args.format = folder["format"]
        args.mlp, args.decode_streams = folder["mlp"], folder["decode_streams"]
    dtype = resolve_dtype(args.dtype, device)
    restoration = read_adapter(args.adapter)
    config = load_config(args.model)
    family_of(config)  # an unsupported family fails before the weights load
    _check_positions(args, config)
    packed = None
    if folder is not None:
        model, _ = load_packed(args.model, device=device, dtype=dtype)
        packed = {**packed_modules(model), "stored_dtype": folder["dtype"]}
        unswap_attention(model)  # in place, exactly: the dense pruned model
    else:
        model, _ = load_model(args.model, dtype=dtype, device=device)
    if restoration is not None:
        restoration.fold(model)
    bytes_linear = weight_bytes(model)
    jobs = _jobs(args)
    with torch.no_grad():
        references = None
        if not args.no_check:
            _swap(model, args, True, folder)  # what the swap refuses fails before these
            references = reference_logits(model, jobs, device, args.quiet)
        # the references keep the dense projections: the swap packs beside them
        with memory_for_the_check() if references is not None else contextlib.nullcontext():
            report = _swap(model, args, packed=folder)
        bytes_swapped = weight_bytes(model)
        # one job (phase, batch, tokens) timed on one of the two models per step
        with tqdm(total=2 * len(jobs), desc="bench", unit="job", disable=args.quiet) as bar:
            swapped, checks = time_jobs(model, jobs, device, args, "swapped", bar, references)
            references = None  # frees the dense projections before unswap builds them again
            unswap_attention(model)
            linear, _ = time_jobs(model, jobs, device, args, "nn.Linear", bar)
    check = summarise_checks(checks)
    rows = timing_rows(jobs, linear, swapped, checks)
    payload = {
        "model": str(args.model),
        "model_origin": model_origin(args.model),
        "adapter": adapter_summary(args.adapter, restoration),
        "packed_checkpoint": packed,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timing_claims": device.type == "cuda",
        "eager": args.eager,
        "swap": report.to_dict(),
        "formats": report.packed_formats,
        "weight_bytes": {
            "linear": bytes_linear,
            "swapped": bytes_swapped,
            "swapped_decode_streams": decode_streams_bytes(report, bytes_swapped),
        },
        "check": check,
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 2),
        "run_metadata": run_metadata(),
    }
    out = write_report(args, "bench", out, payload)  # before the tables: see cli.main
    print_summary(payload, report, out, device, args.rounds)
    return 0 if check is None or check["ok"] else 1
