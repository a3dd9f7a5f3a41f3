"""The --device option of the commands that run a model."""

import pytest
import torch

from restorelcc.cli import main
from restorelcc.commands.options import resolve_device


def test_default_is_cuda_when_there_is_one_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None) == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("gpu0", "'gpu0' is not a device"),
        ("meta", "only cpu and cuda devices are supported"),
        ("cuda:64", "CUDA device"),
    ],
)
def test_bad_devices_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        resolve_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
@pytest.mark.parametrize("command", ["eval", "prune", "restore", "demo"])
def test_commands_refuse_an_unavailable_device_in_one_line(command, capsys, tmp_path):
    argv = {
        "eval": ["eval", "--model", "smollm2-135m"],
        "prune": ["prune", "--model", "smollm2-135m", "--out", str(tmp_path / "out")],
        "restore": ["restore", "--pruned", str(tmp_path), "--out", str(tmp_path / "out")],
        "demo": ["demo", "--out", str(tmp_path / "out")],
    }[command]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == f"restorelcc {command}: error: --device cuda: no CUDA device is available here\n"
    assert not (tmp_path / "out").exists()
