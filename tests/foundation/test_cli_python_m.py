"""``python -m restorelcc`` runs the command line as the ``restorelcc`` script does."""

import subprocess
import sys


def _python_m(tmp_path, *argv) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "restorelcc", *argv]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_python_m_restorelcc_shows_the_help(tmp_path):
    """It had failed: "No module named restorelcc.__main__"."""
    done = _python_m(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: restorelcc ")
    assert "inspect" in done.stdout and "restore" in done.stdout


def test_python_m_restorelcc_exits_with_the_commands_status(tmp_path):
    done = _python_m(tmp_path, "inspect", "nosuch")
    assert done.returncode == 2
    assert done.stderr.startswith("restorelcc inspect: error: ")
