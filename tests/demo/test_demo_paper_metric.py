"""The demo keeps every metric of every task, the paper's mean accuracy (plain ``acc`` on
every task) and its gap closed beside the headline, and the perplexity's windows
(``--ppl-window``, ``--ppl-stride``)."""

import json
import re

import pytest
from demo_helpers import tiny_config
from transformers import AutoModelForCausalLM

from restorelcc.cli import main
from restorelcc.data import perplexity_texts
from restorelcc.demo import Demo, DemoConfig, run_demo
from restorelcc.demo_config import DemoArgumentError
from restorelcc.eval.perplexity import perplexity_report
from restorelcc.testing import byte_tokenizer


def evaluation(ppl: float, arc: tuple[float, float], hellaswag: tuple[float, float]) -> dict:
    """An evaluation of one model on arc_easy and hellaswag: each task's (acc, acc_norm)."""
    tasks = {
        name: {"items": 100, "requests": 400, "acc": acc, "acc_stderr": 0.05, "acc_norm": norm,
               "acc_norm_stderr": 0.04, "wall_s": 1.0}
        for name, (acc, norm) in (("arc_easy", arc), ("hellaswag", hellaswag))
    }  # fmt: skip
    return {"perplexity": {"perplexity": ppl}, "tasks": tasks}


def three_rows(tasks=("arc_easy", "hellaswag")) -> Demo:
    """Dense, pruned and restored rows whose headline and plain-acc gaps differ."""
    demo = Demo(DemoConfig(tasks=tasks))
    demo.add_row("-", "dense", evaluation(20.0, (0.60, 0.55), (0.40, 0.70)))
    demo.add_row("2:4", "pruned (wanda)", evaluation(80.0, (0.40, 0.45), (0.30, 0.50)))
    demo.add_row("2:4", "restorelcc", evaluation(50.0, (0.55, 0.50), (0.30, 0.59)))
    return demo


def header_and_cells(table: str) -> list[dict[str, str]]:
    """The rows of a demo table (up to its notes), each as header -> cell text."""
    lines = table.split("\n\n")[0].splitlines()
    split = lambda line: re.split(r"\s{2,}", line.strip())
    return [dict(zip(split(lines[0]), split(line), strict=True)) for line in lines[2:]]


def test_rows_keep_every_metric_and_the_paper_mean_of_plain_acc():
    demo = three_rows()
    dense, pruned, restored = demo.derived()
    kept = evaluation(50.0, (0.55, 0.50), (0.30, 0.59))["tasks"]
    assert restored["metrics"] == kept  # acc, acc_norm, their stderr, items...
    assert restored["accuracy"] == {"arc_easy": 0.55, "hellaswag": 0.59}  # the headline
    assert restored["mean_accuracy"] == pytest.approx(0.57)
    assert restored["mean_plain_acc"] == pytest.approx(0.425)  # (0.55 + 0.30) / 2
    assert (dense["mean_plain_acc"], pruned["mean_plain_acc"]) == pytest.approx((0.5, 0.35))
    # headline: pruned 0.45 -> 0.57 of dense 0.65; plain acc: 0.35 -> 0.425 of 0.5
    assert restored["acc_gap_closed"] == pytest.approx(0.6)
    assert restored["plain_acc_gap_closed"] == pytest.approx(0.5)
    saved = json.loads(json.dumps(demo.report()["rows"]))
    assert saved[-1]["metrics"]["hellaswag"]["acc_norm_stderr"] == 0.04


def test_the_table_shows_the_paper_figures_where_the_headline_is_not_plain_acc():
    table = three_rows().table()
    cells = header_and_cells(table)[-1]
    assert (cells["mean acc"], cells["acc gap closed"]) == ("0.57", "60%")
    assert (cells["paper mean acc"], cells["paper acc gap closed"]) == ("0.425", "50%")
    notes = table.split("\n\n")[1]
    assert "paper mean acc, paper acc gap closed: plain acc on every task, the paper's" in notes
    # every headline plain acc: one figure, the table as it was
    plain = Demo(DemoConfig(tasks=("arc_easy",)))
    for method, acc in (("dense", 0.6), ("pruned (wanda)", 0.4), ("lora", 0.5)):
        tasks = {"arc_easy": {"acc": acc, "acc_norm": 0.9}}
        scores = {"perplexity": {"perplexity": 9.0}, "tasks": tasks}
        plain.add_row("-" if method == "dense" else "2:4", method, scores)
    assert "paper" not in plain.table()
    assert plain.derived()[-1]["plain_acc_gap_closed"] == pytest.approx(0.5)


def test_the_demo_reports_its_windows_and_all_metrics(tiny_checkpoint, tmp_path):
    config = tiny_config(
        tiny_checkpoint, patterns=("2:4",), methods=("training-free",),
        tasks=("arc_easy", "hellaswag"), limit=3, ppl_window=64, ppl_stride=64,
    )  # fmt: skip
    report = run_demo(config, tmp_path / "out")
    # 256 tokens, less each later window's first: 4 disjoint windows
    protocol = {"source": "lambada", "tokens": 252, "window": 64, "stride": 64}
    assert report["perplexity_protocol"] == protocol
    assert "ppl: perplexity (lambada, 252 tokens, window 64, stride 64)" in report["table"]
    assert "paper mean acc" in report["table"]  # hellaswag's headline is acc_norm
    for row in report["rows"]:
        assert set(row["metrics"]) == {"arc_easy", "hellaswag"}
        for metrics in row["metrics"].values():
            assert metrics["items"] == 3 and {"acc", "acc_stderr", "acc_norm"} <= set(metrics)
        plain = [metrics["acc"] for metrics in row["metrics"].values()]
        assert row["mean_plain_acc"] == pytest.approx(sum(plain) / 2)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["perplexity_protocol"] == protocol and saved["config"]["ppl_window"] == 64
    dense = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    expected = perplexity_report(
        dense, byte_tokenizer(), texts=perplexity_texts("lambada"), tokens=256, window=64,
        stride=64, progress=False,
    ).perplexity  # fmt: skip
    assert report["rows"][0]["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_demo_takes_ppl_window_and_stride(captured_config, tmp_path):
    config = captured_config("--ppl-window", "128", "--ppl-stride", "32", tmp_path=tmp_path)
    assert (config.ppl_window, config.ppl_stride) == (128, 32)
    config = captured_config("--ppl-window", "auto", tmp_path=tmp_path)
    assert (config.ppl_window, config.ppl_stride) == (None, None)
    assert (DemoConfig().ppl_window, DemoConfig().ppl_stride) == (None, None)  # 512, 256


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(ppl_window=64, ppl_stride=100), "--ppl-stride 100: longer than the window, 64"),
        (dict(ppl_stride=600), "--ppl-stride 600: longer than the window, 512"),
        (dict(ppl_window=1), "--ppl-window must be at least 2"),
        (dict(ppl_window=0), "--ppl-window must be a positive integer, got 0"),
    ],
)
def test_bad_windows_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(DemoArgumentError) as error:
        DemoConfig(**settings)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ppl-window", "1024"], "--ppl-window 1024: longer than the 256 tokens the model"),
        (["--ppl-stride", "300"], "--ppl-stride 300: longer than the window, 256 (the default"),
    ],
)
def test_a_window_the_model_cannot_take_is_refused_before_it_loads(
    tiny_checkpoint, no_model_loads, tmp_path, capsys, flags, message
):
    argv = ["demo", "--model", str(tiny_checkpoint), *flags, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("restorelcc demo: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_a_window_the_tokenizer_cannot_take_is_refused_naming_the_option(
    tiny_checkpoint, tmp_path, monkeypatch, capsys, tokenizers_take_48
):
    """Checked once the model and tokenizer load, before the calibration data and the
    dense model's evaluation."""
    import restorelcc.demo as demo_module

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated")

    monkeypatch.setattr(demo_module, "evaluate_model", no_evaluation)
    argv = ["demo", "--model", str(tiny_checkpoint), "--ppl-window", "64", "--quiet",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorelcc demo: error: --ppl-window 64: longer than the 48 tokens")
    assert not (tmp_path / "out").exists()
