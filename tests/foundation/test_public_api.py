import subprocess
import sys

import restorelcc


def test_every_lazy_export_resolves():
    for name in restorelcc._LAZY_EXPORTS:
        assert getattr(restorelcc, name).__name__ == name
    assert set(restorelcc._LAZY_EXPORTS) <= set(dir(restorelcc))


def test_import_does_not_pull_in_torch():
    code = "import sys, restorelcc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
