"""DoRA (LoRA with a trained magnitude per output row) runs in the demo and in
bench_restore_quality, as an opt-in method on LoRA's code path, its row counting the
magnitude vectors as trainable. LoRA/DoRA rows say which model their sparsity is of: the
evaluated one is unmerged, the sparsity kept is with the adapters merged."""

import json

import bench_restore_quality
import pytest
from demo_helpers import tiny_config

from restorelcc.demo import Demo, run_demo
from restorelcc.demo_config import DEFAULT_METHODS, METHODS, DemoConfig
from restorelcc.testing import TINY_SHAPES


def adapter_counts(rank: int) -> tuple[int, int]:
    """(LoRA, DoRA) trainable parameters on q/k/v/o of the tiny ``llama-gqa`` model: ``rank
    * (in + out)`` per matrix, and DoRA one magnitude per output row besides."""
    _, layers, heads, kv_heads, head_dim, hidden = TINY_SHAPES["llama-gqa"]
    shapes = [(hidden, heads * head_dim), *[(hidden, kv_heads * head_dim)] * 2]
    shapes.append((heads * head_dim, hidden))  # o_proj
    lora = layers * sum(rank * (n_in + n_out) for n_in, n_out in shapes)
    return lora, lora + layers * sum(n_out for _, n_out in shapes)


def test_dora_is_a_method_the_demo_takes_but_does_not_run_by_default(captured_config, tmp_path):
    assert "dora" in METHODS and "dora" not in DEFAULT_METHODS
    config = captured_config("--methods", "dora", "--lora-rank", "4", tmp_path=tmp_path)
    assert config.methods == ("dora",) and config.lora_rank == 4  # --lora-rank is DoRA's too
    unused = lambda methods: {
        name for names, _ in DemoConfig(methods=methods).unused_options() for name in names
    }
    assert "lora_lr" not in unused(("dora",)) and "lora_lr" in unused(("restorelcc",))


def test_the_demo_runs_dora_beside_lora(tiny_checkpoint, tmp_path):
    config = tiny_config(tiny_checkpoint, patterns=("2:4",), methods=("dora", "lora"))
    report = run_demo(config, tmp_path / "out")
    rows = {row["method"]: row for row in report["rows"]}
    assert [row["method"] for row in report["rows"]] == ["dense", "pruned (wanda)", "lora", "dora"]
    lora, dora = adapter_counts(config.lora_rank)
    assert (rows["lora"]["trainable_parameters"], rows["dora"]["trainable_parameters"]) == (
        lora,
        dora,
    )
    pruned = rows["pruned (wanda)"]["sparsity"]
    for method in ("lora", "dora"):
        row = rows[method]
        assert row["sparsity"] == pruned  # the model evaluated: adapters unmerged
        merged = row["notes"]["merged_sparsity"]
        assert merged < pruned and row["sparsity_kept"] == pytest.approx(merged / pruned)
        assert "merged" in row["notes"]["sparsity_kept"]
    notes = report["table"].split("\n\n")[1]
    assert "dora, lora: evaluated and timed with the adapters unmerged" in notes
    assert "sparsity kept is with the adapters merged into them" in notes


def test_the_table_says_which_model_the_lora_rows_sparsity_kept_is_of():
    """A stored report's rows (the same keys) get the note too: it reads the methods."""
    demo = Demo(DemoConfig(tasks=("arc_easy",)))
    evaluation = {"perplexity": {"perplexity": 20.0}, "tasks": {"arc_easy": {"acc": 0.5}}}
    demo.add_row("-", "dense", evaluation)
    demo.add_row("2:4", "pruned (wanda)", evaluation, sparsity=0.5, sparsity_kept=1.0)
    demo.add_row("2:4", "restorelcc", evaluation, sparsity=0.5, sparsity_kept=1.0)
    assert "unmerged" not in demo.table()
    demo.add_row("2:4", "lora", evaluation, sparsity=0.5, sparsity_kept=0.75)
    assert demo.table().split("\n\n")[1] == (
        "lora: evaluated and timed with the adapters unmerged, beside the pruned weights; "
        "their sparsity kept is with the adapters merged into them"
    )


def test_bench_restore_quality_runs_dora(tmp_path, tiny_restore_quality, one_torch_thread):
    assert "dora" in bench_restore_quality.METHODS
    assert "dora" not in bench_restore_quality.DEFAULT_METHODS
    out = tmp_path / "quality.json"
    argv = ["--methods", "lora,dora", "--lora-rank", "2", "--out", str(out)]
    assert bench_restore_quality.main([*tiny_restore_quality, *argv]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["dense", "pruned", "lora lr=0.001", "dora lr=0.001"]
    assert [row["trainable"] for row in rows[2:]] == list(adapter_counts(2))


def _zero_a_q_row(prune_model):
    """``prune_model`` that also zeroes layer 0's first q_proj output row (as magnitude
    pruning at 50% does to 27 SmolLM2 rows)."""

    def prune(model, *args, **kwargs):
        report = prune_model(model, *args, **kwargs)
        model.model.layers[0].self_attn.q_proj.weight.data[0] = 0.0
        return report

    return prune


def test_the_demo_refuses_dora_on_all_zero_rows_before_scoring_the_pruned_model(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """DoRA divides each row by its norm (NaN at its first step): the demo said so only
    after scoring the pruned model; now right after pruning."""
    import restorelcc.demo
    from restorelcc.errors import UnsupportedModelError

    monkeypatch.setattr(restorelcc.demo, "prune_model", _zero_a_q_row(restorelcc.demo.prune_model))
    stages, evaluate = [], Demo.evaluate

    def recorded(self, model, tokenizer, stage):
        stages.append(stage)
        return evaluate(self, model, tokenizer, stage)

    monkeypatch.setattr(Demo, "evaluate", recorded)
    config = tiny_config(tiny_checkpoint, patterns=("2:4",), methods=("dora",))
    with pytest.raises(UnsupportedModelError, match="DoRA cannot train this model: 1 all-zero"):
        run_demo(config, tmp_path / "out")
    assert stages and not any("pruned" in stage for stage in stages)


def test_bench_restore_quality_refuses_dora_on_all_zero_rows_before_scoring(
    tmp_path, tiny_restore_quality, monkeypatch
):
    from restorelcc.errors import UnsupportedModelError

    prune = _zero_a_q_row(bench_restore_quality.prune_model)
    monkeypatch.setattr(bench_restore_quality, "prune_model", prune)
    monkeypatch.setattr(
        bench_restore_quality, "measure", lambda *a, **k: pytest.fail("scored before refusing")
    )
    argv = ["--methods", "dora", "--lora-rank", "2", "--out", str(tmp_path / "q.json")]
    with pytest.raises(UnsupportedModelError, match="DoRA cannot train this model"):
        bench_restore_quality.main([*tiny_restore_quality, *argv])
