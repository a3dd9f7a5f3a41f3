"""Long perplexity windows run fewer at a time, alike in ``eval``, ``prune --eval`` (and
``restore --eval``: tests/lcc), so that the logits they keep stay near those of 4 windows of
512; a window the tokenizer cannot take is refused naming ``--ppl-window``."""

import json

import pytest

import restorelcc.eval.perplexity as perplexity_module
from restorelcc import cli
from restorelcc.eval.perplexity import windows_per_forward
from restorelcc.evaluate import evaluate_model
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A tiny checkpoint whose config takes 4096 positions (rotary: any position works)."""
    folder = save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("long"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return folder


@pytest.fixture
def batches(monkeypatch):
    """The windows per forward of each stream_nll call, in order."""
    seen = []
    real = perplexity_module.stream_nll

    def spy(model, ids, window, stride, batch_size, *args, **kwargs):
        seen.append(batch_size)
        return real(model, ids, window, stride, batch_size, *args, **kwargs)

    monkeypatch.setattr(perplexity_module, "stream_nll", spy)
    return seen


def test_windows_per_forward_keeps_about_the_logits_of_four_windows_of_512():
    assert [windows_per_forward(w) for w in (64, 512, 1024, 2048, 4096)] == [4, 4, 2, 1, 1]
    assert windows_per_forward(1024, per_default_window=0) == 1


@pytest.mark.parametrize(("window", "expected"), [(2048, 1), (1024, 2), (512, 4)])
def test_eval_and_prune_run_as_many_windows_per_forward(
    long_model, batches, tmp_path, window, expected
):
    flags = ["--ppl-tokens", str(2 * window), "--ppl-window", str(window), "--quiet"]
    argv = ["eval", "--model", str(long_model), "--tasks", "none", "--device", "cpu",
            "--json", str(tmp_path / "eval.json"), *flags]  # fmt: skip
    assert cli.main(argv) == 0
    argv = ["prune", "--model", str(long_model), "--method", "magnitude", "--device", "cpu",
            "--out", str(tmp_path / "pruned"), "--eval", *flags]  # fmt: skip
    assert cli.main(argv) == 0
    assert batches == [expected, expected]


def test_eval_names_the_option_a_short_tokenizer_refuses(long_model, capsys, tokenizers_take_48):
    argv = ["eval", "--model", str(long_model), "--tasks", "none", "--ppl-window", "64", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorelcc eval: error: --ppl-window 64: longer than the 48 tokens")


def test_evaluate_model_runs_windows_per_forward_by_its_batch_size(batches):
    """``evaluate_model``'s ``batch_size`` sets the perplexity's windows per forward: a
    quarter of it at windows of 512 or less, 4 -> 1, 8 -> 2, 16 -> 4 (here at the tiny
    model's default window, 256), not 4 whatever the batch size."""
    model, tok = tiny_model("llama-3x5"), byte_tokenizer()
    for batch_size in (4, 8, 16):
        report = evaluate_model(
            model, tok, tasks="none", ppl_tokens=100, batch_size=batch_size, progress=False
        )
        assert report["perplexity"]["window"] == 256
    assert batches == [1, 2, 4]
