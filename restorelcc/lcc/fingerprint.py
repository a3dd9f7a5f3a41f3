"""A fingerprint of the pruned model a restoration belongs to.

It covers every parameter of the model, in two parts:

- **Masks, exact.** The sparsity mask (``weight != 0``) of every decoder-block linear is
  hashed (sha256 of the packed bits, one hash per linear). A mask does not depend on the
  dtype the model is loaded in (except that float16 flushes ``|w| < 2^-25`` to zero, which
  the mismatch message points out).
- **Values, within a tolerance.** Every parameter ``W`` (block-linear weights and biases, an
  absent bias counting as zeros, and the embeddings, norms and head) gets a sketch
  ``S = R^T W P [16, 4]`` with fixed seeded Rademacher (+-1) probes ``R [out, 16]``,
  ``P [in, 4]`` (a 1-D parameter is ``[n, 1]``), plus its Frobenius norm. Both are computed
  in float64 on the model's device, a few million elements at a time (no full-size copy of
  a weight). float64, not float32: float32 summation order differs between devices by
  ~2^-24 sqrt(in) of the norm, more than a float32 model's own rounding; float64's
  worst-case error stays below 2^-24 of the norm for 8B-model shapes (14336 x 14336,
  128256 x 4096) and is ~1e-15 in practice.

Tolerance. Loading one checkpoint in a dtype rounds each value: ``|w' - w| <= u |w| + t``
with ``u = eps / 2`` (float32 ``2^-24``, bfloat16 ``2^-8``, float16 ``2^-11``) and ``t`` half
the smallest subnormal. Two loads in dtypes ``a != b`` differ by at most
``bound = (u_a + u_b) ||W||_F / (1 - max u) + (t_a + t_b) sqrt(numel)`` (``||W||`` the
smaller of the two norms); two loads in the same dtype are identical. Each sketch entry
``r^T dW p`` has mean square ``||dW||_F^2`` (Rademacher probes), so
``||S_a - S_b||_F / sqrt(64)`` estimates ``||dW||_F``; for rounding noise (independent
errors) it is a chi statistic with 64 degrees of freedom, which exceeds twice its value
with probability 9e-25. A parameter matches when its mask hash is equal and its estimate is
at most ``2 * bound + 2^-24 ||W||_F`` (the last term: float64 evaluation on another device).
So float32, bfloat16 and float16 loads of one checkpoint match each other whichever made
the adapter (nothing is re-rounded before comparing, so no double-rounding trap; on
SmolLM2 the largest estimate is 0.27 of the allowance), while a change of a parameter is
refused once it exceeds the allowance: ~6e-8 of its norm between loads in the same dtype,
~0.8% when one side is bfloat16 and the other float32 (a smaller change is
indistinguishable from that dtype's rounding).

Cost: one pass over the weights, 4 float64 multiply-adds per weight (``W P``) and the mask
bits copied to the CPU (an eighth of a byte per weight) for sha256; for an 8B model about
64 GFLOP and 1 GB of mask bytes. Stored: ~220 bytes of JSON and 64 float64 per parameter
(~100 KB + 230 KB for an 8B model's ~450 parameters).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from restorelcc.hf.families import block_linear, decoder_layers, family_of

FINGERPRINT_VERSION = 2
ROW_PROBES, COLUMN_PROBES = 16, 4  # R [out, 16], P [in, 4]: 64 sketch entries; the cost
# is the product with P (4 multiply-adds per weight), and a 1-D parameter still gets 16
SKETCH_ENTRIES = ROW_PROBES * COLUMN_PROBES
PROBE_SEED = 20251028
CHUNK_ELEMENTS = 1 << 22  # float64 working set per step: 32 MB
ESTIMATE_SLACK = 2.0  # the sketch estimates ||dW||_F; see the module docstring
EVALUATION_ERROR = 2.0**-24  # float64 sketch on another device, relative to the norm
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def unit_roundoff(dtype: str) -> tuple[float, float]:
    """``(u, t)``: relative and absolute (subnormal) rounding error bounds of ``dtype``."""
    info = torch.finfo(getattr(torch, dtype))
    return info.eps / 2, info.smallest_normal * info.eps / 2


@dataclass(frozen=True, eq=False)
class ParameterSketch:
    """One parameter's part of the fingerprint.

    ``sketch [16, 4]`` float64 ``R^T W P``; ``norm`` float64 ``||W||_F``; ``mask`` sha256 hex
    of the packed ``W != 0`` bits and ``nonzeros`` (block-linear weights only, else None).
    """

    name: str
    label: str
    shape: tuple[int, ...]
    dtype: str
    norm: float
    sketch: torch.Tensor
    mask: str | None = None
    nonzeros: int | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "norm": self.norm,
            "mask": self.mask,
            "nonzeros": self.nonzeros,
        }


@dataclass(frozen=True, eq=False)
class ModelFingerprint:
    """The masks and value sketches of every parameter (see the module docstring).

    ``a == b`` means ``a.differences(b)`` is empty: the same pruned model, up to what a
    change of dtype explains (so not transitive near the tolerance, and not hashable).
    """

    items: tuple[ParameterSketch, ...]
    version: int = FINGERPRINT_VERSION

    @property
    def digest(self) -> str:
        """``v2:<sha256>`` of the parameter names, shapes and masks (dtype-independent)."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(f"{item.name}:{item.shape}:{item.mask}".encode())
        return f"v{self.version}:{h.hexdigest()}"

    def __str__(self) -> str:
        return self.digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelFingerprint):
            return NotImplemented
        return not self.differences(other)

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "digest": self.digest,
            "probes": {"rows": ROW_PROBES, "columns": COLUMN_PROBES, "seed": PROBE_SEED},
            "parameters": [item.to_json() for item in self.items],
        }

    def sketches(self) -> torch.Tensor:
        """``[P, 16, 4]`` float64, in the order of ``items``."""
        if not self.items:
            return torch.zeros(0, ROW_PROBES, COLUMN_PROBES, dtype=torch.float64)
        return torch.stack([item.sketch for item in self.items])

    @classmethod
    def from_json(cls, record: dict, sketches: torch.Tensor) -> ModelFingerprint:
        """Inverse of ``to_json`` / ``sketches``; ``ValueError`` naming what is wrong."""
        if not isinstance(record, dict) or record.get("version") != FINGERPRINT_VERSION:
            found = record.get("version") if isinstance(record, dict) else record
            raise ValueError(
                f"fingerprint version {found!r}; this version reads {FINGERPRINT_VERSION}"
            )
        if record.get("probes") != {
            "rows": ROW_PROBES,
            "columns": COLUMN_PROBES,
            "seed": PROBE_SEED,
        }:
            raise ValueError(f"fingerprint probes {record.get('probes')!r} are not this version's")
        params = record["parameters"]
        if tuple(sketches.shape) != (len(params), ROW_PROBES, COLUMN_PROBES):
            raise ValueError(
                f"fingerprint sketches must be [{len(params)}, {ROW_PROBES}, {COLUMN_PROBES}], "
                f"got {list(sketches.shape)}"
            )
        items = tuple(
            ParameterSketch(
                name=str(p["name"]),
                label=str(p["label"]),
                shape=tuple(int(s) for s in p["shape"]),
                dtype=str(p["dtype"]),
                norm=float(p["norm"]),
                sketch=sketches[i].to(torch.float64),
                mask=None if p["mask"] is None else str(p["mask"]),
                nonzeros=None if p["nonzeros"] is None else int(p["nonzeros"]),
            )
            for i, p in enumerate(params)
        )
        fingerprint = cls(items)
        if record.get("digest") != fingerprint.digest:
            raise ValueError("fingerprint digest does not match its parameters")
        return fingerprint

    def differences(self, found: ModelFingerprint) -> list[str]:
        """What differs between the model this was made on and ``found``, one line each
        (empty when they match)."""
        problems = []
        mine = {item.name: item for item in self.items}
        theirs = {item.name: item for item in found.items}
        missing = [name for name in mine if name not in theirs]
        extra = [name for name in theirs if name not in mine]
        if missing:
            problems.append(f"this model lacks {_names(missing)}")
        if extra:
            problems.append(
                f"this model has parameters the adapter's model had not: {_names(extra)}"
            )
        levels = []
        for name, expected in mine.items():
            if name in theirs:
                problem, relative = _difference(expected, theirs[name])
                if problem:
                    problems.append(problem)
                    levels.append(None if relative is None else _rounding_level(relative))
        named = sorted({level for level in levels if level})
        if named:  # said once, first, so that a truncated message keeps it
            level = " or ".join(named)
            problems.insert(
                0,
                f"{sum(map(bool, levels))} parameters differ by about {level} rounding: were "
                f"the weights saved or loaded through {level} on one side? Make the adapter "
                "on the checkpoint it is applied to",
            )
        return problems


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _difference(
    expected: ParameterSketch, found: ParameterSketch
) -> tuple[str | None, float | None]:
    """One line saying how ``found`` differs from ``expected`` (None if it does not), and
    the relative difference of the values when that is what differs."""
    if expected.dtype == found.dtype:
        dtypes = f"{found.dtype} weights on both sides"
    else:
        dtypes = f"{expected.dtype} weights in the adapter's model, {found.dtype} in this one"
    if expected.shape != found.shape:
        shapes = f"{list(found.shape)}, the adapter's model had {list(expected.shape)}"
        return f"{expected.label} is {shapes}", None
    if expected.mask != found.mask:
        if expected.nonzeros == found.nonzeros:
            counts = f"the same {found.nonzeros} non-zeros, at other positions"
        else:
            counts = (
                f"{expected.nonzeros} non-zeros in the adapter's model, {found.nonzeros} in "
                "this one"
            )
        line = f"the sparsity mask of {expected.label} differs ({counts})"
        if "float16" in (expected.dtype, found.dtype) and expected.dtype != found.dtype:
            line += (
                f"; {dtypes}, and float16 flushes |w| < 3e-8 to zero: load both in float32 "
                "or bfloat16"
            )
        return line, None
    measured = sketch_difference(expected, found)
    allowed = allowed_difference(expected, found, numel=math.prod(found.shape))
    if measured <= allowed:  # also False for a non-finite sketch
        return None, None
    if not math.isfinite(measured):
        return f"{expected.label} has non-finite values ({dtypes})", None
    smaller = min(expected.norm, found.norm)
    if smaller == 0:
        if expected.norm == 0:
            line = f"{expected.label} is zero in the adapter's model, not in this one"
        else:
            line = f"{expected.label} is zero in this model, not in the adapter's"
        line += f" (norm {max(expected.norm, found.norm):.3g})"
        if expected.norm == 0 and expected.name.endswith(".bias"):
            line += ": a restoration already folded in?"
        return line, None
    relative, allowed_relative = measured / smaller, allowed / smaller
    line = (
        f"the values of {expected.label} differ: relative difference {relative:.2g}, "
        f"allowed {allowed_relative:.2g} for {dtypes}"
    )
    return line, relative


def sketch_difference(expected: ParameterSketch, found: ParameterSketch) -> float:
    """``||S_a - S_b||_F / 8``: an estimate of ``||W_a - W_b||_F``."""
    return float(torch.linalg.vector_norm(found.sketch - expected.sketch)) / SKETCH_ENTRIES**0.5


def allowed_difference(expected: ParameterSketch, found: ParameterSketch, numel: int) -> float:
    """The largest ``sketch_difference`` accepted as the same weights (module docstring)."""
    allowed = EVALUATION_ERROR * max(expected.norm, found.norm)
    if expected.dtype != found.dtype:
        (ua, ta), (ub, tb) = unit_roundoff(expected.dtype), unit_roundoff(found.dtype)
        smaller = min(expected.norm, found.norm)
        rounding = (ua + ub) * smaller / (1 - max(ua, ub)) + (ta + tb) * math.sqrt(numel)
        allowed += ESTIMATE_SLACK * rounding
    return allowed


def _rounding_level(relative: float) -> str | None:
    """The low-precision dtypes whose rounding makes a relative difference of about
    ``relative`` (between ``u / 8`` and the ``2 u`` of a double rounding), if any."""
    levels = [
        dtype
        for dtype in ("float16", "bfloat16")
        if unit_roundoff(dtype)[0] / 8 <= relative <= 2 * unit_roundoff(dtype)[0]
    ]
    return " or ".join(levels) or None


@functools.lru_cache(maxsize=64)
def _probe(size: int, side: int) -> torch.Tensor:
    """Seeded Rademacher (+-1) float64 on the CPU: ``R [size, 16]`` (side 0) or
    ``P [size, 4]`` (side 1)."""
    gen = torch.Generator().manual_seed(PROBE_SEED + 2 * size + side)
    count = COLUMN_PROBES if side else ROW_PROBES
    signs = torch.randint(0, 2, (size, count), generator=gen, dtype=torch.int8)
    return signs.to(torch.float64) * 2 - 1


class _Probes:
    """``_probe`` copied to each device a parameter lives on (a model may span several),
    once per size and side."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def __call__(self, size: int, side: int, device: torch.device) -> torch.Tensor:
        key = (size, side, device)
        if key not in self.cache:
            self.cache[key] = _probe(size, side).to(device)
        return self.cache[key]


def _packed_bits(bits: torch.Tensor) -> tuple[bytes, int]:
    """``np.packbits`` of a 1-D bool tensor (first element in the high bit) and its count
    of True; off the CPU, packed on the device so that only an eighth is copied over."""
    if bits.device.type == "cpu":
        array = bits.numpy()
        return np.packbits(array).tobytes(), int(np.count_nonzero(array))
    return _pack_on_device(bits), int(torch.count_nonzero(bits))


def _pack_on_device(bits: torch.Tensor) -> bytes:
    """``np.packbits(bits)`` computed with torch ops on ``bits``'s device."""
    pad = -bits.numel() % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(bits.device)
    packed = (bits.reshape(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)
    return packed.cpu().numpy().tobytes()


@torch.no_grad()
def _sketch(
    name: str, label: str, tensor: torch.Tensor, probes: _Probes, with_mask: bool
) -> ParameterSketch:
    """Sketch, norm and (``with_mask``) mask hash of ``tensor``, a few rows at a time."""
    tensor = tensor.detach()
    matrix = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(-1, 1)
    rows, cols = matrix.shape
    r, p = probes(rows, 0, matrix.device), probes(cols, 1, matrix.device)
    # A multiple of 8 rows keeps the packed mask bytes independent of the chunking.
    step = max(8, CHUNK_ELEMENTS // max(cols, 1) // 8 * 8)
    sketch = torch.zeros(ROW_PROBES, COLUMN_PROBES, dtype=torch.float64, device=matrix.device)
    squares = torch.zeros((), dtype=torch.float64, device=matrix.device)
    mask_hash = hashlib.sha256(f"{list(tensor.shape)}".encode())
    nonzeros = 0
    for start in range(0, rows, step):
        chunk = matrix[start : start + step].to(torch.float64)
        sketch += r[start : start + step].T @ (chunk @ p)
        squares += torch.linalg.vector_norm(chunk).square()
        if with_mask:
            packed, count = _packed_bits((chunk != 0).reshape(-1))
            mask_hash.update(packed)
            nonzeros += count
    return ParameterSketch(
        name=name,
        label=label,
        shape=tuple(tensor.shape),
        dtype=str(tensor.dtype).removeprefix("torch."),
        norm=float(squares.sqrt()),
        sketch=sketch.cpu(),
        mask=mask_hash.hexdigest() if with_mask else None,
        nonzeros=nonzeros if with_mask else None,
    )


@torch.no_grad()
def model_fingerprint(model: nn.Module, progress: bool = False) -> ModelFingerprint:
    """Masks of every decoder-block linear and value sketches of every parameter of
    ``model`` (an absent block-linear bias counts as zeros, so folding one in shows)."""
    from tqdm.auto import tqdm

    family = family_of(model)
    layers = decoder_layers(model)
    probes = _Probes()
    items, seen = [], set()
    linears = [(i, n) for i in range(len(layers)) for n in family.block_linears]
    for index, linear_name in tqdm(
        linears, desc="fingerprint", unit="matrix", disable=not progress
    ):
        linear = block_linear(layers[index], linear_name)
        prefix, label = (
            f"{family.layers_path}.{index}.{linear_name}",
            f"{linear_name} in layer {index}",
        )
        items.append(_sketch(f"{prefix}.weight", label, linear.weight, probes, with_mask=True))
        bias = linear.bias
        if bias is None:
            bias = linear.weight.new_zeros(linear.weight.shape[0])
        items.append(_sketch(f"{prefix}.bias", f"the bias of {label}", bias, probes, False))
        seen.update(id(param) for param in linear.parameters())
    for name, param in model.named_parameters():
        if id(param) not in seen:
            items.append(_sketch(name, name, param, probes, with_mask=False))
    return ModelFingerprint(tuple(items))
