"""What the GPU suite (gpu_suite.py) times: its configuration, and per problem the plans
and providers of each timing phase."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lcc_kernels.bench_report import SPARSE_KINDS

# Up to this many rows the sweep also times the skinny path where the rules pick tiled
# (the memory/compute crossover is ~115-200 rows for 2:4 on an H200, kernels.md).
SKINNY_CANDIDATE_MAX_M = 128
# Bitmap tiles timed besides lcc_kernels' default one (the tile is fixed when a weight is
# packed; the kernels work on stored tiles). compile_report.py: (128, 64) has ~8% fewer
# decode-loop instructions per position than (64, 64) with triton 3.6 and 3.9; whether
# that shows is for the GPU to say.
EXTRA_BITMAP_TILES = ((128, 64),)


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


def candidates(
    kind: str, n: int, k: int, m: int, sms: int, smoke: bool, extra_tiles: bool = True
) -> list:
    """Our plans to time for one problem: the default rules' plan first, then variants;
    with `extra_tiles`, bitmap plans also in EXTRA_BITMAP_TILES (4 warps, tiled: 2 shapes).
    Bitmap weights at M <= STREAMS_MAX_M also get "streams" plans (smoke: one)."""
    from lcc_kernels.bench import kind_key
    from lcc_kernels.dispatch import (
        MAX_SPLIT_K,
        STREAMS_MAX_M,
        Plan,
        default_plan,
        skinny_stages,
        split_k_for,
        streams_plan,
    )

    key = kind_key(kind, "bfloat16", n, k)
    tile = key.tile
    base = default_plan(m, key, sms)
    plans = [base]
    if key.format == "bitmap" and m <= STREAMS_MAX_M:
        streams = streams_plan(m, key, sms)
        plans.append(streams)
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


def timing_jobs(cfg: Config, shape: str, m: int, sms: int, all_tilings: bool) -> list[Job]:
    """Every provider for one (shape, M). all_tilings: bitmap plans in the extra tiles too,
    and dense Triton with each 2:4 tiling (else with the default one)."""
    n, k = (cfg.main_shapes | cfg.more_shapes)[shape]
    jobs = [
        Job(shape, m, "dense", "dense"),
        Job(shape, m, "2:4", "cusparselt"),
        Job(shape, m, "2:4", "cutlass"),
    ]
    for kind in SPARSE_KINDS:
        jobs += [
            Job(shape, m, kind, "ours", plan)
            for plan in candidates(kind, n, k, m, sms, cfg.smoke, extra_tiles=all_tilings)
        ]
    tilings = candidates("2:4", n, k, m, sms, cfg.smoke)
    jobs += [
        Job(shape, m, "dense", "dense_triton", plan)
        for plan in (tilings if all_tilings else tilings[:1])
    ]
    return jobs


def eager_jobs(cfg: Config) -> list[Job]:
    """M = 1 calls issued from Python without a graph, per main shape: dense F.linear and
    ours as `sparse_linear` dispatches them by default (what uncaptured decode pays)."""
    from lcc_kernels.bench_report import SPARSE_KINDS

    return [
        Job(shape, 1, kind, "dense" if kind == "dense" else "ours", tag="eager")
        for shape in cfg.main_shapes
        for kind in ("dense", *SPARSE_KINDS)
    ]


def phase_jobs(cfg: Config, phase: str, sms: int) -> list[Job]:
    if phase == "acceptance":
        ms, all_tilings = cfg.acceptance_m, True
    elif phase == "prefill":
        ms, all_tilings = cfg.prefill_m, True
    elif phase == "sweep":
        ms, all_tilings = cfg.sweep_m, False
    else:
        return []
    return [
        job
        for m in ms
        for shape in cfg.main_shapes
        for job in timing_jobs(cfg, shape, m, sms, all_tilings)
    ]
