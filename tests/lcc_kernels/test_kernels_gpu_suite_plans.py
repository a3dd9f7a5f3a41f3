"""The plans benchmarks/gpu_suite.py times and how the report sets them against each other:
bitmap plans in every tile of EXTRA_BITMAP_TILES (packed per tile, tabled apart), streams
plans competing in every bitmap tile, the rules' own plans judged against dense, and the
order of the acceptance phase's passes (every required row before optional work)."""

import pytest
import torch
from _suite_helpers import suite_plans, suite_runner, timing, write

from lcc_kernels import acceptance, bench_report
from lcc_kernels.dispatch import DispatchTable, Plan, WeightKey


def _bitmap_plan(block_n, block_k, backend="skinny"):
    return {
        **timing("s", 1, "ours", 1.0)["plan"],
        "backend": backend,
        "block_n": block_n,
        "block_k": block_k,
    }


def test_bitmap_tiles_are_timed_packed_and_tabled_apart(tmp_path):
    """The suite times bitmap plans in every tile of EXTRA_BITMAP_TILES besides the default,
    packs the weight in each plan's tile, and the table keeps one entry per tile."""
    from lcc_kernels import sparse_linear, unpack
    from lcc_kernels.bench import plan_tile
    from lcc_kernels.formats import DEFAULT_BITMAP_TILE

    (extra,) = suite_plans.EXTRA_BITMAP_TILES
    assert extra != DEFAULT_BITMAP_TILE
    for m in (1, 16, 1024):
        plans = suite_plans.candidates("bitmap50", 4096, 4096, m, 132, smoke=False)
        tiles = {(p.block_n, p.block_k) for p in plans if p.backend != "streams"}
        assert tiles == {DEFAULT_BITMAP_TILE, extra}, (m, tiles)
        # Streams plans run on any tile's weight, at decode only.
        assert any(p.backend == "streams" for p in plans) == (m == 1)
        assert (plans[0].block_n, plans[0].block_k) == DEFAULT_BITMAP_TILE  # the rules' plan
        narrow = suite_plans.candidates("bitmap50", 4096, 4096, m, 132, False, extra_tiles=False)
        narrow_tiles = {(p.block_n, p.block_k) for p in narrow if p.backend != "streams"}
        assert narrow_tiles == {DEFAULT_BITMAP_TILE}
    assert plan_tile("2:4", plans[0]) is None and plan_tile("bitmap70", Plan("dense")) is None

    cfg = suite_plans.config(smoke=True)
    runner = suite_runner.Runner(tmp_path, cfg, deadline=float("inf"))
    shape = next(iter(cfg.main_shapes))
    tile = plan_tile("bitmap50", Plan("skinny", 1, *extra, split_k=1))
    default, other = runner.packed(shape, "bitmap50"), runner.packed(shape, "bitmap50", tile=tile)
    assert default.tile == DEFAULT_BITMAP_TILE and other.tile == extra
    assert torch.equal(unpack(other), unpack(default))
    assert runner.packed(shape, "bitmap50", tile=tile) is other  # packed once per tile
    x = torch.randn(3, other.shape[1])
    dense = runner.dense(shape, "bitmap50")
    torch.testing.assert_close(
        sparse_linear(x, other, backend="reference"), x @ dense.T, rtol=1e-5, atol=1e-5
    )

    shape = "llama3-8b-o"
    timings = [
        timing(shape, 1, "dense", 10.0),
        timing(shape, 1, "ours", 8.0, "bitmap50", plan=_bitmap_plan(64, 64)),
        timing(shape, 1, "ours", 6.0, "bitmap50", plan=_bitmap_plan(128, 64)),
        timing(shape, 1, "ours", 7.0, "bitmap50", plan=_bitmap_plan(128, 64, "tiled")),
    ]
    write(tmp_path, {"gpu": "NVIDIA H200"}, timings)
    check = _decode_check(tmp_path, shape, "bitmap50")
    assert check["tile"] == [128, 64] and check["best_of"] == pytest.approx(10 / 6, abs=1e-3)
    assert check["status"] == "unmeasured" and "verdict" in check["reason"]  # not re-timed
    table = DispatchTable.from_dict(bench_report.build_dispatch_table(tmp_path))
    for tile, block_n in (((64, 64), 64), ((128, 64), 128)):
        found = table.lookup(WeightKey("bitmap", "bfloat16", 4096, 4096, tile, 0.5), 1)
        assert (found.backend, found.block_n) == ("skinny", block_n)


def _decode_check(folder, shape: str, kind: str) -> dict:
    """The one speed-up-over-dense acceptance check of `shape` and `kind` in the summary
    of the suite results in `folder`."""
    (check,) = [
        c
        for c in bench_report.summarize(folder)["acceptance"]
        if c["check"] == "speedup_vs_dense_F.linear" and c["shape"] == shape and c["kind"] == kind
    ]
    return check


def test_streams_plans_compete_in_every_bitmap_tile(tmp_path):
    """A streams plan re-lays out a bitmap weight of any tile: its timing counts for the
    decode check (which names the backend) and for every tile's table entry."""
    shape = "llama3-8b-o"
    streams = Plan("streams", 1, 128, split_k=8).to_dict()
    timings = [
        timing(shape, 1, "dense", 10.0),
        timing(shape, 1, "ours", 8.0, "bitmap70", plan=_bitmap_plan(64, 64)),
        timing(shape, 1, "ours", 9.0, "bitmap70", plan=_bitmap_plan(128, 64)),
        timing(shape, 1, "ours", 4.0, "bitmap70", plan=streams),
    ]
    write(tmp_path, {"gpu": "NVIDIA H200"}, timings)
    check = _decode_check(tmp_path, shape, "bitmap70")
    assert check["backend"] == "streams" and "tile" not in check
    assert check["best_of"] == pytest.approx(2.5) and check["status"] == "unmeasured"
    table = DispatchTable.from_dict(bench_report.build_dispatch_table(tmp_path))
    for tile in ((64, 64), (128, 64)):
        found = table.lookup(WeightKey("bitmap", "bfloat16", 4096, 4096, tile, 0.3), 1)
        assert found == Plan.from_dict(streams)


def test_rules_checks_read_the_plans_the_rules_pick_among_those_the_suite_times(tmp_path):
    """Without a table users get the rules' plan; with decode_streams, bitmap decode gets
    the rules' streams plan. The suite times both (its first candidates), and the summary
    sets them against dense, however much faster another candidate is."""
    shape, sms = "llama3-8b-o", 132
    timings = [timing(shape, m, "dense", 10.0) for m in (1, 4, 8)]
    for m in (1, 4, 8):
        rules, *others = suite_plans.candidates("bitmap70", 4096, 4096, m, sms, smoke=False)
        streams = [p for p in others if p.backend == "streams"]
        assert (len(streams) == 4) == (m <= 4)
        timings.append(timing(shape, m, "ours", 8.0, "bitmap70", plan=rules.to_dict()))
        timings += [
            timing(shape, m, "ours", 4.0 + i, "bitmap70", plan=p.to_dict())
            for i, p in enumerate(streams)  # the rules' streams plan first: 4.0
        ]
        timings.append(timing(shape, m, "ours", 2.0, "bitmap70", plan=others[-1].to_dict()))
    write(tmp_path, {"gpu": "NVIDIA H200", "sm_count": sms}, timings)
    checks = {
        (c["check"], c["m"]): c
        for c in bench_report.summarize(tmp_path)["acceptance"]
        if "rules" in c["check"]
    }
    assert set(checks) == {
        ("rules_vs_dense (info)", 1),
        ("rules_vs_dense (info)", 4),
        ("rules_vs_dense (info)", 8),
        ("decode_streams_rules_vs_dense (info)", 1),
        ("decode_streams_rules_vs_dense (info)", 4),
    }
    rules_1 = checks["rules_vs_dense (info)", 1]
    assert (rules_1["measured"], rules_1["threshold"], rules_1["status"]) == (1.25, 2.3, "fail")
    assert rules_1["backend"] == "skinny"
    streams_1 = checks["decode_streams_rules_vs_dense (info)", 1]
    assert (streams_1["measured"], streams_1["status"], streams_1["backend"]) == (
        2.5,
        "pass",
        "streams",
    )
    assert checks["rules_vs_dense (info)", 8]["threshold"] == 1.0
    write(tmp_path, {"gpu": "NVIDIA H200"}, timings)  # no SM count: no rules to replay
    assert not [c for c in bench_report.summarize(tmp_path)["acceptance"] if "rules" in c["check"]]


def test_acceptance_times_every_required_row_before_optional_work():
    """The prefill M's required rows (the large-M checks') too, right after its own: a
    slow start costs candidates, not checks. The prefill phase then times only those of
    them the acceptance phase left out."""
    cfg = suite_plans.config(smoke=False)
    passes = suite_plans.phase_passes(cfg, "acceptance", 132)
    names = [p.name for p in passes]
    assert names == [
        "required",
        "prefill_required",
        "candidates",
        "verdict",
        "bias",
        "eager",
        "tilings",
    ]
    assert [p.name for p in passes if p.optional] == ["candidates", "eager", "tilings"]
    assert passes[2].phase_reserve_s == suite_plans.PAIRED_RESERVE_S >= 45
    required, large, candidates, *_, tilings = (p.build([]) for p in passes)
    expected = [
        job
        for m in cfg.prefill_m
        for shape in cfg.main_shapes
        for job in suite_plans.required_jobs(cfg, shape, m, 132)
    ]
    assert large == expected
    (catch_up, *rest) = suite_plans.phase_passes(cfg, "prefill", 132)
    assert catch_up.name == "required" and [p.name for p in rest] == ["candidates", "tilings"]
    recorded = [
        dict(timing(j.shape, j.m, j.provider, 1.0, j.kind, plan=j.plan and j.plan.to_dict()))
        for j in expected[::2]
    ]
    assert catch_up.build(recorded) == expected[1::2]
    assert catch_up.build([dict(r, phase="prefill") for r in recorded]) == expected
    for shape in cfg.main_shapes:
        for m in cfg.acceptance_m:
            mine = [j for j in required if (j.shape, j.m) == (shape, m)]
            assert [j.provider for j in mine][:3] == ["dense", "cusparselt", "cutlass"]
            n, k = cfg.main_shapes[shape]
            for kind in acceptance.SPARSE_KINDS:
                rules = suite_plans.rules_plans(kind, n, k, m, 132)
                assert [j.plan for j in mine if (j.provider, j.kind) == ("ours", kind)] == rules
            (dense_triton,) = [j for j in mine if j.provider == "dense_triton"]
            assert dense_triton.plan == suite_plans.rules_plans("2:4", n, k, m, 132)[0]
    assert all(j.provider == "ours" for j in candidates)
    assert not {(j.shape, j.m, j.kind, j.plan) for j in candidates} & {
        (j.shape, j.m, j.kind, j.plan) for j in required
    }
    assert tilings and all(j.provider == "dense_triton" for j in tilings)
