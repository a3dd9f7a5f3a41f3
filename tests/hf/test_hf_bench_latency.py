"""``restorelcc.latency``, which ``restorelcc bench`` times with: a decode step after its
context and a prefill compute what a plain forward computes, and repeat (also on a sliding
window cache); the CPU timer counts its rounds."""

import pytest
import torch

from restorelcc.latency import decode_step, prefill, time_call
from restorelcc.testing import tiny_model


@torch.no_grad()
def test_decode_step_is_a_repeatable_step_after_its_context():
    model = tiny_model("llama-3x5").eval()
    step = decode_step(model, batch=2, context=7, generator=torch.Generator().manual_seed(3))
    first, second = step(), step()  # the cache is reset between calls
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, model.config.vocab_size, (2, 7), generator=generator)
    token = torch.randint(0, model.config.vocab_size, (2, 1), generator=generator)
    full = model(torch.cat([context, token], dim=1)).logits[:, -1:]
    assert first.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, second)


@torch.no_grad()
def test_prefill_is_the_last_logits_of_a_plain_forward():
    model = tiny_model("qwen2-gqa").eval()
    run = prefill(model, tokens=9, generator=torch.Generator().manual_seed(5))
    ids = torch.randint(
        0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(run(), model(ids).logits[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(), model(ids).logits[:, -1:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_calls_repeat_on_a_sliding_window_cache():
    """Mistral's static cache layers slide: they also keep their length as a Python int,
    which the reset must rewind too (else later calls roll the cache)."""
    model = tiny_model("mistral-gqa").eval()
    step = decode_step(model, batch=2, context=7, generator=torch.Generator().manual_seed(3))
    first, second, third = step(), step(), step()
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, model.config.vocab_size, (2, 7), generator=generator)
    token = torch.randint(0, model.config.vocab_size, (2, 1), generator=generator)
    full = model(torch.cat([context, token], dim=1)).logits[:, -1:]
    torch.testing.assert_close(first, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, second) and torch.equal(first, third)
    run = prefill(model, tokens=9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(run(), run())


def test_time_call_on_the_cpu_counts_its_rounds():
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), rounds=4)
    assert len(calls) == 5  # one warm-up
    assert 0 <= timing["p20_ms"] <= timing["median_ms"] <= timing["p80_ms"]
    assert timing["method"] == "wall clock, 4 rounds"
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        time_call(lambda: None, torch.device("cpu"), rounds=0)
