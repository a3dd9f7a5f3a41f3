"""How ``restorelcc bench`` times its jobs: each job's call (a decode step or a prefill on
random tokens that depend on the job alone), what the check of the swapped calls compares
with (``reference_logits``: the ``nn.Linear`` model's logits of every job and its dense
projections), the timing of every job with each swapped call checked first
(``time_jobs``), and the summary of those checks (``summarise_checks``). Memory running
out during the check says to rerun with ``--no-check`` (``memory_for_the_check``). The
command itself: ``restorelcc.commands.bench``.

The check of a swapped call (``restorelcc.latency.check_projections``) holds each swapped
projection's output, on the input the call gave it, to kernels.md's rule against its
dense weight in float64: the verdict. How far the call's logits are from the
``nn.Linear`` model's is reported beside it, not judged: after many layers the two
models' rounding differences compound, and a correct swap may differ more there than the
rule allows one operation."""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

from restorelcc.errors import RestoreLCCError, out_of_memory

# What the check holds in memory besides the model, as --no-check's help and the
# out-of-memory message say it (64 MiB: restorelcc.latency.CHECK_BLOCK_BYTES).
CHECK_MEMORY = (
    "the dense weights of the swapped projections beside their packed copies (as many "
    "bytes again as those weights, until the swapped calls are timed) and, while it checks "
    "one projection, nn.Linear's output of it (an aligned copy of its weight too, where it "
    "was loaded unaligned) and float64 blocks of about 64 MiB"
)


class NotEnoughMemoryError(RestoreLCCError):
    """The check of the swapped calls does not fit in memory."""


class References(NamedTuple):
    """What ``time_jobs`` checks each swapped call against: per job the ``nn.Linear``
    model's logits [batch, 1, vocab], and its dense projections by name
    (``restorelcc.latency.dense_projections``), taken before the swap."""

    logits: list
    dense: dict


def job_label(phase: str, batch: int, tokens: int) -> str:
    """A job as messages name it: ``prefill 1x64`` (batch x tokens: prompt tokens for a
    prefill, cached tokens before a decode step), which tells every job apart."""
    return f"{phase} {batch}x{tokens}"


@contextlib.contextmanager
def memory_for_the_check():
    """Turn memory running out (CUDA's ``OutOfMemoryError`` or the CPU allocator's
    ``RuntimeError``) into a ``NotEnoughMemoryError`` that says what the check holds and
    to rerun with ``--no-check``."""
    try:
        yield
    except RuntimeError as error:
        if not out_of_memory(error):
            raise
        raise NotEnoughMemoryError(
            f"out of memory for the check of the swapped calls, which holds {CHECK_MEMORY}; "
            "rerun with --no-check"
        ) from error


def _job_call(model, jobs, index: int, device):
    """The call that job ``index`` times on ``model``; its random tokens depend on the job
    alone, so the swapped and ``nn.Linear`` models of a job see the same ones."""
    import torch

    from restorelcc.latency import decode_step, prefill

    phase, batch, tokens = jobs[index]
    generator = torch.Generator(device=device).manual_seed(index)
    if phase == "decode":
        return decode_step(model, batch, tokens, generator)
    return prefill(model, tokens, generator)


def reference_logits(model, jobs, device, quiet: bool = False) -> References:
    """Per job, the logits [batch, 1, vocab] of ``model`` (``nn.Linear`` projections, not
    swapped yet), and its dense projections; a progress bar (unless ``quiet``) counts the
    calls."""
    from tqdm.auto import tqdm

    from restorelcc.latency import dense_projections

    logits = []
    with tqdm(total=len(jobs), desc="reference logits", unit="call", disable=quiet) as bar:
        for index, job in enumerate(jobs):
            bar.set_postfix_str(f"nn.Linear {job_label(*job)}")
            logits.append(_job_call(model, jobs, index, device)())
            bar.update()
    return References(logits, dense_projections(model))


def _checked(model, call, label: str, references: References, index: int) -> dict:
    """``check_call``'s result for ``call`` on the swapped ``model`` (job ``index``, named
    ``label``), against the ``nn.Linear`` model's logits and dense projections."""
    from restorelcc.latency import check_call

    with memory_for_the_check():
        check = check_call(model, call, references.dense, references.logits[index])
    return {**check, "job": label}


def time_jobs(
    model, jobs, device, args, label: str, bar, references: References | None = None
) -> tuple[list, list]:
    """Timings of every job's call on ``model``; with ``references`` (from
    ``reference_logits``), each call is checked first (``_checked``): (timings, checks)."""
    from restorelcc.latency import time_call

    timings, checks = [], []
    for index, (phase, batch, tokens) in enumerate(jobs):
        name = job_label(phase, batch, tokens)
        bar.set_postfix_str(f"{label} {name}")
        call = _job_call(model, jobs, index, device)
        if references is not None:
            checks.append(_checked(model, call, name, references, index))
        timings.append(
            time_call(call, device, rounds=args.rounds, rep_ms=args.rep_ms, eager=args.eager)
        )
        bar.update()
    return timings, checks


def summarise_checks(checks: list[dict]) -> dict | None:
    """The checks of every job (``time_jobs``') in one: ``ok`` if every job's is, the jobs
    that failed (``failed_jobs``, by label) and the projections that failed in any
    (``failed_projections``), the projection furthest from its limit (``job``, ``module``,
    ``error``, ``torch_error``, ``limit``) and the largest logits difference from the
    ``nn.Linear`` model (``logits_difference``, ``logits_difference_job``). None
    without checks."""
    from restorelcc.latency import over_limit

    if not checks:
        return None
    worst = max(checks, key=over_limit)
    differences = [c["logits_difference"] for c in checks]
    widest = max(range(len(checks)), key=lambda i: _or_inf(differences[i]))
    return {
        "ok": all(c["ok"] for c in checks),
        "jobs": len(checks),
        "failed_jobs": [c["job"] for c in checks if not c["ok"]],
        "failed_projections": list(dict.fromkeys(m for c in checks for m in c["failed"])),
        "non_finite_logits": [c["job"] for c in checks if not c["logits_finite"]],
        "projections": worst["projections"],
        **{key: worst[key] for key in ("job", "module", "error", "torch_error", "limit")},
        "logits_difference": differences[widest],
        "logits_difference_job": checks[widest]["job"],
    }


def _or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf
