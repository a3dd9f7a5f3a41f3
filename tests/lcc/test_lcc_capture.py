import pytest
import torch
from lcc_helpers import pruned_copy

from restorelcc.hf.families import o_proj_of
from restorelcc.lcc.capture import (
    capture_last_token,
    capture_probe_activations,
    capture_with_continuations,
)
from restorelcc.lcc.capture_taps import length_batches, o_proj_taps, run_until_stopped
from restorelcc.lcc.reference import capture_one_by_one, last_token_full_forward
from restorelcc.lcc.tokens import ProbeSequences
from restorelcc.testing import tiny_model


def random_sequences(n, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return [torch.randint(0, 256, (length,), generator=g).tolist() for length in lengths]


def probe_sequences(n=13, seed=1):
    return ProbeSequences(
        random_sequences(n, 3, 40, seed),
        random_sequences(n, 1, 9, seed + 1),
        random_sequences(n, 1, 9, seed + 2),
    )


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("llama-3x5", {}),
        ("llama-mha", {}),
        ("qwen2-gqa", {}),
        ("mistral-gqa", {}),
        ("mistral-gqa", {"sliding_window": 24}),  # forces the no-cache path for long rows
    ],
    ids=["llama-3x5", "llama-mha", "qwen2-gqa", "mistral-gqa", "mistral-window24"],
)
def test_batched_shared_capture_equals_one_sample_at_a_time(name, overrides):
    dense = tiny_model(name, **overrides)
    pruned = pruned_copy(dense)
    sequences = probe_sequences()
    ours = capture_probe_activations(dense, pruned, sequences, batch_tokens=100, progress=False)
    reference = capture_one_by_one(dense, pruned, sequences, progress=False)
    for field in ("dense", "pruned", "positive", "negative"):
        got, want = getattr(ours, field), getattr(reference, field)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=field)


@pytest.mark.parametrize("strategy", ["tree", "cache", "full"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_every_continuation_strategy_matches_one_at_a_time(monkeypatch, strategy, attention):
    import restorelcc.lcc.capture as capture

    dense = tiny_model("llama-3x5")
    dense.set_attn_implementation(attention)
    pruned = pruned_copy(dense)
    chosen = []
    original = capture.continuation_strategy

    def forced(model, longest_row):
        chosen.append(original(model, longest_row))
        return strategy

    monkeypatch.setattr(capture, "continuation_strategy", forced)
    sequences = probe_sequences(9, seed=5)
    ours = capture_probe_activations(dense, pruned, sequences, batch_tokens=90, progress=False)
    assert chosen and set(chosen) == {"tree"}  # what it would pick by itself
    reference = capture_one_by_one(dense, pruned, sequences, progress=False)
    for field in ("dense", "positive", "negative"):
        got, want = getattr(ours, field), getattr(reference, field)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=field)


@pytest.mark.parametrize("strategy", ["tree", "cache", "full"])
def test_only_the_cache_strategy_fills_a_key_value_cache(monkeypatch, strategy):
    """A model's config says ``use_cache=True``: capture must not keep a cache it never
    reads (GBs on 7B models), except for the strategy that runs on it."""
    import transformers.cache_utils

    import restorelcc.lcc.capture as capture

    cached = []
    update = transformers.cache_utils.Cache.update

    def spy(self, key_states, value_states, *args, **kwargs):
        cached.append(key_states.numel())
        return update(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(transformers.cache_utils.Cache, "update", spy)
    monkeypatch.setattr(capture, "continuation_strategy", lambda model, longest: strategy)
    model = tiny_model("llama-3x5")
    assert model.config.use_cache
    capture_last_token(model, random_sequences(4, 2, 10, 0), progress=False)
    assert cached == []
    sequences = probe_sequences(4)
    capture_with_continuations(
        model, sequences.prompts, [sequences.positives, sequences.negatives], progress=False
    )
    assert (cached != []) == (strategy == "cache")


def test_capture_runs_in_eval_mode_and_restores_the_training_flag():
    sequences = probe_sequences(5)
    conts = [sequences.positives, sequences.negatives]
    model = tiny_model("llama-3x5", attention_dropout=0.5)
    want = capture_last_token(model, sequences.prompts, progress=False)
    want_p, want_c = capture_with_continuations(model, sequences.prompts, conts, progress=False)
    model.train()
    got = capture_last_token(model, sequences.prompts, progress=False)
    assert model.training and all(m.training for m in model.modules())
    got_p, got_c = capture_with_continuations(model, sequences.prompts, conts, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(got, want) and torch.equal(got_p, want_p)
    assert all(torch.equal(g, w) for g, w in zip(got_c, want_c, strict=True))
    model.eval()
    capture_last_token(model, sequences.prompts, progress=False)
    assert not any(m.training for m in model.modules())


def test_strategy_choice():
    from restorelcc.lcc.capture_strategies import continuation_strategy

    model = tiny_model("mistral-gqa", sliding_window=24)
    assert continuation_strategy(model, 23) == "tree"
    assert continuation_strategy(model, 24) == "full"
    model.set_attn_implementation("eager")
    assert continuation_strategy(model, 10) == "tree"


def test_shape_is_samples_layers_query_heads_head_dim():
    model = tiny_model("llama-3x5")  # 3 layers x 5 heads x 1 KV head, head_dim 16
    acts = capture_last_token(model, random_sequences(4, 2, 10, 0), progress=False)
    assert acts.shape == (4, 3, 5, 16)
    assert acts.dtype == torch.float32


def test_capture_reads_the_last_real_token_of_each_sequence():
    model = tiny_model("llama-gqa")
    sequences = random_sequences(7, 1, 30, 3)
    acts = capture_last_token(model, sequences, batch_tokens=64, progress=False)
    for i, seq in enumerate(sequences):
        torch.testing.assert_close(
            acts[i], last_token_full_forward(model, seq), rtol=1e-4, atol=1e-5
        )


def test_continuations_of_different_sets_and_lengths():
    model = tiny_model("llama-gqa")
    prompts = random_sequences(5, 2, 12, 4)
    sets = [
        random_sequences(5, 1, 6, 5),
        random_sequences(5, 1, 6, 6),
        random_sequences(5, 1, 3, 7),
    ]
    p_acts, c_acts = capture_with_continuations(
        model, prompts, sets, batch_tokens=24, progress=False
    )
    assert len(c_acts) == 3
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(
            p_acts[i], last_token_full_forward(model, prompt), rtol=1e-4, atol=1e-5
        )
        for k, conts in enumerate(sets):
            want = last_token_full_forward(model, prompt + conts[i])
            torch.testing.assert_close(c_acts[k][i], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["tree", "full"])
def test_both_capture_bars_count_prompts(monkeypatch, strategy):
    """The dense capture (prompts with continuations) and the pruned one (prompts alone)
    count the same thing, prompts, also where ``full`` runs a prompt in several rows (the
    dense bar had counted rows, the pruned one sequences)."""
    import io

    from tqdm import tqdm

    import restorelcc.lcc.capture as capture

    bars = []

    def recording_bar(*args, **kwargs):  # shown, into a buffer: it keeps its counts
        bars.append(tqdm(*args, **{**kwargs, "disable": False, "file": io.StringIO()}))
        return bars[-1]

    monkeypatch.setattr(capture, "tqdm", recording_bar)
    monkeypatch.setattr(capture, "continuation_strategy", lambda model, longest: strategy)
    dense = tiny_model("llama-3x5")
    sequences = probe_sequences(9, seed=5)
    capture_probe_activations(dense, pruned_copy(dense), sequences, batch_tokens=90)
    counts = [(bar.desc, bar.unit, bar.total, bar.n) for bar in bars]
    assert counts == [("capture dense", "prompt", 9, 9), ("capture pruned", "prompt", 9, 9)]


def test_hooks_are_removed_even_on_error():
    model = tiny_model("llama-3x5")

    def boom(layer, x):
        raise RuntimeError("tap failed")

    with pytest.raises(RuntimeError, match="tap failed"), o_proj_taps(model, boom):
        run_until_stopped(lambda: model(input_ids=torch.tensor([[1, 2, 3]])))
    for layer in range(3):
        assert not o_proj_of(model, layer)._forward_pre_hooks
    with pytest.raises(IndexError):
        capture_last_token(model, [[1, 2, 10_000]], progress=False)  # id outside the vocab
    assert all(not o_proj_of(model, layer)._forward_pre_hooks for layer in range(3))


def test_length_batches_respect_the_budget_and_cover_everything():
    lengths = [5, 40, 3, 17, 17, 2, 90, 1]
    batches = length_batches(lengths, batch_tokens=40, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * longest <= 40
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_empty_input_is_refused():
    model = tiny_model("llama-3x5")
    with pytest.raises(ValueError, match="no sequences"):
        capture_last_token(model, [], progress=False)
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        capture_last_token(model, [[1], []], progress=False)


@pytest.mark.parametrize("batch_tokens", [0, -5, 2.5, True])
def test_a_batch_token_budget_that_is_not_a_positive_integer_is_refused(batch_tokens):
    model = tiny_model("llama-3x5")
    with pytest.raises(ValueError, match="batch_tokens must be a positive integer"):
        capture_last_token(model, [[1, 2]], batch_tokens=batch_tokens, progress=False)
    with pytest.raises(ValueError, match="batch_tokens must be a positive integer"):
        capture_with_continuations(model, [[1, 2]], [[[3]]], batch_tokens, progress=False)
