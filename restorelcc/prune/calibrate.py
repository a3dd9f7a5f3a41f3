"""Layer-by-layer calibration: capture decoder-block inputs once, then walk the blocks.

As in the reference Wanda and SparseGPT code, only one block's activations live at a time:
the calibration tokens are embedded and stopped at the first decoder block, each block is
run on those hidden states (with statistics hooks on its linears), pruned, and run again to
produce the inputs of the next block, so later blocks see the errors of earlier pruning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.errors import NonFiniteError, UnsupportedModelError
from restorelcc.hf.families import Family, block_linear, decoder_layers, model_device
from restorelcc.prune.precision import COMPUTE_DTYPE, capture_in_float32, parameters_in


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


def _check_positional(index: int, args: tuple) -> None:
    """Blocks are replayed as ``block(hidden, **kwargs)``: a model that passes anything
    but the hidden states positionally cannot be replayed, so it is refused."""
    if len(args) > 1:
        raise UnsupportedModelError(
            f"decoder block layers.{index} was called with {len(args)} positional arguments; "
            "layer-by-layer calibration replays blocks with the hidden states as the only "
            "positional argument (everything else by keyword)"
        )


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _without_hidden(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "hidden_states"}


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, tokens: torch.Tensor, chunk_size: int = 8
) -> tuple[list[torch.Tensor], list[dict]]:
    """Hidden states entering the first decoder block, and every block's keyword arguments.

    ``tokens`` is ``[nsamples, seqlen]``. Returns ``chunks`` (``[<=chunk_size, seqlen,
    hidden]`` each) and ``block_kwargs`` (one dict per block: position embeddings, attention
    mask, ... as the model passes them; recorded from a batch of one sample so they
    broadcast over any chunk size, and per block because some families give each block
    type its own mask or rotary embedding).
    """
    layers = decoder_layers(model)
    device = model_device(model)
    tokens = tokens.to(device)
    chunks: list[torch.Tensor] = []

    def grab_hidden(module, args, kwargs):
        _check_positional(0, args)
        chunks.append(_hidden_of(args, kwargs).detach())
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(grab_hidden, with_kwargs=True)
    try:
        for start in range(0, tokens.shape[0], chunk_size):
            with contextlib.suppress(_StopForward):
                model(input_ids=tokens[start : start + chunk_size], use_cache=False)
    finally:
        handle.remove()

    block_kwargs: list[dict] = [{} for _ in layers]

    def grab_kwargs(index: int):
        def hook(module, args, kwargs):
            _check_positional(index, args)
            block_kwargs[index] = _without_hidden(kwargs)
            if index == len(layers) - 1:
                raise _StopForward

        return hook

    handles = [
        layer.register_forward_pre_hook(grab_kwargs(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        with contextlib.suppress(_StopForward):
            model(input_ids=tokens[:1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return chunks, block_kwargs


@torch.no_grad()
def run_block(block: nn.Module, chunks: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    """``block`` applied to every chunk ``[b, seqlen, hidden]``; returns the outputs."""
    outputs = []
    for hidden in chunks:
        out = block(hidden, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@dataclass
class BlockStep:
    """One decoder block during a calibrated walk: its index, module and current inputs."""

    index: int
    block: nn.Module
    inputs: list[torch.Tensor]
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The block as its parameters name it: ``layers.<index>``."""
        return f"layers.{self.index}"

    def forward(self) -> list[torch.Tensor]:
        """Run the block on its calibration inputs (hooks registered on it see them)."""
        return run_block(self.block, self.inputs, self.kwargs)


def walk_blocks(
    model: nn.Module,
    tokens: torch.Tensor,
    chunk_size: int = 8,
    desc: str = "prune",
    progress: bool = True,
) -> Iterator[BlockStep]:
    """Yield every decoder block with its calibration inputs, in order.

    The caller collects statistics (``step.forward()`` under hooks) and modifies
    ``step.block``; when the caller asks for the next block, this block is re-run on the
    same inputs and its outputs become the next block's inputs (not after the last block:
    nothing reads its outputs). Everything computes in float32 whatever the model's dtype
    (``precision.py``): the inputs are captured in float32, and the block at hand holds
    float32 parameters for its step, then goes back to its dtype, where a nonzero weight
    the caller left that would round to zero is stored as the dtype's smallest subnormal
    with its sign (``cast_keeping_nonzeros``): the zeros the model holds after are those
    the caller made. The re-run casts those stored values to float32 again (exactly), so
    the next block's inputs come from the weights as the model holds them (SparseGPT's
    updated ones rounded to a bf16 model's dtype), as the reference code propagates
    through the weights it has cast back.
    """
    with capture_in_float32(model):
        chunks, block_kwargs = capture_block_inputs(model, tokens, chunk_size)
    layers = decoder_layers(model)
    for index in tqdm(range(len(layers)), desc=desc, unit="layer", disable=not progress):
        with parameters_in(layers[index], COMPUTE_DTYPE, keep_nonzeros=True):
            yield BlockStep(index, layers[index], chunks, block_kwargs[index])
        if index + 1 < len(layers):
            with parameters_in(layers[index], COMPUTE_DTYPE):
                chunks = run_block(layers[index], chunks, block_kwargs[index])


class InputStats:
    """Running statistics of the inputs ``X`` ``[tokens, features]`` of one linear layer.

    ``sumsq[j] = sum_t X[t, j]^2`` (Wanda's squared column norms) and, if ``gram``,
    ``X^T X`` accumulated in float64 from float32 chunk products (SparseGPT's Hessian).
    """

    def __init__(self, features: int, gram: bool, device: torch.device):
        self.count = 0
        self.sumsq = torch.zeros(features, dtype=torch.float64, device=device)
        self.gram = (
            torch.zeros(features, features, dtype=torch.float64, device=device) if gram else None
        )

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.count += x.shape[0]
        self.sumsq += x.square().sum(dim=0, dtype=torch.float64)
        if self.gram is not None:
            self.gram += (x.T @ x).double()

    def finite(self) -> bool:
        """Whether every statistic is finite (no input held inf or NaN)."""
        tensors = (self.sumsq,) if self.gram is None else (self.sumsq, self.gram)
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def norms(self) -> torch.Tensor:
        """``||X[:, j]||_2`` per input feature, float32 ``[features]``."""
        return self.sumsq.sqrt().float()

    def hessian(self) -> torch.Tensor:
        """``2 X^T X / tokens``, float64 ``[features, features]`` (SparseGPT's scaling)."""
        if self.gram is None:
            raise ValueError("these statistics were collected without the Gram matrix")
        return self.gram * (2.0 / max(self.count, 1))


def input_sharing_groups(family: Family) -> list[tuple[str, ...]]:
    """Linears of a block, grouped by the input they read (q/k/v share one, gate/up one)."""
    attn, mlp = family.attention, family.mlp
    return [
        tuple(f"{attn}.{n}" for n in (family.q_proj, family.k_proj, family.v_proj)),
        (f"{attn}.{family.o_proj}",),
        tuple(f"{mlp}.{n}" for n in (family.gate_proj, family.up_proj)),
        (f"{mlp}.{family.down_proj}",),
    ]


@contextlib.contextmanager
def collect_input_stats(
    block: nn.Module,
    family: Family,
    names: tuple[str, ...] | None = None,
    gram: bool = False,
    where: str = "block",
) -> Iterator[dict[str, InputStats]]:
    """Hook ``block``'s linears and yield ``{name: InputStats}`` filled by block forwards.

    Linears that read the same input share one ``InputStats`` (computed once). ``names``
    limits collection to those linears (default: all of ``family.block_linears``). On
    leaving, statistics that are not finite (inputs with inf or NaN: from a weight upstream
    that is not finite, say) raise ``NonFiniteError`` naming the linear (``where``: the block's
    name, e.g. ``layers.3``), rather than choose masks from NaN scores.
    """
    wanted = set(names or family.block_linears)
    stats: dict[str, InputStats] = {}
    handles = []
    try:
        for group in input_sharing_groups(family):
            members = [n for n in group if n in wanted]
            if not members:
                continue
            first = block_linear(block, members[0])
            shared = InputStats(first.in_features, gram, first.weight.device)
            for name in members:
                stats[name] = shared
            handles.append(
                first.register_forward_hook(lambda mod, args, out, s=shared: s.update(args[0]))
            )
        yield stats
    finally:
        for h in handles:
            h.remove()
    for name, stat in stats.items():
        if not stat.finite():
            raise NonFiniteError(
                f"the calibration inputs of {where}.{name} are not finite (inf or NaN, "
                "although pruning computes in float32: a weight of this block or an earlier "
                "one that is not finite?)"
            )
