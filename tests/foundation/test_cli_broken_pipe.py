"""A reader that closes the standard output early (``restorelcc inspect DIR | head -1``):
the command ends quietly with status 141 (128 + SIGPIPE), its JSON report written in
full first; it had ended with "error: [Errno 32] Broken pipe" (status 2) and no report."""

import json
import subprocess
import sys

from restorelcc import cli
from restorelcc.testing import ClosedPipe, save_checkpoint, tiny_model


def test_inspect_writes_its_report_before_the_tables_and_ends_quietly(
    tmp_path, capsys, monkeypatch
):
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "model")
    capsys.readouterr()
    report = tmp_path / "i.json"
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    status = cli.main(["inspect", str(model), "--per-matrix", "--quiet", "--json", str(report)])
    assert (status, capsys.readouterr().err, report.exists()) == (141, "", True)
    assert len(json.loads(report.read_text())["matrices"]) == 2 * 7
    assert cli.STDOUT_CLOSED == 141


def test_a_closed_pipe_ends_the_process_quietly(tmp_path):
    """The real pipe: its reader closed before a line was written, so the command's
    output fails at the latest when it is flushed, which Python would otherwise do at exit
    ("Exception ignored ... BrokenPipeError", status 120)."""
    model = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "model")
    report = tmp_path / "i.json"
    command = [sys.executable, "-m", "restorelcc", "inspect", str(model), "--per-matrix",
               "--quiet", "--json", str(report)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` would
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err.decode()) == (141, "")
    assert len(json.loads(report.read_text())["matrices"]) == 2 * 7
