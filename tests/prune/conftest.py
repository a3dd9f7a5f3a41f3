"""Fixtures of the prune command's tests: a tiny checkpoint and a calibration text."""

import pytest

from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture
def tiny_dir(tmp_path):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path / "tiny")


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    words = ["river", "stone", "market", "seven", "quiet", "lantern", "north", "bread"]
    text = " ".join(words[(i * 7 + i // 3) % len(words)] for i in range(3000))
    path.write_text(text)
    return path
