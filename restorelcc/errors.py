"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


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
