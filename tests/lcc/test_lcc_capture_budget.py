"""``batch_tokens`` bounds the padded tokens of every forward of a continuation capture,
whichever strategy runs, and the batching does not change what is read."""

import pytest
import torch

import restorelcc.lcc.capture as capture
from restorelcc.errors import NonFiniteError
from restorelcc.hf.families import head_geometry, o_proj_of
from restorelcc.lcc.capture import capture_with_continuations
from restorelcc.lcc.reference import last_token_full_forward
from restorelcc.testing import tiny_model

FAMILIES = {  # name -> (tiny model, overrides); the windows make long rows run "full"
    "mistral-window16": ("mistral-gqa", {"sliding_window": 16}),
    "qwen2-window20": (
        "qwen2-gqa",
        {"use_sliding_window": True, "sliding_window": 20, "max_window_layers": 0},
    ),
    "gemma2-window16": ("gemma2-gqa", {"sliding_window": 16}),
    "llama-tree": ("llama-gqa", {}),
}


def random_sequences(n, low, high, seed, vocab=200):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (length,), generator=g).tolist() for length in lengths]


def mixed_case():
    """Prompts of 3..39 tokens with three continuation sets: some rows fit the windows,
    some do not."""
    prompts = random_sequences(11, 3, 40, 1)
    return prompts, [random_sequences(11, 1, 9, seed) for seed in (2, 3, 4)]


def model_of(family):
    name, overrides = FAMILIES[family]
    return tiny_model(name, **overrides)


def forward_shapes(model):
    """Record ``input_ids``' ``(rows, length)`` of every forward of ``model``."""
    shapes = []

    def record(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))

    return shapes, model.register_forward_pre_hook(record, with_kwargs=True)


def chosen_strategies(monkeypatch):
    chosen = []
    original = capture.continuation_strategy

    def spy(model, longest_row):
        chosen.append(original(model, longest_row))
        return chosen[-1]

    monkeypatch.setattr(capture, "continuation_strategy", spy)
    return chosen


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_tokens", [24, 60, 136, 1024])
def test_every_forward_stays_within_the_token_budget(monkeypatch, family, batch_tokens):
    model = model_of(family)
    chosen = chosen_strategies(monkeypatch)
    shapes, handle = forward_shapes(model)
    prompts, conts = mixed_case()
    longest_full_row = max(len(p) + len(c[i]) for c in conts for i, p in enumerate(prompts))
    capture_with_continuations(
        model, [[1] * 30] * 8, [[[2] * 2] * 8, [[3] * 2] * 8], batch_tokens, progress=False
    )
    capture_with_continuations(model, prompts, conts, batch_tokens, progress=False)
    handle.remove()
    assert ("full" in chosen) == (family != "llama-tree")
    for rows, length in shapes:
        assert rows * length <= batch_tokens or rows == 1, (rows, length)
        if "full" in chosen:  # a row alone over the budget is one prompt + continuation
            assert rows * length <= max(batch_tokens, longest_full_row), (rows, length)


def test_a_prompts_full_rows_may_run_in_separate_forwards():
    """Each ``prompt + continuation`` fits the budget, both together do not."""
    model = model_of("mistral-window16")
    shapes, handle = forward_shapes(model)
    prompts = [[5] * 20, [6] * 19, [7] * 20]
    conts = [[[8] * 5, [9] * 4, [10] * 5], [[11] * 5, [12] * 6, [13] * 3]]
    got_p, got_c = capture_with_continuations(model, prompts, conts, 30, progress=False)
    handle.remove()
    assert shapes and all(rows == 1 and length <= 30 for rows, length in shapes), shapes
    for i, prompt in enumerate(prompts):
        want = last_token_full_forward(model, prompt)
        torch.testing.assert_close(got_p[i], want, rtol=1e-4, atol=1e-5)
        for k, cont in enumerate(conts):
            want = last_token_full_forward(model, prompt + cont[i])
            torch.testing.assert_close(got_c[k][i], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_tokens", [24, 90, 1024])
def test_budgeted_batches_read_what_one_sequence_at_a_time_reads(family, batch_tokens):
    model = model_of(family)
    prompts, conts = mixed_case()
    got_p, got_c = capture_with_continuations(model, prompts, conts, batch_tokens, progress=False)
    assert got_p.shape == (11, *got_c[0].shape[1:]) and len(got_c) == 3
    for i, prompt in enumerate(prompts):
        want = last_token_full_forward(model, prompt)
        torch.testing.assert_close(got_p[i], want, rtol=1e-4, atol=1e-5, msg=f"prompt {i}")
        for k, cont in enumerate(conts):
            want = last_token_full_forward(model, prompt + cont[i])
            msg = f"prompt {i}, set {k}"
            torch.testing.assert_close(got_c[k][i], want, rtol=1e-4, atol=1e-5, msg=msg)


MARKER = 250  # a token id random_sequences never draws


def overflow_at_marker(model, layer):
    """Make ``layer``'s o_proj input inf at every position holding ``MARKER``."""
    ids = []
    d = head_geometry(model).head_dim

    def remember(module, args, kwargs):
        ids[:] = [kwargs["input_ids"]]

    def overflow(module, args):
        x = args[0].clone()
        x[(ids[0] == MARKER).to(x.device), d + 1] = float("inf")
        return (x,)

    return [
        model.register_forward_pre_hook(remember, with_kwargs=True),
        o_proj_of(model, layer).register_forward_pre_hook(overflow),
    ]


@pytest.mark.parametrize("family", ["mistral-window16", "llama-tree"])
def test_a_non_finite_read_names_its_continuation_set_and_prompt(family):
    model = model_of(family)
    prompts, conts = mixed_case()
    branch = conts[1][4]
    conts[1][4] = branch[:-1] + [MARKER]  # the last token of prompt 4's set-1 branch
    handles = overflow_at_marker(model, layer=1)
    pattern = r"after continuation set 1: first at layer 1, head 1 \(sample 4\)"
    with pytest.raises(NonFiniteError, match=pattern):
        capture_with_continuations(model, prompts, conts, 60, progress=False)
    conts[1][4] = branch
    prompts[6] = prompts[6][:-1] + [MARKER]
    with pytest.raises(NonFiniteError, match=r"prompts' end: first at layer 1.*\(sample 6\)"):
        capture_with_continuations(model, prompts, conts, 60, progress=False)
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("batch_tokens", [26, 60])
def test_the_cache_strategy_stays_within_the_token_budget(monkeypatch, batch_tokens):
    """It had been sized on the tree rows: its continuation forward (a row per set, as long
    as the longest continuation) had run (4, 10) = 40 tokens for a budget of 26."""
    model = model_of("llama-tree")
    prompts = [[1, 2], [5, 6], [7, 8, 9]]
    conts = [[[3] * 10, [3], [3] * 4], [[4], [4] * 10, [4] * 2]]
    tree = capture_with_continuations(model, prompts, conts, batch_tokens, progress=False)
    monkeypatch.setattr(capture, "continuation_strategy", lambda model, longest_row: "cache")
    shapes, handle = forward_shapes(model)
    cached = capture_with_continuations(model, prompts, conts, batch_tokens, progress=False)
    handle.remove()
    for rows, length in shapes:
        assert rows * length <= batch_tokens or rows == 1, (rows, length)
    torch.testing.assert_close(cached[0], tree[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(cached[1], tree[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
