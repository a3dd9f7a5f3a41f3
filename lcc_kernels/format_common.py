"""What the 2:4 and bitmap containers share: format names, int32 word packing, the bands
of rows that pack and unpack take, the shape, split_sizes and tensor checks, and
`PackedContainer` (dtype / device, `.to()`, state dicts, the checks run when one is built).

A state dict holds tensors only (safetensors-friendly):
    info         int64 [1 + F]  format id, then the container's F `INFO_FIELDS` (N, K, ...)
    split_sizes  int64 [P]      rows of each of the P weights packed side by side
    <field>      the container's `TENSOR_FIELDS` under their own names
"""

from __future__ import annotations

import abc
import dataclasses
import operator
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch

FORMAT_24 = "2:4"
FORMAT_BITMAP = "bitmap"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FORMAT_IDS = {FORMAT_24: 1, FORMAT_BITMAP: 2}
# Positions of a weight that pack compresses, and unpack expands, at a time (a band of
# whole rows, or of whole row blocks): 2**20 keep their int64, int32 and bool working
# copies to a few tens of MiB whatever the weight's size (all of them at once took ~14x
# the fp16 weight in pack, ~7.5x in the bitmap unpack).
PACK_BAND = 1 << 20
# Values are moved as integers of the same width: a float gather may rewrite NaN payloads
# (bf16 on the CPU does).
_SAME_SIZE_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
}

_Container = TypeVar("_Container", bound="PackedContainer")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pack_words(fields: torch.Tensor, bits_per_field: int) -> torch.Tensor:
    """[..., W, 32 // bits_per_field] small ints -> [..., W] int32 words (two's complement).

    Field i lands in bits i*bits_per_field... of its word. Accumulated one field at a time,
    so the int64 working copy is [..., W], not the size of `fields`."""
    words = torch.zeros(fields.shape[:-1], dtype=torch.int64, device=fields.device)
    for i in range(fields.shape[-1]):
        words |= fields[..., i].to(torch.int64) << (i * bits_per_field)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def _unpack_words(
    words: torch.Tensor, bits_per_field: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """[..., W] int32 words -> [..., W * 32 // bits_per_field] fields, as `dtype`."""
    per_word = 32 // bits_per_field
    shifts = torch.arange(per_word, dtype=torch.int32, device=words.device) * bits_per_field
    # Shifted in int32: the sign bits an arithmetic shift brings in are masked off.
    fields = (words.unsqueeze(-1) >> shifts) & ((1 << bits_per_field) - 1)
    return fields.flatten(-2).to(dtype)


def _is_integer(tensor: torch.Tensor) -> bool:
    """Whether `tensor` (any shape) holds integers (not floats, complex or bools)."""
    dtype = tensor.dtype
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def as_int(value) -> int:
    """`value` as a Python int: an integer scalar of Python, numpy or torch (anything with
    __index__; a torch tensor only 0-d and on the CPU), not a bool of any of them;
    TypeError otherwise (floats included), for the caller to name what it wanted. The one
    integer check of the sizes that pack, the containers, Plan and the dispatch tables take."""
    if isinstance(value, bool):  # operator.index would take True as 1
        raise TypeError("a bool is not an int")
    if isinstance(value, torch.Tensor) and (
        value.dim() != 0 or value.dtype == torch.bool or value.device.type != "cpu"
    ):
        # a size on a GPU would cost a sync (and fail inside CUDA-graph capture)
        raise TypeError(f"only a 0-d integer tensor on the CPU is an int, got {value!r}")
    return operator.index(value)  # numpy's bools and floats raise


def int_pair(value, what: str, names: str) -> tuple[int, int]:
    """`value` as a pair of Python ints (`as_int` each); a ValueError naming `what` (and
    its entries, `names`) unless it is a tuple or list of exactly two integers. The
    containers' shape and the bitmap tile."""
    try:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError
        return as_int(value[0]), as_int(value[1])
    except TypeError:
        raise ValueError(f"{what} must be a pair of ints {names}, got {value!r}") from None


def band_rows(padded_k: int, block_rows: int = 1) -> int:
    """Rows of a weight [N, K] that pack, unpack and build_streams take at a time: whole
    blocks of `block_rows` rows of about PACK_BAND positions (a row being `padded_k`
    positions, K padded as the format stores it), one block at least."""
    return max(1, PACK_BAND // (block_rows * padded_k)) * block_rows


def cache_field() -> Any:
    """The containers' `cache` dataclass field: the derived copies made on demand
    (weight_cache). Not an init field, so that a replace() starts an empty one."""
    return dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)


def _check_split_sizes(split_sizes, n: int) -> tuple[int, ...]:
    """`split_sizes` as a tuple of ints, checked to be positive and to sum to N = n."""
    try:
        sizes = tuple(as_int(s) for s in split_sizes)
    except TypeError as error:
        raise ValueError(f"split_sizes must be a sequence of ints, got {split_sizes!r}") from error
    if not sizes or any(s <= 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"split_sizes {sizes} must be positive and sum to N = {n}")
    return sizes


def state_format_id(state: Mapping[str, torch.Tensor]) -> int:
    """The format id that ``state["info"]`` starts with, once ``info`` is known to be a
    non-empty integer tensor holding data."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"a packed weight state dict must map names to tensors, got {type(state).__name__}"
        )
    info = state.get("info")
    if info is None or (isinstance(info, torch.Tensor) and info.numel() == 0):
        raise ValueError("not a packed weight state dict: no 'info' entry (format id first)")
    _check_entry("info", info, "packed weight")
    if not _is_integer(info):
        raise ValueError(
            f"packed weight state dict 'info' must be 1-D integers (format id first), "
            f"got {info.dtype} of shape {tuple(info.shape)}"
        )
    return int(info.flatten()[0])


def _check_entry(name: str, value: Any, format: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{format} state dict entry {name!r} must be a torch.Tensor, got {type(value).__name__}"
        )
    if value.device.type == "meta":
        raise ValueError(f"{format} state dict entry {name!r} is on the meta device (no data)")


def check_tensors_together(format: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise a ValueError unless each of `tensors` (by field name, "values" among them;
    any shapes: the format checks those) is a torch.Tensor on the values' device,
    contiguous, and not a lazy negation view (whose memory holds the values negated: the
    kernels read memory as it is). Reads no data."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{format} {name} must be a torch.Tensor, got {type(tensor).__name__}")
    device = tensors["values"].device
    for name, tensor in tensors.items():
        if tensor.device != device:
            raise ValueError(f"{format} {name} on {tensor.device} but values on {device}")
        if not tensor.is_contiguous():
            raise ValueError(f"{format} {name} must be contiguous")
        if tensor.is_neg():
            raise ValueError(f"{format} {name} is a lazy negation view: call .resolve_neg() first")


def check_strided(tensor: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming `name` unless `tensor` (any shape) is a dense (strided)
    tensor: not sparse (COO, CSR...) nor nested."""
    if tensor.is_nested or tensor.layout != torch.strided:
        kind = "a nested tensor" if tensor.is_nested else f"layout {tensor.layout}"
        raise ValueError(f"{name} must be a dense (strided) tensor, got {kind}")


class PackedContainer(abc.ABC):
    """Base of the containers (dataclasses with a `values` tensor, a logical `shape`
    (N, K) and `split_sizes`): dtype and device, `.to()`, state dicts, and the checks
    run when one is built. Subclasses name their tensors (`TENSOR_FIELDS`) and the ints
    that `info` stores after the format id (`INFO_FIELDS`).

    A container checks what it is built from (`__post_init__`): the layout always
    (`validate_layout`: dtypes, shapes, one device, contiguity; reads no data), and the
    data (`validate_data`: reads every tensor once, one host sync on a GPU) unless built
    with check_data=False. Direct construction, dataclasses.replace() and unpickling
    (torch.load, copy.deepcopy) check both, so that corrupt tensors are refused rather
    than computing garbage or reading out of bounds. pack(), concat() and .to() skip the
    data check of data already checked; code that rebuilds a container around copies of
    a checked one's tensors (a module's .to()) may pass check_data=False to replace() as
    well.

    The packed tensors must not be modified in place: the kernels trust the data that
    was checked when the container was built. After any in-place change, call
    `validate()`, which runs those checks again and drops the copies derived from the old
    data (`cache`)."""

    format: ClassVar[str]
    TENSOR_FIELDS: ClassVar[tuple[str, ...]]
    INFO_FIELDS: ClassVar[tuple[str, ...]]
    values: torch.Tensor
    shape: tuple[int, int]
    split_sizes: tuple[int, ...]

    def __post_init__(self, check_data: bool) -> None:
        """Run by the dataclass __init__ (and replace()), after a subclass's own fields are
        normalised: shape as a pair of ints, the layout (against N and K first, so that an
        N that disagrees with the tensors is named as such), split_sizes against N, then
        the data where `check_data` asks for it and the tensors hold data (not on the meta
        device)."""
        self.shape = int_pair(self.shape, f"{self.format} shape", "(N, K)")
        self.validate_layout()
        self.split_sizes = _check_split_sizes(self.split_sizes, self.shape[0])
        if check_data and self.device.type != "meta":
            self.validate_data()

    def validate(self) -> None:
        """Check the container again as it was checked when built: its ints (shape,
        split_sizes and the format's own), the layout (`validate_layout`) and the data
        (`validate_data`: reads every tensor once, one host sync on a GPU; skipped on the
        meta device). A ValueError names what is wrong. `cache` is emptied first, pass or
        fail: its copies (dense, semi-structured, streams) are of the data as it was; they
        are built again on first use (a streams layout for compiled calls by
        `prepare_streams`). Call it after any in-place change of the packed tensors, which
        nothing else checks (see PackedContainer)."""
        self.cache.clear()
        self.__post_init__(True)

    @abc.abstractmethod
    def _info(self) -> tuple[int, ...]:
        """The ints stored in `info` after the format id, in `INFO_FIELDS` order."""

    @classmethod
    @abc.abstractmethod
    def _fields_of_info(cls, info: list[int]) -> dict[str, Any]:
        """Constructor arguments (other than tensors and split_sizes) from `_info()`."""

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (torch.save, copy.deepcopy) without `cache`: the derived copies there
        (dense, torch semi-structured, streams) are rebuilt on first use, not stored."""
        return {**self.__dict__, "cache": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (torch.load, copy.deepcopy): the dataclass fields taken from `state`
        (nothing else), an empty cache, then the checks of a new container (`validate`),
        so that torch.load's weights_only mode, which may build the containers (formats.py
        allows them), builds one from checked data only."""
        names = [field.name for field in dataclasses.fields(self) if field.init]
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(
                f"a pickled {type(self).__name__} lacks {', '.join(map(repr, missing))}"
            )
        self.__dict__.update({name: state[name] for name in names}, cache={})
        self.validate()

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self: _Container, device: torch.device | str | int) -> _Container:
        """The same weight with every tensor on `device`. A device only: the values keep the
        dtype they were packed in (to change it, pack the unpacked weight again)."""
        name = type(self).__name__
        if isinstance(device, torch.dtype):
            raise ValueError(
                f"{name}.to() takes a device, got the dtype {device}; to change the dtype, "
                f"pack again: pack(unpack(weight).to({device}), ...)"
            )
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{name}.to() takes a device, got {device!r}") from error
        moved = {field: getattr(self, field).to(device) for field in self.TENSOR_FIELDS}
        return dataclasses.replace(self, **moved, check_data=False)  # the data checked before

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the tensors plus `info` int64 [1 + len(INFO_FIELDS)] and `split_sizes`
        int64 [P] (see the module docstring)."""
        return {
            "info": torch.tensor([FORMAT_IDS[self.format], *self._info()], dtype=torch.int64),
            "split_sizes": torch.tensor(self.split_sizes, dtype=torch.int64),
            **{name: getattr(self, name).clone() for name in self.TENSOR_FIELDS},
        }

    @classmethod
    def from_state_dict(cls: type[_Container], state: Mapping[str, torch.Tensor]) -> _Container:
        """Rebuild from `to_state_dict()` output (info int64 [1 + F], split_sizes int64
        [P], the `TENSOR_FIELDS`: see the module docstring). Refuses missing, unexpected or
        malformed entries by name, then checks the layout and the data (`validate_data`);
        an `info` or `split_sizes` that does not fit the tensors (an altered N, say) is
        named as such. The container uses the state's tensors (made contiguous), not
        copies."""
        format_id = state_format_id(state)
        if format_id != FORMAT_IDS[cls.format]:
            raise ValueError(
                f"state dict holds packed format id {format_id}, not {cls.format!r} "
                f"(id {FORMAT_IDS[cls.format]})"
            )
        expected = ("info", "split_sizes", *cls.TENSOR_FIELDS)
        missing = [name for name in expected if name not in state]
        if missing:
            raise ValueError(f"{cls.format} state dict lacks {', '.join(map(repr, missing))}")
        unexpected = [name for name in state if name not in expected]
        if unexpected:
            raise ValueError(
                f"{cls.format} state dict has unexpected entries "
                f"{', '.join(map(repr, unexpected))} (expected {', '.join(map(repr, expected))})"
            )
        for name in expected:
            _check_entry(name, state[name], cls.format)
        info, sizes = state["info"], state["split_sizes"]
        if info.dim() != 1 or info.numel() != 1 + len(cls.INFO_FIELDS):
            raise ValueError(
                f"{cls.format} state dict 'info' must be 1-D integers (format id, "
                f"{', '.join(cls.INFO_FIELDS)}), got {info.dtype} of shape {tuple(info.shape)}"
            )
        if sizes.dim() != 1 or not _is_integer(sizes):
            raise ValueError(
                f"{cls.format} state dict 'split_sizes' must be 1-D integers (rows of each "
                f"packed weight), got {sizes.dtype} of shape {tuple(sizes.shape)}"
            )
        stored = [int(v) for v in info[1:].tolist()]
        tensors = {name: state[name].contiguous() for name in cls.TENSOR_FIELDS}
        split_sizes = tuple(int(s) for s in sizes.tolist())
        fields = cls._fields_of_info(stored)
        try:
            packed = cls(**tensors, **fields, split_sizes=split_sizes, check_data=False)
        except ValueError as error:  # the ints against the tensors' layout and each other
            ints = ", ".join(f"{f}={v}" for f, v in zip(cls.INFO_FIELDS, stored, strict=True))
            shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in tensors.items())
            raise ValueError(
                f"{cls.format} state dict: its tensors ({shapes}) do not fit the stored "
                f"info ({ints}) and split_sizes {split_sizes}: {error}"
            ) from None
        packed.validate_data()  # entries on the meta device were refused above
        return packed

    @abc.abstractmethod
    def validate_data(self) -> None:
        """Check the stored data against the layout (reads the data)."""
