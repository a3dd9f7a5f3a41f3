"""``restore_report.json``'s ``data_origin`` is the ``--data`` file as it was read for the
pairs: it had been hashed again when the report was written, after training, so that a
file changed during the run was recorded by bytes the run never read."""

import hashlib
import json

from lcc_helpers import method_argv

from restorelcc.cli import main
from restorelcc.commands import restore_models


def test_the_report_hashes_the_data_as_read_not_as_left(restore_checkpoints, monkeypatch):
    tmp_path, _ = restore_checkpoints
    data = tmp_path / "pairs.jsonl"
    read = data.read_bytes()
    restoring = restore_models.method_restoration

    def data_changed_meanwhile(*args, **kwargs):
        data.write_text(data.read_text().upper())  # after the pairs are read
        return restoring(*args, **kwargs)

    monkeypatch.setattr(restore_models, "method_restoration", data_changed_meanwhile)
    assert main(method_argv(tmp_path, "--method", "training-free")) == 0
    assert data.read_bytes() != read
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["data_origin"] == {
        "path": str(data.resolve()),
        "size": len(read),
        "sha256": hashlib.sha256(read).hexdigest(),
    }
