"""``commands.model_options``: a folder with a ``config.json`` is a model even when it
also holds an ``adapter.json``; a merged restoration given as ``--model`` without
``--adapter`` is what eval and bench take."""

import argparse

from restorelcc.commands.model_options import check_adapter_options, refuse_adapter_folder
from restorelcc.lcc.adapter import ADAPTER_CONFIG, MERGED_INFO


def _folder(tmp_path, *files):
    for name in files:
        (tmp_path / name).write_text("{}")
    return str(tmp_path)


def test_a_folder_with_a_config_is_a_model_even_with_an_adapter_json(tmp_path):
    folder = _folder(tmp_path, "config.json", ADAPTER_CONFIG)
    assert refuse_adapter_folder("--model", folder, "a model") is None


def test_a_merged_restoration_without_adapter_is_taken(tmp_path):
    folder = _folder(tmp_path, "config.json", MERGED_INFO)
    args = argparse.Namespace(model=folder, adapter=None)
    assert check_adapter_options(args, "evaluate") is None
