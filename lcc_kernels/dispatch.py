"""Choose how to run one sparse linear: which backend, tile sizes and split-K.

A `Plan` names a backend and, for the Triton paths, its launch configuration:

    skinny           split-K kernel for few rows (decode)
    tiled            tensor-core tiles for many rows (prefill)
    dense            F.linear (cuBLAS) on a dense copy cached on the weight
    semi_structured  torch's 2:4 kernels (cuSPARSELt or CUTLASS) on a cached conversion
    streams          bitmap weights, few rows: the kept values walked as streams
                     (streams.py), on a cached re-layout of the weight
    reference        plain PyTorch (unpack, fp32 matmul): the CPU path

`choose_plan` looks the problem up in measured tables first, keyed by device name, format
(bitmap: its tile and density), dtype, N, K and an M bucket (the next power of two of M,
capped at 4096, so new sequence lengths never trigger new tuning). Tables are the JSON
that `benchmarks/gpu_suite.py` writes (`dispatch_table.json`), loaded with
`load_table(path)` or from the files listed in the LCC_KERNELS_DISPATCH_TABLE environment
variable (os.pathsep-separated): those are read at the first `plan_for_key` (a CUDA
dispatch, a forced backend, or a custom-op call on any device) or table registration;
dispatch_table.py reads, checks and merges them, and they are registered once all of them
load. Without a measured entry, `default_plan` applies fixed rules, which never pick the
backends that cache a second copy of the weight (a measured table may: the dense copy
costs 2 bytes per weight position, the streams ~1.1x the bitmap's bytes), unless the
caller opts in with `decode_streams`: then bitmap weights take the streams backend up to
STREAMS_MAX_M rows. fp16 and bf16 entries stand in for each other. On a CPU the backend is
always `reference`, unless a caller forces a Triton path (then the kernels must be
interpreted: TRITON_INTERPRET=1). Inside the custom ops (under torch.compile) the choice
is restricted to the plans they can run (`triton_only`): the Triton ones, and streams
where the op was given a layout (`decode_streams`).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import replace

import torch

from . import dispatch_table
from .dispatch_table import (
    BACKEND_FORMAT,
    BACKENDS,
    DENSITY_TOLERANCE,
    DTYPE_NAMES,
    MAX_M_BUCKET,
    TABLE_ENV,
    TABLE_SCHEMA,
    DispatchTable,
    Plan,
    WeightKey,
    check_backend_format,
    m_bucket,
    read_env_tables,
    read_table,
    skinny_split,
    split_workspace_bytes,
    warn_if_foreign,
)
from .format_common import SUPPORTED_DTYPES, as_int
from .streams import GROUP_ENTRIES, step_bits_for

# Plans, keys and reading tables live in dispatch_table; they are used from here too.
__all__ = [
    "BACKENDS",
    "BACKEND_FORMAT",
    "DENSITY_TOLERANCE",
    "MAX_M_BUCKET",
    "MAX_SPLIT_K",
    "SKINNY_MAX_M",
    "STREAMS_MAX_M",
    "TABLE_ENV",
    "TABLE_SCHEMA",
    "TRITON_BACKENDS",
    "DispatchTable",
    "Plan",
    "WeightKey",
    "capturing",
    "check_backend_format",
    "choose_plan",
    "clear_tables",
    "default_plan",
    "device_info",
    "load_table",
    "m_bucket",
    "plan_for",
    "plan_for_key",
    "read_env_tables",
    "read_table",
    "register_table",
    "skinny_stages",
    "split_k_for",
    "streams_block_m",
    "streams_plan",
    "with_weight_tile",
]

TRITON_BACKENDS = ("skinny", "tiled")

# Up to this many rows the weight read dominates (decode); the skinny split-K path keeps
# every SM busy there, where the tiled path would launch only N/BLOCK_N programs.
SKINNY_MAX_M = 16
# Skinny-path programs per SM to aim for: 4-warp programs, several resident per SM, keep
# enough loads in flight to cover HBM latency (split-K supplies them when N is small).
SKINNY_PROGRAMS_PER_SM = 4
# More splits than this only adds partial-tile traffic: at K = 8192 and 64-wide K tiles,
# 32 splits already leave 4 tiles per program.
MAX_SPLIT_K = 32
# The streams backend's cost per kept value grows with the rows of x it multiplies (one
# gathered x element each): ~11-13 SASS instructions per value at M = 1, ~25-30 at M = 4
# (compile_report.py), so beyond a few rows the bitmap tiles win.
STREAMS_MAX_M = 4
# Streams segments (split-K) hold at least this many groups (8 or 32 entries) per lane.
STREAMS_MIN_GROUPS = 4
# Streams programs per SM to aim for (4 warps each, 32 registers a thread): twice the
# skinny path's, as each iteration's x gathers wait on its weight loads (two round trips).
STREAMS_PROGRAMS_PER_SM = 8
_CPU_SM_COUNT = 4  # split-K heuristic on a CPU (interpreter): a few splits, still quick


def split_k_for(output_tiles: int, k_tiles: int, sm_count: int) -> int:
    """Splits of K so that output_tiles * splits ~ SKINNY_PROGRAMS_PER_SM * sm_count,
    without empty splits."""
    wanted = -(-SKINNY_PROGRAMS_PER_SM * sm_count // max(output_tiles, 1))
    split = max(1, min(wanted, k_tiles, MAX_SPLIT_K))
    tiles_per_split = -(-k_tiles // split)
    return -(-k_tiles // tiles_per_split)


_TABLES: dict[str, DispatchTable] = {}  # device name -> the table in use there
_ENV_LOADED = False
_ENV_LOCK = threading.Lock()


def register_table(table: DispatchTable) -> None:
    """Use `table` for its device from now on, in place of an earlier one (the tables named
    in the environment are read first: one registered in code replaces theirs)."""
    _load_env_tables()
    _TABLES[table.device] = table


def load_table(path: str | os.PathLike) -> DispatchTable:
    """Read, check and register a measured table JSON (as written by gpu_suite.py); it
    replaces the device's earlier table. ValueError naming the file (and entry)."""
    table = read_table(path)
    register_table(table)
    warn_if_foreign(table.meta)
    return table


def clear_tables() -> None:
    """Forget every registered table (the environment variable is not read again)."""
    global _ENV_LOADED
    with _ENV_LOCK:
        _TABLES.clear()
        _ENV_LOADED = True


def _load_env_tables() -> None:
    """Register the tables of the files TABLE_ENV lists, once all of them load (merged
    per device); until then nothing is registered and every call reads them again, and
    raises again."""
    global _ENV_LOADED
    if _ENV_LOADED:
        return
    if not os.environ.get(TABLE_ENV):
        # Nothing to read: no lock either, which torch.compile could not trace.
        _ENV_LOADED = True
        return
    with _ENV_LOCK:
        if _ENV_LOADED:
            return
        tables = read_env_tables()
        _TABLES.update((table.device, table) for table in tables)
        _ENV_LOADED = True
    for table in tables:
        for source in table.meta["sources"]:
            warn_if_foreign(source)


@functools.cache
def _cuda_device_info(index: int) -> tuple[str, int]:
    props = torch.cuda.get_device_properties(index)
    return props.name, props.multi_processor_count


def device_info(device: torch.device) -> tuple[str, int]:
    """(name, SM count) of a CUDA device; ("cpu", a small count) otherwise."""
    if device.type != "cuda":
        return "cpu", _CPU_SM_COUNT
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_device_info(index)


def capturing(device: torch.device) -> bool:
    """Whether work issued now on `device` is being captured into a CUDA graph (not run)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def skinny_stages(format: str, block_m: int) -> int:
    """The skinny path's default pipelining depth. Without tl.dot (block_m < 16), stages
    > 1 let cp.async fetch the weight's contiguous loads tiles ahead; a bitmap's gathered
    value loads cannot go that way, and its loop only grows (compile_report.py: 439 -> 500
    SASS instructions at M = 1). With tl.dot the compiler stages what feeds the dot."""
    return 1 if format == "bitmap" and block_m < 16 else 3


def _dot_fits(key: WeightKey) -> bool:
    """tl.dot needs 16 rows of weight per block; a bitmap tile may have fewer."""
    return key.tile is None or key.tile[0] >= 16


def default_plan(m: int, key: WeightKey, sm_count: int, backend: str = "auto") -> Plan:
    """Rules used when no measured entry exists (or to fill a forced backend)."""
    if backend in ("dense", "semi_structured", "reference"):
        return Plan(backend)
    if backend == "streams":
        return streams_plan(m, key, sm_count)
    # Tiles under 16 rows cannot feed tl.dot: every M runs the multiply + tl.sum loop.
    skinny = backend == "skinny" or (
        backend == "auto" and (m <= SKINNY_MAX_M or not _dot_fits(key))
    )
    # fp32: tl.dot multiplies in "ieee" precision, its operands held in registers rather
    # than fed to the tensor cores, and a rebuilt sparse tile is twice a bf16 one. The
    # bf16 plans spill there (compile_report.py --dtype float32, sm_90: up to 10 KiB per
    # thread); these do not at the acceptance shapes' M = 1, 2, 16 and 1024, 2:4 with
    # ~70 registers to spare, bitmap tiles of up to 64 x 64 positions (larger ones still
    # spill in fp32: 128 x 64 ~150 bytes, 128 x 128 ~3 KiB, whatever the warps).
    fp32 = key.dtype == "float32"
    if skinny:
        # One or two rows: multiply + tl.sum, whose registers grow with block_m * tile;
        # more rows: a 16-row tl.dot, whose padding costs nothing in a memory-bound call.
        block_m = 1 if m <= 1 else 2 if m == 2 else 16 if _dot_fits(key) else 4
        block_n, block_k = key.tile or (64, 128 if block_m == 1 else 64)
        warps, stages = 4, skinny_stages(key.format, block_m)
        if fp32 and block_m == 16:
            warps = 8
            if key.tile is None:
                block_k = 32
            else:  # a bitmap tile is the weight's: no staged copies instead
                stages = 1
        output_tiles = -(-key.n // block_n) * -(-m // block_m)
        split = split_k_for(output_tiles, -(-key.k // block_k), sm_count)
        return Plan("skinny", block_m, block_n, block_k, split, num_warps=warps, num_stages=stages)
    if fp32:
        if key.tile is not None:
            return Plan("tiled", 16, *key.tile, num_warps=8, num_stages=1)
        return Plan("tiled", 64, 32, 32, num_warps=8, num_stages=3)
    block_m = 64 if m <= 64 else 128
    block_n, block_k = key.tile or (128 if block_m == 128 else 64, 64)
    return Plan(
        "tiled", block_m, block_n, block_k, num_warps=4 if block_m == 64 else 8, num_stages=3
    )


def streams_block_m(m: int) -> int:
    """Rows of x per streams program for M rows: the next power of two, at most 4."""
    return min(STREAMS_MAX_M, 1 << max(0, m - 1).bit_length())


def streams_plan(m: int, key: WeightKey, sm_count: int, block_n: int = 128) -> Plan:
    """A "streams" plan for M rows: one weight row per lane (block_n lanes, 4 warps per
    128), segments enough for STREAMS_PROGRAMS_PER_SM programs per SM while each keeps
    STREAMS_MIN_GROUPS groups, and the next group's loads issued a stage ahead. Only
    block_m follows M: the segments (split_k) are the layout's, built once and kept on the
    weight, so they are chosen as for one block of STREAMS_MAX_M rows whatever M (a forced
    backend at larger M reuses that layout rather than building one per M)."""
    check_backend_format("streams", key.format)
    output_tiles = -(-key.n // block_n)
    entries = GROUP_ENTRIES[step_bits_for(key.density)]
    groups = -(-round(key.density * key.k) // entries)  # per row, without escapes
    wanted = -(-STREAMS_PROGRAMS_PER_SM * sm_count // output_tiles)
    split = max(1, min(wanted, groups // STREAMS_MIN_GROUPS, MAX_SPLIT_K))
    warps = max(1, block_n // 32)
    return Plan(
        "streams", streams_block_m(m), block_n, split_k=split, num_warps=warps, num_stages=2
    )


def plan_for(
    m: int,
    key: WeightKey,
    device_name: str,
    sm_count: int,
    backend: str = "auto",
    triton_only: bool = False,
    decode_streams: bool = False,
    table: DispatchTable | None = None,
) -> Plan:
    """The plan for M rows on a named device (pure: no tensors, no device queries).

    triton_only: pick among our Triton kernels only (inside the custom ops, which cannot
    reach the cached dense / torch semi-structured copies); with decode_streams, streams
    plans too (the op holds a layout). decode_streams: without a measured entry, a bitmap
    weight takes streams_plan up to STREAMS_MAX_M rows. Memoised: a table lookup scans
    the table, and eager decode asks again at every call. ``table``: this table instead of
    the one registered for the device (what a table would choose, before it is used)."""
    if table is None:
        table = _TABLES.get(device_name)  # part of the memo key: a new table, new plans
    # The workspace bound is read at each call (a memoised plan must not outlive it).
    bound = dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES
    return _memoised_plan(
        m, key, device_name, sm_count, backend, triton_only, decode_streams, table, bound
    )


@functools.lru_cache(maxsize=4096)
def _memoised_plan(
    m: int,
    key: WeightKey,
    device_name: str,
    sm_count: int,
    backend: str,
    triton_only: bool,
    decode_streams: bool,
    table: DispatchTable | None,
    workspace_bound: int,
) -> Plan:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if backend == "auto" and device_name == "cpu" and not triton_only:
        return Plan("reference")
    if backend == "auto":
        measured = table.lookup(key, m) if table is not None else None
        usable = measured is not None and _usable(
            measured, m, key, triton_only, decode_streams, workspace_bound
        )
        if usable:
            return measured
        if decode_streams and key.format == "bitmap" and m <= STREAMS_MAX_M:
            return streams_plan(m, key, sm_count)
    return _with_tile(default_plan(m, key, sm_count, backend), key.tile)


def _usable(
    plan: Plan,
    m: int,
    key: WeightKey,
    triton_only: bool,
    decode_streams: bool,
    workspace_bound: int,
) -> bool:
    if plan.backend == "skinny":
        workspace = split_workspace_bytes(skinny_split(plan, key.k), m, key.n)
        if workspace > workspace_bound:
            return False  # measured at a smaller M: the launcher would refuse it here
    if triton_only and not (
        plan.backend in TRITON_BACKENDS or (decode_streams and plan.backend == "streams")
    ):
        return False
    # Reading the table refused plans for the other format or the other tile, or that the
    # kernels cannot run (dispatch_table.check_entry_plan); the key has the entry's tile.
    if plan.backend == "semi_structured":
        return key.dtype in ("float16", "bfloat16")
    return True


def plan_for_key(
    m: int,
    key: WeightKey,
    device: torch.device,
    backend: str = "auto",
    triton_only: bool = False,
    decode_streams: bool = False,
) -> Plan:
    """`plan_for` on a device: loads the tables named in the environment, queries the GPU."""
    _load_env_tables()
    name, sm_count = device_info(device)
    return plan_for(m, key, name, sm_count, backend, triton_only, decode_streams)


def choose_plan(
    m: int,
    weight,
    dtype: torch.dtype,
    device: torch.device,
    backend: str = "auto",
    decode_streams: bool = False,
) -> Plan:
    """The plan for x [m, K] (dtype, on device) times `weight`; see the module docstring.
    A ValueError names an m that is not a non-negative int (`as_int`: no bool or float)
    or a dtype other than float16, bfloat16 or float32."""
    if not torch.compiler.is_compiling():  # traced, M is a size: a check would specialise it
        try:
            valid = as_int(m) >= 0
        except TypeError:
            valid = False
        if not valid:
            raise ValueError(f"m (rows of x) must be a non-negative int, got {m!r}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {dtype!r}")
    # Decided before any I/O, so these trace under torch.compile: no table is consulted.
    if backend == "auto" and device.type != "cuda":
        return Plan("reference")
    if backend in ("dense", "semi_structured", "reference"):
        return Plan(backend)
    return plan_for_key(
        m, WeightKey.of(weight, dtype), device, backend, decode_streams=decode_streams
    )


def _with_tile(plan: Plan, tile: tuple[int, int] | None) -> Plan:
    if (
        tile is not None
        and plan.backend in TRITON_BACKENDS
        and (plan.block_n, plan.block_k) != tile
    ):
        return replace(plan, block_n=tile[0], block_k=tile[1])
    return plan


def with_weight_tile(plan: Plan, weight) -> Plan:
    """Bitmap kernels work on the stored tiles: force block_n x block_k to the tile of
    the packed [N, K] `weight` (a 2:4 weight leaves the plan as it is)."""
    return _with_tile(plan, weight.tile if weight.format == "bitmap" else None)
