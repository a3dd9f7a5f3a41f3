"""The GPU suite's job runner: weights built once per (shape, kind, tile), one timing per
job appended to timings.jsonl / .csv, a failing provider recorded and the run going on.
Before each item it appends a marker to the scratch directory's progress.jsonl, so that
after a fatal CUDA error the orchestrator resumes the same phase after that item."""

from __future__ import annotations

import csv
import json
import os
import time
import zlib
from pathlib import Path

from suite_plans import Config, Job, Rounds

from lcc_kernels.bench_report import load_env

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
    "round",
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


class Runner:
    """Runs jobs in the child process: weights cached per (shape, kind), rows appended.
    `scratch`: a directory outside the results for progress markers (None: no markers);
    `faulted`: fault_key()s of jobs that ended an earlier child (their like is skipped)."""

    def __init__(
        self, out: Path, cfg: Config, deadline: float, scratch: Path | None = None
    ) -> None:
        import torch

        from lcc_kernels.bench import cutlass_matmul_supported

        self.torch = torch
        self.out, self.cfg, self.deadline, self.scratch = out, cfg, deadline, scratch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count
            if self.device.type == "cuda"
            else 4
        )
        # On an H100/H200 CUTLASS timing jobs would only fail, each after converting.
        self.cutlass_matmul = cutlass_matmul_supported(self.device)
        self.copy_bw = load_env(out).get("copy_bandwidth_bytes_per_s")
        self.weights: dict = {}
        self.faulted: list = []
        self.phase = ""
        self.phase_deadline = deadline
        self.later_reserve_s = 0.0  # left for later phases' required rows by optional work

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

    def time_left(self, phase_reserve_s: float = 0.0, optional: bool = False) -> bool:
        """Whether an item may start and still leave `phase_reserve_s` (for the phase's
        later passes) of the phase cap and of the budget, and for `optional` work also
        the later phases' reserve of the budget."""
        now = time.time() + phase_reserve_s
        later = self.later_reserve_s if optional else 0.0
        return now < self.phase_deadline and now + later < self.deadline

    def append(self, name: str, row: dict) -> None:
        with open(self.out / name, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def mark(self, step: str, index: int, item) -> None:
        """Record in the scratch directory that `item` (index `index` of pass `step` of
        this phase) starts: a child that dies in it is resumed after it."""
        if self.scratch is None:
            return
        marker = {
            "phase": self.phase,
            "pass": step,
            "index": index,
            "item": repr(item)[:600],
            "fault_key": fault_key(item) if isinstance(item, Job) else None,
        }
        with open(self.scratch / "progress.jsonl", "a") as handle:
            handle.write(json.dumps(marker) + "\n")

    def run(self, job: Job, quick: bool = False) -> dict | None:
        """Time one job and record its row (None: a CUTLASS job where its matmul cannot run)."""
        prepared = self._prepare(job)
        if prepared is None or prepared[0]["status"] != "ok":
            return prepared and prepared[0]
        return self._time(*prepared, quick=quick)

    def run_rounds(self, rounds: Rounds) -> list[dict]:
        """Build each job's calls once, then time the jobs in turn `rounds.rounds` times."""
        prepared = [p for p in map(self._prepare, rounds.jobs) if p and p[0]["status"] == "ok"]
        return [
            self._time(dict(row, round=r), calls, nbytes)
            for r in range(rounds.rounds)
            for row, calls, nbytes in prepared
        ]

    def skip(self, job: Job, reason: str) -> dict | None:
        """Record a job that did not run: status "skipped", the reason in `error` (no row for
        a CUTLASS job where its matmul cannot run)."""
        if job.provider == "cutlass" and not self.cutlass_matmul:
            return None
        row = dict(self._row(job), status="skipped", error=reason)
        self._record_timing(row)
        return row

    def _row(self, job: Job) -> dict:
        n, k = self.shape(job.shape)
        return {
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

    def _prepare(self, job: Job) -> tuple[dict, list, int] | None:
        """(row, calls, bytes per call); an error row already recorded comes back with no
        calls; None for a CUTLASS job where its matmul cannot run."""
        from lcc_kernels.bench import build_calls, copies_for, plan_tile

        if job.provider == "cutlass" and not self.cutlass_matmul:
            return None
        if fault_key(job) in self.faulted:
            return (
                self.skip(
                    job,
                    "skipped: a job of the same provider, kind and plan "
                    "ended an earlier child with a fatal CUDA error",
                ),
                [],
                0,
            )
        row = self._row(job)
        try:
            dense = self.dense(job.shape, job.kind)
            packed = (
                self.packed(job.shape, job.kind, tile=plan_tile(job.kind, job.plan))
                if job.provider in ("ours", "cusparselt", "cutlass")
                else None
            )
            weight_bytes = (
                packed.nbytes if packed is not None else dense.numel() * dense.element_size()
            )
            calls, nbytes = build_calls(
                job.provider,
                dense,
                job.m,
                bias=job.bias,
                copies=copies_for(weight_bytes, self.device),
                plan=job.plan,
                packed=packed,
            )
        except Exception as error:  # one provider failing must not end the run
            return self._failed(row, error), [], 0
        return dict(row, status="ok"), calls, nbytes

    def _time(self, row: dict, calls: list, nbytes: int, quick: bool = False) -> dict:
        from lcc_kernels.bench import time_calls

        try:
            rep = max(self.cfg.rep_ms // (2 if quick else 1), 1)
            timing = time_calls(
                calls, rep_ms=rep, warmup_ms=max(rep // 4, 1), eager=row["tag"] == "eager"
            )
        except Exception as error:
            return self._failed(row, error)
        gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
        row = dict(
            row,
            **timing,
            status="ok",
            bytes=nbytes,
            gbps=gbps,
            copy_fraction=gbps * 1e9 / self.copy_bw if self.copy_bw else None,
        )
        self._record_timing(row)
        return row

    def _failed(self, row: dict, error: Exception) -> dict:
        row = dict(row, status="error", error=describe_error(error))
        self._record_timing(row)
        exit_if_fatal(error)
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


def fault_key(job: Job) -> list:
    """What identifies a job's kernel launch: [provider, kind, plan as a dict or None]."""
    return [job.provider, job.kind, job.plan.to_dict() if job.plan else None]


def log_phase(out: Path, phase: str, event: str, **extra) -> None:
    """Append an event to OUT/phases.jsonl (and print it, but for errors)."""
    with open(out / "phases.jsonl", "a") as handle:
        handle.write(
            json.dumps({"phase": phase, "event": event, "time": time.time(), **extra}) + "\n"
        )
    if event != "error":
        print(f"[{time.strftime('%H:%M:%S')}] {phase} {event} {extra or ''}", flush=True)


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:600]


def exit_if_fatal(error: BaseException) -> None:
    if any(marker in str(error) for marker in FATAL_CUDA):
        print(f"fatal CUDA error, ending this child: {describe_error(error)}", flush=True)
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
    if plan["backend"] == "streams":
        return (
            f"streams m{plan['block_m']} n{plan['block_n']} s{plan['split_k']} "
            f"w{plan['num_warps']}{'' if plan['serial_reduction'] else ' 2pass'}"
        )
    return plan["backend"]
