"""``eval`` and ``bench`` given ``--model`` and ``--adapter`` of the wrong kinds, told before
any model loads: a merged restoration with an adapter (it had failed per layer, "made for
a different pruned model ... a restoration already folded in?"), and a model folder (a
merged restoration, a packed or a plain checkpoint) as ``--adapter`` (it had said only "is
not a restoration adapter"); and the report's adapter entry, which records the absolute
path of the adapter given as a relative one."""

import copy
import json

import pytest

from restorelcc import cli, prune_model
from restorelcc.baselines import training_free
from restorelcc.lcc.adapter import export_merged
from restorelcc.testing import byte_tokenizer, save_checkpoint, synthetic_pairs, tiny_model

USE = "--adapter takes a restore --out folder (adapter.json and adapter.safetensors)"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A dense checkpoint (``dense``), its pruned copy (``pruned``), a restore --out of it
    with a merged checkpoint (``restored``, ``restored/merged``), a merged checkpoint
    outside an adapter folder (``merged``) and the pruned one packed (``packed``)."""
    root = tmp_path_factory.mktemp("adapter-options")
    dense = tiny_model("llama-3x5")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5, progress=False)
    save_checkpoint(dense, root / "dense")
    save_checkpoint(pruned, root / "pruned")
    tokenizer = byte_tokenizer()
    restoration = training_free(dense, pruned, tokenizer, synthetic_pairs(4), progress=False)
    restoration.save(root / "restored")
    export_merged(restoration, pruned, root / "restored" / "merged", tokenizer)
    export_merged(restoration, pruned, root / "merged", tokenizer)
    assert cli.main(["pack", "--model", str(root / "pruned"), "--out", str(root / "packed"),
                     "--quiet"]) == 0  # fmt: skip
    return root


def _error(capsys, tmp_path, command, model, adapter) -> str:
    """The one error line of ``command --model model --adapter adapter``; no report."""
    capsys.readouterr()
    out = tmp_path / "r.json"
    argv = [command, "--model", str(model), "--adapter", str(adapter), "--json", str(out)]
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and not out.exists()
    return err.strip().removeprefix(f"restorelcc {command}: error: ")


@pytest.mark.parametrize("command, verb", [("eval", "evaluate"), ("bench", "time")])
def test_a_merged_restoration_with_an_adapter_is_told_to_go_without(
    folders, tmp_path, capsys, no_model_loads, command, verb
):
    merged, adapter = folders / "restored" / "merged", folders / "restored"
    assert _error(capsys, tmp_path, command, merged, adapter) == (
        f"--model {merged} is a merged restoration (restorelcc.json: restore --merged, "
        f"export_merged), a restoration folded in already: {verb} it without --adapter, or "
        f"give the pruned model it was made for as --model with --adapter {adapter}"
    )


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_merged_restoration_as_adapter_names_its_adapter_folder(
    folders, tmp_path, capsys, no_model_loads, command
):
    merged = folders / "restored" / "merged"
    assert _error(capsys, tmp_path, command, folders / "pruned", merged) == (
        f"--adapter {merged} is a merged restoration (restorelcc.json), a model with a "
        f"restoration folded in, not a restoration adapter: give its adapter folder "
        f"(--adapter {folders / 'restored'}), or {merged} as --model without --adapter"
    )


@pytest.mark.parametrize(
    "given, what",
    [
        ("merged", "a merged restoration (restorelcc.json), a model with a restoration folded in"),
        ("packed", "a packed checkpoint (restorelcc_packed.json: restorelcc pack), a model"),
        ("dense", "a model checkpoint (config.json)"),
    ],
)
def test_a_model_as_adapter_is_told_to_be_given_as_the_model(
    folders, tmp_path, capsys, no_model_loads, given, what
):
    adapter = folders / given
    assert _error(capsys, tmp_path, "eval", folders / "pruned", adapter) == (
        f"--adapter {adapter} is {what}, not a restoration adapter: give it as --model, "
        f"without --adapter; {USE}"
    )


def test_the_report_records_the_adapters_absolute_path(folders, tmp_path, capsys, monkeypatch):
    """As typed it was all the report had: "restored", relative to a folder it omits."""
    monkeypatch.chdir(folders)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", "pruned", "--adapter", "restored", "--tasks", "none",
            "--ppl-tokens", "16", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["adapter"]["path"] == "restored"
    assert report["adapter"]["origin"] == {"path": str(folders.resolve() / "restored")}
    assert report["model"] == "pruned"
    assert report["model_origin"] == {"path": str(folders.resolve() / "pruned")}
