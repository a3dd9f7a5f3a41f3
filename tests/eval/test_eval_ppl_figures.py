"""How ``eval`` prints a perplexity, and what it says of a text too short to score."""

import json

import pytest

from restorelcc import cli
from restorelcc.commands.evaluate import perplexity_line
from restorelcc.evaluate import perplexity_protocol
from restorelcc.testing import save_checkpoint, tiny_model

SETTINGS = {"source": "short.txt", "tokens": 2, "window": 512, "stride": 256}


@pytest.mark.parametrize(
    "figure, shown",
    [
        (42042.036123, "42042.036"),
        (999999.9994, "999999.999"),
        (1e6, "1.000e+06"),
        # a pruned model's perplexity: 47 digits in fixed point, all but a few noise
        (13726490151346696068915413452565924399607185408.0, "1.373e+46"),
    ],
)
def test_a_large_perplexity_prints_in_scientific_notation(figure, shown):
    line = perplexity_line({**SETTINGS, "perplexity": figure, "nll": 1.0})
    assert line == f"perplexity (short.txt, 2 tokens, window 512, stride 256): {shown}"


def test_an_overflowed_perplexity_still_reads_as_inf_with_its_mean_nll():
    line = perplexity_line({**SETTINGS, "perplexity": None, "nll": 1500.0})
    assert line.endswith(": inf (mean NLL 750.0 nats per token)")


def test_a_text_of_one_token_scores_nothing_and_is_refused_in_one_line(tmp_path, capsys):
    """Nothing to score is an error (not a NaN perplexity); 1 scored token is a figure with
    the ran-out warning, as ``--ppl-tokens 1`` asks for one."""
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "model")
    text = tmp_path / "one.txt"
    text.write_text("a")
    capsys.readouterr()  # the checkpoint's writing bar
    argv = ["eval", "--model", str(model), "--tasks", "none", "--ppl-source", str(text),
            "--json", str(tmp_path / "r.json"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"restorelcc eval: error: perplexity source '{text}' gives fewer than 2 tokens\n"
    assert not (tmp_path / "r.json").exists()


def test_a_text_of_two_tokens_scores_one_with_the_ran_out_warning(tmp_path, capsys):
    """One scored token is what ``--ppl-tokens 1`` asks for, so a text that runs out at one
    gets the figure and the warning any text that runs out gets, not a refusal."""
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "model")
    text = tmp_path / "two.txt"
    text.write_text("ab")
    report = tmp_path / "r.json"
    argv = ["eval", "--model", str(model), "--tasks", "none", "--ppl-source", str(text),
            "--json", str(report), "--quiet"]  # fmt: skip
    capsys.readouterr()  # the checkpoint's writing bar
    ran_out = f"--ppl-source {text} ran out after 1 scored token; the perplexity is of that one"
    with pytest.warns(UserWarning) as record:
        assert cli.main(argv) == 0
    assert json.loads(report.read_text())["perplexity"]["tokens"] == 1
    # in the singular: it had printed "1 tokens" and "of those 1"
    assert [str(w.message).split(": ", 1)[1] for w in record] == [ran_out]
    assert f"perplexity ({text}, 1 token, window " in capsys.readouterr().out


@pytest.mark.parametrize("tokens, shown", [(1, "1 token"), (2, "2 tokens"), (8192, "8192 tokens")])
def test_the_protocol_counts_tokens_in_the_singular_for_one(tokens, shown):
    settings = {"source": "short.txt", "tokens": tokens, "window": 512, "stride": 256}
    assert perplexity_protocol(settings) == f"short.txt, {shown}, window 512, stride 256"
