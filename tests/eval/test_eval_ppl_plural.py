"""A perplexity of one scored token says "1 token": it had printed "1 tokens" (and "ran out
after 1 scored tokens; the perplexity is of those 1")."""

import pytest

from restorelcc import cli
from restorelcc.evaluate import perplexity_protocol
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize("tokens, shown", [(1, "1 token"), (2, "2 tokens"), (8192, "8192 tokens")])
def test_the_protocol_counts_tokens_in_the_singular_for_one(tokens, shown):
    settings = {"source": "short.txt", "tokens": tokens, "window": 512, "stride": 256}
    assert perplexity_protocol(settings) == f"short.txt, {shown}, window 512, stride 256"


def test_eval_of_a_text_that_scores_one_token_says_so_in_the_singular(tmp_path, capsys):
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "model")
    text = tmp_path / "two.txt"
    text.write_text("ab")
    capsys.readouterr()  # the checkpoint's writing bar
    argv = ["eval", "--model", str(model), "--tasks", "none", "--ppl-source", str(text),
            "--json", str(tmp_path / "r.json"), "--quiet"]  # fmt: skip
    ran_out = f"--ppl-source {text} ran out after 1 scored token; the perplexity is of that one"
    with pytest.warns(UserWarning) as record:
        assert cli.main(argv) == 0
    assert [str(w.message).split(": ", 1)[1] for w in record] == [ran_out]
    assert f"perplexity ({text}, 1 token, window " in capsys.readouterr().out
