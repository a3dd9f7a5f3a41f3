"""What a calibrated prune holds in memory, estimated from the config before the model loads.

Wanda and SparseGPT (and structured ``wanda``) walk the decoder blocks with every
calibration sample's hidden states at hand (``calibrate.walk_blocks``): one block's inputs
``[nsamples, seqlen, hidden]`` and, while the block runs, its outputs, both in float32 (the
dtype pruning computes in). That is what grows with ``nsamples x seqlen``; next to it sit
the token ids, one chunk's forward pass and, for SparseGPT, the Gram matrices.
``check_calibration_memory`` refuses a request whose estimate exceeds the whole memory of
the device the calibration runs on (CUDA: the device's total memory; CPU: the physical
memory, or the container's limit where lower), before any weight is read: such a run could
only end in an out-of-memory kill. The estimate leaves out the model's own weights, so a
run that passes may still not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from restorelcc.hf.families import head_geometry
from restorelcc.prune.validate import PruneArgumentError

FLOAT32_BYTES = 4  # hidden states and activations: pruning computes in float32
TOKEN_BYTES = 8  # token ids are int64
GRAM_BYTES = 8  # SparseGPT accumulates X^T X in float64
# Matrices of the size of the largest Gram matrix alive beside it while SparseGPT
# factorises it: the scaled Hessian, and two of its dampened copy, its Cholesky factor, the
# inverse and the inverse's factor (sparsegpt.inverse_hessian_factor drops each in turn).
FACTORISATION_COPIES = 3


class CalibrationMemoryError(PruneArgumentError):
    """A calibration too large for the memory of the device it would run on."""


@dataclass(frozen=True)
class CalibrationMemory:
    """Bytes a calibrated prune holds at once, by part."""

    tokens: int  # the token ids [nsamples, seqlen]
    hidden_states: int  # one block's inputs and outputs [nsamples, seqlen, hidden], twice
    chunk_forward: int  # one chunk's activations inside a block
    gram: int  # SparseGPT's Gram matrices and their factorisation (0 for Wanda)

    @property
    def total(self) -> int:
        return self.tokens + self.hidden_states + self.chunk_forward + self.gram


def calibration_memory(
    config, method: str, nsamples: int, seqlen: int, chunk_size: int = 8
) -> CalibrationMemory:
    """The estimate for pruning the model ``config`` describes with ``method`` on
    ``nsamples`` windows of ``seqlen`` tokens, ``chunk_size`` samples per forward.

    ``calibration_batches`` always returns ``nsamples`` windows (a short source repeats
    tokens in overlapping windows), so all ``nsamples`` are counted. One chunk's forward
    counts, per token, four MLP-width and eight hidden-width tensors, and no attention
    scores: models load with SDPA, which does not hold them (eager attention would add
    ``2 x heads x seqlen`` per token, which grows with the square of ``seqlen``). From 64
    to 512 samples the peak memory of a 512-wide Llama grew by 1.8 of the 2 hidden-state
    copies counted."""
    geometry = head_geometry(config)
    hidden, heads = config.hidden_size, geometry.heads
    attention_width = heads * geometry.head_dim
    intermediate = config.intermediate_size
    tokens = nsamples * seqlen
    chunk_tokens = min(chunk_size, nsamples) * seqlen
    per_chunk_token = 4 * intermediate + 8 * hidden
    gram = 0
    if method == "sparsegpt":  # q/k/v and gate/up share their inputs' Gram matrix
        widths = (hidden, attention_width, hidden, intermediate)
        largest = max(widths) ** 2
        gram = GRAM_BYTES * (sum(w * w for w in widths) + FACTORISATION_COPIES * largest)
    return CalibrationMemory(
        tokens=tokens * TOKEN_BYTES,
        hidden_states=2 * tokens * hidden * FLOAT32_BYTES,
        chunk_forward=chunk_tokens * per_chunk_token * FLOAT32_BYTES,
        gram=gram,
    )


def device_memory(device: torch.device) -> tuple[int, str]:
    """The bytes the calibration may use on ``device`` and what they are, in words:
    a CUDA device's total memory (``torch.cuda.mem_get_info``), else the host's physical
    memory or, where lower, the limit of the container it runs in (cgroup v2)."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return total, f"{device} has"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _container_limit()
    if limit is not None and limit < total:
        return limit, "this container may use"
    return total, "this machine has"


def _container_limit(path: str = "/sys/fs/cgroup/memory.max") -> int | None:
    """The cgroup v2 memory limit in bytes, or None (no limit, ``max``, or unreadable)."""
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def check_calibration_memory(
    config,
    method: str,
    nsamples: int,
    seqlen: int,
    device: str | torch.device,
    chunk_size: int = 8,
    flags: tuple[str, str] = ("nsamples", "seqlen"),
    chunk_flag: str | None = None,
) -> CalibrationMemory:
    """The estimate (``calibration_memory``); ``CalibrationMemoryError`` where it exceeds
    ``device_memory(device)``, naming ``flags`` (how the caller's user gives nsamples
    and seqlen: ``("--nsamples", "--seqlen")``), the estimate and the memory there, and
    ``chunk_flag`` (``--chunk-size``, where the caller has one) where one chunk's forward
    is the larger part."""
    estimate = calibration_memory(config, method, nsamples, seqlen, chunk_size)
    limit, holder = device_memory(torch.device(device))
    if estimate.total > limit:
        samples, length = flags
        lower = f"{samples} or {length}"
        if chunk_flag and estimate.chunk_forward > estimate.hidden_states and chunk_size > 1:
            chunk = gib(estimate.chunk_forward)
            lower = f"{chunk_flag} (one chunk's forward holds {chunk}), {lower}"
        raise CalibrationMemoryError(
            f"{samples} {nsamples} x {length} {seqlen}: calibration would hold about "
            f"{gib(estimate.total)} at once ({gib(estimate.hidden_states)} of them a block's "
            f"float32 inputs and outputs, {nsamples} x {seqlen} x {config.hidden_size} each) "
            f"but {holder} {gib(limit)}; lower {lower}"
        )
    return estimate
