"""``--ppl-tokens N`` on a text that runs out first: the perplexity is of the tokens there
were, and a warning names how many (it had scored fewer in silence)."""

import json
import warnings

import pytest

from restorelcc import cli
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("asked", [500, 40])
def test_a_text_that_runs_out_is_warned_of(tiny_dir, tmp_path, asked):
    text = tmp_path / "short.txt"
    text.write_text("The quiet river ran past the mill. " * 3)  # ~105 byte tokens
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", str(asked), "--json", str(out), "--quiet"]  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cli.main(argv) == 0
    scored = json.loads(out.read_text())["perplexity"]["tokens"]
    messages = [str(w.message) for w in record if "--ppl-tokens" in str(w.message)]
    if asked == 40:  # the text holds them: nothing to say
        assert scored == asked and messages == []
        return
    assert 100 < scored < asked
    assert messages == [
        f"--ppl-tokens {asked}: --ppl-source {text} ran out after {scored} scored tokens; "
        f"the perplexity is of those {scored}"
    ]
