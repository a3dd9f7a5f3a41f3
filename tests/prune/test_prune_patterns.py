"""N:M beyond 2:4 / 4:8: the sparsity a pattern implies, and reports that check the pattern
that was asked for."""

import json
import re

import pytest

from restorelcc.cli import main
from restorelcc.errors import CorruptCacheError
from restorelcc.prune import PruneArgumentError, prune_model
from restorelcc.prune.checkpoint import PRUNE_REPORT, inspect_checkpoint
from restorelcc.prune.validate import check_spec
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize("pattern", ["1:3", "2:3", "1:4", "3:7", "5:8", "1:6", "7:9"])
def test_the_suggested_sparsity_is_accepted_and_stored_exactly(pattern):
    n, m = map(int, pattern.split(":"))
    with pytest.raises(PruneArgumentError, match="pass sparsity=") as refused:
        check_spec("magnitude", 0.01, pattern)
    suggested = float(re.search(r"pass sparsity=([0-9.]+)", str(refused.value)).group(1))
    assert check_spec("magnitude", suggested, pattern).sparsity == (m - n) / m


def test_sparsities_off_the_pattern_are_still_refused():
    assert check_spec("wanda", 0.66669, "1:3").sparsity == 2 / 3  # within 1e-4
    with pytest.raises(PruneArgumentError, match="pass sparsity=0.666667"):
        check_spec("wanda", 0.667, "1:3")
    with pytest.raises(PruneArgumentError, match="pass sparsity=0.5"):
        check_spec("wanda", 0.4998, "2:4")


def test_a_requested_pattern_is_checked_in_the_report():
    model = tiny_model("llama-gqa", intermediate_size=192)  # inputs 96 and 192: 3 divides both
    report = prune_model(model, "magnitude", 0.666667, "1:3", progress=False)
    assert report.sparsity == 2 / 3
    assert all(list(m.nm) == ["2:4", "4:8", "1:3"] and m.nm["1:3"] for m in report.matrices)
    assert all(row["1:3"] is True for row in report.summary_rows())
    unstructured = prune_model(tiny_model("llama-gqa"), "magnitude", 0.5, progress=False)
    assert all(list(m.nm) == ["2:4", "4:8"] for m in unstructured.matrices)


def test_cli_and_inspect_check_the_requested_pattern(tmp_path, capsys):
    model = tmp_path / "tiny"
    save_checkpoint(tiny_model("llama-gqa"), model)
    out = tmp_path / "out"
    argv = ["prune", "--model", str(model), "--method", "magnitude", "--pattern", "1:4",
            "--sparsity", "0.75", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    matrices = json.loads((out / PRUNE_REPORT).read_text())["matrices"]
    assert all(m["nm"] == {"2:4": True, "4:8": True, "1:4": True} for m in matrices)
    assert " 1:4" in capsys.readouterr().out.splitlines()[0]  # a column of the summary
    result = inspect_checkpoint(out)
    assert all(m.nm["1:4"] for m in result["matrices"])
    assert main(["inspect", str(out)]) == 0
    assert " 1:4" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_a_corrupt_prune_report_is_named(tmp_path, capsys, content):
    directory = tmp_path / "ckpt"
    tiny_model("llama-gqa").save_pretrained(directory)
    path = directory / PRUNE_REPORT
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    capsys.readouterr()  # not the bar of save_pretrained
    with pytest.raises(CorruptCacheError, match=re.escape(str(path))):
        inspect_checkpoint(directory)
    assert main(["inspect", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and len(err.splitlines()) == 1
