"""restorelcc.hf.cache: a KV cache goes to transformers under the name forward takes."""

import inspect

from torch import nn

from restorelcc.hf.cache import cache_kwargs
from restorelcc.testing import tiny_model


class OldForward(nn.Module):
    """transformers before 5.2x."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
        return past_key_values


class NewForward(nn.Module):
    """transformers 5.2x and later (5.24 also accepts the old name, deprecated)."""

    def forward(self, input_ids, cache=None, use_cache=None, **kwargs):
        return cache


def test_the_cache_goes_under_the_name_forward_takes():
    cache = object()
    assert cache_kwargs(OldForward(), cache) == {"past_key_values": cache}
    assert cache_kwargs(NewForward(), cache) == {"cache": cache}
    for model in (OldForward(), NewForward()):
        assert model(None, **cache_kwargs(model, cache)) is cache


def test_the_installed_transformers_takes_the_name_chosen():
    model = tiny_model("llama-gqa")
    (name,) = cache_kwargs(model, None)
    assert name in inspect.signature(type(model).forward).parameters
