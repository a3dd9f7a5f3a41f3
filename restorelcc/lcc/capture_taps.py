"""The reads under every capture (capture.py): hooks on each layer's ``o_proj`` input, a
forward cut short after the last layer's read, the length-sorted, right-padded batches the
forwards run on, and one forward's reads at chosen positions, ``[B, P, L, H*d]`` fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from restorelcc.hf.families import (
    block_linear,
    decoder_layers,
    family_of,
    head_geometry,
    model_device,
    o_proj_of,
)

# Padded tokens per forward. On a CPU, ~1k tokens is the measured sweet spot (SmolLM2 on 2
# cores, 32 SQuAD prompts: 256 -> 14.3 s, 1024 -> 10.9 s, 4096 -> 13.9 s; one at a time
# 13.3 s): bigger batches spill the activations out of cache. A GPU wants large batches.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384
MAX_BATCH_ROWS = 64  # short sequences: cap the rows so the cache copy stays small


class _StopForward(Exception):
    """Raised by the last layer's tap: everything needed has been captured."""


@contextlib.contextmanager
def o_proj_taps(
    model: nn.Module,
    read: Callable[[int, torch.Tensor], None],
    stop_after_last: bool = True,
    through_adapters: bool = False,
) -> Iterator[None]:
    """Call ``read(layer, x)`` with each layer's ``o_proj`` input ``x [batch, seq, H*d]``.

    With ``stop_after_last`` the forward is cut short after the last layer's tap (wrap the
    forward in ``run_until_stopped``). Hooks see the input after hooks registered before
    them (e.g. a compensation added by ``heads.o_proj_input_offsets``); they are removed
    on exit, also on error. With ``through_adapters`` an adapter wrapper in ``o_proj``'s
    place (the LoRA/DoRA baselines' ``peft`` layers) is tapped at its ``base_layer``, the
    ``nn.Linear`` it runs on that same input; otherwise ``o_proj`` must be an ``nn.Linear``.
    """
    layers = head_geometry(model).layers
    handles = []

    def tap(layer: int):
        def hook(module, args):
            read(layer, args[0])
            if stop_after_last and layer == layers - 1:
                raise _StopForward

        return hook

    try:
        for layer in range(layers):
            module = _tapped_o_proj(model, layer, through_adapters)
            handles.append(module.register_forward_pre_hook(tap(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tapped_o_proj(model: nn.Module, layer: int, through_adapters: bool) -> nn.Linear:
    """``o_proj_of(model, layer)``, or with ``through_adapters`` the ``base_layer`` of an
    adapter wrapper in its place."""
    if through_adapters:
        family = family_of(model)
        block = decoder_layers(model)[layer]
        name = f"{family.attention}.{family.o_proj}.base_layer"
        with contextlib.suppress(AttributeError):  # no wrapper: o_proj_of's checks and errors
            block.get_submodule(name)
            return block_linear(block, name)
    return o_proj_of(model, layer)


def run_until_stopped(forward: Callable[[], object]) -> None:
    with contextlib.suppress(_StopForward):
        forward()


def length_batches(lengths: Sequence[int], batch_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped longest first so that ``rows * longest <= batch_tokens``.

    A sequence longer than ``batch_tokens`` gets a batch of its own.
    """
    if batch_tokens < 1 or max_rows < 1:
        raise ValueError(f"batch_tokens and max_rows must be positive: {batch_tokens}, {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            longest = lengths[last[0]]
            if len(last) < max_rows and (len(last) + 1) * longest <= batch_tokens:
                last.append(i)
                continue
        batches.append([i])
    return batches


def default_batch_tokens(model: nn.Module) -> int:
    return CPU_BATCH_TOKENS if model_device(model).type == "cpu" else GPU_BATCH_TOKENS


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T], attention_mask [B, T])`` right-padded to the longest sequence."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def capture_rows(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    **forward_kwargs,
) -> torch.Tensor:
    """One forward; returns the o_proj inputs at ``positions [B, P]`` -> ``[B, P, L, H*d]``.

    No key/value cache is built unless ``use_cache=True`` is passed (the ``cache``
    strategy): by default a model would keep one for the whole batch (GBs on 7B models).
    """
    forward_kwargs.setdefault("use_cache", False)
    layers = head_geometry(model).layers
    device = model_device(model)
    # on the model's device once: CPU indices would be copied over at every layer's read
    rows = torch.arange(ids.shape[0], device=device).unsqueeze(1)
    positions = positions.to(device)
    out: list[torch.Tensor | None] = [None] * layers

    def read(layer: int, x: torch.Tensor) -> None:
        out[layer] = x[rows, positions].float()

    with o_proj_taps(model, read):
        run_until_stopped(
            lambda: model(
                input_ids=ids.to(device), attention_mask=mask.to(device), **forward_kwargs
            )
        )
    return torch.stack(out, dim=2).cpu()
