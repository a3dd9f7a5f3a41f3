"""Errors a user can act on. The CLI prints them as one line and exits non-zero.
``warn_user``: a warning that names the user's line, not the package's; ``layer_ranges``:
layer lists as messages write them; ``out_of_memory``: whether an exception says memory ran
out."""

import sys
import warnings
from collections.abc import Sequence


class RestoreLCCError(Exception):
    """Base class: bad input, missing asset, unsupported model, corrupt file."""


class ModelNotFoundError(RestoreLCCError):
    """A model name or path that cannot be resolved to a local checkpoint."""


class CorruptCacheError(RestoreLCCError):
    """A cached conversion that is incomplete or damaged."""


class DataError(RestoreLCCError):
    """Missing, empty, malformed or forbidden (evaluation-only) data."""


class UnsupportedModelError(RestoreLCCError):
    """A model family or layout the package does not know how to handle."""


class NonFiniteError(RestoreLCCError):
    """Activations, differences or losses that became inf or NaN (e.g. fp16 overflow)."""


class NotAModelError(UnsupportedModelError, TypeError):
    """Something other than a model (or its config) where one is expected: the
    ``(model, tokenizer)`` pair ``load_model`` returns, a name or path not loaded yet."""


class ArgumentError(RestoreLCCError, ValueError):
    """An API argument or config value that cannot be used: out of range, or of the wrong
    kind (a ``ValueError``, as the configs' other checks raise)."""


# Modules whose frames sit between a caller and the package's functions they wrap, not
# the user's line either: ``@torch.no_grad()``, ``contextlib.contextmanager``, tqdm
# iterating a package generator.
_WRAPPER_MODULES = frozenset({"contextlib", "functools", "torch.utils._contextlib", "tqdm.std"})


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside the
    ``restorelcc`` package (and the decorators wrapping its functions): the user's call,
    however deep in the package the warning is made (``plan_heads`` called directly or
    through ``restore``). What ``warnings.warn``'s ``skip_file_prefixes`` does on Python
    3.12+, for the 3.10 and 3.11 the project supports; frames are told by their module's
    name, not their file's path. Not for code that runs under ``torch.compile`` (Dynamo
    cannot trace ``sys._getframe``: a graph break)."""
    package = __name__.partition(".")[0]

    def inside(frame) -> bool:
        module = frame.f_globals.get("__name__", "")
        return module.partition(".")[0] == package or module in _WRAPPER_MODULES

    level, frame = 1, sys._getframe(0)
    while frame.f_back is not None and inside(frame):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def layer_ranges(layers: Sequence[int]) -> str:
    """Sorted layer indices as runs: ``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{first}..{last}" if last > first else f"{first}" for first, last in runs)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: CUDA's has its own type, the CPU allocator's
    is a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    import torch  # not at import time: the CLI parses its options before torch loads

    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)
