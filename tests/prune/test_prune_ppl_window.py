"""``restorelcc prune --eval --ppl-window N --ppl-stride N``: the perplexity's windows,
refused without ``--eval`` and where the model cannot take them, recorded in the report."""

import json

import pytest

from restorelcc.cli import main


def prune_argv(tiny_dir, out, *extra) -> list[str]:
    return ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def test_eval_scores_with_the_window_and_stride_asked_for(tiny_dir, tmp_path):
    out = tmp_path / "pruned"
    flags = ["--eval", "--ppl-tokens", "100", "--ppl-window", "32", "--ppl-stride", "32"]
    assert main(prune_argv(tiny_dir, out, *flags)) == 0
    ppl = json.loads((out / "prune_report.json").read_text())["evaluation"]["perplexity"]
    # 100 tokens, less the first of each later window: 4 disjoint windows of 32
    assert (ppl["window"], ppl["stride"], ppl["tokens"]) == (32, 32, 97)
    assert 1 < ppl["perplexity"] < float("inf")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-window", "64"], "--ppl-window applies only to --eval: give --eval too"),
        (
            ["--ppl-tokens", "64", "--ppl-stride", "16"],
            "--ppl-tokens, --ppl-stride apply only to --eval: give --eval too",
        ),
        (["--eval", "--ppl-window", "16", "--ppl-stride", "32"], "--ppl-stride 32: longer than"),
        (["--eval", "--ppl-window", "1024"], "--ppl-window 1024: longer than the 256 tokens"),
        (["--eval", "--ppl-stride", "300"], "--ppl-stride 300: longer than the window, 256 (the"),
    ],
)
def test_bad_or_unused_windows_are_refused_before_pruning(
    tiny_dir, tmp_path, capsys, flags, message
):
    out = tmp_path / "pruned"
    assert main(prune_argv(tiny_dir, out, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc prune: error: ") and message in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_the_tokenizers_limit_is_checked_before_pruning(
    tiny_dir, tmp_path, capsys, monkeypatch, tokenizers_take_48
):
    """A tokenizer that takes fewer tokens than the model's positions: refused once it is
    loaded, before any weight is pruned (no checkpoint written)."""
    import restorelcc.prune

    def no_pruning(*args, **kwargs):
        raise AssertionError("pruned")

    monkeypatch.setattr(restorelcc.prune, "prune_model", no_pruning)
    out = tmp_path / "pruned"
    assert main(prune_argv(tiny_dir, out, "--eval", "--ppl-window", "64")) == 2
    assert "--ppl-window 64: longer than the 48 tokens" in capsys.readouterr().err
    assert not out.exists()


def test_a_window_the_model_cannot_take_is_refused_before_it_loads(
    tiny_dir, tmp_path, capsys, monkeypatch
):
    import restorelcc.assets

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(restorelcc.assets, "load_model", no_load)
    assert main(prune_argv(tiny_dir, tmp_path / "pruned", "--eval", "--ppl-window", "1024")) == 2
    assert "--ppl-window 1024: longer than the 256 tokens" in capsys.readouterr().err


def test_the_summary_names_the_windows(tiny_dir, tmp_path, capsys):
    flags = ["--eval", "--ppl-tokens", "100", "--ppl-window", "32", "--ppl-stride", "16"]
    assert main(prune_argv(tiny_dir, tmp_path / "pruned", *flags)) == 0
    out = capsys.readouterr().out
    assert "perplexity: lambada, 100 tokens, window 32, stride 16, in float32\n" in out


def test_a_bad_window_is_named_before_the_model_is_looked_for(tmp_path, capsys):
    """With ``--eval``, a stride longer than the window is refused first: a missing model
    is not named before it."""
    argv = prune_argv(tmp_path / "missing", tmp_path / "pruned", "--eval",
                      "--ppl-window", "8", "--ppl-stride", "16")  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "restorelcc prune: error: --ppl-stride 16: longer than the window, 8, so tokens "
        "between windows would go unscored; give --ppl-stride 8 or less"
    )
