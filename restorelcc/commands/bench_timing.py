"""How ``restorelcc bench`` times its jobs: each job's call (a decode step or a prefill on
random tokens that depend on the job alone), the reference logits of the ``nn.Linear``
model and of a wider-dtype copy (``reference_logits``), the timing of every job with each
swapped call's logits checked against those first (``time_jobs``), and the check furthest
from its limit (``worst_check``). The command itself: ``restorelcc.commands.bench``."""

from __future__ import annotations

import copy

from restorelcc.errors import RestoreLCCError


class NotEnoughMemoryError(RestoreLCCError):
    """The logits check's wider copy of the model does not fit."""


def job_label(phase: str, batch: int, tokens: int) -> str:
    """A job as messages name it: ``prefill 1x64`` (batch x tokens: prompt tokens for a
    prefill, cached tokens before a decode step), which tells every job apart."""
    return f"{phase} {batch}x{tokens}"


def _job_call(model, jobs, index: int, device):
    """The call that job ``index`` times on ``model``; its random tokens depend on the job
    alone, so the swapped, ``nn.Linear`` and wider models of a job see the same ones."""
    import torch

    from restorelcc.latency import decode_step, prefill

    phase, batch, tokens = jobs[index]
    generator = torch.Generator(device=device).manual_seed(index)
    if phase == "decode":
        return decode_step(model, batch, tokens, generator)
    return prefill(model, tokens, generator)


def reference_logits(model, jobs, device, quiet: bool = False) -> list[tuple]:
    """Per job, the logits [batch, 1, vocab] of ``model`` (``nn.Linear`` projections) and
    of a copy of it in ``oracle_dtype``; a progress bar (unless ``quiet``) counts the
    calls, the longest silent phase otherwise (every job run twice, once on the wider
    copy)."""
    import torch
    from tqdm.auto import tqdm

    from restorelcc.latency import oracle_dtype

    dtype = oracle_dtype(next(model.parameters()).dtype)
    bar = tqdm(total=2 * len(jobs), desc="reference logits", unit="call", disable=quiet)

    def logits_of(on, label: str) -> list:
        results = []
        for index, job in enumerate(jobs):
            bar.set_postfix_str(f"{label} {job_label(*job)}")
            results.append(_job_call(on, jobs, index, device)())
            bar.update()
        return results

    with bar:
        plain = logits_of(model, "nn.Linear")
        try:
            wide = copy.deepcopy(model).to(dtype)
            oracle = logits_of(wide, str(dtype).removeprefix("torch."))
        except torch.OutOfMemoryError:
            raise NotEnoughMemoryError(
                f"no memory for the {dtype} copy of the model that the logits check "
                "compares against; rerun with --no-check"
            ) from None
    del wide
    return list(zip(plain, oracle, strict=True))


def time_jobs(model, jobs, device, args, label: str, bar, references=None) -> tuple[list, list]:
    """Timings of every job's call on ``model``; with ``references`` (from
    ``reference_logits``), each call's logits are checked first: (timings, checks)."""
    from restorelcc.latency import logits_check, time_call

    dtype = next(model.parameters()).dtype
    timings, checks = [], []
    for index, (phase, batch, tokens) in enumerate(jobs):
        bar.set_postfix_str(f"{label} {job_label(phase, batch, tokens)}")
        call = _job_call(model, jobs, index, device)
        if references is not None:
            plain, oracle = references[index]
            checks.append(logits_check(call(), plain, oracle, dtype))
        timings.append(
            time_call(call, device, rounds=args.rounds, rep_ms=args.rep_ms, eager=args.eager)
        )
        bar.update()
    return timings, checks


def worst_check(jobs, checks) -> dict | None:
    """The check of the job furthest from its limit, naming it; ``ok`` if every job's is."""
    if not checks:
        return None
    index = max(range(len(checks)), key=lambda i: checks[i]["error"] / checks[i]["limit"])
    worst = {**checks[index], "job": job_label(*jobs[index])}
    return {**worst, "ok": all(c["ok"] for c in checks)}
