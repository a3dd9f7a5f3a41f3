"""The GPU suite's job runner: weights built once per (shape, kind, tile), one timing per
job appended to timings.jsonl / .csv, a failing provider recorded and the run going on."""

from __future__ import annotations

import csv
import json
import os
import time
import zlib
from pathlib import Path

from suite_plans import Config, Job

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
        # torch's CUTLASS 2:4 matmul runs on compute capability 8.x only (an H100/H200 is
        # 9.0): there its timing jobs would only fail, each after converting the weights.
        self.cutlass_matmul = (
            self.device.type != "cuda" or torch.cuda.get_device_capability(self.device)[0] == 8
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

    def run(self, job: Job, quick: bool = False) -> dict | None:
        """Time one job and record its row (None: a CUTLASS job where its matmul cannot run)."""
        from lcc_kernels.bench import build_calls, copies_for, plan_tile, time_calls

        if job.provider == "cutlass" and not self.cutlass_matmul:
            return None

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
            timing = time_calls(
                calls, rep_ms=rep, warmup_ms=max(rep // 4, 1), eager=job.tag == "eager"
            )
            gbps = nbytes / (timing["median_ms"] * 1e-3) / 1e9
            row.update(
                timing,
                status="ok",
                bytes=nbytes,
                gbps=gbps,
                copy_fraction=gbps * 1e9 / self.copy_bw if self.copy_bw else None,
            )
        except Exception as error:  # one provider failing must not end the run
            row.update(status="error", error=describe_error(error))
            self._record_timing(row)
            exit_if_fatal(error)
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
