"""The perplexity's window and stride: ``perplexity_windows``, ``evaluate_model``'s
``ppl_window``/``ppl_stride`` and ``restorelcc eval --ppl-window/--ppl-stride`` (the
paper's WikiText-2 protocol is disjoint windows of the model's length: window = stride)."""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from restorelcc import assets, cli
from restorelcc import evaluate as evaluate_module
from restorelcc.eval.perplexity import (
    perplexity_report,
    perplexity_windows,
    scored_count,
    token_stream,
    window_plan,
)
from restorelcc.evaluate import evaluate_model
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model

FLAGS = ("--ppl-window", "--ppl-stride")
TEXT = "The quiet river ran past the mill and the baker's lanterns. " * 30


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text(TEXT)
    return path


def test_the_defaults_stay_512_and_256_and_follow_a_shorter_model():
    assert perplexity_windows(None, None) == (512, 256)
    assert perplexity_windows(None, None, limit=2048) == (512, 256)
    assert perplexity_windows(None, None, limit=256) == (256, 128)  # as it was cut before
    assert perplexity_windows(None, 64, limit=256) == (256, 64)
    assert perplexity_windows(2048, None, limit=2048) == (2048, 1024)  # half the window
    assert perplexity_windows(2048, 2048, limit=2048) == (2048, 2048)  # the paper's protocol


@pytest.mark.parametrize(
    ("window", "stride", "limit", "message"),
    [
        (64, 100, None, "--ppl-stride 100: longer than the window, 64, so tokens between"),
        (None, 300, 256, "--ppl-stride 300: longer than the window, 256 (the default 512 cut"),
        (None, 600, None, "--ppl-stride 600: longer than the window, 512, so"),
        (4096, None, 2048, "--ppl-window 4096: longer than the 2048 tokens the model takes"),
        (1, None, None, "--ppl-window must be at least 2 (one id predicts nothing), got 1"),
        (0, None, None, "--ppl-window must be a positive integer, got 0"),
        (64, 0, None, "--ppl-stride must be a positive integer, got 0"),
        (64.0, None, None, "--ppl-window must be a positive integer, got 64.0"),
    ],
)
def test_bad_windows_and_strides_are_refused_naming_the_option(window, stride, limit, message):
    with pytest.raises(ValueError) as error:
        perplexity_windows(window, stride, limit, FLAGS)
    assert str(error.value).startswith(message)


def test_disjoint_windows_score_each_window_on_its_own_context():
    """window == stride: every window is scored alone, its first id unscored (the paper's
    WikiText-2 protocol), and the report says so."""
    model, tok = tiny_model("llama-3x5"), byte_tokenizer()
    result = perplexity_report(model, tok, texts=[TEXT], tokens=100, window=32, stride=32)
    assert (result.window, result.stride) == (32, 32)
    ids = token_stream(tok, [TEXT], 100)
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, 101, 32):
            window = ids[begin : begin + 32]
            logits = model(window[None]).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
            count += len(window) - 1
    assert [scored for _, _, scored in window_plan(101, 32, 32)] == [31, 31, 31, 4]
    assert result.tokens == count == scored_count(100, 32, 32) == 97
    assert scored_count(100, 32, 16) == scored_count(100, 512, 256) == 100  # overlapping
    assert result.nll == pytest.approx(nll, rel=1e-5)


def test_evaluate_model_takes_the_windows_and_refuses_before_the_tasks(text_file, monkeypatch):
    model, tok = tiny_model("llama-3x5"), byte_tokenizer()
    settings = dict(tasks="none", ppl_tokens=100, ppl_source=str(text_file), progress=False)
    report = evaluate_model(model, tok, ppl_window=32, ppl_stride=32, **settings)
    expected = perplexity_report(model, tok, texts=[TEXT], tokens=100, window=32, stride=32)
    assert (report["perplexity"]["window"], report["perplexity"]["stride"]) == (32, 32)
    assert report["perplexity"]["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert evaluate_model(model, tok, **settings)["perplexity"]["window"] == 256  # the default

    def no_task(*args, **kwargs):
        raise AssertionError("a task ran before the window was checked")

    monkeypatch.setattr(evaluate_module, "evaluate_task", no_task)
    settings["tasks"] = "arc_easy"
    with pytest.raises(ValueError, match="ppl_window 1024: longer than the 256 tokens"):
        evaluate_model(model, tok, ppl_window=1024, **settings)
    with pytest.raises(ValueError, match="ppl_stride 64: longer than the window, 32"):
        evaluate_model(model, tok, ppl_window=32, ppl_stride=64, **settings)


def test_eval_scores_and_reports_the_window_and_stride_asked_for(tiny_dir, text_file, tmp_path):
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text_file),
            "--ppl-tokens", "100", "--ppl-window", "32", "--ppl-stride", "32",
            "--json", str(out), "--quiet"]  # fmt: skip
    with warnings.catch_warnings():  # 97 scored of 100: the windows' first ids, not the text
        warnings.simplefilter("error")
        assert cli.main(argv) == 0
    ppl = json.loads(out.read_text())["perplexity"]
    assert (ppl["window"], ppl["stride"], ppl["tokens"]) == (32, 32, 97)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    expected = perplexity_report(
        model, byte_tokenizer(), texts=[TEXT], tokens=100, window=32, stride=32, progress=False
    )
    assert ppl["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


def test_eval_prints_the_window_and_stride_in_the_perplexity_line(
    tiny_dir, text_file, tmp_path, capsys
):
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text_file),
            "--ppl-tokens", "100", "--ppl-window", "48", "--json", str(tmp_path / "r.json"),
            "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert f"perplexity ({text_file}, 100 tokens, window 48, stride 24)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-window", "64", "--ppl-stride", "100"], "--ppl-stride 100: longer than the win"),
        (["--ppl-window", "1024"], "--ppl-window 1024: longer than the 256 tokens the model"),
        (["--ppl-stride", "300"], "--ppl-stride 300: longer than the window, 256 (the default"),
        (["--ppl-window", "1"], "--ppl-window must be at least 2"),
        (["--no-ppl", "--ppl-window", "64"], "--ppl-window: --no-ppl scores no perplexity"),
        (
            ["--no-ppl", "--ppl-window", "64", "--ppl-stride", "64"],
            "--ppl-window, --ppl-stride: --no-ppl scores no perplexity for them to set",
        ),
    ],
)
def test_eval_refuses_bad_windows_before_the_model_loads(
    tiny_dir, tmp_path, capsys, monkeypatch, flags, message
):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(assets, "load_model", refuse)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy", "--json", str(out), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc eval: error: ") and len(err.splitlines()) == 1
    assert message in err and not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-window", "0"], "argument --ppl-window: 0 is not positive"),
        (["--ppl-stride", "-2"], "argument --ppl-stride: -2 is not positive"),
        (["--ppl-window", "half"], "argument --ppl-window: 'half' is not an integer"),
    ],
)
def test_eval_parses_windows_as_positive_counts_or_auto(flags, message, capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", *flags])
    assert message in capsys.readouterr().err
    for argv in (["eval", "--ppl-window", "auto", "--ppl-stride", "AUTO"], ["eval"]):
        args = parser.parse_args(argv)
        assert (args.ppl_window, args.ppl_stride) == (None, None)


def test_a_text_that_runs_out_under_disjoint_windows_still_warns(tiny_dir, text_file, tmp_path):
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text_file),
            "--ppl-tokens", "5000", "--ppl-window", "256", "--ppl-stride", "256",
            "--json", str(tmp_path / "r.json"), "--quiet"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"--ppl-tokens 5000: .* ran out after \d+ scored"):
        assert cli.main(argv) == 0


def test_a_limit_equal_to_the_default_window_does_not_cut_it():
    """The default window is said to be cut only where the model's limit is below 512: a
    limit of exactly 512 leaves it whole, and the stride's error says so."""
    unscored = "so tokens between windows would go unscored; give --ppl-stride"
    with pytest.raises(ValueError) as whole:
        perplexity_windows(None, 600, 512, FLAGS)
    message = f"--ppl-stride 600: longer than the window, 512, {unscored} 512 or less"
    assert str(whole.value) == message
    with pytest.raises(ValueError) as cut:
        perplexity_windows(None, 600, 300, FLAGS)
    assert str(cut.value) == (
        "--ppl-stride 600: longer than the window, 300 (the default 512 cut to the model's "
        f"length), {unscored} 300 or less"
    )


def test_the_default_window_follows_a_tokenizer_shorter_than_the_config():
    """``perplexity_report``'s default window is the lesser of the model's positions (256)
    and its tokenizer's limit (64), not the positions alone."""
    model, tok = tiny_model("llama-3x5"), byte_tokenizer()
    tok.model_max_length = 64
    result = perplexity_report(model, tok, texts=[TEXT], tokens=100, progress=False)
    assert (result.window, result.stride) == (64, 32)


def test_evaluate_model_refuses_a_window_past_the_tokenizer_before_the_tasks(
    text_file, monkeypatch
):
    """A ``ppl_window`` the model's positions take (256) but its tokenizer does not (64) is
    refused before the first task runs, not after the tasks, at the perplexity."""

    def no_task(*args, **kwargs):
        raise AssertionError("a task ran before the window was checked")

    monkeypatch.setattr(evaluate_module, "evaluate_task", no_task)
    tok = byte_tokenizer()
    tok.model_max_length = 64
    with pytest.raises(ValueError, match="^ppl_window 128: longer than the 64 tokens the model"):
        evaluate_model(
            tiny_model("llama-3x5"),
            tok,
            tasks="arc_easy",
            ppl_tokens=100,
            ppl_source=str(text_file),
            ppl_window=128,
            progress=False,
        )
