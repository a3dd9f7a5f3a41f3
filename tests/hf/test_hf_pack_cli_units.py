"""What ``restorelcc pack`` prints, in the units and paths of the other commands: sizes in
MiB (``reports.mib``), the unit of eval's and bench's swap lines, and ``--out`` as the user
typed it, not made absolute. (It printed ``dense_MB`` / ``packed_file_MB`` in 10^6 bytes
and the resolved folder.)"""

import re

import torch

from restorelcc.cli import main
from restorelcc.commands.reports import mib
from restorelcc.hf.packed_checkpoint import PACKED_INFO, WEIGHTS
from restorelcc.loading import load_model


def test_mib_is_binary_with_one_decimal():
    assert mib(0) == "0.0 MiB"
    assert mib(3 * 2**20 + 2**19) == "3.5 MiB"
    assert mib(10**6) == "1.0 MiB"  # 0.95 MiB, not "1.0 MB"
    assert mib(5 * 2**30) == "5120.0 MiB"


def _row(lines: list[str], header: list[str]) -> dict:
    """The table row under ``header`` (cells split at runs of two or more spaces)."""
    at = next(i for i, line in enumerate(lines) if re.split(r"\s{2,}", line) == header)
    return dict(zip(header, re.split(r"\s{2,}", lines[at + 2].strip()), strict=True))


def test_pack_prints_mib_and_the_out_it_was_given(pruned_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, _ = load_model(pruned_dir, dtype=torch.float32)
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    capsys.readouterr()
    assert main(["pack", "--model", str(pruned_dir), "--out", "runs/../packed", "--quiet"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    weights = (tmp_path / "packed" / WEIGHTS).stat().st_size
    assert _row(lines, ["dtype", "dense", "packed_file", "ratio"]) == {
        "dtype": "float32",
        "dense": mib(dense),
        "packed_file": mib(weights),
        "ratio": f"{weights / dense:.4g}",
    }
    assert not re.search(r"\bMB\b|_MB", printed)
    assert lines[-1] == f"wrote runs/../packed ({PACKED_INFO})"
    assert str(tmp_path) not in printed
