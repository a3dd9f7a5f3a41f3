"""Thin modules that run an attention block's projections through `lcc_kernels`.

They replace ``nn.Linear`` submodules one for one, so each family's own attention forward
(RoPE, q/k norms, KV cache, attention implementation) stays transformers' code:

- ``PackedProjections``: projections of the same input packed side by side as one sparse
  matrix, q, k and v as ``[Nq + Nk + Nv, hidden]`` (their biases, if any, as one vector;
  also the MLP's gate and up); one ``sparse_linear`` launch gives every output. It sits
  next to the projections (``PACKED_QKV`` on the attention, ``PACKED_GATE_UP`` on the MLP).
- ``ProjectionView``: what ``q_proj`` / ``k_proj`` / ``v_proj`` (``gate_proj`` /
  ``up_proj``) become. Called with ``x [..., hidden]`` it returns its ``[..., N_i]`` slice
  of the owner's fused output. The first view called runs the launch; the others called
  with the same tensor (same object, unmodified) take their slice of that result, so the
  usual ``q_proj(h); k_proj(h); v_proj(h)`` costs one launch. Any other call pattern
  recomputes. "Unmodified" is checked with the tensor's version counter, which two cases
  lack (see ``_version_of``): under ``torch.compile`` (the model traces as one graph with
  one q/k/v launch per layer) and for inference tensors (made under
  ``torch.inference_mode``). There only identity is checked: code that modifies the
  input in place between two projection calls (``q_proj(h); h.mul_(2); k_proj(h)``)
  gets a k of the unmodified ``h``, so run such code under ``torch.no_grad`` instead.
  Transformers' attention and MLP never do this.
- ``SparseLinear``: a packed ``o_proj``; its bias (an existing bias, or the RestoreLCC
  compensation folded into it) is added in fp32 in the kernel's epilogue. Also what the
  MLP's ``down_proj`` becomes when the MLP is swapped too.

State dicts hold what the replaced ``nn.Linear`` modules held, under the same keys
(``q_proj.weight``, ``o_proj.bias``...; the q/k/v views save their rows), so
``save_pretrained`` of a swapped model writes a checkpoint plain transformers loads, and
``load_state_dict`` of a plain checkpoint into a swapped model repacks each weight in its
module's format (a 2:4 module refuses weights that are not 2:4). The packed tensors are
non-persistent buffers named ``packed_<field>``, so ``.to()`` / ``.half()`` move them.
The weights in a state dict are unpacked copies: editing them in place changes nothing
(load the edited state dict, or unswap first). Inference only.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import lcc_kernels
from lcc_kernels.formats import SUPPORTED_DTYPES

# Attributes of the attention and MLP modules that hold a PackedProjections owner.
PACKED_QKV = "packed_qkv"
PACKED_GATE_UP = "packed_gate_up"
_PREFIX = "packed_"
_NOT_TENSOR_FIELDS = ("info", "split_sizes")


def _version_of(x: torch.Tensor) -> int | None:
    """In-place modification counter; None for inference tensors, which have none.

    None while torch.compile traces: dynamo cannot guard on a version, and comparing two
    would break the graph at every q/k/v call. In both cases the reuse relies on identity
    alone, which holds for transformers' attention (it never modifies the hidden states
    between its q, k and v projections). Recomputing instead would triple the q/k/v work
    under inference mode, and comparing values would synchronise with the host."""
    if torch.compiler.is_compiling():
        return None
    try:
        return x._version
    except RuntimeError:
        return None


def _take(state_dict, key, shape, missing_keys, error_msgs) -> torch.Tensor | None:
    """``state_dict[key]`` if present with ``shape``; else records why and returns None."""
    if key not in state_dict:
        missing_keys.append(key)
        return None
    value = state_dict[key]
    if tuple(value.shape) != tuple(shape):
        error_msgs.append(
            f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
            f"checkpoint, the shape in current model is {tuple(shape)}."
        )
        return None
    return value


def builds_streams(format: str, device: torch.device, decode_streams: bool) -> bool:
    """Whether a module with ``decode_streams`` builds a streams layout of its weight, packed
    in ``format`` on ``device``: bitmap weights on a GPU only."""
    return decode_streams and format == "bitmap" and device.type == "cuda"


class PackedLinear(nn.Module):
    """y [..., N] = x [..., K] @ W^T + bias for a packed W [N, K]; bias [N] or None.

    backend and decode_streams are passed to every ``sparse_linear`` call. With
    decode_streams, a bitmap weight on a GPU gets its streams layout built whenever the
    module's tensors are set or moved, so that compiled and captured decode can use it.
    """

    def __init__(
        self,
        packed: lcc_kernels.PackedWeight,
        bias: torch.Tensor | None,
        backend: str = "auto",
        *,
        decode_streams: bool = False,
    ) -> None:
        super().__init__()
        self.backend = backend
        self._decode_streams = decode_streams
        self._set_packed(packed)
        bias = None if bias is None else bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)  # saved as nn.Linear's

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
            self.register_buffer(_PREFIX + name, tensor.to(packed.device), persistent=False)
        self._rebuild(packed)

    def _rebuild(self, template: lcc_kernels.PackedWeight | None = None) -> None:
        """Point the container at the current buffers (after ``.to()``, ``.half()``...)."""
        tensors = {
            n[len(_PREFIX) :]: t
            for n, t in self._buffers.items()
            if n.startswith(_PREFIX) and n[len(_PREFIX) :] not in _NOT_TENSOR_FIELDS
        }
        if template is None:
            if all(t is getattr(self._packed, n) for n, t in tensors.items()):
                return  # a no-op .to()/.float(): keep the cached layouts and copies
            template = self._packed
        # moved or cast copies of checked tensors: their data is not read again
        self._packed = dataclasses.replace(template, check_data=False, **tensors)
        self._prepare_streams()

    @property
    def decode_streams(self) -> bool:
        return self._decode_streams

    @decode_streams.setter
    def decode_streams(self, value: bool) -> None:
        self._decode_streams = bool(value)
        self._prepare_streams()

    @property
    def streams_bytes(self) -> int:
        """Bytes of the streams layout built for decode_streams (0: none built)."""
        return self._streams_bytes

    def _prepare_streams(self) -> None:
        p = self._packed
        ready = builds_streams(p.format, p.device, self._decode_streams)
        self._streams_bytes = lcc_kernels.prepare_streams(p).nbytes if ready else 0

    def __setstate__(self, state) -> None:
        # A copy (deepcopy, torch.load) gets its packed weight without the layouts derived
        # from it (lcc_kernels containers pickle no cache): build the streams one again.
        # Modules pickled before decode_streams existed had none.
        state.setdefault("_decode_streams", False)
        super().__setstate__(state)
        if "_packed" in state:
            self._prepare_streams()

    def _apply(self, fn, recurse=True):
        target = fn(torch.zeros(1, dtype=self._packed.dtype, device=self._packed.device)).dtype
        if target not in SUPPORTED_DTYPES:
            # nn.Module._apply has already converted the modules before this one
            raise ValueError(
                f"packed sparse weights hold float16, bfloat16 or float32, not {target}: call "
                "unswap_attention(model) before the conversion (modules before the first "
                "swapped one are converted already: convert the model back)"
            )
        result = super()._apply(fn, recurse)
        self._rebuild()
        return result

    # State dicts: nn.Linear's keys and tensors, so save_pretrained writes a plain
    # checkpoint. Rows [rows] of the packed weight are one nn.Linear: all of them for
    # o_proj, one projection's for a q/k/v view.
    # Rows short of the whole matrix are copied, so that a saved tensor does not keep the
    # whole unpacked matrix (or bias) alive, nor torch.save write it for each projection.
    def _save_rows(self, rows: slice, has_bias: bool, destination, prefix, keep_vars) -> None:
        whole = rows == slice(0, self.out_features)
        weight = lcc_kernels.unpack(self._packed)[rows]
        destination[prefix + "weight"] = weight if whole else weight.clone()
        if has_bias:
            bias = self.bias if keep_vars else self.bias.detach()
            destination[prefix + "bias"] = bias if whole else bias[rows].clone()

    def _load_rows(
        self, rows: slice, has_bias: bool, state_dict, prefix, strict, missing, unexpected, errors
    ) -> None:
        """Replace rows [rows] from ``prefix + "weight"`` (and ``"bias"``), repacked in this
        module's format, tile and dtype; what does not fit goes to ``errors``."""
        p = self._packed
        shape = (rows.stop - rows.start, p.shape[1])
        weight = _take(state_dict, prefix + "weight", shape, missing, errors)
        if weight is not None:
            dense = lcc_kernels.unpack(p)
            dense[rows] = weight.to(dense.device, dense.dtype)
            tile = {"tile": p.tile} if p.format == "bitmap" else {}
            try:  # the rows alone first, so that an error names their own row
                lcc_kernels.pack(dense[rows], p.format, **tile)
                self._set_packed(
                    lcc_kernels.pack(dense, p.format, split_sizes=p.split_sizes, **tile)
                )
            except ValueError as error:
                errors.append(f"{prefix}weight does not fit this {p.format} module: {error}")
        if has_bias:
            bias = _take(state_dict, prefix + "bias", shape[:1], missing, errors)
            if bias is not None:
                with torch.no_grad():
                    self.bias[rows] = bias
        if strict:
            expected = ("weight", "bias") if has_bias else ("weight",)
            unexpected.extend(
                key
                for key in state_dict
                if key.startswith(prefix) and key[len(prefix) :] not in expected
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        rows = slice(0, self.out_features)
        self._save_rows(rows, self.bias is not None, destination, prefix, keep_vars)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        rows, has_bias = slice(0, self.out_features), self.bias is not None
        self._load_rows(
            rows, has_bias, state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N]. Under ``torch.autocast`` the output has autocast's dtype,
        as an ``nn.Linear``'s would, but the product runs in the packed weight's dtype (x
        is cast to it): a packed weight is not converted at every call."""
        device_type = x.device.type if isinstance(x, torch.Tensor) else None
        if (
            device_type is not None
            and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)
        ):
            with torch.autocast(device_type, enabled=False):
                out = self._linear(x.to(self._packed.dtype))
            return out.to(torch.get_autocast_dtype(device_type))
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return lcc_kernels.sparse_linear(
            x, self._packed, self.bias, backend=self.backend, decode_streams=self._decode_streams
        )

    def extra_repr(self) -> str:
        p = self._packed
        extra = f", density={p.density:.3f}, tile={p.tile}" if p.format == "bitmap" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"format={p.format!r}{extra}, bias={self.bias is not None}, "
            f"backend={self.backend!r}, decode_streams={self._decode_streams}"
        )


class SparseLinear(PackedLinear):
    """A packed ``o_proj`` (x [..., H*d] -> [..., hidden], bias added in fp32), or the
    MLP's ``down_proj`` (``swap_attention(mlp=True)``)."""


class PackedProjections(PackedLinear):
    """Projections of one input in one packed matrix and one launch: q, k and v as
    [Nq + Nk + Nv, hidden], or the MLP's gate and up as [2 * intermediate, hidden].

    ``has_bias[i]`` says whether projection i had a bias (absent ones are zeros in the
    concatenated ``bias`` buffer); ``unswap`` uses it to give back the same modules.
    """

    def __init__(
        self,
        packed,
        bias,
        has_bias: tuple[bool, ...],
        backend: str = "auto",
        *,
        decode_streams: bool = False,
    ):
        super().__init__(packed, bias, backend, decode_streams=decode_streams)
        if len(has_bias) != len(packed.split_sizes):
            raise ValueError(
                f"has_bias {has_bias} must name each of the "
                f"{len(packed.split_sizes)} packed projections"
            )
        self.has_bias = tuple(bool(b) for b in has_bias)
        self._pending = None  # (x, x version, outputs, indices already handed out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [..., hidden] -> one output per projection ([..., N_i]: q, k, v), one launch."""
        return lcc_kernels.split_output(super().forward(x), self._packed)

    def projection(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output ``index`` for x: the pending fused result when x is the tensor it was
        computed from and this output was not handed out yet, else a new launch."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
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

    def _rows(self, index: int) -> slice:
        start = sum(self._packed.split_sizes[:index])
        return slice(start, start + self._packed.split_sizes[index])

    # The views save and load their rows under their nn.Linear keys; the owner holds none.
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        pass

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        if strict:
            unexpected_keys.extend(key for key in state_dict if key.startswith(prefix))

    def save_part(self, index: int, destination, prefix: str, keep_vars: bool) -> None:
        """Projection ``index``'s ``weight`` [N_i, K] (and ``bias`` [N_i] if it had one)."""
        self._save_rows(self._rows(index), self.has_bias[index], destination, prefix, keep_vars)

    def load_part(self, index: int, state_dict, prefix, strict, missing, unexpected, errors):
        """Replace projection ``index`` from ``prefix + "weight"`` (and ``"bias"``)."""
        rows, has_bias = self._rows(index), self.has_bias[index]
        self._load_rows(rows, has_bias, state_dict, prefix, strict, missing, unexpected, errors)


class ProjectionView(nn.Module):
    """Stands in for ``q_proj`` / ``k_proj`` / ``v_proj`` (or ``gate_proj`` / ``up_proj``):
    x [..., hidden] -> [..., N_i].

    Holds no tensors; the owner is registered on the attention (or MLP) module, not here,
    so the state dict holds the packed weight once.
    """

    def __init__(self, owner: PackedProjections, index: int, name: str) -> None:
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

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self.owner.save_part(self.index, destination, prefix, keep_vars)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        self.owner.load_part(
            self.index, state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.name}: output {self.index} of its owner, out_features={self.out_features}"
