import json
import math
import re

import pytest
from demo_helpers import tiny_config
from transformers import AutoModelForCausalLM

from restorelcc.cli import build_parser, main
from restorelcc.demo import Demo, DemoConfig, forward_latency, run_demo
from restorelcc.demo_config import DemoArgumentError
from restorelcc.demo_table import gap_closed
from restorelcc.eval.perplexity import perplexity_report
from restorelcc.testing import byte_tokenizer, tiny_model


def test_gap_closed_knows_which_way_is_better():
    assert gap_closed(100.0, 60.0, 20.0, higher_is_better=False) == pytest.approx(0.5)
    assert gap_closed(100.0, 120.0, 20.0, higher_is_better=False) == pytest.approx(-0.25)
    assert gap_closed(0.4, 0.45, 0.5, higher_is_better=True) == pytest.approx(0.5)
    assert gap_closed(0.4, 0.35, 0.5, higher_is_better=True) == pytest.approx(-0.5)
    # pruning lost nothing, or gained: no gap to close, whichever way the method went
    assert gap_closed(0.5, 0.6, 0.5, higher_is_better=True) is None
    assert gap_closed(0.4, 0.3, 0.2, higher_is_better=True) is None  # read as 50% closed
    assert gap_closed(10.0, 15.0, 20.0, higher_is_better=False) is None  # read as 50% closed
    # a pruned perplexity that overflowed: no fraction of it measures anything
    assert gap_closed(math.inf, 50.0, 20.0, higher_is_better=False) is None


def scores(perplexity: float, accuracy: float) -> dict:
    """An evaluation of one model on arc_easy alone."""
    return {"perplexity": {"perplexity": perplexity}, "tasks": {"arc_easy": {"acc": accuracy}}}


def table_cells(demo: Demo) -> list[dict[str, str]]:
    """``demo.table()``'s rows (up to its notes), each as header -> cell text."""
    header, _, *lines = demo.table().split("\n\n")[0].splitlines()
    split = lambda line: re.split(r"\s{2,}", line.strip())
    return [dict(zip(split(header), split(line), strict=True)) for line in lines]


def test_a_regression_where_pruning_did_not_hurt_closes_no_gap():
    """Dense accuracy 0.2, pruned 0.4 and restorelcc 0.3 printed "acc gap closed 50%"."""
    demo = Demo(DemoConfig(tasks=("arc_easy",)))
    demo.add_row("-", "dense", scores(20.0, 0.2))
    demo.add_row("2:4", "pruned (wanda)", scores(18.0, 0.4))
    demo.add_row("2:4", "restorelcc", scores(19.0, 0.3))
    restored = demo.derived()[-1]
    assert restored["acc_gap_closed"] is None and restored["ppl_gap_closed"] is None
    cells = table_cells(demo)[-1]
    assert cells["method"] == "restorelcc"
    assert (cells["ppl gap closed"], cells["acc gap closed"]) == ("-", "-")


def test_the_table_writes_counts_with_separators_and_no_negative_zero():
    demo = Demo(DemoConfig(tasks=("arc_easy",)))
    demo.add_row("-", "dense", scores(20.0, 0.5))
    demo.add_row("2:4", "pruned (wanda)", scores(120.0, 0.3))
    demo.add_row("2:4", "lora", scores(120.4, 0.29), trainable_parameters=921600)
    cells = table_cells(demo)[-1]
    assert cells["ppl gap closed"] == "0%"  # -0.4%: once printed "-0%"
    assert cells["acc gap closed"] == "-5%"
    assert cells["trainable"] == "921,600"  # as the README's table has it
    assert [row["trainable"] for row in table_cells(demo)] == ["0", "0", "921,600"]
    assert demo.report()["rows"][-1]["trainable_parameters"] == 921600  # JSON: a number


def test_an_overflowing_perplexity_reads_as_inf_in_the_rows():
    demo = Demo(DemoConfig(tasks=("arc_easy",)))
    for method, ppl in (("dense", 20.0), ("pruned (wanda)", 100.0), ("restorelcc", None)):
        evaluation = {"perplexity": {"perplexity": ppl}, "tasks": {"arc_easy": {"acc": 0.5}}}
        demo.add_row("-" if method == "dense" else "2:4", method, evaluation)
    restored = demo.derived()[-1]
    assert restored["perplexity"] == math.inf and restored["ppl_gap_closed"] == -math.inf


def test_the_report_and_the_table_say_which_metric_each_accuracy_is():
    demo = Demo(DemoConfig(tasks=("arc_easy", "hellaswag")))
    scores = {"arc_easy": {"acc": 0.5, "acc_norm": 0.6}, "hellaswag": {"acc": 0.3, "acc_norm": 0.4}}
    demo.add_row("-", "dense", {"perplexity": {"perplexity": 20.0}, "tasks": scores})
    assert demo.derived()[0]["accuracy"] == {"arc_easy": 0.5, "hellaswag": 0.4}
    assert demo.report()["accuracy_metric"] == {"arc_easy": "acc", "hellaswag": "acc_norm"}
    header = [cell.strip() for cell in re.split(r"\s{2,}", demo.table().splitlines()[0])]
    assert header[:5] == ["pattern", "method", "ppl", "arc_easy", "hellaswag (acc_norm)"]
    paper = Demo(DemoConfig.paper())
    scores = {task: {"acc": 0.5, "acc_norm": 0.5} for task in paper.config.tasks}
    paper.add_row("-", "dense", {"perplexity": {"perplexity": 20.0}, "tasks": scores})
    paper = paper.report()["accuracy_metric"]
    assert {task for task, metric in paper.items() if metric == "acc_norm"} == {
        "hellaswag",
        "arc_challenge",
        "openbookqa",
    }
    assert len(paper) == 7


def test_demo_runs_end_to_end_and_keeps_sparsity(tiny_checkpoint, tmp_path):
    report = run_demo(tiny_config(tiny_checkpoint, patterns=("2:4",)), tmp_path / "out")
    rows = report["rows"]
    methods = [(r["pattern"], r["method"]) for r in rows]
    assert methods == [
        ("-", "dense"),
        *[("2:4", m) for m in ("pruned (wanda)", "lora", "training-free", "restorelcc")],
    ]
    by_key = {(r["pattern"], r["method"]): r for r in rows}
    assert by_key[("2:4", "pruned (wanda)")]["sparsity"] == pytest.approx(0.5, abs=0.01)
    restored = by_key[("2:4", "restorelcc")]
    assert restored["sparsity_kept"] == 1.0
    assert restored["trainable_parameters"] == 3 * 2 * 16
    assert by_key[("2:4", "training-free")]["sparsity_kept"] == 1.0
    assert by_key[("2:4", "lora")]["sparsity_kept"] < 1.0  # merging densifies
    assert "ppl_gap_closed" in restored and "acc_gap_closed" in restored
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows, default=str))
    assert saved["accuracy_metric"] == {"arc_easy": "acc", "piqa": "acc"}
    assert (tmp_path / "out" / "plot.png").stat().st_size > 1000
    assert "restorelcc" in report["table"] and "acc gap closed" in report["table"]
    # every step's time, in run order (only the pruning's had been recorded)
    methods = ("lora", "training-free", "restorelcc")
    assert list(saved["stages"]) == [
        "load",
        "calibration data",
        "evaluate dense",
        "prune 2:4",
        "evaluate 2:4 pruned (wanda)",
        *[f"restore 2:4 {method}" for method in methods],
        "latency 2:4",
        *[f"evaluate 2:4 {method}" for method in methods],
    ]
    assert all(seconds >= 0 for seconds in saved["stages"].values())
    assert sum(saved["stages"].values()) <= saved["wall_s"] + 0.05 * (len(saved["stages"]) + 1)


def test_demo_runs_lofit_when_asked_on_a_perplexity_text_of_its_own(tiny_checkpoint, tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text("The quiet river ran past the mill and the baker's lanterns. " * 30)
    config = tiny_config(
        tiny_checkpoint, patterns=("unstructured",), methods=("lofit",), ppl_source=str(text)
    )
    report = run_demo(config, tmp_path / "out")
    assert report["config"]["ppl_source"] == str(text)
    dense = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    expected = perplexity_report(
        dense, byte_tokenizer(), texts=[text.read_text()], tokens=256, progress=False
    ).perplexity
    rows = report["rows"]
    assert rows[0]["perplexity"] == pytest.approx(expected, rel=1e-5)  # the dense row
    assert [r["method"] for r in rows] == ["dense", "pruned (wanda)", "lofit"]
    lofit = rows[-1]
    assert lofit["trainable_parameters"] == 3 * 16  # a bias per picked head, no beta
    assert lofit["sparsity_kept"] == 1.0 and lofit["notes"]["selected_heads"] == 3
    assert set(lofit["notes"]["stage_seconds"]) == {"select", "train"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "lora,magic"], "magic"),
        (["--tasks", "arc_easy,mmlu"], "unknown task 'mmlu'"),
        (["--tasks", "none"], "the demo compares accuracy: give at least one task"),
        (["--ppl-source", "/nonexistent/wiki.txt"], "unknown perplexity source"),
    ],
)
def test_demo_cli_rejects_bad_methods_and_tasks_before_pruning(
    flags, message, tiny_checkpoint, tmp_path, capsys
):
    code = main(["demo", "--model", str(tiny_checkpoint), *flags, "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("text", "heads"), [("64", 64), ("0.25", 0.25), ("1.0", 1.0)])
def test_demo_heads_are_a_count_or_a_fraction(text, heads):
    args = build_parser().parse_args(["demo", "--heads", text])
    assert args.heads == heads and type(args.heads) is type(heads)


def test_demo_on_structured_pruning(tiny_checkpoint, tmp_path):
    """The 'heads' pattern removes MLP channels here (0.2 of 2 KV groups rounds to none)."""
    config = tiny_config(tiny_checkpoint, patterns=("heads",), methods=("restorelcc",))
    report = run_demo(config, tmp_path / "out")
    pruned, restored = report["rows"][1:]
    assert pruned["method"] == "pruned (wanda)" and pruned["sparsity_kept"] is None
    assert restored["method"] == "restorelcc" and restored["sparsity_kept"] is None
    assert restored["trainable_parameters"] == 3 * 2 * 16


def test_demo_restores_a_model_with_heads_removed(tiny_checkpoint, tmp_path):
    """At 0.5, one of the 2 KV groups (and its 3 query heads) goes in every layer."""
    config = tiny_config(
        tiny_checkpoint,
        patterns=("heads",),
        structured_sparsity=0.5,
        methods=("training-free", "restorelcc"),
    )
    report = run_demo(config, tmp_path / "out")
    methods = [row["method"] for row in report["rows"][1:]]
    assert methods == ["pruned (wanda)", "training-free", "restorelcc"]
    restored = report["rows"][-1]
    assert restored["trainable_parameters"] == 3 * 2 * 16
    assert restored["notes"]["selected_heads"] == 3


def test_forward_latency_is_relative_to_the_baseline():
    model = tiny_model("llama-gqa")
    ratios = forward_latency({"pruned": model, "other": model}, 64, rounds=3, baseline="pruned")
    assert set(ratios) == {"pruned", "other"}
    assert ratios["pruned"] == 1.0 and ratios["other"] > 0


def test_the_probe_pairs_preset_is_at_most_the_train_pairs_in_the_api_too():
    """The lowering had lived in the CLI only: DemoConfig(train_pairs=64) was refused over a
    --probe-pairs 128 nobody gave."""
    assert DemoConfig().probe_pairs == 128
    assert DemoConfig(train_pairs=64).probe_pairs == 64
    assert DemoConfig.paper(train_pairs=500).probe_pairs == 500
    assert DemoConfig.paper().probe_pairs == 1000
    with pytest.raises(DemoArgumentError, match="--probe-pairs 100 exceeds --train-pairs 64"):
        DemoConfig(train_pairs=64, probe_pairs=100)
    assert DemoConfig.paper(train_pairs=500, probe_pairs=None).probe_pairs == 500
    with pytest.raises(DemoArgumentError, match="--train-pairs must be positive, got 'x'"):
        DemoConfig.paper(train_pairs="x")
