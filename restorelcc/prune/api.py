"""``prune_model``: prune every decoder-block linear of a causal LM in place."""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.data import source_origin
from restorelcc.errors import warn_user
from restorelcc.hf.families import Family, block_linear, decoder_layers, eval_mode, family_of
from restorelcc.prune.calibrate import collect_input_stats, input_sharing_groups, walk_blocks
from restorelcc.prune.magnitude import magnitude_mask
from restorelcc.prune.report import (
    PruneReport,
    checked_patterns,
    first_pruned_weight,
    matrix_report,
    model_folder,
)
from restorelcc.prune.sparsegpt import (
    BLOCK_SIZE,
    DAMPENING,
    inverse_hessian_factor,
    prune_with_factor,
)
from restorelcc.prune.structured import prune_structured, renormalisation_note
from restorelcc.prune.structured_plan import plan_removal
from restorelcc.prune.validate import (
    PruneSpec,
    check_calibration,
    check_calibration_fits,
    check_finite_weights,
    check_model,
    check_options,
    check_spec,
    warn_if_left_dense,
)
from restorelcc.prune.wanda import wanda_mask


def prune_model(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    calibration: torch.Tensor | None = None,
    *,
    calibration_source: str | None = None,
    calibration_seed: int | None = None,
    head_fraction: float | None = None,
    channel_multiple: int = 1,
    chunk_size: int = 8,
    block_size: int = BLOCK_SIZE,
    dampening: float = DAMPENING,
    progress: bool = True,
) -> PruneReport:
    """Prune ``model`` in place and return a ``PruneReport``.

    Prunes q, k, v, o, gate, up and down of every decoder block (never embeddings or the
    LM head). ``method``: ``magnitude`` (no data; ``calibration`` must be ``None``),
    ``wanda`` or ``sparsegpt`` (need ``calibration``, token ids ``[nsamples, seqlen]``,
    propagated block by block through the already-pruned blocks in chunks of ``chunk_size``
    samples). ``pattern``: ``unstructured`` (Wanda: each row loses ``sparsity *
    in_features`` weights, rounded half up; magnitude: each matrix loses ``sparsity`` of
    its weights, rounded half up, the smallest ``|W|`` of the whole matrix; SparseGPT: each
    matrix loses as many, chosen per block of ``block_size`` columns as in the reference;
    a matrix where that rounds to none stays dense, with a warning), ``"N:M"`` (at most N
    nonzeros in every M consecutive inputs; ``sparsity`` must be ``1 - N/M`` within 1e-4,
    and the exact value is used) or ``heads`` (structured:
    removes KV groups and MLP channels so that ``sparsity`` of the block parameters go;
    ``magnitude`` or ``wanda`` scoring; ``head_fraction`` and ``channel_multiple`` (kept MLP
    channels per layer a multiple of it) as in ``structured_plan.py``; on OLMo
    2/3 removing heads also changes the kept ones, which warns and is noted in the report).
    SparseGPT only: ``block_size`` is the number of columns pruned together before the
    lazy update of the rest (an integer >= 1, a multiple of M for N:M); ``dampening`` is
    the fraction of the mean Hessian diagonal added to the diagonal (finite, > 0).
    ``calibration_source`` and ``calibration_seed`` (what sampled ``calibration``) are only
    recorded in the report, with what the source held (``calibration_origin``: the read
    that made ``calibration`` where ``calibration_batches`` made it), ``calibration``'s
    shape and ``chunk_size``; ``progress``: a bar over layers. Calibrated methods compute
    in float32 whatever ``model``'s dtype, which it keeps: only the block being pruned is
    cast (``precision.py``), so a bf16 model prunes as its float32 copy would, bit for bit,
    but that SparseGPT's updated weights are rounded to the model's dtype (as it stores
    them) before the next block's inputs are computed through them, and that a weight
    SparseGPT keeps that rounds to zero in the model's dtype (below ~3e-8 in float16) is
    stored as the dtype's smallest subnormal, with its sign, so that the zeros of the
    model (and of the report) are the ones the pruning chose. A ``model`` that
    is sparse already (a weight with ``PRUNED_ZEROS`` zeros or more: a pruned checkpoint)
    is pruned all the same, with a warning: its zeros are kept and count as pruned
    (SparseGPT's updates may turn a few into values).

    All arguments are checked before any weight changes or calibration pass; bad ones
    raise ``PruneArgumentError`` (a ``ValueError``) naming the argument, or
    ``UnsupportedModelError``; a weight to prune that holds NaN or inf raises
    ``NonFiniteError`` naming it. ``check_config`` makes the checks that need the model from
    its config alone, before its weights load.

    Example::

        report = prune_model(model, "wanda", 0.5, "2:4", calibration=tokens)
        print(report.overall_sparsity)
    """
    spec = check_spec(method, sparsity, pattern, head_fraction, channel_multiple)
    chunk_size, block_size, dampening = check_options(spec, chunk_size, block_size, dampening)
    family = check_model(model, spec)
    vocab = model.get_input_embeddings().num_embeddings
    tokens = check_calibration(calibration, spec, vocab)
    if tokens is not None:  # as the command checks --seqlen and --nsamples
        check_calibration_fits(model, spec, tokens, chunk_size)
    origin = calibration_origin(calibration, calibration_source) if tokens is not None else None
    plan = plan_removal(model, family, spec) if spec.pattern.kind == "heads" else None
    check_finite_weights(model)  # after the argument checks, before any warning
    note = renormalisation_note(family, plan) if plan is not None else None
    if note:  # OLMo 2/3: the kept heads change too (see structured.py)
        warn_user(note)
    warn_if_left_dense(model, spec)
    _warn_if_sparse_already(model, spec)

    start = time.perf_counter()
    structured = None
    with eval_mode(model), torch.no_grad(), _ieee_fp32_matmuls():
        if plan is not None:
            structured = prune_structured(model, family, spec, plan, tokens, chunk_size, progress)
        elif spec.method == "magnitude":
            _prune_magnitude(model, family, spec, progress)
        else:
            _prune_calibrated(
                model, family, spec, tokens, chunk_size, block_size, dampening, progress
            )
    seconds = time.perf_counter() - start

    patterns = checked_patterns(spec.pattern)
    matrices = [
        matrix_report(f"layers.{i}.{name}", block_linear(layer, name).weight, patterns)
        for i, layer in enumerate(decoder_layers(model))
        for name in family.block_linears
    ]
    calibration_info = None
    if tokens is not None:
        calibration_info = {
            "source": calibration_source,
            "origin": origin,
            "seed": calibration_seed,
            "nsamples": int(tokens.shape[0]),
            "seqlen": int(tokens.shape[1]),
            "chunk_size": chunk_size,
        }
    return PruneReport(
        method=spec.method,
        pattern=str(spec.pattern),
        sparsity=spec.sparsity,
        matrices=matrices,
        seconds=seconds,
        calibration=calibration_info,
        structured=structured,
    )


def calibration_origin(calibration: torch.Tensor, source: str | None) -> dict | None:
    """What the calibration tokens ``[nsamples, seqlen]`` were read from: the ``origin``
    that ``calibration_batches`` gives the tensor it returns (the read that made them: a
    file's size and sha256 of the bytes parsed), else what ``source`` names now
    (``source_origin``, read again: tokens made by other means, or a tensor made from
    ``calibration_batches``' one)."""
    origin = getattr(calibration, "origin", None)
    return source_origin(source) if origin is None else origin


def check_config(config, spec: PruneSpec) -> None:
    """Make ``prune_model``'s checks of the model on the one ``config`` describes, before
    its weights load: N:M input widths, an unstructured sparsity that prunes something and
    keeps something in every row (``check_model``) and, for ``heads``, the removal plan
    (``plan_removal``). They run on a meta-device shell built from ``config`` (every shape
    and bias as loaded, no memory), so they are the very checks ``prune_model`` makes.
    Raises ``PruneArgumentError`` / ``UnsupportedModelError``."""
    from transformers import AutoModelForCausalLM

    family_of(config)  # an unsupported family is named before transformers builds anything
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    family = check_model(shell, spec)
    if spec.pattern.kind == "heads":
        plan_removal(shell, family, spec)


def _warn_if_sparse_already(model: nn.Module, spec: PruneSpec) -> None:
    """Warn where ``model`` already has a weight as sparse as a pruned one
    (``first_pruned_weight``): pruning a pruned checkpoint keeps its zeros and counts them
    as pruned, so it prunes only what the sparsity asks beyond them (2:4 again: nothing)."""
    sparse = first_pruned_weight(model)
    if sparse is None:
        return
    layer, name, zeros = sparse
    if spec.pattern.kind == "heads":
        kept = "Its zeros are kept in the weights that removing heads and channels leaves"
    else:
        kept = (
            f"Its zeros are kept and counted in the sparsity ({spec.sparsity:g}), so only "
            "what it asks beyond them is pruned"
        )
        if spec.method == "sparsegpt":  # its updates reach the columns not pruned yet
            kept += " (SparseGPT's weight updates may turn a few of them into values)"
    warn_user(
        f"the model{model_folder(model)} already has {zeros:.0%} zeros in layer {layer} "
        f"{name}: is it a pruned checkpoint? {kept}; prune the unpruned model to start from it"
    )


@contextlib.contextmanager
def _ieee_fp32_matmuls():
    """Full fp32 matmuls for the block, whatever the caller set: TF32 (what
    ``torch.set_float32_matmul_precision("high")`` turns on) keeps 10 mantissa bits, too
    few for the Gram matrices and SparseGPT's updates (its reference code turns TF32 off).
    The process-wide setting (other threads' matmuls too), through the API every supported
    torch has; torch 2.9+ refuses cuBLAS calls where its legacy and new settings disagree."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _prune_magnitude(model: nn.Module, family: Family, spec: PruneSpec, progress: bool) -> None:
    layers = decoder_layers(model)
    bar = tqdm(layers, desc=f"magnitude {spec.pattern}", unit="layer", disable=not progress)
    for layer in bar:
        for name in family.block_linears:
            weight = block_linear(layer, name).weight
            weight.masked_fill_(magnitude_mask(weight, spec.sparsity, spec.pattern), 0.0)


def _prune_calibrated(
    model: nn.Module,
    family: Family,
    spec: PruneSpec,
    tokens: torch.Tensor,
    chunk_size: int,
    block_size: int,
    dampening: float,
    progress: bool,
) -> None:
    gram = spec.method == "sparsegpt"
    desc = f"{spec.method} {spec.pattern}"
    for step in walk_blocks(model, tokens, chunk_size, desc, progress):
        with collect_input_stats(step.block, family, gram=gram, where=step.name) as stats:
            step.forward()
        if spec.method == "wanda":
            for name in family.block_linears:
                weight = block_linear(step.block, name).weight
                mask = wanda_mask(weight, stats[name].norms(), spec.sparsity, spec.pattern)
                weight.masked_fill_(mask, 0.0)
            continue
        for group in input_sharing_groups(family):
            # linears reading the same input (q/k/v, gate/up) share one Hessian factor
            hessian = stats[group[0]].hessian()
            factor = inverse_hessian_factor(hessian, dampening)
            dead = hessian.diagonal() == 0
            # N:M rows are independent, so the group is pruned as one stacked matrix (fewer
            # Python column steps); unstructured masks span whole blocks, so one at a time
            parts = [group] if spec.pattern.kind == "nm" else [(name,) for name in group]
            for names in parts:
                weights = [block_linear(step.block, name).weight for name in names]
                stacked = torch.cat([w.detach().float() for w in weights])
                new = prune_with_factor(
                    stacked, factor, spec.sparsity, spec.pattern, block_size, dead_inputs=dead
                )
                sizes = [w.shape[0] for w in weights]
                for weight, part in zip(weights, new.split(sizes), strict=True):
                    weight.copy_(part.to(weight.dtype))
