#!/usr/bin/env python
"""One GPU run of lcc_kernels: correctness at real shapes, timings against the
baselines, a measured dispatch table and the acceptance summary of issue 5 (see kernels.md).

    python benchmarks/gpu_suite.py OUT_DIR [--budget-s 360] [--commit SHA] [--phases ...]
    python benchmarks/gpu_suite.py OUT_DIR --smoke     # CPU, Triton interpreter, tiny shapes
    python benchmarks/gpu_suite.py OUT_DIR --e2e-budget-s 90   # + end-to-end phase, below

On an H200 the full run takes about --budget-s seconds plus a few (it stops adding work
when the budget is spent, then summarises); give the device 60-90 s more than that.
Phases, most important first (each also stops at its own cap, PHASE_CAPS):
  env          GPU, versions, commit, measured device-copy bandwidth -> env.json
  correctness  bf16/fp16, every format and path, bias, at the Llama-3-8B shapes, vs fp64;
               split-K determinism, CUDA-graph replay, torch semi-structured round trips
  acceptance   M = 1 and 16 on Llama-3-8B qkv 6144x4096 and o 4096x4096, bf16: dense
               F.linear + bias, torch semi-structured (cuSPARSELt, CUTLASS), ours (2:4,
               bitmap 50% and 70% each in two tiles, a sweep of block configs), the dense
               Triton kernel with the same tilings, and the bias-epilogue cost (best plan
               with vs without)
  prefill      M = 1024 and 4096 on the same shapes
  sweep        the other M of kernels.md on the same shapes
  shapes       Llama-2-7B, Llama-3-70B and its TP splits, as time allows
Optional last phase, off by default: --e2e-budget-s S keeps the last S seconds of the
budget for benchmarks/bench_e2e.py (swapped attention in a Llama-3-8B-shaped model, decode
and prefill, with this run's dispatch table) in its own process, writing OUT_DIR/e2e/.
While correctness runs, worker processes compile the Triton configs of the timing phases
in parallel (into Triton's on-disk cache), so the timing phases rarely wait for compilers.

All phases run in one child process; if it dies (a CUDA fault poisons a process), a new
child resumes at the next phase, and one provider failing only marks its row. Results are
appended to OUT_DIR as they are measured, seven files: env.json, phases.jsonl,
correctness.jsonl, timings.jsonl, timings.csv, then dispatch_table.json (for
lcc_kernels.load_table) and summary.json (each acceptance check pass / fail / unmeasured
with the measured ratio; lcc_kernels.bench_report). Schema: benchmarks/results/README.md.
Timings are per call, from CUDA-graph replays of calls that rotate over weight copies
(L2 cannot serve them), timed with triton.testing.do_bench (median, 20% and 80%).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lcc_kernels.bench_report import SPARSE_KINDS  # noqa: E402

# Seconds each phase may use at most (the whole run is also capped by --budget-s).
PHASE_CAPS = {
    "env": 30,
    "correctness": 75,
    "acceptance": 110,
    "prefill": 50,
    "sweep": 70,
    "shapes": 10**6,
}
PHASES = tuple(PHASE_CAPS)
TIMING_PHASES = ("acceptance", "prefill", "sweep")
# Up to this many rows the sweep also times the skinny path where the rules pick tiled
# (the memory/compute crossover is ~115-200 rows for 2:4 on an H200, kernels.md).
SKINNY_CANDIDATE_MAX_M = 128
# Bitmap tiles timed besides lcc_kernels' default one (the tile is fixed when a weight is
# packed; the kernels work on stored tiles). compile_report.py: (128, 64) has ~8% fewer
# decode-loop instructions per position than (64, 64) with triton 3.6 and 3.9; whether
# that shows is for the GPU to say.
EXTRA_BITMAP_TILES = ((128, 64),)
# Longest wait for the compile workers before timing starts (then they are killed).
PRECOMPILE_WAIT_S = 60
# The optional end-to-end phase (bench_e2e.py) is skipped with less than this many
# seconds left (building the model and compiling its kernels take some); its process may
# overrun its budget by the grace, to finish the timing it started.
E2E_MIN_S = 30
E2E_GRACE_S = 60
# Errors after which a CUDA context is unusable: end the child, resume in a new one.
FATAL_CUDA = (
    "illegal memory access",
    "unspecified launch failure",
    "device-side assert",
    "misaligned address",
    "illegal instruction",
    "CUDA error: an illegal",
)
CSV_FIELDS = (
    "phase",
    "shape",
    "n",
    "k",
    "m",
    "dtype",
    "kind",
    "provider",
    "plan",
    "bias",
    "tag",
    "status",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "method",
    "copies",
    "bytes",
    "gbps",
    "copy_fraction",
    "error",
)


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


# ---------------------------------------------------------------------------- plans


def candidates(
    kind: str, n: int, k: int, m: int, sms: int, smoke: bool, extra_tiles: bool = True
) -> list:
    """Our plans to time for one problem: the default rules' plan first, then variants;
    with `extra_tiles`, bitmap plans also in EXTRA_BITMAP_TILES (4 warps, tiled: 2 shapes)."""
    from lcc_kernels.bench import KINDS
    from lcc_kernels.dispatch import MAX_SPLIT_K, Plan, WeightKey, default_plan, split_k_for
    from lcc_kernels.formats import DEFAULT_BITMAP_TILE

    fmt, keep = KINDS[kind]
    tile = DEFAULT_BITMAP_TILE if fmt == "bitmap" else None
    key = WeightKey(
        "2:4" if fmt == "dense" else fmt, "bfloat16", n, k, tile, keep if tile else None
    )
    base = default_plan(m, key, sms)
    plans = [base]
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
                plans += [
                    Plan("skinny", block_m, block_n, block_k, split, num_warps=w, num_stages=3)
                    for w in warps
                ]
        plans += [
            replace(base, split_k=max(1, base.split_k // 2)),
            replace(base, split_k=min(MAX_SPLIT_K, base.split_k * 2)),
        ]
        if base.block_m >= 16:
            # Without the cp.async pipeline the 2:4 decode loop is ~11% shorter
            # (compile_report.py); whether latency then shows is for the GPU to say.
            plans.append(replace(base, num_stages=1))
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
            plans.append(Plan("skinny", block_m, block_n, block_k, split, num_stages=3))
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


# ---------------------------------------------------------------------------- runner


class Runner:
    """Runs jobs in the child process: weights cached per (shape, kind), rows appended."""

    def __init__(self, out: Path, cfg: Config, deadline: float) -> None:
        import torch

        self.torch = torch
        self.out, self.cfg, self.deadline = out, cfg, deadline
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 4
        )
        env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
        self.copy_bw = env.get("copy_bandwidth_bytes_per_s")
        self.weights: dict = {}
        self.phase = ""
        self.phase_deadline = deadline

    def shape(self, name: str) -> tuple[int, int]:
        return (self.cfg.main_shapes | self.cfg.more_shapes)[name]

    def dense(self, shape: str, kind: str, dtype=None):
        from lcc_kernels.bench import make_dense

        dtype = dtype or self.dtype
        key = (shape, kind, dtype)
        if key not in self.weights:
            seed = zlib.crc32(repr(key).encode())
            gen = self.torch.Generator(device=self.device).manual_seed(seed)
            self.weights[key] = make_dense(*self.shape(shape), kind, dtype, self.device, gen)
        return self.weights[key]

    def packed(self, shape: str, kind: str, dtype=None, tile=None):
        """The weight of `kind` packed; a bitmap in `tile` (default: lcc_kernels' tile)."""
        from lcc_kernels.bench import pack_kind

        key = (shape, kind, dtype or self.dtype, "packed", tile)
        if key not in self.weights:
            self.weights[key] = pack_kind(self.dense(shape, kind, dtype), kind, tile)
        return self.weights[key]

    def forget_weights(self) -> None:
        self.weights.clear()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def time_left(self) -> bool:
        return time.time() < min(self.deadline, self.phase_deadline)

    def append(self, name: str, row: dict) -> None:
        with open(self.out / name, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def run(self, job: Job, quick: bool = False) -> dict:
        from lcc_kernels.bench import build_calls, copies_for, plan_tile, time_calls

        n, k = self.shape(job.shape)
        row = {
            "phase": self.phase,
            "shape": job.shape,
            "n": n,
            "k": k,
            "m": job.m,
            "dtype": str(self.dtype).removeprefix("torch."),
            "kind": job.kind,
            "provider": job.provider,
            "plan": job.plan.to_dict() if job.plan else None,
            "bias": job.bias,
            "tag": job.tag,
        }
        try:
            dense = self.dense(job.shape, job.kind)
            packed = (
                self.packed(job.shape, job.kind, tile=plan_tile(job.kind, job.plan))
                if job.provider in ("ours", "cusparselt", "cutlass")
                else None
            )
            weight_bytes = packed.nbytes if packed is not None else dense.numel() * 2
            copies = copies_for(weight_bytes, self.device)
            calls, nbytes = build_calls(
                job.provider,
                dense,
                job.m,
                bias=job.bias,
                copies=copies,
                plan=job.plan,
                packed=packed,
            )
            rep = max(self.cfg.rep_ms // (2 if quick else 1), 1)
            timing = time_calls(calls, rep_ms=rep, warmup_ms=max(rep // 4, 1))
            gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
            row.update(
                timing,
                status="ok",
                bytes=nbytes,
                gbps=gbps,
                copy_fraction=gbps * 1e9 / self.copy_bw if self.copy_bw else None,
            )
        except Exception as error:  # one provider failing must not end the run
            row.update(status="error", error=_describe(error))
            self._record_timing(row)
            _exit_if_fatal(error)
            return row
        self._record_timing(row)
        return row

    def _record_timing(self, row: dict) -> None:
        self.append("timings.jsonl", row)
        path = self.out / "timings.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            flat = dict(row, plan=_plan_label(row["plan"]))
            writer.writerow(flat)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:600]


def _exit_if_fatal(error: BaseException) -> None:
    if any(marker in str(error) for marker in FATAL_CUDA):
        print(f"fatal CUDA error, ending this child: {_describe(error)}", flush=True)
        os._exit(3)


def _plan_label(plan: dict | None) -> str:
    if not plan:
        return ""
    if plan["backend"] in ("skinny", "tiled"):
        return (
            f"{plan['backend']} m{plan['block_m']} n{plan['block_n']} k{plan['block_k']} "
            f"s{plan['split_k']} w{plan['num_warps']} st{plan['num_stages']}"
            f"{'' if plan['serial_reduction'] else ' 2pass'}"
        )
    return plan["backend"]


# ---------------------------------------------------------------------------- phases


def phase_env(runner: Runner, commit: str | None) -> None:
    from lcc_kernels.bench import copy_bandwidth, environment

    info = environment(runner.device, commit)
    info["copy_bandwidth_bytes_per_s"] = copy_bandwidth(runner.device)
    info["smoke"] = runner.cfg.smoke
    (runner.out / "env.json").write_text(json.dumps(info, indent=2))
    runner.copy_bw = info["copy_bandwidth_bytes_per_s"]
    copy_bw = info["copy_bandwidth_bytes_per_s"]
    print(
        f"env: {info.get('gpu')} torch {info['torch']} triton {info['triton']} copy "
        f"{'-' if copy_bw is None else f'{copy_bw / 1e12:.2f} TB/s'}",
        flush=True,
    )


def phase_correctness(runner: Runner) -> None:
    torch = runner.torch
    from lcc_kernels import Plan, sparse_linear

    dtypes = [torch.float32] if runner.cfg.smoke else [torch.bfloat16, torch.float16]
    shapes = list(runner.cfg.main_shapes)
    paths = list(zip(runner.cfg.correctness_m, ("skinny", "skinny", "tiled"), strict=True))
    checks = [
        (dtype, shape, kind, m, backend, None)
        for dtype in dtypes
        for shape in (shapes if dtype == dtypes[0] else shapes[:1])
        for kind in SPARSE_KINDS
        for m, backend in paths
    ]
    # The bitmap tiles the timing phases add (each a packing of its own).
    checks += [
        (dtypes[0], shapes[0], "bitmap50", m, backend, tile)
        for tile in EXTRA_BITMAP_TILES
        for m, backend in paths
    ]
    for dtype, shape, kind, m, backend, tile in checks:
        if not runner.time_left():
            return
        row = dict(dtype=str(dtype), shape=shape, kind=kind, m=m, backend=backend)
        _check(
            runner,
            row if tile is None else dict(row, tile=list(tile)),
            lambda dtype=dtype, shape=shape, kind=kind, m=m, backend=backend, tile=tile: (
                _linear_check(runner, dtype, shape, kind, m, backend, tile)
            ),
        )

    def determinism():
        packed = runner.packed(shapes[0], "2:4")
        x = torch.randn(4, packed.shape[1], device=runner.device, dtype=runner.dtype)
        plans = [
            Plan("skinny", 16, 64, 64, split_k=16, serial_reduction=serial)
            for serial in (True, False)
        ]
        first = sparse_linear(x, packed, plan=plans[0])
        same = all(torch.equal(sparse_linear(x, packed, plan=plans[0]), first) for _ in range(10))
        return {"ok": same and torch.equal(sparse_linear(x, packed, plan=plans[1]), first)}

    _check(runner, {"name": "split_k_bitwise_determinism"}, determinism)
    if runner.device.type == "cuda":
        _check(runner, {"name": "cuda_graph_replay"}, lambda: _graph_check(runner, shapes[0]))
        for backend in ("cusparselt", "cutlass"):
            _check(
                runner,
                {"name": f"semi_structured_round_trip_{backend}"},
                lambda backend=backend: _interop_check(runner, shapes[0], backend),
            )


def _linear_check(runner, dtype, shape, kind, m, backend, tile=None):
    torch = runner.torch
    from lcc_kernels import sparse_linear
    from lcc_kernels.bench import check_against_oracle

    dense = runner.dense(shape, kind, dtype)
    packed = runner.packed(shape, kind, dtype, tile)
    x = torch.randn(m, dense.shape[1], device=runner.device, dtype=dtype)
    bias = torch.randn(dense.shape[0], device=runner.device)
    return check_against_oracle(sparse_linear(x, packed, bias, backend=backend), x, dense, bias)


def _graph_check(runner, shape):
    torch = runner.torch
    from lcc_kernels import Plan, sparse_linear
    from lcc_kernels.bench import check_against_oracle

    dense, packed = runner.dense(shape, "bitmap50"), runner.packed(shape, "bitmap50")
    bias = torch.randn(dense.shape[0], device=runner.device)
    x = torch.randn(1, dense.shape[1], device=runner.device, dtype=runner.dtype)
    plan = Plan("skinny", 1, 64, 64, split_k=8)
    sparse_linear(x, packed, bias, plan=plan)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = sparse_linear(x, packed, bias, plan=plan)
    results = []
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        results.append(check_against_oracle(y, x, dense, bias))
    return {"ok": all(r["ok"] for r in results), "error": max(r["error"] for r in results)}


def _interop_check(runner, shape, backend):
    torch = runner.torch
    from lcc_kernels import from_torch_semi_structured, to_torch_semi_structured, unpack

    packed = runner.packed(shape, "2:4")
    back = from_torch_semi_structured(to_torch_semi_structured(packed, backend))
    return {"ok": torch.equal(unpack(back), unpack(packed))}


def _check(runner: Runner, row: dict, check) -> None:
    """Run one correctness check; its row says ok, or why not (an exception is a failure)."""
    started = time.time()
    fatal = None
    try:
        row.update(check(), status="ok")
    except Exception as error:
        row.update(ok=False, status="error", error=_describe(error))
        fatal = error
    runner.append("correctness.jsonl", dict(row, seconds=round(time.time() - started, 3)))
    print(f"correctness {'ok  ' if row.get('ok') else 'FAIL'} {row}", flush=True)
    if fatal is not None:
        _exit_if_fatal(fatal)


def phase_timing(runner: Runner, phase: str) -> None:
    jobs = phase_jobs(runner.cfg, phase, runner.sms)
    for index, job in enumerate(jobs):
        if not runner.time_left():
            print(f"{phase}: budget spent after {index}/{len(jobs)} jobs", flush=True)
            return
        runner.run(job, quick=phase == "sweep")
        last_of_problem = index + 1 == len(jobs) or (jobs[index + 1].shape, jobs[index + 1].m) != (
            job.shape,
            job.m,
        )
        if phase == "acceptance" and last_of_problem:
            _bias_cost(runner, job.shape, job.m)


def _bias_cost(runner: Runner, shape: str, m: int) -> None:
    """Best plan per kind, with and without bias, alternated twice (same run, same copies)."""
    rows = [json.loads(line) for line in (runner.out / "timings.jsonl").read_text().splitlines()]
    from lcc_kernels import Plan

    for kind in SPARSE_KINDS:
        mine = [
            r
            for r in rows
            if r["status"] == "ok"
            and r["provider"] == "ours"
            and r["kind"] == kind
            and r["shape"] == shape
            and r["m"] == m
            and r["bias"]
        ]
        if not mine:
            continue
        plan = Plan.from_dict(min(mine, key=lambda r: r["median_ms"])["plan"])
        for _ in range(2):
            for bias in (False, True):
                if runner.time_left():
                    runner.run(Job(shape, m, kind, "ours", plan, bias, "bias_cost"))


def phase_shapes(runner: Runner) -> None:
    """Breadth over depth: every shape at the first M values, then at the next ones; our
    kernels with the default rules' plan only."""
    for ms in runner.cfg.more_m:
        for shape in runner.cfg.more_shapes:
            for m in ms:
                defaults = {
                    kind: candidates(kind, *runner.shape(shape), m, runner.sms, True)[0]
                    for kind in SPARSE_KINDS
                }
                for job in timing_jobs(runner.cfg, shape, m, runner.sms, all_tilings=False):
                    if not runner.time_left():
                        return
                    if job.provider != "ours" or job.plan == defaults[job.kind]:
                        runner.run(job, quick=True)
            runner.forget_weights()


# ---------------------------------------------------------------------------- precompile


def start_precompile(out: Path, cfg: Config, workers: int) -> list[subprocess.Popen]:
    """Worker processes that run every timing job once, filling Triton's disk cache."""
    command = [sys.executable, __file__, str(out), "--precompile-worker"]
    if cfg.smoke:
        command.append("--smoke")
    return [
        subprocess.Popen(command + [f"--worker={i}/{workers}"], stdout=subprocess.DEVNULL)
        for i in range(workers)
    ]


def precompile_worker(out: Path, cfg: Config, worker: str) -> None:
    import torch

    from lcc_kernels.bench import build_calls, plan_tile

    index, count = (int(v) for v in worker.split("/"))
    runner = Runner(out, cfg, deadline=float("inf"))
    jobs = [
        job
        for phase in TIMING_PHASES
        for job in phase_jobs(cfg, phase, runner.sms)
        if job.provider in ("ours", "dense_triton")
    ]
    mine = jobs[index::count][: 2 if cfg.smoke else None]
    for job in mine:
        try:
            dense = runner.dense(job.shape, job.kind)
            packed = (
                runner.packed(job.shape, job.kind, tile=plan_tile(job.kind, job.plan))
                if job.provider == "ours"
                else None
            )
            calls, _ = build_calls(
                job.provider, dense, job.m, bias=job.bias, copies=1, plan=job.plan, packed=packed
            )
            calls[0]()
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as error:  # recorded; the timing phase will meet it again
            _log_phase(out, "precompile", "error", job=repr(job), error=_describe(error))
            _exit_if_fatal(error)


def finish_precompile(workers: list[subprocess.Popen], out: Path, wait_s: float) -> None:
    end = time.time() + wait_s
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, end - time.time()))
        except subprocess.TimeoutExpired:
            worker.kill()  # what it compiled so far stays in the cache
            worker.wait()
    codes = [worker.returncode for worker in workers]
    with open(out / "phases.jsonl", "a") as handle:
        handle.write(
            json.dumps(
                {"phase": "precompile", "event": "end", "exit_codes": codes, "time": time.time()}
            )
            + "\n"
        )


# ---------------------------------------------------------------------------- driver


def run_child(
    out: Path, cfg: Config, phases: list[str], deadline: float, commit: str | None, workers: int
) -> None:
    runner = Runner(out, cfg, deadline)
    compilers: list[subprocess.Popen] = []
    wants_compilers = workers > 0 and any(p in TIMING_PHASES for p in phases)
    for phase in phases:
        if wants_compilers and phase != "env":  # after the copy-bandwidth measurement
            compilers, wants_compilers = start_precompile(out, cfg, workers), False
        if phase in TIMING_PHASES + ("shapes",) and compilers:
            finish_precompile(compilers, out, min(PRECOMPILE_WAIT_S, deadline - time.time()))
            compilers = []
        _log_phase(out, phase, "start")
        runner.phase = phase
        runner.phase_deadline = time.time() + PHASE_CAPS[phase]
        status = "ok"
        try:
            if phase == "env":
                phase_env(runner, commit)
            elif phase == "correctness":
                phase_correctness(runner)
            elif phase == "shapes":
                phase_shapes(runner)
            else:
                phase_timing(runner, phase)
        except Exception as error:  # a bug in one phase must not stop the others
            status = "error: " + _describe(error)
            traceback.print_exc()
            _exit_if_fatal(error)
        _log_phase(out, phase, "end", status=status)
        if phase == "correctness":
            runner.forget_weights()
    if compilers:
        finish_precompile(compilers, out, 0)


def _log_phase(out: Path, phase: str, event: str, **extra) -> None:
    with open(out / "phases.jsonl", "a") as handle:
        handle.write(
            json.dumps({"phase": phase, "event": event, "time": time.time(), **extra}) + "\n"
        )
    if event != "error":
        print(f"[{time.strftime('%H:%M:%S')}] {phase} {event} {extra or ''}", flush=True)


def _phases_started(out: Path) -> list[str]:
    path = out / "phases.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["phase"] for e in events if e["event"] == "start"]


def orchestrate(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; give a new directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    e2e_budget_s = getattr(args, "e2e_budget_s", 0.0)  # callers may build args by hand
    deadline = start + args.budget_s - e2e_budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.smoke:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    remaining = ["env"] + [p for p in PHASES if p in args.phases and p != "env"]
    while remaining and time.time() < deadline:
        command = [
            sys.executable,
            __file__,
            str(out),
            "--child",
            ",".join(remaining),
            f"--deadline={deadline}",
            f"--workers={args.workers}",
        ]
        command += ["--smoke"] if args.smoke else []
        command += [f"--commit={args.commit}"] if args.commit else []
        try:
            code = subprocess.run(command, env=env, timeout=deadline - time.time() + 30).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        started = _phases_started(out)
        if code == 0:
            break
        crashed = [p for p in remaining if p in started][-1:] or remaining[:1]
        _log_phase(out, crashed[0], "crash", exit_code=code)
        remaining = remaining[remaining.index(crashed[0]) + 1 :]
    from lcc_kernels.bench_report import build_dispatch_table, format_summary, summarize

    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "dispatch_table.json").write_text(json.dumps(build_dispatch_table(out), indent=2))
    print(format_summary(summary) + f"\n(whole run {time.time() - start:.0f} s)")
    if e2e_budget_s > 0:
        run_e2e(out, start + args.budget_s - time.time(), args)
    return 0


def run_e2e(out: Path, budget_s: float, args) -> None:
    """The optional end-to-end phase: benchmarks/bench_e2e.py in its own process."""
    if budget_s < E2E_MIN_S:
        _log_phase(out, "e2e", "end", status=f"skipped: {budget_s:.0f} s left")
        return
    command = [
        sys.executable,
        str(Path(__file__).with_name("bench_e2e.py")),
        str(out / "e2e"),
        f"--budget-s={budget_s}",
        f"--dispatch-table={out / 'dispatch_table.json'}",
    ]
    command += ["--smoke"] if args.smoke else []
    command += [f"--commit={args.commit}"] if args.commit else []
    _log_phase(out, "e2e", "start")
    try:  # the bench stops starting work at budget_s; allow the last job to finish
        code = subprocess.run(
            command, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=budget_s + E2E_GRACE_S
        ).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    _log_phase(out, "e2e", "end", status="ok" if code == 0 else f"error: exit {code}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory for the results (created)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (interpreter)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="wall-clock budget of the whole run in seconds",
    )
    parser.add_argument(
        "--commit",
        default=os.environ.get("LCC_COMMIT"),
        help="git commit to record when the tree has no .git",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel compile workers (default: CPUs - 2, at most 12)",
    )
    parser.add_argument(
        "--e2e-budget-s",
        type=float,
        default=0.0,
        help="seconds of the budget kept for the end-to-end phase (0: off)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (env always runs)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precompile-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = args.phases.split(",")
    if not 0 <= args.e2e_budget_s < args.budget_s:
        parser.error(f"--e2e-budget-s must be in [0, --budget-s), got {args.e2e_budget_s}")
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if args.workers is None:
        args.workers = 1 if args.smoke else max(1, min(12, (os.cpu_count() or 2) - 2))
    if args.precompile_worker:
        precompile_worker(Path(args.out), config(args.smoke), args.worker)
        return 0
    if args.child is not None:
        run_child(
            Path(args.out),
            config(args.smoke),
            args.child.split(","),
            args.deadline,
            args.commit,
            args.workers,
        )
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
