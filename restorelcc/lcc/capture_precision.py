"""The precision activations are captured in (``capture_dtype``), whatever the models run in.

``"float32"`` captures a bf16 or fp16 model in fp32: for the duration of that model's capture
over all prompts, its bf16/fp16 parameters and buffers are cast to fp32 in place, and cast
back afterwards (on error too). Both round trips are lossless (every bf16 and fp16 value is
an fp32 value), so the weights come back bit for bit, with their ``requires_grad`` flags;
tensors of other dtypes (fp32, fp64, the integer metadata of packed sparse weights) are
not touched, nor is a model in fp32 already. Casting goes through each module's
``_apply``, as ``model.float()`` does, so a module that keeps derived state (a swapped
model's packed weights) rebuilds it. ``"model"`` captures in the dtype the model runs in.

Why fp32: the SVD behind the lost components reads ``D = Zd - Zp``, a small difference of
two large activations; captured in bf16 it carries ~3% rounding (SmolLM2-135M), as the
research code's fp16 capture did (a defect ``method.md`` lists).

Cost: the two models are cast one after the other (``capture_probe_activations``), so the
peak is one model in fp32 beside the other in its own dtype: for two bf16 8B models, 48 GB
instead of 32 GB (64 GB were both cast at once). The captures' matmuls run in fp32 too,
slower than bf16 on a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

CAPTURE_DTYPES = ("model", "float32")
_WIDENED = (torch.bfloat16, torch.float16)  # what "float32" casts up


def check_capture_dtype(capture_dtype: object) -> str:
    """``capture_dtype`` if it is one of ``CAPTURE_DTYPES``, else ``ValueError``."""
    if not isinstance(capture_dtype, str) or capture_dtype not in CAPTURE_DTYPES:
        raise ValueError(
            f"capture_dtype must be 'model' (the dtype the models run in) or 'float32', got "
            f"{capture_dtype!r}"
        )
    return capture_dtype


def _widens(model: nn.Module, capture_dtype: str) -> bool:
    """Whether capturing ``model`` at ``capture_dtype`` casts any of its tensors."""
    if check_capture_dtype(capture_dtype) == "model":
        return False
    tensors = (*model.parameters(), *model.buffers())
    return any(t.dtype in _WIDENED for t in tensors)


def captured_dtype(model: nn.Module, capture_dtype: str) -> str:
    """The dtype of ``model``'s floating-point parameters while it is captured at
    ``capture_dtype``: ``"float32"``, ``"bfloat16"``...; several joined by ``+``
    (``"bfloat16+float32"`` for a model that keeps some parameters in fp32)."""
    widen = check_capture_dtype(capture_dtype) == "float32"
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtypes = {torch.float32 if widen and d in _WIDENED else d for d in dtypes}
    return "+".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


def check_capture_attention(model: nn.Module, capture_dtype: str, name: str = "model") -> None:
    """``ValueError`` where capturing ``model`` (called ``name``) at ``capture_dtype`` would
    run an fp32 forward through a FlashAttention implementation, which takes fp16/bf16 only
    (transformers would hand it the fp32 queries and fail deep in the kernel)."""
    attention = str(getattr(model.config, "_attn_implementation", None))
    if "flash" in attention and _widens(model, capture_dtype):
        raise ValueError(
            f"capture_dtype='float32' runs the {name} model in float32, which its attention "
            f"implementation {attention!r} does not take: load it with "
            "attn_implementation='sdpa', or pass capture_dtype='model'"
        )


def _check_no_aliases(model: nn.Module) -> None:
    """``ValueError`` where two distinct bf16/fp16 tensors of ``model`` share memory: cast
    one by one, they would come back as separate copies. (Tied weights are one tensor.)"""
    owners: dict[int, tuple[str, torch.Tensor]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, tensor in {**module._parameters, **module._buffers}.items():
            if tensor is None or tensor.dtype not in _WIDENED or tensor.numel() == 0:
                continue
            label = f"{prefix}.{name}".lstrip(".")
            other, first = owners.setdefault(tensor.untyped_storage().data_ptr(), (label, tensor))
            if first is not tensor:
                raise ValueError(
                    f"{other} and {label} share memory: casting them to float32 for capture "
                    "would copy them apart; pass capture_dtype='model'"
                )


class _Cast:
    """One module's own bf16/fp16 parameters and buffers, recorded with their dtypes before
    they are cast to fp32 (``apply``); ``undo`` casts back whichever of them are not in
    their recorded dtype, so that a cast that failed halfway is undone too."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.dtypes = {  # (_parameters or _buffers, name) -> dtype
            (kind, name): tensor.dtype
            for kind in ("_parameters", "_buffers")
            for name, tensor in getattr(module, kind).items()
            if tensor is not None and tensor.dtype in _WIDENED
        }

    def apply(self) -> None:
        self._convert({key: torch.float32 for key in self.dtypes})

    def undo(self) -> None:
        self._convert(self.dtypes)

    def _convert(self, targets: dict[tuple[str, str], torch.dtype]) -> None:
        """Cast the module's tensors ``targets`` names to their dtypes through its
        ``_apply`` (which keeps each parameter, and its ``requires_grad`` flag)."""
        # Told by identity (held here, so no id is reused meanwhile): _apply also hands
        # fn the parameters' gradients and, in PackedLinear, a probe tensor of its own.
        tensors = ((getattr(self.module, kind)[name], d) for (kind, name), d in targets.items())
        by_id = {id(t): (t, d) for t, d in tensors if t.dtype != d}
        if by_id:
            self.module._apply(
                lambda t: t.to(by_id[id(t)][1]) if id(t) in by_id else t, recurse=False
            )


@contextlib.contextmanager
def capture_precision(model: nn.Module, capture_dtype: str, name: str = "model") -> Iterator[str]:
    """Run the block with ``model`` (called ``name`` in errors) at ``capture_dtype``: for
    ``"float32"``, its bf16/fp16 parameters and buffers cast to fp32, module by module,
    then cast back bit for bit, the same parameter objects with their ``requires_grad``
    flags, however the block ends (module docstring). Refuses (``ValueError``) a model
    whose attention takes no fp32, or with two such tensors sharing memory, before
    casting. Yields ``captured_dtype(model, capture_dtype)``."""
    used = captured_dtype(model, capture_dtype)
    if not _widens(model, capture_dtype):
        yield used
        return
    check_capture_attention(model, capture_dtype, name)
    _check_no_aliases(model)
    done: list[_Cast] = []
    try:
        for module in model.modules():
            cast = _Cast(module)
            if cast.dtypes:
                done.append(cast)  # before casting: a failure halfway is undone too
                cast.apply()
        yield used
    finally:
        for cast in reversed(done):
            cast.undo()
