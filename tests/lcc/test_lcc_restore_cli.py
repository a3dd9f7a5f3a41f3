import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from lcc_helpers import method_argv, pruned_copy, restore_argv

from restorelcc.cli import main
from restorelcc.hf.families import o_proj_of
from restorelcc.lcc import Restoration
from restorelcc.testing import WORDS, save_checkpoint, tiny_model


def test_restore_command_writes_adapter_report_and_merged(restore_checkpoints, capsys):
    from transformers import AutoModelForCausalLM

    tmp_path, pruned = restore_checkpoints
    assert main(restore_argv(tmp_path, "--merged")) == 0
    out = capsys.readouterr().out
    assert "capture" in out and "final_loss" in out and "wrote" in out
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["selected_heads"] == 3 and report["trainable_parameters"] == 96
    assert set(report["report"]["seconds"]) >= {"capture", "components", "probing", "train"}
    assert "run_metadata" in report
    restoration = Restoration.load(tmp_path / "out")
    restoration.check_model(pruned)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(ids).logits, restoration.fold(pruned)(ids).logits, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--heads", "99"], "--heads: heads must be between 1 and 15"),
        (["--lr", "-1"], "error: --lr must be positive and finite, got -1.0"),
        (["--lr", "inf"], "error: --lr must be positive and finite, got inf"),
        (["--lr", "nan"], "error: --lr must be positive and finite, got nan"),
        (["--probe-pairs", "17"], "--probe-pairs 17 exceeds --pairs 16"),
        (["--pairs", "500"], "error: --pairs 500, but --data "),
        (["--validation-pairs", "8"], "--pairs 16 + --validation-pairs 8 = 24 pairs, but --data"),
        (["--validation-pairs", "-1"], "--validation-pairs must be an integer >= 0, got -1"),
        (["--max-steps", "0"], "--max-steps must be a positive integer, got 0"),
        (["--max-grad-norm", "0"], "--max-grad-norm must be a finite number > 0, or 'none'"),
        (["--max-grad-norm", "inf"], "--max-grad-norm must be a finite number > 0, or 'none'"),
        (["--max-length", "1"], "error: --max-length must be >= 2, got 1"),
        (["--lofit-l1", "0.1"], "--method restorelcc does not use --lofit-l1"),
        # checked before the models load (a missing --dense would fail there)
        (["--eval", "--ppl-source", "missing.txt", "--dense", "nowhere"], "missing.txt"),
        (["--method", "lofit", "--lofit-l1", "-1"], "--lofit-l1 must be a finite number >= 0"),
        (["--method", "lofit", "--lofit-l1", "inf"], "--lofit-l1 must be a finite number >= 0"),
        (
            ["--method", "lofit", "--selection", "random", "--components-k", "2"],
            "--method lofit does not use --selection, --components-k",
        ),
        (["--method", "training-free", "--epochs", "2"], "training-free does not use --epochs"),
        (["--method", "training-free", "--heads", "2"], "training-free does not use --heads"),
        (
            ["--method", "training-free", "--max-grad-norm", "none"],
            "training-free does not use --max-grad-norm",
        ),
    ],
)
def test_bad_arguments_give_one_line_errors(restore_checkpoints, capsys, extra, match):
    tmp_path, _ = restore_checkpoints
    assert main(method_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorelcc restore: error:") and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_mismatched_pruned_model(restore_checkpoints, tmp_path, capsys):
    save_checkpoint(pruned_copy(tiny_model("llama-gqa")), tmp_path / "other")
    argv = restore_argv(tmp_path)
    argv[argv.index("--pruned") + 1] = str(tmp_path / "other")
    assert main(argv) == 2
    assert "differs from the dense model" in capsys.readouterr().err


def test_refuses_a_non_empty_out(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert main(restore_argv(tmp_path)) == 2
    assert "not empty" in capsys.readouterr().err


def test_eval_reports_dense_pruned_and_restored_perplexity(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    assert main(restore_argv(tmp_path, "--eval")) == 0
    assert "ppl_restored" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    evaluation = report["evaluation"]
    assert set(evaluation["perplexity"]) == {"dense", "pruned", "restored"}
    assert all(1 < value < float("inf") for value in evaluation["perplexity"].values())
    assert evaluation["source"] == "lambada" and evaluation["tokens"] > 0
    assert set(evaluation["nll"]) == set(evaluation["perplexity"])
    assert evaluation["window"] >= evaluation["stride"] > 0


def test_an_overflowing_perplexity_keeps_its_nll_in_the_report(restore_checkpoints):
    """A perplexity whose exp overflows a float is null in the JSON (no Infinity): its total
    NLL over the same tokens is what is left of it, not a bare null."""
    tmp_path, pruned = restore_checkpoints
    with torch.no_grad():
        pruned.lm_head.weight.mul_(2000.0)  # finite logits, thousands of nats per id
    pruned.save_pretrained(tmp_path / "pruned")
    argv = method_argv(tmp_path, "--method", "training-free", "--eval", "--ppl-tokens", "64")
    assert main(argv) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    report = (tmp_path / "out" / "restore_report.json").read_text()
    evaluation = json.loads(report, parse_constant=refuse)["evaluation"]
    assert evaluation["perplexity"]["pruned"] is None
    assert 1 < evaluation["perplexity"]["dense"] < float("inf")
    mean_nll = {name: nll / evaluation["tokens"] for name, nll in evaluation["nll"].items()}
    assert mean_nll["pruned"] > 710 and mean_nll["dense"] == pytest.approx(
        math.log(evaluation["perplexity"]["dense"])
    )


def test_validation_pairs_are_scored_before_and_after(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    assert main(restore_argv(tmp_path, "--validation-pairs", "4", "--max-grad-norm", "none")) == 0
    assert "heldout_before" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["config"]["train"]["max_grad_norm"] is None
    assert len(report["report"]["train"]["grad_norms"]) == report["report"]["train"]["steps"]
    assert report["train_pairs"] == report["report"]["train_pairs"] == 16
    assert report["validation_pairs"] == 4 and "pairs" not in report
    validation = report["report"]["train"]["validation"]
    assert validation["pairs"] == 4 and validation["before"] > 0 and validation["after"] > 0


@pytest.mark.parametrize(
    "method,heads,trainable",
    [("lofit", 3, 3 * 16), ("training-free", 15, 0)],
)
def test_other_methods_write_adapters_that_fold(
    restore_checkpoints, capsys, method, heads, trainable
):
    """LoFiT and training-free restorations are written like RestoreLCC's (adapter, report,
    merged checkpoint), counting only the parameters each trains."""
    from transformers import AutoModelForCausalLM

    tmp_path, pruned = restore_checkpoints
    assert main(method_argv(tmp_path, "--method", method, "--merged")) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [method, f"{heads}/15", str(trainable)] in [row[:3] for row in rows]  # summary
    report = json.loads((tmp_path / "out" / "restore_report.json").read_text())
    assert report["method"] == method and report["selected_heads"] == heads
    assert ("l1" in report["config"]) == (method == "lofit")  # the method's own settings
    assert report["trainable_parameters"] == trainable
    restoration = Restoration.load(tmp_path / "out")
    assert restoration.method == method and restoration.trainable_parameters == trainable
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(ids).logits, restoration.fold(pruned)(ids).logits, rtol=1e-5, atol=1e-5
        )


def test_eval_reads_its_perplexity_text_from_ppl_source(restore_checkpoints, tmp_path, capsys):
    tmp_path, _ = restore_checkpoints
    text = tmp_path / "ppl.txt"
    text.write_text(" ".join(WORDS * 40))
    assert main(restore_argv(tmp_path, "--eval", "--ppl-source", str(text))) == 0
    user = json.loads((tmp_path / "out" / "restore_report.json").read_text())["evaluation"]
    assert main(restore_argv(tmp_path, "--eval", "--overwrite")) == 0
    default = json.loads((tmp_path / "out" / "restore_report.json").read_text())["evaluation"]
    assert user["source"] == str(text) and default["source"] == "lambada"
    assert user["perplexity"] != default["perplexity"]  # another text, another perplexity


@pytest.mark.parametrize(
    "extra, given",
    [
        (["--ppl-source", "lambada.txt"], "--ppl-source applies"),
        (["--ppl-tokens", "64", "--ppl-source", "t.txt"], "--ppl-source, --ppl-tokens apply"),
    ],
)
def test_perplexity_options_without_eval_are_refused(restore_checkpoints, capsys, extra, given):
    tmp_path, _ = restore_checkpoints
    assert main(restore_argv(tmp_path, *extra)) == 2
    assert f"{given} only to --eval: give --eval too" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_scores_ppl_tokens(restore_checkpoints):
    tmp_path, _ = restore_checkpoints
    argv = method_argv(tmp_path, "--method", "training-free", "--eval", "--ppl-tokens", "64")
    assert main(argv) == 0
    evaluation = json.loads((tmp_path / "out" / "restore_report.json").read_text())["evaluation"]
    assert evaluation["tokens"] == 64


@pytest.mark.parametrize("overwrite", [["--overwrite"], []])
@pytest.mark.parametrize(
    "option, where", [("--pruned", "same"), ("--dense", "same"), ("--pruned", "parent")]
)
def test_an_out_that_would_delete_an_input_is_refused(
    restore_checkpoints, capsys, option, where, overwrite
):
    """restore --out X --pruned X --overwrite used to delete the pruned checkpoint.
    Without --overwrite the refusal is the same, not "is not empty (pass --overwrite to
    replace it)", whose remedy would delete the input."""
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path, *overwrite)
    model = argv[argv.index(option) + 1]
    out = model if where == "same" else str(tmp_path)
    argv[argv.index("--out") + 1] = out
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = "is" if where == "same" else "holds"
    assert f"--out {out} {expected} {option} {model}" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("option", ["--pruned", "--dense"])
def test_an_out_inside_an_input_folder_is_refused(restore_checkpoints, capsys, option):
    """--out pruned-24/sub used to write the adapter into the pruned checkpoint's folder."""
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path)
    model = argv[argv.index(option) + 1]
    out = str(Path(model) / "sub" / "out")
    argv[argv.index("--out") + 1] = out
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"restorelcc restore: error: --out {out} is inside {option} {model}: the output "
        "would be written into that input; choose an --out outside it\n"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_an_unwritable_out_fails_before_the_models_load(
    restore_checkpoints, unwritable_dir, capsys
):
    tmp_path, _ = restore_checkpoints
    argv = restore_argv(tmp_path, "--dense", str(tmp_path / "nowhere"))  # would fail at loading
    out = unwritable_dir / "restored"
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"restorelcc restore: error: --out {out}: cannot write in ")


def test_an_unpruned_model_is_refused(restore_checkpoints, capsys):
    """A copy of the dense checkpoint (the same folder twice: test_lcc_restore_inputs)."""
    tmp_path, _ = restore_checkpoints
    shutil.copytree(tmp_path / "dense", tmp_path / "dense-copy")
    argv = restore_argv(tmp_path)
    argv[argv.index("--pruned") + 1] = str(tmp_path / "dense-copy")
    assert main(argv) == 2
    assert "nothing was pruned, so nothing was lost to restore (prune it first)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "method,trainings", [("restorelcc", 1), ("lofit", 2), ("training-free", 0)]
)
def test_dense_model_is_let_go_before_training_and_eval_folds_pruned_in_place(
    restore_checkpoints, monkeypatch, method, trainings
):
    """restore holds both models for capture only: the dense model is gone before training
    (--eval scores it first) and the restored model is the pruned one folded, not a copy
    (three models at once would not fit an 8B run)."""
    import gc
    import weakref

    import restorelcc.assets
    import restorelcc.baselines
    import restorelcc.evaluate
    import restorelcc.lcc.pipeline

    tmp_path, _ = restore_checkpoints
    loaded, events = [], []
    load_model = restorelcc.assets.load_model
    perplexity_report = restorelcc.evaluate.perplexity_report
    train_response_lm = restorelcc.lcc.pipeline.train_response_lm

    def alive() -> list[int]:
        gc.collect()
        return [i for i, ref in enumerate(loaded) if ref() is not None]

    def recording_load(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    def recording_report(model, *args, **kwargs):
        which = [ref() for ref in loaded].index(model)
        events.append(("perplexity", alive(), which, o_proj_of(model, 0).bias is not None))
        return perplexity_report(model, *args, **kwargs)

    def recording_train(model, *args, **kwargs):
        events.append(("train", alive(), [ref() for ref in loaded].index(model), False))
        return train_response_lm(model, *args, **kwargs)

    monkeypatch.setattr(restorelcc.assets, "load_model", recording_load)
    monkeypatch.setattr(restorelcc.evaluate, "perplexity_report", recording_report)
    monkeypatch.setattr(restorelcc.lcc.pipeline, "train_response_lm", recording_train)
    monkeypatch.setattr(restorelcc.baselines, "train_response_lm", recording_train)
    argv = method_argv(tmp_path, "--method", method, "--eval", "--ppl-tokens", "64")
    assert main(argv) == 0
    # (what, models alive by load order, which model, its o_proj bias folded in)
    assert events == [
        ("perplexity", [0, 1], 0, False),  # dense
        *[("train", [1], 1, False)] * trainings,
        ("perplexity", [1], 1, False),  # pruned
        ("perplexity", [1], 1, True),  # restored: pruned, folded
    ]


@pytest.mark.parametrize("method", ["restorelcc", "lofit"])
def test_what_training_refuses_is_refused_before_capture_and_eval(
    restore_checkpoints, monkeypatch, capsys, method
):
    """A tokenizer without EOS (training ends responses with it) fails before the costly
    steps: capture, and --eval's dense perplexity, which now runs before training."""
    import restorelcc.evaluate
    import restorelcc.lcc
    import restorelcc.lcc.train
    from restorelcc.errors import DataError

    tmp_path, _ = restore_checkpoints
    ran = []
    encode_pairs = restorelcc.lcc.train.encode_pairs

    def no_eos(tokenizer, pairs, max_length, eos=False):
        if eos:
            raise DataError("the tokenizer has no EOS token to end responses with")
        return encode_pairs(tokenizer, pairs, max_length, eos)

    def record(name):
        return lambda *args, **kwargs: ran.append(name)

    monkeypatch.setattr(restorelcc.lcc.train, "encode_pairs", no_eos)
    monkeypatch.setattr(restorelcc.evaluate, "perplexity_report", record("perplexity"))
    monkeypatch.setattr(restorelcc.lcc, "plan_heads", record("capture"))
    assert main(method_argv(tmp_path, "--method", method, "--eval")) == 2
    assert "the tokenizer has no EOS token" in capsys.readouterr().err
    assert ran == []
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_an_earlier_restore_out(restore_checkpoints, capsys):
    """--overwrite deletes the whole folder: a non-empty one without adapter.json (a
    user's notes, another model) is refused, and left as it was."""
    tmp_path, _ = restore_checkpoints
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    argv = restore_argv(tmp_path, "--overwrite")
    argv[argv.index("--out") + 1] = str(other)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {other} is not empty and holds no adapter.json" in err
    assert "--overwrite would delete everything in it; choose another --out" in err
    assert (other / "todo.txt").read_text() == "keep me"


def test_an_out_given_with_a_tilde_is_checked_against_the_inputs(
    restore_checkpoints, capsys, monkeypatch
):
    """The shell leaves --out=~/x as it is: written at the home folder's x, it must be
    refused where it is an input, as the same path written out is."""
    tmp_path, _ = restore_checkpoints
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = restore_argv(tmp_path, "--overwrite")
    pruned = argv[argv.index("--pruned") + 1]
    relative = "~/" + str(Path(pruned).relative_to(tmp_path))
    argv[argv.index("--out") + 1] = relative
    argv[argv.index("--pruned") + 1] = relative
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    assert f"--out {pruned} is --pruned {pruned}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_an_unreadable_max_grad_norm_is_named_as_the_option(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    with pytest.raises(SystemExit) as stop:
        main(method_argv(tmp_path, "--max-grad-norm", "abc"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "argument --max-grad-norm: 'abc' is neither a number nor 'none' (see" in err
