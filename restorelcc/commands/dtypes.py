"""``--dtype`` of the commands that run a model (``eval``, ``bench``, ``restore``, ``demo``,
``prune --eval``): ``auto`` is bfloat16 on CUDA (the dtype GPUs serve, score and fine-tune
in), float32 on the CPU."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_dtype_argument(
    parser: argparse.ArgumentParser,
    what: str = "the model's dtype",
    auto: str = "bfloat16 on CUDA, else float32",
) -> None:
    parser.add_argument(
        "--dtype", choices=DTYPES, type=str.lower, default="auto", help=f"{what} (auto: {auto})"
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype ``--dtype name`` means on ``device``."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def stored_dtype(config) -> torch.dtype | None:
    """The dtype (of ``DTYPES``) that a checkpoint's ``config`` records its weights in, or
    None where it records none (or ``auto``)."""
    import torch

    name = str(getattr(config, "dtype", None)).removeprefix("torch.")
    return getattr(torch, name) if name in DTYPES and name != "auto" else None
