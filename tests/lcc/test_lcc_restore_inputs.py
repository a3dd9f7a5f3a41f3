"""``restorelcc restore`` on inputs that are not a dense model and its pruned copy: a merged
restoration or one folder given as both (refused before the models load), a dense model
that is the pruned one (refused as pruned already, not as "prune it first"), and more
pairs than ``--data`` holds (the message names the options)."""

import copy
import shutil

import pytest
from lcc_helpers import refused, restore_argv, trained_like

from restorelcc.errors import UnsupportedModelError
from restorelcc.lcc import check_compatible
from restorelcc.lcc.adapter import export_merged
from restorelcc.testing import byte_tokenizer, tiny_model


def merged_restoration(folder, pruned):
    """``folder / "restored" / "merged"``: ``pruned`` with a restoration folded in, as
    ``restore --merged`` writes it (``export_merged``)."""
    return export_merged(
        trained_like(pruned), pruned, folder / "restored" / "merged", byte_tokenizer()
    )


@pytest.mark.parametrize(
    "option, instead",
    [
        ("--pruned", "give the pruned checkpoint it was made from"),
        ("--dense", "give the unpruned (dense) model that the pruned checkpoint was pruned from"),
    ],
)
def test_a_merged_restoration_is_refused_before_the_models_load(
    restore_checkpoints, no_model_loads, capsys, option, instead
):
    """It had loaded and failed on k_proj.bias, missing in the other model."""
    tmp_path, pruned = restore_checkpoints
    merged = merged_restoration(tmp_path, pruned)
    capsys.readouterr()  # its progress bars
    argv = restore_argv(tmp_path)
    argv[argv.index(option) + 1] = str(merged)
    err = refused(argv, capsys)
    assert err.strip() == (
        f"restorelcc restore: error: {option} {merged} is a merged restoration "
        "(restorelcc.json: restore --merged, export_merged), a pruned model with a "
        f"restoration folded in: {instead}"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spelling", ["same", "other"])
def test_one_folder_as_dense_and_pruned_is_refused_before_the_models_load(
    restore_checkpoints, no_model_loads, capsys, spelling
):
    """Said as such, not as "nothing was pruned ... (prune it first)"; however spelled."""
    tmp_path, _ = restore_checkpoints
    pruned = tmp_path / "pruned"
    dense = pruned if spelling == "same" else tmp_path / "dense" / ".." / "pruned"
    argv = restore_argv(tmp_path)
    argv[argv.index("--dense") + 1] = str(dense)
    err = refused(argv, capsys)
    assert err.strip() == (
        f"restorelcc restore: error: --dense {dense} and --pruned {pruned} are the same "
        "folder: --dense is the unpruned model, --pruned the checkpoint pruned from it"
    )


def test_a_copy_of_the_pruned_checkpoint_as_dense_is_called_pruned_already(
    restore_checkpoints, capsys
):
    tmp_path, pruned = restore_checkpoints
    shutil.copytree(tmp_path / "pruned", tmp_path / "pruned-copy")
    argv = restore_argv(tmp_path)
    argv[argv.index("--dense") + 1] = str(tmp_path / "pruned-copy")
    err = refused(argv, capsys)
    zeros = float((pruned.model.layers[0].self_attn.q_proj.weight == 0).float().mean())
    assert err.strip() == (
        "restorelcc restore: error: the pruned model's decoder weights equal the dense "
        f"model's, and the dense model ({tmp_path / 'pruned-copy'}) has {zeros:.0%} zeros in "
        "layer 0 self_attn.q_proj: it looks pruned already (the same pruned checkpoint given "
        "as both?); give the unpruned model it was pruned from as the dense one (restore "
        "--dense, demo --model, dense= in the API)"
    )
    assert "prune it first" not in err


def test_the_api_tells_a_pruned_dense_model_from_an_unpruned_copy(models):
    dense, pruned = models
    with pytest.raises(UnsupportedModelError, match=r"the dense model has 50% zeros in layer 0"):
        check_compatible(pruned, copy.deepcopy(pruned))
    with pytest.raises(UnsupportedModelError, match=r"nothing was pruned.*\(prune it first\)$"):
        check_compatible(dense, copy.deepcopy(dense))


def test_a_dense_model_with_one_sparse_weight_past_equal_ones_is_named_by_it():
    """The weight named is the first one as sparse as a pruned one, not the first one."""
    dense = tiny_model("llama-gqa")
    down = dense.model.layers[1].mlp.down_proj.weight
    down.data[:, ::2] = 0
    with pytest.raises(UnsupportedModelError, match=r"has 50% zeros in layer 1 mlp\.down_proj:"):
        check_compatible(dense, copy.deepcopy(dense))


@pytest.mark.parametrize(
    "extra, asked",
    [
        (
            ["--pairs", "8", "--validation-pairs", "100"],
            "--pairs 8 + --validation-pairs 100 = 108 pairs",
        ),
        (["--pairs", "30"], "--pairs 30"),
    ],
)
def test_more_pairs_than_the_data_holds_names_the_options(
    restore_checkpoints, no_model_loads, capsys, extra, asked
):
    """It had said "source '...' holds 20 items; asked for 108"."""
    tmp_path, _ = restore_checkpoints
    err = refused(restore_argv(tmp_path, *extra), capsys)
    data = tmp_path / "pairs.jsonl"
    assert err.strip() == f"restorelcc restore: error: {asked}, but --data {data} holds 20"
