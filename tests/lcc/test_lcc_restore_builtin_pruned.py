"""``restorelcc restore --pruned NAME`` with a built-in model's name: said to be the dense
model it is, not only "not a directory", before any model loads; asking whether the two
models were swapped where ``--dense`` is a folder, as for two folders the wrong way round."""

import pytest
from lcc_helpers import method_argv, refused, restore_argv

from restorelcc.cli import main


@pytest.mark.parametrize("spelling", ["smollm2-135m", "SmolLM2-135M"])
def test_a_builtin_name_as_pruned_asks_whether_the_two_were_swapped(
    restore_checkpoints, no_model_loads, capsys, spelling
):
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path)
    argv[argv.index("--dense") + 1] = str(tmp_path / "pruned")
    argv[argv.index("--pruned") + 1] = spelling
    err = refused(argv, capsys)
    assert err.strip() == (
        f"restorelcc restore: error: --pruned {spelling} names the built-in dense model: "
        "--pruned takes a pruned checkpoint folder (a restorelcc prune --out); are --dense and "
        f"--pruned swapped (--dense {spelling} --pruned {tmp_path / 'pruned'})?"
    )
    assert not (tmp_path / "out").exists()


def test_a_builtin_name_as_both_is_not_called_swapped(restore_checkpoints, no_model_loads, capsys):
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path)
    argv[argv.index("--dense") + 1] = "smollm2-135m"
    argv[argv.index("--pruned") + 1] = "smollm2-135m"
    err = refused(argv, capsys)
    assert err.strip() == (
        "restorelcc restore: error: --pruned smollm2-135m names the built-in dense model: "
        "--pruned takes a pruned checkpoint folder (a restorelcc prune --out)"
    )


def test_a_folder_named_as_a_builtin_model_is_read_as_the_folder(
    restore_checkpoints, capsys, monkeypatch
):
    """A pruned checkpoint saved as ./smollm2-135m is a folder, as resolve_model reads it."""
    tmp_path, _ = restore_checkpoints
    (tmp_path / "pruned").rename(tmp_path / "smollm2-135m")
    monkeypatch.chdir(tmp_path)
    argv = method_argv(tmp_path, "--method", "training-free")
    argv[argv.index("--pruned") + 1] = "smollm2-135m"
    assert main(argv) == 0
    assert (tmp_path / "out" / "adapter.json").is_file()


def test_a_missing_folder_is_still_not_a_directory(restore_checkpoints, no_model_loads, capsys):
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path)
    argv[argv.index("--pruned") + 1] = str(tmp_path / "nowhere")
    err = refused(argv, capsys)
    assert err.strip().endswith(f"error: --pruned {tmp_path / 'nowhere'} is not a directory")
