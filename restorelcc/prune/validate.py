"""Argument checks for pruning, all done before any weight is touched."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from restorelcc.data import positive_count
from restorelcc.errors import NonFiniteError, RestoreLCCError, layer_ranges, warn_user
from restorelcc.hf.families import (
    Family,
    block_linear,
    check_length_fits,
    decoder_layers,
    family_of,
    model_device,
)
from restorelcc.prune.masks import Pattern, parse_pattern, prune_count

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_METHODS = ("wanda", "sparsegpt")
STRUCTURED_METHODS = ("magnitude", "wanda")
# Methods whose unstructured count is a share of each matrix (the others': of each row)
PER_MATRIX_METHODS = ("magnitude", "sparsegpt")
# How far a requested N:M sparsity may lie from 1 - N/M: far below the 1/M between two
# patterns of the same M, and far above the rounding of a printed 6-digit value.
NM_SPARSITY_TOLERANCE = 1e-4


class PruneArgumentError(RestoreLCCError, ValueError):
    """A pruning request that cannot be carried out (bad method, sparsity, pattern, data)."""


@dataclass(frozen=True)
class PruneSpec:
    """A validated pruning request."""

    method: str
    sparsity: float
    pattern: Pattern
    head_fraction: float | None = None
    channel_multiple: int = 1

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED_METHODS


def check_spec(
    method: str,
    sparsity: float,
    pattern: str | Pattern,
    head_fraction: float | None = None,
    channel_multiple: int = 1,
) -> PruneSpec:
    """Validate the model-independent arguments; raises ``PruneArgumentError``."""
    if method not in METHODS:
        raise PruneArgumentError(f"unknown pruning method {method!r}; choose from {METHODS}")
    sparsity = _number("sparsity", sparsity)
    if not 0.0 < sparsity < 1.0:
        raise PruneArgumentError(f"sparsity must lie strictly between 0 and 1, got {sparsity}")
    try:
        parsed = parse_pattern(pattern)
    except ValueError as exc:
        raise PruneArgumentError(str(exc)) from None
    if parsed.kind == "nm":
        implied = parsed.prune_per_group / parsed.m
        if abs(sparsity - implied) > NM_SPARSITY_TOLERANCE:
            raise PruneArgumentError(
                f"pattern {parsed} prunes {implied:.6g} of the weights, but sparsity "
                f"{sparsity:.6g} was requested; pass sparsity={implied:.6g}"
            )
        sparsity = implied  # the exact fraction, whatever rounding the caller typed
    if parsed.kind == "heads":
        if method not in STRUCTURED_METHODS:
            raise PruneArgumentError(
                f"structured pruning ('heads') supports methods {STRUCTURED_METHODS}, "
                f"not {method!r}"
            )
        if head_fraction is not None:
            head_fraction = _number("head_fraction", head_fraction)
            if not 0.0 <= head_fraction < 1.0:
                raise PruneArgumentError(f"head_fraction must lie in [0, 1), got {head_fraction}")
    elif head_fraction is not None:
        raise PruneArgumentError("head_fraction only applies to the 'heads' pattern")
    channel_multiple = positive_count(channel_multiple, "channel_multiple", PruneArgumentError)
    if channel_multiple != 1 and parsed.kind != "heads":
        raise PruneArgumentError("channel_multiple only applies to the 'heads' pattern")
    return PruneSpec(method, sparsity, parsed, head_fraction, channel_multiple)


def _number(name: str, value) -> float:
    """``value`` as a float; what ``float()`` refuses, or a bool, raises ``PruneArgumentError``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise PruneArgumentError(f"{name} must be a number, got {value!r}") from None


def check_options(
    spec: PruneSpec, chunk_size: int, block_size: int, dampening: float
) -> tuple[int, int, float]:
    """Validate ``prune_model``'s tuning arguments; returns them as int, int, float.

    ``block_size`` (SparseGPT's column block) must hold whole N:M groups; ``dampening``
    must be finite and positive (0 leaves the Hessian singular whenever calibration has
    fewer tokens than inputs; inf makes it non-finite).
    """
    chunk_size = positive_count(chunk_size, "chunk_size", PruneArgumentError)
    block_size = positive_count(block_size, "block_size", PruneArgumentError)
    dampening = _number("dampening", dampening)
    if not (dampening > 0 and math.isfinite(dampening)):
        raise PruneArgumentError(f"dampening must be finite and > 0, got {dampening}")
    if spec.method == "sparsegpt" and spec.pattern.kind == "nm" and block_size % spec.pattern.m:
        raise PruneArgumentError(
            f"block_size {block_size} must be a multiple of M={spec.pattern.m} for pattern "
            f"{spec.pattern} (SparseGPT picks N:M groups within a column block)"
        )
    return chunk_size, block_size, dampening


def check_model(model: nn.Module, spec: PruneSpec) -> Family:
    """Check the model has the family's decoder linears and the pattern fits their shapes
    (N:M: inputs divisible by M; unstructured: ``sparsity`` rounds to at least one pruned
    weight somewhere and to at least one kept weight everywhere). Reads only shapes, so a
    meta-device shell does."""
    family = family_of(model)
    shapes = []
    for index, name, linear in _block_linears(model, family):
        shapes.append((linear.out_features, linear.in_features))
        if spec.pattern.kind == "nm" and linear.in_features % spec.pattern.m:
            hint = ""
            if name == f"{family.mlp}.{family.down_proj}":
                hint = (
                    f" (structured pruning with channel_multiple={spec.pattern.m} keeps "
                    "the MLP width divisible)"
                )
            raise PruneArgumentError(
                f"pattern {spec.pattern} needs input dimensions divisible by "
                f"{spec.pattern.m}, but layers.{index}.{name} has {linear.in_features}" + hint
            )
    if spec.pattern.kind == "unstructured":
        _check_prunes_something(spec, shapes)
        _check_keeps_something(spec, shapes)
    return family


def _counted_sizes(spec: PruneSpec, shapes: list[tuple[int, int]]) -> tuple[list[int], str]:
    """What ``spec.method`` takes its unstructured ``prune_count`` of, for each linear's
    ``[out, in]`` in ``shapes``, and its name: Wanda a row's ``in`` inputs, magnitude and
    SparseGPT a matrix's ``out * in`` weights."""
    if spec.method in PER_MATRIX_METHODS:
        return [out * inputs for out, inputs in shapes], "matrix"
    return [inputs for _, inputs in shapes], "row"


def _check_prunes_something(spec: PruneSpec, shapes: list[tuple[int, int]]) -> None:
    """Refuse an unstructured ``spec.sparsity`` that rounds to no weight in any of the
    linears' ``[out, in]`` shapes (``_counted_sizes``)."""
    sizes, unit = _counted_sizes(spec, shapes)
    largest = max(sizes)
    if prune_count(largest, spec.sparsity) > 0:
        return
    raise PruneArgumentError(
        f"sparsity={spec.sparsity} prunes no weight: {spec.method} prunes that share of the "
        f"weights of a {unit} (at most {largest} here), rounded half up, which is 0; pass "
        f"sparsity={rounded_up(0.5 / largest):.3g} or more"
    )


def _block_linears(model: nn.Module, family: Family) -> list[tuple[int, str, nn.Linear]]:
    """``(layer index, name, linear)`` of every linear pruning takes, in layer order."""
    return [
        (index, name, block_linear(layer, name))
        for index, layer in enumerate(decoder_layers(model))
        for name in family.block_linears
    ]


def warn_if_left_dense(model: nn.Module, spec: PruneSpec) -> None:
    """Warn (``warn_user``) where an unstructured ``spec.sparsity`` rounds to no weight of
    some of ``model``'s block linears (``_counted_sizes``), naming them: they stay dense.
    (Where it rounds to no weight of any, ``check_model`` refuses it.)"""
    if spec.pattern.kind != "unstructured":
        return
    linears = _block_linears(model, family_of(model))
    shapes = [(linear.out_features, linear.in_features) for _, _, linear in linears]
    sizes, unit = _counted_sizes(spec, shapes)
    layers_of: dict[str, list[int]] = {}
    dense_sizes = []
    for (index, name, _), size in zip(linears, sizes, strict=True):
        if prune_count(size, spec.sparsity) == 0:
            layers_of.setdefault(name, []).append(index)
            dense_sizes.append(size)
    if not dense_sizes:
        return
    names_of: dict[str, list[str]] = {}  # linears left dense in the same layers, together
    for name, layers in layers_of.items():
        names_of.setdefault(layer_ranges(layers), []).append(name)
    which = "; ".join(f"{', '.join(ns)} of layers {ls}" for ls, ns in names_of.items())
    warn_user(
        f"sparsity {spec.sparsity:g} leaves {len(dense_sizes)} of {len(linears)} matrices "
        f"dense: {spec.method} prunes that share of the weights of each {unit}, rounded half "
        f"up, which is 0 for {which}; a sparsity of "
        f"{rounded_up(0.5 / min(dense_sizes)):.3g} or more prunes them all"
    )


def check_finite_weights(model: nn.Module) -> None:
    """Refuse (``NonFiniteError``) block linears of ``model`` that hold NaN or inf, naming
    each and how many such values it holds: no score ranks them (``topk`` puts NaN above
    every value), so pruning would keep them and write them to the checkpoint."""
    bad = []
    for index, name, linear in _block_linears(model, family_of(model)):
        weight = linear.weight.detach()
        if not bool(torch.isfinite(weight).all()):
            count = int(torch.count_nonzero(~torch.isfinite(weight)))
            bad.append(f"layers.{index}.{name} ({count} of its {weight.numel()} weights)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"weights that are not finite (NaN or inf) in {len(bad)} of the matrices to "
            f"prune: {shown}; pruning would keep them and write them to the checkpoint"
        )


def _check_keeps_something(spec: PruneSpec, shapes: list[tuple[int, int]]) -> None:
    """Refuse an unstructured ``spec.sparsity`` that rounds to every weight of the smallest
    row (Wanda) or matrix (magnitude, SparseGPT) of the linears' ``[out, in]`` shapes: that
    linear would pass nothing on (below 1, ``sparsity * size`` rounds half up to ``size``
    from ``1 - 0.5 / size``: 0.99913 for 576 inputs)."""
    sizes, unit = _counted_sizes(spec, shapes)
    smallest = min(sizes)
    if prune_count(smallest, spec.sparsity) < smallest:
        return
    most = rounded_down(1 - 0.5 / smallest)
    while prune_count(smallest, most) >= smallest:  # 1 - 0.5 / size itself rounds up to all
        most = rounded_down(most * (1 - 1e-9))
    raise PruneArgumentError(
        f"sparsity={spec.sparsity} prunes every weight of a {unit}: {spec.method} prunes that "
        f"share of the weights of a {unit} (at least {smallest} here), rounded half up, which "
        f"is all {smallest}; pass sparsity={most:.3g} or less"
    )


def rounded_up(value: float, digits: int = 3) -> float:
    """``value`` (> 0) rounded up to ``digits`` significant digits: the smallest such
    number that is no less than ``value``, for naming a bound the user can pass."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale


def rounded_down(value: float, digits: int = 3) -> float:
    """``value`` (> 0) rounded down to ``digits`` significant digits: the largest such
    number that is no more than ``value``, for naming a bound the user can pass."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.floor(value * scale) / scale


def check_calibration(calibration, spec: PruneSpec, vocab_size: int) -> torch.Tensor | None:
    """The calibration tokens ``[nsamples, seqlen]`` (long), or ``None`` if not needed."""
    if not spec.needs_calibration:
        if calibration is not None:
            raise PruneArgumentError(
                f"method {spec.method!r} uses no calibration data: pass calibration=None"
            )
        return None
    if calibration is None:
        raise PruneArgumentError(
            f"method {spec.method!r} needs calibration tokens (a LongTensor [nsamples, seqlen])"
        )
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        shape = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else None
        raise PruneArgumentError(
            f"calibration must be a 2-D token tensor [nsamples, seqlen], got "
            f"{type(calibration).__name__} {shape or ''}".rstrip()
        )
    if calibration.dtype.is_floating_point or calibration.dtype == torch.bool:
        raise PruneArgumentError(f"calibration must hold token ids, got dtype {calibration.dtype}")
    if calibration.numel() == 0:
        raise PruneArgumentError("calibration holds no tokens")
    low, high = int(calibration.min()), int(calibration.max())
    if low < 0 or high >= vocab_size:
        raise PruneArgumentError(
            f"calibration token ids span [{low}, {high}], outside the vocabulary [0, {vocab_size})"
        )
    return calibration.long()


def check_calibration_fits(
    model: nn.Module, spec: PruneSpec, tokens: torch.Tensor, chunk_size: int
) -> None:
    """Refuse calibration ``tokens`` ``[nsamples, seqlen]`` longer than the positions the
    model serves (``PruneArgumentError``), or whose pass would not fit the memory of the
    model's device (``CalibrationMemoryError``, from ``memory.check_calibration_memory``)."""
    from restorelcc.prune.memory import check_calibration_memory  # it imports this module

    nsamples, seqlen = tokens.shape
    try:
        check_length_fits(seqlen, model, f"calibration of {seqlen} tokens per sample")
    except ValueError as exc:
        raise PruneArgumentError(str(exc)) from None
    device = model_device(model)
    check_calibration_memory(
        model.config, spec.method, nsamples, seqlen, device, chunk_size, chunk_flag="chunk_size"
    )
