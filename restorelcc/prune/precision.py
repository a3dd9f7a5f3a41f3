"""Pruning computes in float32 while the model stays in its own dtype.

A bf16 8B model held in float32 for pruning needs 32 GB of weights; held in bf16 with only
the block being pruned cast to float32, 16 GB plus one block. For a checkpoint whose
weights are bf16 (or fp16) values, the float32 casts are exact, so every statistic, mask
and update is the one a float32 copy of the whole model would give.

Only parameters are cast, never buffers: models keep buffers such as rotary ``inv_freq``
in float32 on purpose, and a round trip through bf16 would round them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from restorelcc.hf.families import decoder_layers

COMPUTE_DTYPE = torch.float32


@contextlib.contextmanager
def parameters_in(
    module: nn.Module,
    dtype: torch.dtype = COMPUTE_DTYPE,
    skip: Callable[[nn.Parameter], bool] = lambda param: False,
) -> Iterator[None]:
    """``module``'s floating-point parameters (but those ``skip`` picks) cast to ``dtype``
    for the block, then each back to the dtype it had. A parameter the caller replaced
    meanwhile (structured pruning swaps in smaller ones) goes back to the dtype of the
    name it took; one under a new name, to the dtype of the first parameter cast."""
    original = {
        name: param.dtype
        for name, param in module.named_parameters()
        if param.is_floating_point() and not skip(param)
    }
    cast = [name for name, was in original.items() if was != dtype]
    fallback = original[cast[0]] if cast else dtype
    try:
        for name, param in module.named_parameters():
            if original.get(name, dtype) != dtype:
                param.data = param.data.to(dtype)
        yield
    finally:
        for name, param in module.named_parameters():
            if param.is_floating_point() and not skip(param):
                wanted = original.get(name, fallback)
                if param.dtype != wanted:
                    param.data = param.data.to(wanted)


@contextlib.contextmanager
def capture_in_float32(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s forward passes in float32 for the block, holding little more than
    the model: the parameters outside the decoder blocks (embeddings, norms; not an untied
    LM head, which the capture never reaches) are cast for the block, and each decoder
    block only while it runs. Hidden states, rotary tables and masks then come out in
    float32, as from a float32 model."""
    layers = decoder_layers(model)
    in_layers = {id(param) for param in layers.parameters()}
    head = model.get_output_embeddings()
    input_ids = {id(param) for param in model.get_input_embeddings().parameters()}
    unused = {id(p) for p in head.parameters() if id(p) not in input_ids} if head else set()
    skipped = in_layers | unused
    running: dict[int, contextlib.ExitStack] = {}

    def cast_block(index: int):
        def hook(module, args):
            running[index] = stack = contextlib.ExitStack()
            stack.enter_context(parameters_in(module))

        return hook

    def restore_block(index: int):
        def hook(module, args, output):
            if index in running:  # not where the stopping hook came before the cast
                running.pop(index).close()

        return hook

    handles = []
    try:
        with parameters_in(model, skip=lambda param: id(param) in skipped):
            for index, layer in enumerate(layers):
                # prepended: a capture hook that stops the pass must find the block cast
                handles.append(layer.register_forward_pre_hook(cast_block(index), prepend=True))
                # always_call: also where a capture hook stopped the forward
                handles.append(layer.register_forward_hook(restore_block(index), always_call=True))
            yield
    finally:
        for handle in handles:
            handle.remove()
        for stack in running.values():  # (none left but after an error in a hook)
            stack.close()


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with its floating-point parameters cast to ``dtype``, in place, and its
    buffers as they are (``Module.to`` would round rotary ``inv_freq``, which a model loaded
    in bf16 keeps in float32)."""
    for param in module.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return module
