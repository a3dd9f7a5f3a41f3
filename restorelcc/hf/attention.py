"""Thin modules that run an attention block's projections through `lcc_kernels`.

They replace ``nn.Linear`` submodules one for one, so each family's own attention forward
(RoPE, q/k norms, KV cache, attention implementation) stays transformers' code:

- ``PackedQKV``: q, k and v packed side by side as one ``[Nq + Nk + Nv, hidden]`` sparse
  matrix (their biases, if any, as one ``[Nq + Nk + Nv]`` vector); one ``sparse_linear``
  launch gives all three outputs. It sits next to the projections (``PACKED_QKV``).
- ``ProjectionView``: what ``q_proj`` / ``k_proj`` / ``v_proj`` become. Called with
  ``x [..., hidden]`` it returns its ``[..., N_i]`` slice of the owner's fused output. The
  first view called runs the launch; the others called with the same tensor (same object,
  unmodified) take their slice of that result, so the usual ``q_proj(h); k_proj(h);
  v_proj(h)`` costs one launch. Any other call pattern recomputes, so results are always
  right. Under ``torch.compile`` the model traces as one graph with one q/k/v launch per
  layer; there "unmodified" is not checked (see ``_version_of``).
- ``SparseLinear``: a packed ``o_proj``; its bias (an existing bias, or the RestoreLCC
  compensation folded into it) is added in fp32 in the kernel's epilogue.

The packed weight lives in plain-tensor buffers named ``packed_<field>`` (the fields of
``PackedWeight.to_state_dict()``), so ``state_dict`` / ``load_state_dict`` / ``.to()`` /
``.half()`` work; loading may change the packed sizes (a bitmap with another nnz) but not
the logical shape. Inference only.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import lcc_kernels

# Attribute of the attention module that holds the PackedQKV owner.
PACKED_QKV = "packed_qkv"
_PREFIX = "packed_"
_NOT_TENSOR_FIELDS = ("info", "split_sizes")


def _version_of(x: torch.Tensor) -> int | None:
    """In-place modification counter (inference-mode tensors have none).

    None while torch.compile traces: dynamo cannot guard on a version, and comparing two
    would break the graph at every q/k/v call. The traced code then relies on identity
    alone, which holds for transformers' attention (it never modifies the hidden states
    between its q, k and v projections)."""
    if torch.compiler.is_compiling():
        return None
    try:
        return x._version
    except RuntimeError:
        return None


class PackedLinear(nn.Module):
    """y [..., N] = x [..., K] @ W^T + bias for a packed W [N, K]; bias [N] or None."""

    def __init__(
        self, packed: lcc_kernels.PackedWeight, bias: torch.Tensor | None, backend: str = "auto"
    ) -> None:
        super().__init__()
        self.backend = backend
        self._set_packed(packed)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def packed(self) -> lcc_kernels.PackedWeight:
        """The packed weight; its tensors are this module's ``packed_*`` buffers."""
        return self._packed

    @property
    def in_features(self) -> int:
        return self._packed.shape[1]

    @property
    def out_features(self) -> int:
        return self._packed.shape[0]

    def _set_packed(self, packed: lcc_kernels.PackedWeight) -> None:
        for name in [n for n in self._buffers if n.startswith(_PREFIX)]:
            del self._buffers[name]
        for name, tensor in packed.to_state_dict().items():  # info: made on the CPU
            self.register_buffer(_PREFIX + name, tensor.to(packed.device))
        self._rebuild(packed)

    def _rebuild(self, template: lcc_kernels.PackedWeight | None = None) -> None:
        """Point the container at the current buffers (after ``.to()``, ``.half()``...)."""
        tensors = {
            n[len(_PREFIX) :]: t
            for n, t in self._buffers.items()
            if n.startswith(_PREFIX) and n[len(_PREFIX) :] not in _NOT_TENSOR_FIELDS
        }
        template = self._packed if template is None else template
        self._packed = dataclasses.replace(template, cache={}, **tensors)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._rebuild()
        return result

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        incoming = {
            k[len(prefix + _PREFIX) :]: v
            for k, v in state_dict.items()
            if k.startswith(prefix + _PREFIX)
        }
        if "info" in incoming:
            # The stored packed sizes may differ from ours (another nnz, another format):
            # take the stored layout, on our device and in our dtype, then copy as usual.
            values = self._packed.values
            incoming = {
                k: v.to(values.device, values.dtype if k == "values" else v.dtype)
                for k, v in incoming.items()
            }
            try:
                packed = lcc_kernels.load_state_dict(incoming)
            except (ValueError, KeyError) as error:
                error_msgs.append(f"{prefix}{_PREFIX}*: not a valid packed weight ({error})")
                return
            if packed.shape != self._packed.shape or packed.split_sizes != self._packed.split_sizes:
                error_msgs.append(
                    f"{prefix}{_PREFIX}*: packed weight of shape {packed.shape} split "
                    f"{packed.split_sizes} does not fit this module's {self._packed.shape} "
                    f"split {self._packed.split_sizes}"
                )
                return
            self._set_packed(packed)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._rebuild()  # load_state_dict(assign=True) replaces the buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N]."""
        return lcc_kernels.sparse_linear(x, self._packed, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        p = self._packed
        extra = f", density={p.density:.3f}, tile={p.tile}" if p.format == "bitmap" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"format={p.format!r}{extra}, bias={self.bias is not None}, "
            f"backend={self.backend!r}"
        )


class SparseLinear(PackedLinear):
    """A packed ``o_proj``: x [..., H*d] -> [..., hidden], bias added in fp32."""


class PackedQKV(PackedLinear):
    """q, k and v in one packed matrix [Nq + Nk + Nv, hidden] and one launch.

    ``has_bias[i]`` says whether projection i had a bias (absent ones are zeros in the
    concatenated ``bias`` buffer); ``unswap`` uses it to give back the same modules.
    """

    def __init__(self, packed, bias, has_bias: tuple[bool, ...], backend: str = "auto"):
        super().__init__(packed, bias, backend)
        if len(has_bias) != len(packed.split_sizes):
            raise ValueError(
                f"has_bias {has_bias} must name each of the "
                f"{len(packed.split_sizes)} packed projections"
            )
        self.has_bias = tuple(bool(b) for b in has_bias)
        self._pending = None  # (x, x version, outputs, indices already handed out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [..., hidden] -> (q [..., Nq], k [..., Nk], v [..., Nv]) from one launch."""
        return lcc_kernels.split_output(super().forward(x), self._packed)

    def projection(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output ``index`` for x: the pending fused result when x is the tensor it was
        computed from and this output was not handed out yet, else a new launch."""
        pending = self._pending
        if (
            pending is None
            or pending[0] is not x
            or pending[1] != _version_of(x)
            or index in pending[3]
        ):
            pending = (x, _version_of(x), self(x), set())
            self._pending = pending
        pending[3].add(index)
        if len(pending[3]) == len(pending[2]):
            self._pending = None  # all handed out: drop the references to x and outputs
        return pending[2][index]

    def _rebuild(self, template=None) -> None:
        self._pending = None  # computed with the weights being replaced
        super()._rebuild(template)


class ProjectionView(nn.Module):
    """Stands in for ``q_proj`` / ``k_proj`` / ``v_proj``: x [..., hidden] -> [..., N_i].

    Holds no tensors; the owner is registered on the attention module, not here, so the
    state dict holds the packed weight once.
    """

    def __init__(self, owner: PackedQKV, index: int, name: str) -> None:
        super().__init__()
        self.__dict__["owner"] = owner  # a plain reference: not a submodule
        self.index = index
        self.name = name

    @property
    def in_features(self) -> int:
        return self.owner.in_features

    @property
    def out_features(self) -> int:
        return self.owner.packed.split_sizes[self.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner.projection(x, self.index)

    def extra_repr(self) -> str:
        return (
            f"{self.name}: outputs {self.index} of {PACKED_QKV}, out_features={self.out_features}"
        )
