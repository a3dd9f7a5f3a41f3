"""Pruning computes in float32 while the model stays in its own dtype.

A bf16 8B model held in float32 for pruning needs 32 GB of weights; held in bf16 with only
the block being pruned cast to float32, 16 GB plus one block. For a checkpoint whose
weights are bf16 (or fp16) values, the float32 casts are exact, so every statistic, mask
and update is the one a float32 copy of the whole model would give.

Only parameters are cast, never buffers: models keep buffers such as rotary ``inv_freq``
in float32 on purpose, and a round trip through bf16 would round them.

Going back is exact but for weights pruning changed (SparseGPT updates the ones it keeps):
those round once, and a kept one too small for the model's dtype (below ~3e-8 in float16,
~5e-41 in bfloat16) would round to zero, a zero the pruning did not choose. The cast back
after pruning (``parameters_in(..., keep_nonzeros=True)``) stores it as the dtype's
smallest subnormal, with its sign, instead (``cast_keeping_nonzeros``).
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
    keep_nonzeros: bool = False,
) -> Iterator[None]:
    """``module``'s floating-point parameters (but those ``skip`` picks) cast to ``dtype``
    for the block, then each back to the dtype it had. A parameter the caller replaced
    meanwhile (structured pruning swaps in smaller ones) goes back to the dtype of the
    name it took; one under a new name, to the dtype of the first parameter cast. With
    ``keep_nonzeros``, a nonzero value that would round to zero on the way back is stored
    as its dtype's smallest subnormal with its sign (``cast_keeping_nonzeros``): pruning
    uses it so that the weights it kept stay nonzero."""
    original = {
        name: param.dtype
        for name, param in module.named_parameters()
        if param.is_floating_point() and not skip(param)
    }
    cast = [name for name, was in original.items() if was != dtype]
    fallback = original[cast[0]] if cast else dtype
    cast_back = cast_keeping_nonzeros if keep_nonzeros else torch.Tensor.to
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
                    param.data = cast_back(param.data, wanted)


def smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive value of the floating ``dtype``, a subnormal: its smallest
    normal times its machine epsilon (2**-24 for float16, 2**-133 for bfloat16, 2**-149
    for float32; powers of two, so the product is exact)."""
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def cast_keeping_nonzeros(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` (any shape) cast to the floating ``dtype`` as ``Tensor.to`` casts them,
    but for nonzeros that round to zero there (magnitude at most half of
    ``smallest_subnormal(dtype)``): each becomes ``smallest_subnormal(dtype)`` with its
    sign. A weight pruning kept, however small, stays nonzero; NaN and inf are cast as
    they are."""
    cast = values.to(dtype)
    underflowed = (cast == 0) & (values != 0)
    if not underflowed.any():  # the usual case: no second tensor of the values' size
        return cast
    smallest = torch.full((), smallest_subnormal(dtype), dtype=dtype, device=cast.device)
    return torch.where(underflowed, torch.copysign(smallest, cast), cast)  # -0.0 keeps its sign


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
