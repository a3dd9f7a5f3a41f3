"""What the GPU suite (gpu_suite.py) times: its configuration, per problem the plans and
providers, and per timing phase its passes, most important first: the rows every
acceptance check reads (the acceptance phase also times the prefill phase's, before any
optional work), then the other candidate plans, then (acceptance) the paired re-timings
the decode and bias checks judge on, then what is information only."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace

from lcc_kernels.acceptance import (
    DECODE_SPEEDUPS,
    SEMI_STRUCTURED_M,
    SPARSE_KINDS,
    TORCH_24_PROVIDERS,
    fastest,
)

# Up to this many rows the sweep also times the skinny path where the rules pick tiled
# (the memory/compute crossover is ~115-200 rows for 2:4 on an H200, kernels.md).
SKINNY_CANDIDATE_MAX_M = 128
# Bitmap tiles timed besides lcc_kernels' default one (the tile is fixed when a weight is
# packed; the kernels work on stored tiles). compile_report.py: (128, 64) has ~8% fewer
# decode-loop instructions per position than (64, 64) with triton 3.6 and 3.9; whether
# that shows is for the GPU to say.
EXTRA_BITMAP_TILES = ((128, 64),)
# Rounds of the paired re-timings (Rounds): each round times every job of the group once.
VERDICT_ROUNDS = 5
BIAS_ROUNDS = 5
# Seconds the acceptance candidates leave of the phase cap for its paired re-timings
# (verdict: ~80 timings, bias cost: ~120, ~0.2 s each on an H200: ~37-46 s).
PAIRED_RESERVE_S = 45.0


@dataclass(frozen=True)
class Config:
    """Problem lists of a full run, or of a smoke run on the CPU."""

    main_shapes: dict
    more_shapes: dict
    acceptance_m: tuple
    prefill_m: tuple
    sweep_m: tuple
    more_m: tuple  # passes over the other shapes, each a tuple of M
    correctness_m: tuple  # (skinny rows, skinny dot rows, tiled rows)
    rep_ms: int
    smoke: bool


def config(smoke: bool) -> Config:
    from lcc_kernels.bench import SHAPES

    if smoke:
        return Config(
            {"smoke-qkv": (48, 64), "smoke-o": (40, 72)},
            {"smoke-more": (24, 64)},
            (1,),
            (33,),
            (2,),
            ((1,),),
            (1, 5, 17),
            0,
            True,
        )
    main = {name: SHAPES[name] for name in ("llama3-8b-qkv", "llama3-8b-o")}
    more = {name: shape for name, shape in SHAPES.items() if name not in main}
    return Config(
        main,
        more,
        (1, 16),
        (1024, 4096),
        (2, 4, 8, 32, 64, 128, 256),
        ((1, 16, 1024), (4, 64, 256, 4096)),
        (1, 16, 257),
        100,
        False,
    )


@dataclass(frozen=True)
class Job:
    """One timing: a provider on one weight kind at one (shape, M), bf16 (fp32 in smoke)."""

    shape: str
    m: int
    kind: str
    provider: str
    plan: object = None
    bias: bool = True
    tag: str = ""


def rules_plans(kind: str, n: int, k: int, m: int, sms: int, dtype: str = "bfloat16") -> list:
    """The plans the built-in rules pick for one problem in `dtype` (a torch dtype's name):
    `default_plan`, and for bitmap weights at M <= STREAMS_MAX_M the decode_streams one
    (`streams_plan`)."""
    from lcc_kernels.bench import kind_key
    from lcc_kernels.dispatch import STREAMS_MAX_M, default_plan, streams_plan

    key = kind_key(kind, dtype, n, k)
    plans = [default_plan(m, key, sms)]
    if key.format == "bitmap" and m <= STREAMS_MAX_M:
        plans.append(streams_plan(m, key, sms))
    return plans


def candidates(
    kind: str,
    n: int,
    k: int,
    m: int,
    sms: int,
    smoke: bool,
    extra_tiles: bool = True,
    dtype: str = "bfloat16",
) -> list:
    """Our plans to time for one problem: the default rules' plan (for `dtype`) first, then
    variants; with `extra_tiles`, bitmap plans also in EXTRA_BITMAP_TILES (4 warps, tiled:
    2 shapes). Bitmap weights at M <= STREAMS_MAX_M also get "streams" plans (smoke: one)."""
    from lcc_kernels.bench import kind_key
    from lcc_kernels.dispatch import MAX_SPLIT_K, Plan, skinny_stages, split_k_for, streams_plan

    key = kind_key(kind, dtype, n, k)
    tile = key.tile
    plans = rules_plans(kind, n, k, m, sms, dtype)
    base = plans[0]
    if len(plans) > 1:
        streams = plans[1]
        if not smoke:
            plans += [
                streams_plan(m, key, sms, block_n=256),
                replace(streams, split_k=max(1, streams.split_k // 2)),
                replace(streams, num_stages=1),  # no cp.async: ~15% fewer instructions
            ]
    if smoke:
        return plans
    extra = [t for t in EXTRA_BITMAP_TILES if t != tile] if tile and extra_tiles else []
    if base.backend == "skinny":
        tiles = [tile, *extra] if tile else [(64, 128), (32, 256), (128, 64), (64, 64)]
        small = 1 << max(0, m - 1).bit_length()
        for block_m in sorted({base.block_m, 16, small if m <= 4 else 16}):
            for block_n, block_k in tiles:
                if block_m < 16 and block_m * block_n * block_k > 16384:
                    continue  # multiply + tl.sum would spill registers
                split = split_k_for(-(-n // block_n) * -(-m // block_m), -(-k // block_k), sms)
                warps = (4, 8) if tile and (block_n, block_k) == tile else (4,)
                stages = skinny_stages(key.format, block_m)
                plans += [
                    Plan("skinny", block_m, block_n, block_k, split, num_warps=w, num_stages=stages)
                    for w in warps
                ]
        plans += [
            replace(base, split_k=max(1, base.split_k // 2)),
            replace(base, split_k=min(MAX_SPLIT_K, base.split_k * 2)),
        ]
        # The other pipelining depth: cp.async costs instructions (M = 16 2:4 loop ~11%
        # longer, M = 1 ~7%) and buys loads in flight; which wins is for the GPU to say.
        plans.append(replace(base, num_stages=1 if base.num_stages > 1 else 3))
    else:
        if tile:
            shapes = [(64, *tile, 4, 3), (128, *tile, 8, 3), (128, *tile, 4, 4), (32, *tile, 4, 4)]
            shapes += [(bm, *t, w, 3) for t in extra for bm, w in ((64, 4), (128, 8))]
        else:
            shapes = [
                (64, 64, 64, 4, 3),
                (128, 128, 64, 8, 3),
                (128, 64, 64, 4, 4),
                (64, 128, 64, 4, 3),
                (128, 128, 32, 8, 4),
            ]
        plans += [
            Plan("tiled", bm, bn, bk, num_warps=w, num_stages=s) for bm, bn, bk, w, s in shapes
        ]
        if m <= SKINNY_CANDIDATE_MAX_M:  # is split-K still worth it above SKINNY_MAX_M?
            block_n, block_k = tile or (64, 64)
            block_m = min(64, 1 << (m - 1).bit_length())
            split = split_k_for(-(-n // block_n) * -(-m // block_m), -(-k // block_k), sms)
            stages = skinny_stages(key.format, block_m)
            plans.append(Plan("skinny", block_m, block_n, block_k, split, num_stages=stages))
    unique = []
    for plan in plans:
        if plan not in unique:
            unique.append(plan)
    return unique


def required_jobs(cfg: Config, shape: str, m: int, sms: int) -> list[Job]:
    """The rows the acceptance checks read for one (shape, M): dense F.linear, torch
    semi-structured, per kind the built-in rules' plans, and the dense Triton kernel in the
    2:4 rules' tiling."""
    n, k = (cfg.main_shapes | cfg.more_shapes)[shape]
    jobs = [Job(shape, m, "dense", "dense")]
    jobs += [Job(shape, m, "2:4", provider) for provider in TORCH_24_PROVIDERS]
    for kind in SPARSE_KINDS:
        jobs += [Job(shape, m, kind, "ours", plan) for plan in rules_plans(kind, n, k, m, sms)]
    jobs.append(Job(shape, m, "dense", "dense_triton", rules_plans("2:4", n, k, m, sms)[0]))
    return jobs


def candidate_jobs(cfg: Config, shape: str, m: int, sms: int, extra_tiles: bool) -> list[Job]:
    """Our other plans for one (shape, M): candidates() less the rules' plans."""
    n, k = (cfg.main_shapes | cfg.more_shapes)[shape]
    return [
        Job(shape, m, kind, "ours", plan)
        for kind in SPARSE_KINDS
        for plan in candidates(kind, n, k, m, sms, cfg.smoke, extra_tiles=extra_tiles)
        if plan not in rules_plans(kind, n, k, m, sms)
    ]


def dense_tiling_jobs(cfg: Config, shape: str, m: int, sms: int) -> list[Job]:
    """The dense Triton kernel in every other 2:4 tiling (separates sparse overhead from
    the tiling; no check reads it)."""
    n, k = (cfg.main_shapes | cfg.more_shapes)[shape]
    tilings = candidates("2:4", n, k, m, sms, cfg.smoke)
    return [Job(shape, m, "dense", "dense_triton", plan) for plan in tilings[1:]]


def timing_jobs(cfg: Config, shape: str, m: int, sms: int, all_tilings: bool) -> list[Job]:
    """Every provider for one (shape, M): the required rows, the other candidates, and
    with all_tilings bitmap plans in the extra tiles and dense Triton in every tiling."""
    jobs = required_jobs(cfg, shape, m, sms) + candidate_jobs(cfg, shape, m, sms, all_tilings)
    return jobs + (dense_tiling_jobs(cfg, shape, m, sms) if all_tilings else [])


def eager_jobs(cfg: Config) -> list[Job]:
    """M = 1 calls issued from Python without a graph, per main shape: dense F.linear and
    ours as `sparse_linear` dispatches them by default (what uncaptured decode pays)."""
    return [
        Job(shape, 1, kind, "dense" if kind == "dense" else "ours", tag="eager")
        for shape in cfg.main_shapes
        for kind in ("dense", *SPARSE_KINDS)
    ]


@dataclass(frozen=True)
class Rounds:
    """Jobs timed in turn, `rounds` times, each on calls built once: adjacent timings of
    the same copies, whose medians the report compares (not best-of-many against one)."""

    jobs: tuple
    rounds: int


def verdict_rounds(cfg: Config, shape: str, m: int, rows: list[dict]) -> Rounds | None:
    """Dense F.linear, the torch semi-structured backends that ran, and per kind with a
    decode target at M our fastest plan so far, re-timed in alternation."""
    kinds = [kind for target_m, kind, _ in DECODE_SPEEDUPS if target_m == m]
    if not kinds:
        return None
    jobs = [Job(shape, m, "dense", "dense", tag="verdict")]
    if m in SEMI_STRUCTURED_M:
        jobs += [
            Job(shape, m, "2:4", provider, tag="verdict")
            for provider in TORCH_24_PROVIDERS
            if fastest(rows, shape=shape, m=m, provider=provider, tag="")
        ]
    for kind in kinds:
        best = fastest(rows, shape=shape, m=m, provider="ours", kind=kind, bias=True, tag="")
        if best:
            jobs.append(Job(shape, m, kind, "ours", _plan(best["plan"]), tag="verdict"))
    return Rounds(tuple(jobs), VERDICT_ROUNDS) if len(jobs) > 1 else None


def bias_rounds(shape: str, m: int, kind: str, rows: list[dict]) -> Rounds | None:
    """Our fastest plan so far without and with the bias, in alternation."""
    best = fastest(rows, shape=shape, m=m, provider="ours", kind=kind, bias=True, tag="")
    if best is None:
        return None
    plan = _plan(best["plan"])
    jobs = tuple(Job(shape, m, kind, "ours", plan, bias, "bias_cost") for bias in (False, True))
    return Rounds(jobs, BIAS_ROUNDS)


def _plan(data: dict):
    from lcc_kernels.dispatch import Plan

    return Plan.from_dict(data)


@dataclass(frozen=True)
class Pass:
    """Items of one phase run in order: `build(timing rows so far)` -> Jobs / Rounds.
    phase_reserve_s: no item starts with less than this left of the phase cap;
    optional: nor with less than the later phases' reserve left of the whole budget."""

    name: str
    build: Callable[[list[dict]], list]
    phase_reserve_s: float = 0.0
    optional: bool = False


def phase_passes(cfg: Config, phase: str, sms: int) -> list[Pass]:
    """The passes of a timing phase ([] for another phase name). The acceptance phase
    times the prefill phase's required rows (the large-M checks') right after its own,
    so that a slow start costs candidates, not checks; the prefill phase's required
    pass times those of them the acceptance phase did not record (normally none)."""
    ms = {"acceptance": cfg.acceptance_m, "prefill": cfg.prefill_m, "sweep": cfg.sweep_m}
    if phase not in ms:
        return []
    problems = [(shape, m) for m in ms[phase] for shape in cfg.main_shapes]
    prefill = [(shape, m) for m in cfg.prefill_m for shape in cfg.main_shapes]
    extra = phase != "sweep"

    def each(jobs_of, these=problems):
        return lambda rows: [job for shape, m in these for job in jobs_of(shape, m)]

    def required(shape, m):
        return required_jobs(cfg, shape, m, sms)

    passes = [Pass("required", each(required))]
    if phase == "prefill":  # the acceptance phase's rows only: the list stays put on resume
        passes = [
            Pass("required", lambda rows: unrecorded(each(required)(rows), rows, "acceptance"))
        ]
    if phase == "acceptance":
        # Not the sweep's required rows too: their launches are compiled last by the
        # workers (suite_precompile), so here they would compile in line, out of the
        # candidates whose fastest plans the decode checks judge.
        passes.append(Pass("prefill_required", each(required, prefill)))
    passes.append(
        Pass(
            "candidates",
            each(lambda shape, m: candidate_jobs(cfg, shape, m, sms, extra)),
            PAIRED_RESERVE_S if phase == "acceptance" else 0.0,
            optional=True,
        )
    )
    if phase == "acceptance":
        passes += [
            Pass(
                "verdict",
                lambda rows: _present(verdict_rounds(cfg, s, m, rows) for s, m in problems),
            ),
            Pass(
                "bias",
                lambda rows: _present(
                    bias_rounds(s, m, kind, rows) for s, m in problems for kind in SPARSE_KINDS
                ),
            ),
            Pass("eager", lambda rows: eager_jobs(cfg), optional=True),
        ]
    if extra:
        passes.append(
            Pass(
                "tilings",
                each(lambda shape, m: dense_tiling_jobs(cfg, shape, m, sms)),
                optional=True,
            )
        )
    return passes


def unrecorded(jobs: list[Job], rows: list[dict], phase: str) -> list[Job]:
    """The jobs with no timing row (of any status) from `phase`."""
    fields = ("shape", "m", "kind", "provider", "plan", "bias", "tag")
    recorded = {
        json.dumps([r[f] for f in fields], sort_keys=True) for r in rows if r["phase"] == phase
    }

    def key(job: Job) -> str:
        plan = job.plan.to_dict() if job.plan else None
        values = [job.shape, job.m, job.kind, job.provider, plan, job.bias, job.tag]
        return json.dumps(values, sort_keys=True)

    return [job for job in jobs if key(job) not in recorded]


def _present(items) -> list:
    return [item for item in items if item is not None]


def shapes_jobs(cfg: Config, sms: int) -> list[Job]:
    """The other shapes, breadth over depth: every shape at the first M values, then at the
    next ones; our kernels with the built-in rules' plans only."""
    return [
        job
        for ms in cfg.more_m
        for shape in cfg.more_shapes
        for m in ms
        for job in required_jobs(cfg, shape, m, sms)
    ]
