"""Dispatch tables on loading: every entry checked (errors name the file and the entry), the
environment's files registered all together or not at all and merged per device, tables
from another GPU or other versions warned about."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lcc_kernels import dispatch, dispatch_table
from lcc_kernels.dispatch import TABLE_ENV, TABLE_SCHEMA, DispatchTable, Plan, WeightKey, plan_for

DEVICE = "GPU-X"
KEY = WeightKey("2:4", "bfloat16", 64, 64)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_tables(monkeypatch):
    """No table registered, the environment variable unset and not yet read."""
    dispatch.clear_tables()
    monkeypatch.delenv(TABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_ENV_LOADED", False)
    yield
    dispatch.clear_tables()


def _entry(dtype="bfloat16", split_k=7, **fields):
    return {
        "format": "2:4",
        "dtype": dtype,
        "n": 64,
        "k": 64,
        "tile": None,
        "density": None,
        "m_bucket": 1,
        "plan": Plan("skinny", split_k=split_k).to_dict(),
        **fields,
    }


def _bitmap(**fields):
    return _entry(**{"format": "bitmap", "tile": [64, 64], "density": 0.3, **fields})


def _write(path, entries, device=DEVICE, **meta):
    table = {"schema": TABLE_SCHEMA, "device": device, **meta, "entries": entries}
    path.write_text(json.dumps(table))
    return path


def _use_env(monkeypatch, *paths):
    monkeypatch.setenv(TABLE_ENV, os.pathsep.join(str(path) for path in paths))


def _plan(key=KEY):
    return plan_for(1, key, DEVICE, 132)


def test_a_bad_environment_file_registers_nothing_and_keeps_failing(tmp_path, monkeypatch):
    good = _write(tmp_path / "good.json", [_entry()])
    bad = tmp_path / "bad.json"
    bad.write_text("{ truncated")
    _use_env(monkeypatch, good, bad)
    for _ in range(3):  # not once and then ignored
        with pytest.raises(ValueError, match=re.escape(f"{TABLE_ENV}: cannot load {bad}: not va")):
            dispatch.plan_for_key(1, KEY, CPU)
        assert dispatch._TABLES == {}  # not good.json alone
    assert _plan().split_k != 7
    _write(bad, [_entry("float32", split_k=9)])  # mended: both load at the next lookup
    assert dispatch.plan_for_key(1, KEY, CPU).backend == "reference"
    assert (_plan().split_k, _plan(replace(KEY, dtype="float32")).split_k) == (7, 9)


def test_threads_looking_up_at_once_all_wait_for_the_environments_tables(tmp_path, monkeypatch):
    _use_env(monkeypatch, _write(tmp_path / "t.json", [_entry()]))
    read_table = dispatch_table.read_table

    def slow_read(path, named_by):
        time.sleep(0.05)
        return read_table(path, named_by)

    monkeypatch.setattr(dispatch_table, "read_table", slow_read)
    seen = []

    def look_up():
        dispatch.plan_for_key(1, KEY, CPU)
        seen.append(DEVICE in dispatch._TABLES)

    threads = [threading.Thread(target=look_up) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] * 4


def test_a_table_registered_in_code_replaces_the_environments(tmp_path, monkeypatch):
    _use_env(monkeypatch, _write(tmp_path / "t.json", [_entry()]))
    table = {"schema": TABLE_SCHEMA, "device": DEVICE, "entries": [_entry(split_k=5)]}
    dispatch.register_table(DispatchTable.from_dict(table))
    dispatch.plan_for_key(1, KEY, CPU)  # the environment is not read again over it
    assert _plan().split_k == 5


def test_a_measured_split_k_plan_is_passed_over_where_its_workspace_would_be_too_big(
    monkeypatch,
):
    """The last M bucket's plan serves every larger M: a skinny split-K plan whose fp32
    workspace [split, M, N] would there be over the launcher's bound gives way to the
    default plan, rather than to a refusal at launch. The bound is the one in force at
    the call, also for a plan memoised before it changed."""
    plan = Plan("skinny", block_k=32, split_k=2)  # K = 64: 2 tiles, 2 splits
    entry = _entry(m_bucket=dispatch_table.MAX_M_BUCKET, plan=plan.to_dict())
    table = {"schema": TABLE_SCHEMA, "device": DEVICE, "entries": [entry]}
    dispatch.register_table(DispatchTable.from_dict(table))
    assert plan_for(5001, KEY, DEVICE, 132) == plan  # 2.4 MiB, under the real bound
    monkeypatch.setattr(dispatch_table, "MAX_SPLIT_K_WORKSPACE_BYTES", 2 * 5000 * 64 * 4)
    assert plan_for(4096, KEY, DEVICE, 132) == plan
    assert plan_for(5000, KEY, DEVICE, 132) == plan  # exactly the bound
    fallback = plan_for(5001, KEY, DEVICE, 132)
    assert fallback == dispatch.default_plan(5001, KEY, 132)
    assert fallback.backend == "tiled"


def test_environment_files_for_one_device_are_merged(tmp_path, monkeypatch):
    bf16 = _write(tmp_path / "bf16.json", [_entry()])
    # The same plan for the same problem again is no conflict.
    f32 = _write(tmp_path / "f32.json", [_entry("float32", split_k=9), _entry()])
    other = _write(tmp_path / "other.json", [_entry(split_k=3)], device="GPU-Y")
    _use_env(monkeypatch, bf16, f32, other)
    dispatch._load_env_tables()
    assert (_plan().split_k, _plan(replace(KEY, dtype="float32")).split_k) == (7, 9)
    assert plan_for(1, KEY, "GPU-Y", 132).split_k == 3
    sources = dispatch._TABLES[DEVICE].meta["sources"]
    assert [source["path"] for source in sources] == [str(bf16), str(f32)]


def test_environment_files_giving_one_problem_two_plans_are_refused(tmp_path, monkeypatch):
    first = _write(tmp_path / "a.json", [_entry(), _entry("float32")])
    second = _write(tmp_path / "b.json", [_entry(m_bucket=2), _entry(split_k=8)])
    _use_env(monkeypatch, first, second)
    message = (
        f"{TABLE_ENV}: {first} (entry 0) and {second} (entry 1) give different plans for "
        f"{DEVICE} 2:4 bfloat16 N=64 K=64 at M bucket 1"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        dispatch._load_env_tables()
    assert dispatch._TABLES == {}


def test_one_file_giving_one_problem_two_plans_is_refused():
    table = {"schema": TABLE_SCHEMA, "device": DEVICE, "entries": [_entry(), _entry(split_k=8)]}
    with pytest.raises(ValueError, match="entry 0 and entry 1 give different plans"):
        DispatchTable.from_dict(table)


def _without(name):
    entry = _entry()
    del entry[name]
    return entry


def _plan_with(**fields):
    return _entry(plan={**Plan("skinny").to_dict(), **fields})


@pytest.mark.parametrize(
    "entry, message",
    [
        ([1, 2], "must be an object, got [1, 2]"),
        (_without("dtype"), "missing ['dtype']"),
        (_without("m_bucket"), "missing ['m_bucket']"),
        (_entry(plan="skinny"), "a plan must be an object of Plan fields, got 'skinny'"),
        (_entry(plan={"block_m": 1}), "a plan needs a backend"),
        (_plan_with(block_m=16.0), "Plan.block_m must be of type int, got 16.0"),
        (_plan_with(split_k="4"), "Plan.split_k must be of type int, got '4'"),
        (_plan_with(block_m=None), "Plan.block_m must be of type int, got None"),
        (_plan_with(num_warps=True), "Plan.num_warps must be of type int, got True"),
        (_plan_with(serial_reduction="false"), "Plan.serial_reduction must be of type bool"),
        (_plan_with(backend=1), "Plan.backend must be of type str, got 1"),
        *(
            (
                _entry(m_bucket=bucket),
                f"m_bucket must be a power of two from 1 to 4096, got {bucket}",
            )
            for bucket in (0, -4, 3, 8192, 1.5, True)
        ),
        (_entry(format="3:8"), "format must be one of ('2:4', 'bitmap'), got '3:8'"),
        (_entry(dtype="float64"), "dtype must be one of ('float16', 'bfloat16', 'float32')"),
        (_entry(n=64.0), "n must be a positive int, got 64.0"),
        (_entry(k=0), "k must be a positive int, got 0"),
        (_entry(tile=[64, 64]), "2:4 entries take no tile or density"),
        (_bitmap(tile=None), "bitmap entries need a tile and density"),
        (_bitmap(tile=[64]), "bitmap tile must be a pair of ints"),
        (_bitmap(tile=[64, 48]), "bitmap tile must be (power of two"),
        (_bitmap(density="0.3"), "density must be a number, got '0.3'"),
        (_bitmap(density=1.5), "density must be from 0 to 1, got 1.5"),
    ],
)
def test_malformed_entries_are_named_with_their_file_and_index(tmp_path, entry, message):
    path = _write(tmp_path / "t.json", [_entry(m_bucket=2), entry])
    with pytest.raises(ValueError, match=re.escape(f"cannot load {path}: entry 1: {message}")):
        dispatch.load_table(path)
    assert dispatch._TABLES == {}


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            _entry(plan=Plan("skinny", block_m=1, block_k=16).to_dict()),
            "2:4 kernels need block_k >= 32 (one metadata word), got 16",
        ),
        (
            _entry(plan=Plan("tiled", block_m=8).to_dict(), m_bucket=16),
            "tl.dot (the tiled backend, or skinny with block_m >= 16) needs block_m, block_n "
            "and block_k >= 16",
        ),
        (
            _bitmap(plan=Plan("streams", block_m=8, block_n=128).to_dict()),
            "streams plans take block_m in (1, 2, 4), got 8",
        ),
        (
            _bitmap(plan=Plan("skinny", block_m=1, block_n=32).to_dict()),
            "bitmap kernels need block_n x block_k = the weight tile (64, 64), got 32 x 64",
        ),
        (_entry(plan=Plan("streams", 1, 128).to_dict()), "streams backend needs a bitmap"),
        (_bitmap(plan=Plan("semi_structured").to_dict()), "semi_structured backend needs a 2:4"),
    ],
)
def test_plans_that_cannot_run_on_their_entry_are_refused_by_rule(tmp_path, entry, message):
    """An entry's plan is held to the rules the launchers apply on its format and tile:
    refused on loading, naming the file, the entry and the rule, not at a user's call."""
    path = _write(tmp_path / "t.json", [_entry(m_bucket=2), entry])
    described = "bitmap bfloat16 N=64 K=64 tile [64, 64] density 0.3"
    if entry["format"] == "2:4":
        described = "2:4 bfloat16 N=64 K=64"
    expected = f"cannot load {path}: entry 1: its plan cannot run on a {described} weight: "
    with pytest.raises(ValueError, match=re.escape(expected) + ".*" + re.escape(message)):
        dispatch.load_table(path)
    assert dispatch._TABLES == {}


def test_the_plan_rules_need_no_triton():
    """Tables are read where triton is missing (CPU hosts): the rules live in dispatch_table,
    which the launchers import them from."""
    code = (
        "import sys; from lcc_kernels import dispatch_table as t; "
        "t.check_entry_plan(t.Plan('skinny'), '2:4', None); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "not valid JSON"),
        ("{ x", "not valid JSON"),
        ("[]", "a dispatch table must be a JSON object, got list"),
    ],
)
def test_unreadable_files_are_named(tmp_path, text, message):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(
        ValueError, match=re.escape(f"dispatch table: cannot load {path}: {message}")
    ):
        dispatch.load_table(path)
    with pytest.raises(ValueError, match=f"cannot load {re.escape(str(tmp_path))}: Is a directory"):
        dispatch.load_table(tmp_path)


def test_valid_bitmap_entries_load():
    table = {"schema": TABLE_SCHEMA, "device": DEVICE, "entries": [_bitmap(density=1)]}
    key = WeightKey("bitmap", "bfloat16", 64, 64, (64, 64), 0.95)
    assert DispatchTable.from_dict(table).lookup(key, 1) == Plan("skinny", split_k=7)


def test_entries_built_in_code_take_integer_scalars_of_any_kind():
    """As Plan and pack do: numpy integers and 0-d torch tensors for N, K, the M bucket and
    the tile become ints (the table's keys are ints); a float does not."""
    sizes = dict(n=np.int64(64), k=torch.tensor(64), m_bucket=np.int32(2))
    entry = _bitmap(**sizes, tile=(np.int64(64), torch.tensor(64)))
    table = DispatchTable(DEVICE, [entry])
    key = WeightKey("bitmap", "bfloat16", 64, 64, (64, 64), 0.3)
    assert table.lookup(key, 2) == Plan("skinny", split_k=7)
    ((fmt, dtype, *numbers, tile, density),) = table._plans
    assert all(type(size) is int for size in (*numbers, *tile))
    for bad, message in (
        (dict(k=np.float64(64)), "k must be a positive int, got np.float64(64.0)"),
        (dict(m_bucket=torch.tensor(True)), "m_bucket must be a power of two"),
        (dict(tile=(64.0, 64)), "bitmap tile must be a pair of ints"),
    ):
        with pytest.raises(ValueError, match=re.escape(f"entry 0: {message}")):
            DispatchTable(DEVICE, [_bitmap(**bad)])


def _recorded(action) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(warning.message) for warning in caught]


def test_tables_from_another_gpu_or_other_versions_warn_once_per_file(tmp_path, monkeypatch):
    foreign = _write(tmp_path / "foreign.json", [_entry()], torch="0.0.1", triton="0.0.2")
    here = _write(tmp_path / "here.json", [_entry()], device="GPU-Y", torch=torch.__version__)
    _use_env(monkeypatch, foreign, here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "GPU-Y")
    (message,) = _recorded(dispatch._load_env_tables)
    assert message.startswith(f"dispatch table {foreign}: its device 'GPU-X' is none of ")
    assert "this host's ['GPU-Y']" in message
    assert f"measured with torch 0.0.1, running {torch.__version__}" in message
    assert "measured with triton 0.0.2, running " in message
    assert _plan().split_k == 7  # loaded all the same
    (message,) = _recorded(lambda: dispatch.load_table(foreign))
    assert "its device 'GPU-X'" in message
    # Without CUDA no GPU is visible to compare with; matching versions say nothing.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _recorded(lambda: dispatch.load_table(here)) == []


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"block_m": 16.0}, "Plan.block_m must be of type int, got 16.0"),
        ({"split_k": 2.5}, "Plan.split_k must be of type int, got 2.5"),
        ({"block_m": True}, "Plan.block_m must be of type int, got True"),
        ({"serial_reduction": 1}, "Plan.serial_reduction must be of type bool, got 1"),
        ({"block_m": torch.tensor(16.0)}, "Plan.block_m must be of type int, got tensor(16.)"),
        ({"block_m": torch.tensor(True)}, "Plan.block_m must be of type int, got tensor(True)"),
        ({"block_m": torch.tensor([16])}, "Plan.block_m must be of type int, got tensor([16])"),
        ({"block_m": np.bool_(True)}, "Plan.block_m must be of type int, got np.True_"),
    ],
)
def test_a_plan_built_in_code_checks_its_field_types(fields, message):
    """The same rule as for plans read from a table, at construction (not a TypeError from
    deep in a launcher); an integer scalar of another type (numpy's, a 0-d torch tensor)
    becomes an int, as in a bitmap tile (format_common.as_int)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Plan("skinny", **fields)
    integers = dict(block_m=np.int64(4), split_k=np.int32(3), group_m=torch.tensor(2))
    plan = Plan(np.str_("skinny"), **integers)
    types = (type(plan.backend), type(plan.block_m), type(plan.split_k), type(plan.group_m))
    assert types == (str, int, int, int)
    assert plan == Plan("skinny", block_m=4, split_k=3, group_m=2)
    assert Plan("skinny", serial_reduction=np.False_).serial_reduction is False
