"""What the dispatcher chooses and what it looks up: `Plan`, `WeightKey` and the measured
tables (`DispatchTable`) that `dispatch.plan_for` consults, and how they are read.

A table is the JSON that `benchmarks/gpu_suite.py` writes (`dispatch_table.json`): for one
device, entries of (format, dtype, N, K, bitmap tile and density, M bucket) -> plan. Every
entry is checked on reading (fields, types, ranges, and its plan against its format and
tile by the rules the launchers apply: `check_entry_plan`); an error names the entry's
index and the file. `read_env_tables` reads the files the LCC_KERNELS_DISPATCH_TABLE
environment variable lists (os.pathsep-separated), all of them before any is used, and
merges those for the same device (a (problem, M bucket) given two different plans is
refused, naming both files). `warn_if_foreign` warns about a table measured on another GPU
or with other torch / triton versions. The registry of tables in use, and when the
environment is read, are dispatch.py's (`load_table`, `register_table`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from .format_common import as_int
from .formats import FORMAT_24, FORMAT_BITMAP, SUPPORTED_DTYPES, check_bitmap_tile

BACKENDS = ("skinny", "tiled", "dense", "semi_structured", "streams", "reference")
# The backends that run one weight format only.
BACKEND_FORMAT = {"semi_structured": FORMAT_24, "streams": FORMAT_BITMAP}
TABLE_SCHEMA = "lcc_kernels.dispatch/1"
TABLE_ENV = "LCC_KERNELS_DISPATCH_TABLE"
FORMATS = (FORMAT_24, FORMAT_BITMAP)
DTYPE_NAMES = tuple(str(dtype).removeprefix("torch.") for dtype in SUPPORTED_DTYPES)
# M bucket cap: above 4096 rows every problem is compute-bound and tiles no longer change.
MAX_M_BUCKET = 4096
# Bitmap table entries match a weight whose density is within this of theirs.
DENSITY_TOLERANCE = 0.1
_SAME_WIDTH = {"float16": ("bfloat16",), "bfloat16": ("float16",)}
_ENTRY_FIELDS = ("format", "dtype", "n", "k", "m_bucket", "plan")
_PLAN_FIELD_TYPES = {"int": int, "bool": bool, "str": str}  # Plan's annotations, as strings


@dataclass(frozen=True)
class Plan:
    """How to run one call. Block sizes are powers of two; for bitmap weights block_n and
    block_k are replaced by the weight's tile. block_m < 16 on the skinny path selects
    multiply + tl.sum instead of tl.dot. A streams plan reads block_m (1, 2 or 4 rows of
    x per program), block_n (weight rows per program, one per lane), split_k (segments
    of each row's stream), num_warps, num_stages and serial_reduction; not block_k."""

    backend: str
    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8
    serial_reduction: bool = True
    semi_structured: str = "cusparselt"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = _plan_field(
                field.name, _PLAN_FIELD_TYPES[field.type], getattr(self, field.name)
            )
            object.__setattr__(self, field.name, value)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        for name in ("block_m", "block_n", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"Plan.{name} must be a power of two, got {value}")
        if self.split_k < 1 or self.num_stages < 1 or self.group_m < 1:
            raise ValueError(f"Plan split_k, num_stages and group_m must be >= 1: {self}")
        if self.semi_structured not in ("cusparselt", "cutlass"):
            raise ValueError(
                f"Plan.semi_structured must be 'cusparselt' or 'cutlass', "
                f"got {self.semi_structured!r}"
            )

    @property
    def uses_dot(self) -> bool:
        """Whether a skinny or tiled plan multiplies with tl.dot (every block dim >= 16)
        rather than multiply + tl.sum (skinny plans under 16 rows)."""
        return self.backend == "tiled" or self.block_m >= 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan `to_dict` gave (as read from JSON); unknown fields refused, and each
        field checked for its type as by the constructor."""
        if not isinstance(data, dict):
            raise ValueError(f"a plan must be an object of Plan fields, got {data!r}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown Plan fields {sorted(unknown, key=str)}")
        if "backend" not in data:
            raise ValueError(f"a plan needs a backend, got {data!r}")
        return cls(**data)


def check_backend_format(backend: str, format: str) -> None:
    """Raise ``ValueError`` where ``backend`` cannot run weights of ``format``."""
    needed = BACKEND_FORMAT.get(backend)
    if needed is not None and format != needed:
        raise ValueError(f"the {backend} backend needs a {needed} weight, got a {format} one")


# Rows of x per streams program that the streams kernel has code for (stream_kernel._x_rows).
STREAMS_BLOCK_M = (1, 2, 4)


def check_streams_block_m(plan: Plan) -> None:
    """Refuse a streams plan whose block_m the kernel has no code for."""
    if plan.block_m not in STREAMS_BLOCK_M:
        raise ValueError(f"streams plans take block_m in {STREAMS_BLOCK_M}, got {plan.block_m}")


def check_kernel_plan(plan: Plan, format: str | None, tile: tuple[int, int] | None) -> None:
    """Refuse a skinny or tiled plan that the kernels cannot run on a weight of `format`
    ("2:4", "bitmap" stored in tiles of `tile` (rows, columns), or None: a dense weight,
    the Triton baseline's). The launchers (launch_geometry) and the reading of a table
    entry (`check_entry_plan`) both hold plans to these rules."""
    if tile is not None and (plan.block_n, plan.block_k) != tile:
        raise ValueError(
            f"bitmap kernels need block_n x block_k = the weight tile {tile}, "
            f"got {plan.block_n} x {plan.block_k}"
        )
    if format == FORMAT_24 and plan.block_k < 32:
        raise ValueError(f"2:4 kernels need block_k >= 32 (one metadata word), got {plan.block_k}")
    if format == FORMAT_BITMAP and plan.block_k < 32:
        raise ValueError(f"bitmap kernels need block_k >= 32, got {plan.block_k}")
    if plan.uses_dot and min(plan.block_m, plan.block_n, plan.block_k) < 16:
        narrow = f" (the bitmap tile {tile} has fewer rows)" if tile and tile[0] < 16 else ""
        raise ValueError(
            f"tl.dot (the tiled backend, or skinny with block_m >= 16) needs block_m, block_n "
            f"and block_k >= 16{narrow}, got {plan}"
        )


def check_entry_plan(plan: Plan, format: str, tile: tuple[int, int] | None) -> None:
    """Refuse a plan that cannot run on a weight of `format` (bitmap: stored in tiles of
    `tile`): a backend for the other format, a streams block_m the kernel has no code for,
    a skinny or tiled plan the kernels refuse (`check_kernel_plan`)."""
    check_backend_format(plan.backend, format)
    if plan.backend == "streams":
        check_streams_block_m(plan)
    elif plan.backend in ("skinny", "tiled"):
        check_kernel_plan(plan, format, tile)


def _plan_field(name: str, kind: type, value):
    """A Plan field's value as `kind`: an int field takes an integer scalar (Python, numpy
    or a 0-d torch tensor: `as_int`) but no bool, float or string; a bool field a bool
    (numpy's too), a str field a str."""
    if kind is int and (number := _int_or_none(value)) is not None:
        return number
    if kind is bool and isinstance(value, (bool, np.bool_)):
        return bool(value)
    if kind is str and isinstance(value, str):
        return str(value)
    raise ValueError(f"Plan.{name} must be of type {kind.__name__}, got {value!r}")


def _int_or_none(value) -> int | None:
    """`value` as an int where `as_int` takes it, else None."""
    try:
        return as_int(value)
    except TypeError:
        return None


# A skinny plan whose fp32 split-K workspace [split, M, N] is larger is refused by the
# launcher, and a measured one is passed over by the dispatcher (a table's last M bucket
# also serves every larger M). The dispatcher splits K only while the output has too few
# tiles to fill the GPU, so its workspaces take a few MiB; a plan past this bound splits
# many rows' worth of output tiles, where the tiled path (no workspace) is the faster one.
# A streams layout's split is fixed when it is built: past the bound, run_streams launches
# fewer rows at a time instead.
MAX_SPLIT_K_WORKSPACE_BYTES = 1 << 30


def skinny_split(plan: Plan, k: int) -> int:
    """The splits a skinny plan makes of K: split_k, at most one per K tile, none empty."""
    k_tiles = -(-k // plan.block_k)
    tiles_per_split = -(-k_tiles // max(1, min(plan.split_k, k_tiles)))
    return -(-k_tiles // tiles_per_split)


def split_workspace_bytes(split: int, m: int, n: int) -> int:
    """Bytes of a skinny split-K workspace [split, m, n] fp32 (none for one split)."""
    return 0 if split == 1 else split * m * n * 4


def m_bucket(m: int) -> int:
    """Next power of two of m, capped at MAX_M_BUCKET (1 for m <= 1)."""
    bucket = 1
    while bucket < m and bucket < MAX_M_BUCKET:
        bucket *= 2
    return bucket


@dataclass(frozen=True)
class WeightKey:
    """What a table entry is measured for (besides the device and M)."""

    format: str  # "2:4" or "bitmap"
    dtype: str  # "float16", "bfloat16", "float32"
    n: int
    k: int
    tile: tuple[int, int] | None = None  # bitmap only
    density: float | None = None  # bitmap only

    @classmethod
    def of(cls, weight, dtype: torch.dtype) -> WeightKey:
        """The key of a packed [N, K] weight run with x in `dtype`."""
        dtype_name = str(dtype).removeprefix("torch.")
        if weight.format == "bitmap":
            return cls("bitmap", dtype_name, *weight.shape, weight.tile, weight.density)
        return cls(weight.format, dtype_name, *weight.shape)


class DispatchTable:
    """Measured plans for one device, per (format, dtype, N, K, tile, density) and M bucket.

    entries: dicts with format, dtype, n, k, m_bucket (a power of two up to MAX_M_BUCKET),
    plan (`Plan.to_dict`), and for bitmap weights tile [rows, columns] and density (other
    fields are ignored). One (problem, M bucket) given two different plans is refused."""

    def __init__(self, device: str, entries: list[dict], meta: dict | None = None) -> None:
        self.device = device
        self.meta = dict(meta or {})
        self._plans: dict[tuple, dict[int, Plan]] = {}
        self._origins: dict[tuple, str] = {}  # (key, bucket) -> where its plan came from
        for index, entry in enumerate(entries):
            try:
                key, bucket, plan = _parse_entry(entry)
            except ValueError as error:
                raise ValueError(f"entry {index}: {error}") from None
            self._add(key, bucket, plan, f"entry {index}")

    def _add(self, key: tuple, bucket: int, plan: Plan, origin: str) -> None:
        plans = self._plans.setdefault(key, {})
        if plans.get(bucket, plan) != plan:
            raise ValueError(
                f"{self._origins[key, bucket]} and {origin} give different plans for "
                f"{self.device} {_describe(key)} at M bucket {bucket}"
            )
        plans[bucket] = plan
        self._origins.setdefault((key, bucket), origin)

    @classmethod
    def from_dict(cls, data: dict) -> DispatchTable:
        if not isinstance(data, dict):
            raise ValueError(f"a dispatch table must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != TABLE_SCHEMA:
            raise ValueError(
                f"dispatch table schema is {data.get('schema')!r}, expected {TABLE_SCHEMA!r}"
            )
        if not isinstance(data.get("device"), str) or not isinstance(data.get("entries"), list):
            raise ValueError("dispatch table needs a 'device' string and an 'entries' list")
        meta = {k: v for k, v in data.items() if k not in ("entries",)}
        return cls(data["device"], data["entries"], meta)

    def lookup(self, key: WeightKey, m: int) -> Plan | None:
        """The measured plan for x [m, K] times a weight described by `key`, or None.

        Entries must match the key's format, dtype, N, K and (bitmap) tile; bitmap ones
        also its density within DENSITY_TOLERANCE, tried nearest first until one has a
        plan for m's M bucket or a neighbouring one (a factor of two off; farther ones do
        not stand in: a decode plan says nothing about prefill). fp16 and bf16 move the
        same bytes through the same instructions: either one's entries stand in for the
        other's when only one was measured."""
        for dtype in (key.dtype, *_SAME_WIDTH.get(key.dtype, ())):
            plan = self._lookup(replace(key, dtype=dtype), m)
            if plan is not None:
                return plan
        return None

    def _lookup(self, key: WeightKey, m: int) -> Plan | None:
        candidates = [
            (plan_key, plans)
            for plan_key, plans in self._plans.items()
            if plan_key[:5] == (key.format, key.dtype, key.n, key.k, key.tile)
        ]
        if key.density is not None:
            candidates = [c for c in candidates if abs(c[0][5] - key.density) <= DENSITY_TOLERANCE]
            candidates.sort(key=lambda c: abs(c[0][5] - key.density))
        wanted = m_bucket(m).bit_length()
        for _, plans in candidates:
            nearest = min(plans, key=lambda bucket: (abs(bucket.bit_length() - wanted), bucket))
            if abs(nearest.bit_length() - wanted) <= 1:
                return plans[nearest]
        return None


def _parse_entry(entry) -> tuple[tuple, int, Plan]:
    """(key tuple, M bucket, plan) of one table entry; ValueError saying what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"must be an object, got {entry!r}")
    missing = [name for name in _ENTRY_FIELDS if name not in entry]
    if missing:
        raise ValueError(f"missing {missing}")
    fmt, dtype = entry["format"], entry["dtype"]
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {dtype!r}")
    n, k, bucket = (_int_or_none(entry[name]) for name in ("n", "k", "m_bucket"))
    for name, value in (("n", n), ("k", k)):
        if value is None or value < 1:
            raise ValueError(f"{name} must be a positive int, got {entry[name]!r}")
    if bucket is None or not 1 <= bucket <= MAX_M_BUCKET or bucket & (bucket - 1):
        raise ValueError(
            f"m_bucket must be a power of two from 1 to {MAX_M_BUCKET}, got {entry['m_bucket']!r}"
        )
    tile, density = entry.get("tile"), entry.get("density")
    if fmt == FORMAT_BITMAP:
        if tile is None or density is None:
            raise ValueError("bitmap entries need a tile and density")
        tile = check_bitmap_tile(tile)
        if not isinstance(density, (int, float)) or isinstance(density, bool):
            raise ValueError(f"density must be a number, got {density!r}")
        if not 0 <= density <= 1:
            raise ValueError(f"density must be from 0 to 1, got {density!r}")
        density = float(density)
    elif tile is not None or density is not None:
        raise ValueError(f"{fmt} entries take no tile or density, got {tile!r} and {density!r}")
    key = (fmt, dtype, n, k, tile, density)
    plan = Plan.from_dict(entry["plan"])
    try:
        check_entry_plan(plan, fmt, tile)
    except ValueError as error:
        raise ValueError(f"its plan cannot run on a {_describe(key)} weight: {error}") from None
    return key, bucket, plan


def _describe(key: tuple) -> str:
    fmt, dtype, n, k, tile, density = key
    bitmap = f" tile {list(tile)} density {density}" if tile is not None else ""
    return f"{fmt} {dtype} N={n} K={k}{bitmap}"


def read_table(path: str | os.PathLike, named_by: str = "dispatch table") -> DispatchTable:
    """The checked table in a JSON file (as written by gpu_suite.py), its meta["path"] set.
    Raises ValueError "{named_by}: cannot load {path}: {what is wrong}"."""
    try:
        table = DispatchTable.from_dict(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{named_by}: cannot load {path}: not valid JSON ({error})") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"{named_by}: cannot load {path}: {reason}") from None
    except ValueError as error:
        raise ValueError(f"{named_by}: cannot load {path}: {error}") from None
    table.meta["path"] = str(path)
    return table


def read_env_tables() -> list[DispatchTable]:
    """The tables of the files TABLE_ENV lists, every one read and checked, merged per
    device (meta "sources": each file's meta). ValueError naming TABLE_ENV and the file, or
    both files where they give one (problem, M bucket) different plans."""
    paths = [path for path in os.environ.get(TABLE_ENV, "").split(os.pathsep) if path]
    loaded = [read_table(path, named_by=TABLE_ENV) for path in paths]
    merged: dict[str, DispatchTable] = {}
    for table in loaded:
        into = merged.get(table.device)
        if into is None:
            into = merged[table.device] = DispatchTable(table.device, [], {"sources": []})
        into.meta["sources"].append(table.meta)
        for (key, bucket), origin in table._origins.items():
            plan = table._plans[key][bucket]
            try:
                into._add(key, bucket, plan, f"{table.meta['path']} ({origin})")
            except ValueError as error:
                raise ValueError(f"{TABLE_ENV}: {error}") from None
    return list(merged.values())


def warn_if_foreign(meta: dict) -> None:
    """One warning if the table of `meta` (a file's: path, device, torch, triton) was
    measured on a GPU this host lacks (where CUDA runs), or with other torch / triton
    versions than these."""
    problems = []
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        if meta.get("device") not in names:
            problems.append(f"its device {meta.get('device')!r} is none of this host's {names}")
    for library, running in (("torch", torch.__version__), ("triton", _triton_version())):
        measured = meta.get(library)
        if measured is not None and measured != running:
            problems.append(f"measured with {library} {measured}, running {running}")
    if problems:
        warnings.warn(f"dispatch table {meta.get('path')}: " + "; ".join(problems), stacklevel=3)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__
