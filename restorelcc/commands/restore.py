"""``restorelcc restore``: learn a RestoreLCC restoration of a pruned model.

Writes into ``--out``: the adapter (``adapter.safetensors`` + ``adapter.json``), a report
(``restore_report.json``) and, with ``--merged``, a plain ``transformers`` checkpoint with
the restoration folded into the ``o_proj`` biases (``--out/merged``), in the dtype that the
pruned checkpoint is stored in (``merged_dtype`` in the report), not ``--dtype``'s: where
they differ, the pruned weights are read again once the models in ``--dtype`` are freed,
so that the merged checkpoint is the pruned one plus the restoration, to the last bit.
"""

from __future__ import annotations

import argparse
import math

from restorelcc.commands.dtypes import add_dtype_argument, resolve_dtype, stored_dtype
from restorelcc.commands.options import (
    add_device_argument,
    add_perplexity_arguments,
    add_quiet_argument,
    check_eval_options,
    check_perplexity_options,
    check_spares_inputs,
    data_input,
    flag,
    given_options,
    name_flags,
    remember_defaults,
    resolve_device,
)
from restorelcc.commands.reports import mark_written
from restorelcc.errors import RestoreLCCError
from restorelcc.lcc.capture_precision import CAPTURE_DTYPES
from restorelcc.output_dirs import check_output_directory

REPORT_NAME = "restore_report.json"
MERGED_DIR = "merged"
METHODS = ("restorelcc", "lofit", "training-free")
# Options that another method would ignore: it refuses them (given other than defaults).
RESTORELCC_ONLY = ("selection", "probe_pairs", "components_k", "negatives", "standardize")
# restorelcc's and training-free's captures take it; LoFiT captures nothing
CAPTURE_ONLY = ("capture_dtype",)
# Of those, the ones that only score heads by probes: --selection random ignores them.
PROBING_ONLY = ("components_k", "negatives", "standardize")
TRAINING = ("heads", "lr", "epochs", "max_steps", "batch_size", "validation_pairs", "max_grad_norm")
EVAL_OPTIONS = ("ppl_source", "ppl_tokens")
# TrainConfig and RestoreConfig fields that their messages name: written as their flags.
CONFIG_FIELDS = (
    *TRAINING,
    "max_length",
    "seed",
    "selection",
    "probe_pairs",
    "components_k",
    "negatives",
    "capture_dtype",
)


class RestoreArgumentError(RestoreLCCError, ValueError):
    """A ``restore`` request that cannot be carried out."""


def grad_norm_value(text: str) -> float | None:
    """``"none"`` -> None (no clipping); else a float (``TrainConfig`` checks its sign)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'none'") from None


def heads_value(text: str) -> int | float:
    """``"64"`` -> 64 heads; ``"0.25"`` -> a quarter of all heads."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count nor a fraction") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore a pruned model by lost-component compensation (RestoreLCC)",
        description="Capture dense and pruned head activations, score heads by contrastive "
        "probing, train per-head compensations on instruction pairs, and save them as an "
        "adapter (and, with --merged, as a checkpoint with the compensation folded in).",
    )
    p.add_argument("--dense", default="smollm2-135m", help="dense model name or directory")
    p.add_argument("--pruned", required=True, help="pruned checkpoint directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--data", default="squad", help="pairs source: a training source, 'mix', or a file"
    )
    p.add_argument("--pairs", type=int, default=512, help="instruction pairs for training")
    p.add_argument(
        "--validation-pairs",
        type=int,
        default=0,
        help="more pairs of the source, held out: response loss before/after training",
    )
    p.add_argument(
        "--probe-pairs", type=int, default=None, help="pairs for capture/probing (default: all)"
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        type=str.lower,
        default="restorelcc",
        help="restorelcc (default); lofit: heads picked by L1-penalised scales, then a bias "
        "per head (twice the training steps); training-free: mean dense-minus-pruned head "
        "output at the prompts' last token, every head. All three fold into o_proj biases.",
    )
    p.add_argument(
        "--heads", type=heads_value, default=0.25, help="heads to train: a count or a fraction"
    )
    p.add_argument(
        "--selection",
        choices=("probe", "random"),
        type=str.lower,
        default="probe",
        help="how heads are picked: contrastive probes, or at random (ablation)",
    )
    p.add_argument(
        "--lofit-l1", type=float, default=None, help="LoFiT's L1 penalty weight (default: 1e-3)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--epochs", type=int, default=3, help="passes over --pairs")
    p.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    p.add_argument(
        "--max-grad-norm",
        type=grad_norm_value,
        default=1.0,
        help="clip each step's gradient norm to this, or 'none' (default: %(default)s, as the "
        "research code's Trainer)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--max-length", type=int, default=500, help="training tokens per pair")
    p.add_argument("--components-k", type=int, default=1, help="paper 1, research code 10")
    p.add_argument(
        "--negatives",
        choices=("auto", "minilm", "tfidf"),
        type=str.lower,
        default="auto",
        help="how probing's negative responses are mined: sentence embeddings (minilm), "
        "tf-idf, or auto (minilm where its wheel is installed)",
    )
    p.add_argument("--standardize", action="store_true", help="standardise probe features")
    p.add_argument(
        "--capture-dtype",
        choices=CAPTURE_DTYPES,
        type=str.lower,
        default="float32",
        help="what restorelcc's and training-free's activations are captured in: float32 "
        "(default: a bf16/fp16 model is cast to fp32 for its capture and back, one model at "
        "a time, so capture holds one model in fp32 beside the other), or model (--dtype's)",
    )
    p.add_argument("--seed", type=int, default=0, help="data sampling, init and order")
    add_dtype_argument(p, "both models' dtype while restoring")
    p.add_argument(
        "--merged",
        action="store_true",
        help=f"also write --out/{MERGED_DIR}: the pruned checkpoint with the restoration folded "
        "in, in the dtype the pruned checkpoint is stored in (read again in it, on the CPU, "
        "where --dtype differs)",
    )
    p.add_argument(
        "--eval", action="store_true", help="perplexity of the dense, pruned and restored models"
    )
    add_perplexity_arguments(p, what="--eval's perplexity")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)
    remember_defaults(
        p, (*RESTORELCC_ONLY, *CAPTURE_ONLY, *TRAINING, "max_length", "lofit_l1", *EVAL_OPTIONS)
    )


def _check_method_options(args: argparse.Namespace) -> None:
    """Refuse options that the chosen method would silently ignore."""
    unused = {
        "restorelcc": ("lofit_l1",),
        "lofit": (*RESTORELCC_ONLY, *CAPTURE_ONLY),
        # it captures at RestoreConfig's capture_max_length, as restorelcc does
        "training-free": (*RESTORELCC_ONLY, *TRAINING, "max_length", "lofit_l1"),
    }[args.method]
    given = given_options(args, unused)
    if given:
        raise RestoreArgumentError(f"--method {args.method} does not use {', '.join(given)}")
    if args.method == "restorelcc" and args.selection == "random":
        given = given_options(args, PROBING_ONLY)
        if given:
            raise RestoreArgumentError(
                f"--selection random does not use {', '.join(given)}: they only serve to "
                "score heads by probes"
            )
    if args.lofit_l1 is not None and not (math.isfinite(args.lofit_l1) and args.lofit_l1 >= 0):
        raise RestoreArgumentError(f"--lofit-l1 must be a finite number >= 0, got {args.lofit_l1}")
    norm = args.max_grad_norm
    if norm is not None and not (math.isfinite(norm) and norm > 0):
        raise RestoreArgumentError(
            f"--max-grad-norm must be a finite number > 0, or 'none' (no clipping), got {norm}"
        )
    check_eval_options(args, EVAL_OPTIONS, RestoreArgumentError)


def _config(args: argparse.Namespace):
    """The ``RestoreConfig`` of ``--method restorelcc`` or ``lofit`` (which uses its heads,
    initialisation and training settings), checked; None for ``training-free``, which
    takes none (only ``--pairs``, checked here too, and ``--capture-dtype``)."""
    from restorelcc.lcc import RestoreConfig, TrainConfig
    from restorelcc.lcc.config import check_probe_counts

    _check_method_options(args)
    for name in ("pairs", "epochs", "batch_size", "max_length", "components_k"):
        if getattr(args, name) < 1:
            raise RestoreArgumentError(f"{flag(name)} must be positive")
    probe_pairs = args.probe_pairs if args.probe_pairs is not None else args.pairs
    # only restorelcc captures on --probe-pairs (training-free captures all --pairs)
    capturing = ["restorelcc"] if args.method == "restorelcc" else []
    names = ("--probe-pairs", "--pairs", "--method")
    check_probe_counts(probe_pairs, args.pairs, capturing, names=names, error=RestoreArgumentError)
    try:
        train = TrainConfig(
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_length=args.max_length,
            max_steps=args.max_steps,
            seed=args.seed,
            progress=not args.quiet,
            validation_pairs=args.validation_pairs,
            max_grad_norm=args.max_grad_norm,
        )
        if args.method == "training-free":
            return None
        if args.method == "lofit":
            return RestoreConfig(heads=args.heads, train=train)
        return RestoreConfig(
            heads=args.heads,
            selection=args.selection,
            probe_pairs=probe_pairs,
            components_k=args.components_k,
            probe_standardize=args.standardize,
            negatives=args.negatives,
            capture_dtype=args.capture_dtype,
            train=train,
        )
    except ValueError as exc:  # the configs name their fields; the user typed flags
        raise RestoreArgumentError(name_flags(str(exc), CONFIG_FIELDS)) from None


def _check_out(args: argparse.Namespace) -> None:
    """Refuse, before any model loads: a packed checkpoint (``restorelcc pack``), a
    merged restoration or an adapter folder as ``--dense`` or ``--pruned``, or both the
    same folder (``check_model_folders``); an ``--out`` that would delete an input or that
    ``check_output_directory`` refuses; a ``--pruned`` that is no directory, or a built-in
    model's name (``check_pruned_folder``)."""
    from restorelcc.commands.restore_models import check_model_folders, check_pruned_folder
    from restorelcc.hf.packed_checkpoint import refuse_packed
    from restorelcc.lcc.adapter import ADAPTER_CONFIG  # --overwrite replaces an earlier --out

    read_by = "restorelcc eval --model and bench --model read a packed one"
    refuse_packed(
        args.dense,
        f"--dense is the unpruned model, a dense checkpoint ({read_by})",
        option="--dense",
    )
    refuse_packed(
        args.pruned,
        f"restore needs the dense pruned checkpoint it was packed from ({read_by})",
        option="--pruned",
    )
    check_model_folders(args, RestoreArgumentError)

    inputs = {
        "--pruned": args.pruned,
        "--dense": args.dense,
        "--data": data_input(args.data),
        "--ppl-source": data_input(args.ppl_source) if args.eval else None,
    }
    check_spares_inputs("--out", args.out, inputs, folder=True)
    check_output_directory(args.out, args.overwrite, option="--out", replaces=ADAPTER_CONFIG)
    check_pruned_folder(args, RestoreArgumentError)


def _check_models(args: argparse.Namespace, config):
    """What the two configs tell before any weights load: both of supported families, the
    pruned one the dense one pruned (same family and attention, or fewer heads), the
    ``--heads`` count within the pruned model's heads, ``--components-k`` within its
    head_dim, and an ``o_proj`` that can hold the bias ``--merged`` needs. Returns the
    pruned model's config."""
    from restorelcc.assets import load_config
    from restorelcc.errors import UnsupportedModelError
    from restorelcc.hf.families import head_geometry
    from restorelcc.lcc import head_count
    from restorelcc.lcc.adapter import check_mergeable
    from restorelcc.lcc.compat import check_compatible_configs
    from restorelcc.lcc.config import check_components_k

    pruned_config = load_config(args.pruned)
    try:
        check_compatible_configs(load_config(args.dense), pruned_config)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(
            f"--pruned {args.pruned} does not match --dense {args.dense}: {exc}"
        ) from None
    geometry = head_geometry(pruned_config)
    if config is not None:  # training-free compensates every head
        try:
            head_count(geometry, config.heads)
        except ValueError as exc:
            raise RestoreArgumentError(f"--heads: {exc}") from None
    if args.method == "restorelcc":
        try:
            check_components_k(config.components_k, geometry)
        except ValueError as exc:
            raise RestoreArgumentError(name_flags(str(exc), CONFIG_FIELDS)) from None
    if args.merged:
        try:
            check_mergeable(pruned_config)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"--merged: {exc}") from None
    return pruned_config


def _pairs(args: argparse.Namespace) -> list:
    """``--pairs`` training pairs then ``--validation-pairs`` held-out ones, of ``--data``,
    with the origin of the data read (``Sourced``: the report's ``data_origin``); a source
    holding fewer is refused naming the options (and their sum)."""
    from restorelcc.data import TooFewItemsError, instruction_pairs

    wanted = args.pairs + args.validation_pairs
    try:
        return instruction_pairs(args.data, n=wanted, seed=args.seed)
    except TooFewItemsError as exc:
        asked = f"--pairs {args.pairs}"
        if args.validation_pairs:
            asked += f" + --validation-pairs {args.validation_pairs} = {wanted} pairs"
        raise RestoreArgumentError(f"{asked}, but --data {args.data} holds {exc.held}") from None


def run(args: argparse.Namespace) -> int:
    from restorelcc.assets import load_model
    from restorelcc.commands.restore_models import compare_with_dense, method_restoration
    from restorelcc.commands.restore_report import print_summary, restore_report
    from restorelcc.data import perplexity_texts
    from restorelcc.io import atomic_write_json
    from restorelcc.lcc import save_adapter
    from restorelcc.lcc.adapter import ADAPTER_CONFIG, export_merged
    from restorelcc.output_dirs import atomic_directory

    config = _config(args)
    device = resolve_device(args.device)
    _check_out(args)
    # Cheap checks first: the data, then the models' configs.
    # The held-out pairs come last (TrainConfig.split): training keeps --pairs pairs.
    pairs = _pairs(args)
    # --eval's text, read once: a missing or empty one fails here, and the three models are
    # scored on what was read, which the report's ppl_source_origin describes
    ppl_texts = perplexity_texts(args.ppl_source) if args.eval else None
    pruned_config = _check_models(args, config)
    if args.eval:  # against the model's length before it loads (its tokenizer's: once loaded)
        check_perplexity_options(args, pruned_config, RestoreArgumentError)
    dtype = resolve_dtype(args.dtype, device)
    # --merged: the pruned checkpoint as stored plus the restoration, whatever --dtype
    merged_dtype = stored_dtype(pruned_config) or dtype
    models = {}  # the dense model, until method_restoration lets it go
    models["dense"], tokenizer = load_model(args.dense, dtype=dtype, device=device)
    pruned, _ = load_model(args.pruned, dtype=dtype, device=device)
    scored = {}  # --eval: perplexity results by model
    restoration = method_restoration(
        args, models, pruned, tokenizer, pairs, config, scored, ppl_texts
    )
    evaluation = None
    if args.eval:
        evaluation = compare_with_dense(scored, pruned, tokenizer, restoration, args, ppl_texts)
        evaluation["dtype"] = str(dtype).removeprefix("torch.")  # merged/ may be stored in another
    report = restore_report(
        args, pairs, config, restoration, evaluation, dtype, merged_dtype, ppl_texts
    )
    reread = args.merged and merged_dtype != dtype
    if reread:  # read in its stored dtype once the --dtype model is let go (no more memory)
        del pruned
        pruned, _ = load_model(args.pruned, dtype=merged_dtype, device="cpu")
    with atomic_directory(args.out, overwrite=args.overwrite, replaces=ADAPTER_CONFIG) as tmp:
        save_adapter(restoration, tmp, overwrite=True)
        if args.merged:
            # made from this --pruned checkpoint (read again or not): no fingerprint check,
            # which fp16 would fail on weights it flushes to zero (|w| < 3e-8)
            export_merged(restoration, pruned, tmp / MERGED_DIR, tokenizer, check=False)
        atomic_write_json(tmp / REPORT_NAME, report)
    mark_written(args, args.out)

    print_summary(args, restoration, evaluation, report)
    return 0
