"""Training-free captures as RestoreLCC does: at ``capture_dtype`` (fp32 by default: a bf16
model had been captured in bf16, ~3% rounding in ``Zd - Zp``), recorded in its report and in
``restore_report.json``; and, through ``restorelcc restore``, at RestoreLCC's capture length
(``RestoreConfig().capture_max_length``, 512), not ``--max-length`` (which caps training
and which it therefore refuses)."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

LCC_TESTS = Path(__file__).resolve().parents[1] / "lcc"
if str(LCC_TESTS) not in sys.path:  # the restore CLI tests' helpers
    sys.path.insert(0, str(LCC_TESTS))

from lcc_helpers import method_argv, pruned_copy, refused, save_restore_inputs  # noqa: E402

import restorelcc.lcc.tokens as tokens  # noqa: E402
from restorelcc.baselines import training_free  # noqa: E402
from restorelcc.cli import main  # noqa: E402
from restorelcc.lcc import RestoreConfig  # noqa: E402
from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model  # noqa: E402


def test_it_captures_in_float32_by_default_and_records_it():
    dense = tiny_model("llama-3x5").bfloat16()
    pruned = pruned_copy(dense)
    pairs = synthetic_pairs(8)
    want = training_free(
        copy.deepcopy(dense).float(), copy.deepcopy(pruned).float(), byte_tokenizer(), pairs,
        progress=False,
    )  # fmt: skip
    got = training_free(dense, pruned, byte_tokenizer(), pairs, progress=False)
    narrow = training_free(
        dense, pruned, byte_tokenizer(), pairs, progress=False, capture_dtype="model"
    )
    torch.testing.assert_close(got.b, want.b, rtol=0, atol=0)
    assert (narrow.b - want.b).abs().max() > 1e-3  # bf16's rounding
    assert got.report["capture_dtype"] == {"dense": "float32", "pruned": "float32"}
    assert narrow.report["capture_dtype"] == {"dense": "bfloat16", "pruned": "bfloat16"}
    assert (got.hyperparameters["capture_dtype"], narrow.hyperparameters["capture_dtype"]) == (
        "float32",
        "model",
    )
    assert {p.dtype for p in (*dense.parameters(), *pruned.parameters())} == {torch.bfloat16}
    with pytest.raises(ValueError, match="capture_dtype must be 'model'"):
        training_free(dense, pruned, byte_tokenizer(), pairs, capture_dtype="float16")


@pytest.fixture
def folder(tmp_path):
    save_restore_inputs(tmp_path)
    return tmp_path


def test_restore_takes_capture_dtype_for_training_free_and_records_it(folder, capsys):
    report_file = folder / "out" / "restore_report.json"
    for extra, captured in (([], "float32"), (["--capture-dtype", "model"], "bfloat16")):
        argv = method_argv(folder, "--method", "training-free", "--dtype", "bfloat16", *extra)
        assert main([*argv, "--overwrite"]) == 0
        report = json.loads(report_file.read_text())
        assert report["capture_dtype"] == {"dense": captured, "pruned": captured}
        assert report["config"]["capture_dtype"] == (extra[1] if extra else "float32")
    err = refused(method_argv(folder, "--method", "lofit", "--capture-dtype", "model"), capsys)
    assert "--method lofit does not use --capture-dtype" in err


def test_both_capturing_methods_capture_at_restorelccs_length(folder, monkeypatch, capsys):
    """Training-free had captured at --max-length (default 500), RestoreLCC at 512."""
    fit_pair = tokens.fit_pair
    lengths: list[int] = []

    def recording(tokenizer, pair, max_length, eos=False):
        if not eos:  # what capture encodes (training ends the responses with EOS)
            lengths.append(max_length)
        return fit_pair(tokenizer, pair, max_length, eos)

    monkeypatch.setattr(tokens, "fit_pair", recording)
    seen = {}
    for method in ("restorelcc", "training-free"):
        lengths.clear()
        assert main([*method_argv(folder, "--method", method), "--overwrite"]) == 0
        seen[method] = set(lengths)
    length = RestoreConfig().capture_max_length
    assert seen == {"restorelcc": {length}, "training-free": {length}}
    report = json.loads((folder / "out" / "restore_report.json").read_text())
    assert report["config"]["max_length"] == length
    argv = method_argv(folder, "--method", "training-free", "--max-length", "300")
    assert "--method training-free does not use --max-length" in refused(argv, capsys)
