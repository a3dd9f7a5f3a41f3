"""What ``restore_report.json`` records for a run to be told and repeated: the models and
data as typed and what they named (absolute paths, a file's size and sha256, a built-in
name's wheel version, as ``prune_report.json`` records its calibration), training-free's
``--seed`` (it draws the pairs), and the dtype ``--eval`` scored in, which the printed
perplexity line names too (``--dtype bfloat16 --merged`` had printed bf16 perplexities
beside a float32 merged/ without saying so)."""

import json

from lcc_helpers import method_argv

from restorelcc.assets import KNOWN_MODELS, model_origin
from restorelcc.cli import main
from restorelcc.data import source_origin
from restorelcc.provenance import installed_version


def _relative(argv: list[str], folder) -> list[str]:
    """``argv`` with the paths inside ``folder`` made relative to it."""
    prefix = f"{folder}/"
    return [arg.removeprefix(prefix) for arg in argv]


def test_the_report_records_origins_seed_and_the_evaluations_dtype(
    restore_checkpoints, capsys, monkeypatch
):
    tmp_path, _ = restore_checkpoints
    monkeypatch.chdir(tmp_path)
    flags = ["--seed", "3", "--dtype", "bfloat16", "--merged", "--eval", "--ppl-tokens", "32"]
    argv = method_argv(tmp_path, "--method", "training-free", *flags)
    assert main(_relative(argv, tmp_path)) == 0
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    here = tmp_path.resolve()
    assert (report["dense"], report["pruned"], report["data"]) == ("dense", "pruned", "pairs.jsonl")
    assert report["dense_origin"] == {"path": str(here / "dense")}
    assert report["pruned_origin"] == {"path": str(here / "pruned")}
    assert report["data_origin"] == source_origin(str(here / "pairs.jsonl"))
    assert report["data_origin"]["path"] == str(here / "pairs.jsonl")
    assert report["data_origin"]["size"] == (tmp_path / "pairs.jsonl").stat().st_size
    assert report["config"] == {
        "pairs": 16,
        "max_length": 512,
        "capture_dtype": "float32",
        "seed": 3,
    }
    assert report["evaluation"]["dtype"] == "bfloat16"
    assert (report["dtype"], report["merged_dtype"]) == ("bfloat16", "float32")
    out = capsys.readouterr().out.splitlines()
    assert "perplexity: lambada, 32 tokens, window 256, stride 128, in bfloat16" in out
    assert out[-1] == "wrote out (adapter, restore_report.json, merged/ in float32)"


def test_restorelcc_records_its_seed_in_its_config(restore_checkpoints):
    """The seed drew the pairs of every method; RestoreLCC's and LoFiT's record it with
    their training settings, training-free's (no training) beside its own."""
    tmp_path, _ = restore_checkpoints
    for method in ("restorelcc", "lofit"):
        argv = method_argv(tmp_path, "--method", method, "--seed", "5", "--overwrite")
        assert main(argv) == 0
        report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
        assert report["config"]["train"]["seed"] == 5, method
        assert report["evaluation"] is None


def test_a_builtin_model_is_recorded_by_its_wheel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    asset = KNOWN_MODELS["smollm2-135m"]
    assert model_origin("SmolLM2-135M") == {
        "builtin": "smollm2-135m",
        "wheel": asset.distribution,
        "version": installed_version(asset.distribution),
    }
    (tmp_path / "smollm2-135m").mkdir()  # a folder of that name is what resolve_model reads
    assert model_origin("smollm2-135m") == {"path": str(tmp_path.resolve() / "smollm2-135m")}
    assert model_origin("nowhere") is None
