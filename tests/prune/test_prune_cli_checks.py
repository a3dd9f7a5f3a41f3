"""``restorelcc prune`` checks what the config decides (shapes, the structured plan)
before the weights load, naming flags; ``inspect`` names a prune report it cannot read."""

import json
import re

import pytest

from restorelcc.cli import main
from restorelcc.errors import CorruptCacheError
from restorelcc.prune.checkpoint import PRUNE_REPORT, inspect_checkpoint
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture
def one_kv_group_dir(tmp_path):
    """llama-3x5: 3 layers, 5 heads sharing one KV head, hidden 60."""
    return save_checkpoint(tiny_model("llama-3x5"), tmp_path / "t35")


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--pattern", "heads", "--sparsity", "0.3", "--head-fraction", "0.5"],
            "--head-fraction 0.5 removes all 1 KV groups",
        ),
        (
            ["--pattern", "heads", "--sparsity", "0.001"],
            "--sparsity 0.001 (structured) removes nothing",
        ),
        (
            ["--pattern", "heads", "--sparsity", "0.95"],
            "--sparsity 0.95 (structured) is out of reach",
        ),
        (
            ["--pattern", "heads", "--sparsity", "0.3", "--channel-multiple", "200"],
            "--channel-multiple 200 leaves no MLP channel that can go: a layer has 128",
        ),
        (
            ["--pattern", "heads", "--sparsity", "0.01", "--channel-multiple", "8"],
            "8 MLP channels per layer are 0.0417 of the block parameters; pass --sparsity 0.0209",
        ),
        (["--channel-multiple", "8"], "--channel-multiple only applies to the 'heads' pattern"),
        (["--sparsity", "0.002"], "--sparsity 0.002 prunes no weight"),
        (["--pattern", "4:8", "--sparsity", "0.5"], "divisible by 8, but layers.0"),
    ],
)
def test_what_the_config_decides_is_refused_before_the_weights_load(
    one_kv_group_dir, tmp_path, monkeypatch, capsys, extra, message
):
    import restorelcc.assets

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the plan was checked")

    monkeypatch.setattr(restorelcc.assets, "load_model", no_weights)
    capsys.readouterr()
    out = tmp_path / "o"
    rc = main(
        ["prune", "--model", str(one_kv_group_dir), "--method", "wanda", *extra,
         "--nsamples", "2", "--seqlen", "16", "--out", str(out)]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not re.search(r"\b(sparsity|head_fraction|channel_multiple)=", err)  # flags, not fields
    assert not out.exists()


@pytest.mark.parametrize(
    "structured, key",
    [
        ({"heads": [6, 3]}, "'kv_heads'"),
        ("6->3", "'structured' holds a str"),
        (
            {"heads": [6, 3], "kv_heads": [2], "intermediate_size": [200, 150],
             "removed_fraction_of_blocks": 0.3},
            "'kv_heads' should be [before, after] counts, got [2]",
        ),
        (
            {"heads": [6, 3], "kv_heads": [2, 1], "intermediate_size": [200, 150],
             "removed_fraction_of_blocks": "0.3"},
            "'removed_fraction_of_blocks' should be a number in [0, 1]",
        ),
    ],
)  # fmt: skip
def test_a_prune_report_with_a_bad_structured_part_is_named(tmp_path, capsys, structured, key):
    directory = tmp_path / "ckpt"
    tiny_model("llama-gqa").save_pretrained(directory)
    path = directory / PRUNE_REPORT
    path.write_text(
        json.dumps({"method": "magnitude", "pattern": "heads", "structured": structured})
    )
    with pytest.raises(CorruptCacheError, match=re.escape(str(path))) as error:
        inspect_checkpoint(directory)
    assert key in str(error.value)
    capsys.readouterr()
    assert main(["inspect", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and key in err and len(err.splitlines()) == 1
