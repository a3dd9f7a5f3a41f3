"""Pass a KV cache to a transformers model under the name its ``forward`` takes.

transformers renamed the argument from ``past_key_values`` to ``cache`` during 5.x (5.24
takes both and warns that the old name goes in 5.40; 5.17, the version on the lent GPU
machines, knows only the old one and silently ignores ``cache=``, which makes a cached
forward run without its prefix).
"""

from __future__ import annotations

import functools
import inspect

from torch import nn


@functools.cache
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model: nn.Module, cache) -> dict:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever ``model`` takes."""
    return {_cache_argument(type(model)): cache}
