"""Saving a restoration as the API user does: a folded model (export_merged, not
save_pretrained), a merged export without its tokenizer, ``~`` in the folder, and what
``overwrite`` may replace."""

import copy
from pathlib import Path

import pytest
import torch
from lcc_helpers import pruned_copy, trained_like

from restorelcc import assets
from restorelcc.assets import load_model
from restorelcc.errors import CorruptCacheError
from restorelcc.lcc.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MERGED_INFO,
    export_merged,
    load_adapter,
)
from restorelcc.lcc.restoration import Restoration
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture
def pruned():
    return pruned_copy(tiny_model("llama-3x5"))


def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def test_a_folded_model_saved_with_save_pretrained_is_refused_and_export_merged_is_the_way(
    pruned, tmp_path, tokenizer
):
    """fold() then save_pretrained() had written biases its config does not enable:
    transformers dropped them silently, load_model called the folder corrupt."""
    restoration = trained_like(pruned)
    folded = restoration.fold(copy.deepcopy(pruned))
    save_checkpoint(folded, tmp_path / "saved")
    with pytest.raises(assets.CheckpointError, match=r"Restoration.export_merged") as refused:
        load_model(tmp_path / "saved")
    assert "saved with save_pretrained" in str(refused.value)
    assert not isinstance(refused.value, CorruptCacheError)
    for doc in (Restoration.fold.__doc__, Restoration.export_merged.__doc__):
        assert "save_pretrained" in doc and "export_merged" in doc
    restoration.export_merged(pruned, tmp_path / "merged", tokenizer)
    merged, _ = load_model(tmp_path / "merged")
    torch.testing.assert_close(_logits(merged), _logits(folded), rtol=1e-5, atol=1e-5)


def test_a_merged_export_without_a_tokenizer_says_to_save_one(pruned, tmp_path, tokenizer):
    """It had been a CorruptCacheError, "no tokenizer files found"."""
    restoration = trained_like(pruned)
    folder = restoration.export_merged(pruned, tmp_path / "merged")
    with pytest.raises(assets.CheckpointError, match=r"has no tokenizer .*tokenizer=tokenizer\)$"):
        load_model(folder)
    assert "tokenizer.save_pretrained(directory)" in export_merged.__doc__
    tokenizer.save_pretrained(folder)
    load_model(folder)


def test_a_leading_tilde_names_the_home_folder_for_save_and_export(
    pruned, tmp_path, tokenizer, monkeypatch
):
    """Writing had made a folder named ``~`` in the current directory, which load_model
    (expanding ``~``) did not find."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    restoration = trained_like(pruned)
    assert restoration.save("~/adapter") == home / "adapter"
    assert restoration.export_merged(pruned, "~/merged", tokenizer) == home / "merged"
    assert sorted(p.name for p in home.iterdir()) == ["adapter", "merged"]
    assert list(here.iterdir()) == []
    for given in ("~/adapter", f"~/adapter/{ADAPTER_CONFIG}", f"~/adapter/{ADAPTER_WEIGHTS}"):
        assert torch.equal(load_adapter(given).b, restoration.b)
    assert torch.equal(Restoration.load("~/adapter").beta, restoration.beta)
    load_model("~/merged")


def _folder_with_notes(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def test_overwrite_replaces_a_previous_adapter_but_not_another_folder(pruned, tmp_path):
    """save(..., overwrite=True) had deleted whatever the folder held (a user's notes, a
    pruned checkpoint) and put the adapter in its place."""
    restoration = trained_like(pruned)
    results = _folder_with_notes(tmp_path / "results")
    save_checkpoint(pruned, results / "pruned")
    with pytest.raises(FileExistsError, match=f"holds no {ADAPTER_CONFIG}.*delete everything"):
        restoration.save(results, overwrite=True)
    assert sorted(p.name for p in results.iterdir()) == ["notes.txt", "pruned"]
    previous = tmp_path / "adapter"
    restoration.save(previous)
    (previous / "report.json").write_text("{}")  # a restore --out holds more
    restoration.save(previous, overwrite=True)
    assert sorted(p.name for p in previous.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert "deleting everything in it" in " ".join(Restoration.save.__doc__.split())


def test_overwrite_replaces_a_previous_merged_export_but_not_the_pruned_checkpoint(
    pruned, tmp_path, tokenizer
):
    restoration = trained_like(pruned)
    checkpoint = save_checkpoint(pruned, tmp_path / "pruned")
    before = sorted(p.name for p in checkpoint.iterdir())
    with pytest.raises(FileExistsError, match=f"holds no {MERGED_INFO}"):
        restoration.export_merged(pruned, checkpoint, tokenizer, overwrite=True)
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    notes = _folder_with_notes(tmp_path / "notes")
    with pytest.raises(FileExistsError, match=f"holds no {MERGED_INFO}"):
        restoration.export_merged(pruned, notes, overwrite=True)
    merged = restoration.export_merged(pruned, tmp_path / "merged")
    restoration.export_merged(pruned, merged, tokenizer, overwrite=True)
    assert (merged / "tokenizer.json").is_file() and (merged / MERGED_INFO).is_file()


def test_export_merged_refuses_its_folder_before_reading_the_weights(pruned, tmp_path, monkeypatch):
    """The folder's check had come after check_model's pass over every weight."""
    restoration = trained_like(pruned)
    notes = _folder_with_notes(tmp_path / "notes")

    def no_weight_pass(model):
        raise AssertionError("check_model ran before the folder was refused")

    monkeypatch.setattr(restoration, "check_model", no_weight_pass)
    with pytest.raises(FileExistsError, match=f"holds no {MERGED_INFO}"):
        restoration.export_merged(pruned, notes, overwrite=True)
