"""The CPU benchmark scripts refuse bad options before any work,
bench_restore_quality never replaces a complete stored result with a partial one, and
bench_e2e records a variant that fails and runs the rest."""

import json
from pathlib import Path

import bench_capture_probe
import bench_fold_latency
import bench_host_overhead
import bench_restore_quality
import pytest
import torch

from restorelcc.testing import tiny_config


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A directory holding only a tiny model's config.json (what the option checks read)."""
    directory = tmp_path / "tiny"
    tiny_config("llama-gqa").save_pretrained(directory)  # 2 layers x 6 heads
    return directory


@pytest.fixture
def no_model_load(monkeypatch):
    """Every script's model loading replaced by a failure: an option check that comes too
    late fails the test with this instead of the usage error."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    for module in (bench_capture_probe, bench_fold_latency, bench_restore_quality):
        monkeypatch.setattr(module, "load_model", refuse)


def usage_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--chunks", "0"], "--chunks must be >= 1, got 0"),
        (["--pairs", "0"], "--pairs must be >= 1, got 0"),
        (["--heads", "0"], "--heads 0: heads must be between 1 and 12"),
        (["--heads", "abc"], "'abc' is neither a count nor a fraction"),
    ],
)
def test_capture_probe_checks_its_options_first(
    capsys, no_model_load, tiny_checkpoint, argv, message
):
    argv = ["--model", str(tiny_checkpoint), *argv]
    assert message in usage_error(capsys, bench_capture_probe.main, argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--tokens", "0"], "--tokens must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--variants", "pruned,fast"], "--variants: unknown ['fast']"),
        (["--heads", "13"], "--heads 13: heads must be between 1 and 12"),  # a count, not 1300%
        (["--heads", "1.5"], "--heads 1.5: heads must be a count in [1, 12] or a fraction"),
    ],
)
def test_fold_latency_checks_its_options_first(
    capsys, no_model_load, tiny_checkpoint, argv, message
):
    argv = ["--model", str(tiny_checkpoint), *argv]
    assert message in usage_error(capsys, bench_fold_latency.main, argv)


def test_fold_latency_takes_a_head_count_as_a_count(tiny_checkpoint):
    args = bench_fold_latency.parse_args(["--model", str(tiny_checkpoint), "--heads", "2"])
    assert args.head_count == 2
    args = bench_fold_latency.parse_args(["--model", str(tiny_checkpoint), "--heads", "0.25"])
    assert args.head_count == 3 and args.variants == list(bench_fold_latency.VARIANTS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--number", "0"], "--number must be >= 1, got 0"),
        (["--repeat", "0"], "--repeat must be >= 1, got 0"),
        (["--shape", "0", "8"], "--shape must be two sizes >= 1"),
    ],
)
def test_host_overhead_checks_its_options_first(capsys, monkeypatch, argv, message):
    def refuse(*args, **kwargs):
        raise AssertionError("measured before the options were checked")

    monkeypatch.setattr(bench_host_overhead, "case_operands", refuse)
    assert message in usage_error(capsys, bench_host_overhead.main, argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--probe-pairs", "2"], "probe_pairs must be at least 4"),
        (["--lrs", "abc"], "--lrs 'abc': give comma-separated numbers"),
        (["--lrs", "-1"], "lr must be positive"),
        (["--heads", "abc"], "--heads: 'abc' is neither a count nor a fraction"),
        (["--heads", "0.25,20"], "heads must be between 1 and 12"),
        (["--sparsity", "1.5"], "sparsity must lie strictly between 0 and 1"),
        (["--pattern", "2:4", "--sparsity", "0.7"], "pattern 2:4 prunes 0.5"),
        (["--methods", "restorelcc,magic"], "--methods: unknown ['magic']"),
        (["--tasks", "arc_easy,nope"], "--tasks: unknown task 'nope'"),
    ],
)
def test_restore_quality_checks_its_options_first(
    capsys, no_model_load, tiny_checkpoint, argv, message
):
    argv = ["--model", str(tiny_checkpoint), *argv]
    assert message in usage_error(capsys, bench_restore_quality.main, argv)


def test_restore_quality_writes_a_complete_result_where_out_says(
    tmp_path, tiny_restore_quality, one_torch_thread
):
    out = tmp_path / "results" / "quality.json"
    assert bench_restore_quality.main([*tiny_restore_quality, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "complete"
    assert [r["method"] for r in result["rows"]] == ["dense", "pruned", "training-free"]
    assert all("gap_closed" in r for r in result["rows"])
    assert set(result["load_average"]) == {"before", "after"}
    assert "load_average" in result["run_metadata"]
    assert [p.name for p in out.parent.iterdir()] == ["quality.json"]  # no partial file left


def test_a_failed_run_leaves_the_stored_result_alone(
    tmp_path, monkeypatch, tiny_restore_quality, one_torch_thread
):
    out = tmp_path / "quality.json"
    out.write_text('{"status": "complete", "rows": ["stored"]}\n')

    def fail(*args, **kwargs):
        raise RuntimeError("training diverged")

    monkeypatch.setattr(bench_restore_quality, "training_free", fail)
    with pytest.raises(RuntimeError, match="training diverged"):
        bench_restore_quality.main([*tiny_restore_quality, "--out", str(out)])
    assert json.loads(out.read_text()) == {"status": "complete", "rows": ["stored"]}
    partial = json.loads((tmp_path / "quality.partial.json").read_text())
    assert partial["status"] == "failed: RuntimeError: training diverged"
    assert [r["method"] for r in partial["rows"]] == ["dense", "pruned"]


def test_restore_quality_default_output_does_not_depend_on_the_working_directory(
    tmp_path, monkeypatch, tiny_checkpoint
):
    monkeypatch.chdir(tmp_path)
    p = bench_restore_quality.parser()
    args = p.parse_args(["--model", str(tiny_checkpoint), "--tag", "x"])
    plan = bench_restore_quality.plan_for(p, args)
    assert plan.out == bench_restore_quality.RESULTS / "restore_quality_x.json"
    assert plan.out.is_absolute() and plan.out.parent.name == "results"


def test_host_overhead_times_the_baseline_with_each_case_in_its_context(monkeypatch):
    """F.linear is timed per case, in the rounds of that case (alternating who goes
    first) and inside the same inference mode, not once before all cases."""
    log = []
    sparse_linear = bench_host_overhead.lcc_kernels.sparse_linear

    def logged_sparse_linear(*args, **kwargs):
        log.append(("S", torch.is_inference_mode_enabled()))
        return sparse_linear(*args, **kwargs)

    def logged_plain_op():
        return lambda: log.append(("F", torch.is_inference_mode_enabled()))

    monkeypatch.setattr(bench_host_overhead.lcc_kernels, "sparse_linear", logged_sparse_linear)
    monkeypatch.setattr(bench_host_overhead, "plain_op", logged_plain_op)
    cases = [("2:4", "skinny", 1), ("bitmap", "streams", 1)]
    operands = bench_host_overhead.case_operands(cases, (264, 520))
    rows = bench_host_overhead.measure_cases(operands, number=2, repeat=3)
    assert all(in_mode for _, in_mode in log)
    # the launch count, one warm-up each, then rounds of 2 calls: F S, S F, F S
    per_case = "S" + "FS" + "FFSS" + "SSFF" + "FFSS"
    assert "".join(name for name, _ in log) == per_case * len(cases)
    assert all(r["baseline_us"] > 0 and r["vs_F.linear"] > 0 for r in rows)


def test_benchmark_gpu_skip_reads_the_marker_not_directory_names(monkeypatch):
    """benchmarks/conftest.py skips GPU benchmarks without CUDA: a benchmark under a
    directory named "gpu" (item.keywords holds it) but without the marker still runs."""
    import importlib.util

    path = Path(bench_host_overhead.__file__).resolve().parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("benchmarks_conftest", path)
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Item:
        def __init__(self, marked: bool):
            self.keywords = {"gpu": 1, "test_x": 1}  # a directory named gpu
            self.marked, self.added = marked, []

        def get_closest_marker(self, name):
            return pytest.mark.gpu.mark if self.marked and name == "gpu" else None

        def add_marker(self, marker):
            self.added.append(marker)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plain, marked = Item(marked=False), Item(marked=True)
    conftest.pytest_collection_modifyitems(None, [plain, marked])
    assert plain.added == [] and len(marked.added) == 1


def test_e2e_records_a_variant_whose_swap_fails_and_runs_the_rest(tmp_path, monkeypatch):
    """bench_e2e: a swap that raises has put the model back itself, so the variant's error
    is recorded and the next variants run (unswapping it again had raised, ending the run
    with the error lost and e2e.json left "running")."""
    import bench_e2e

    import restorelcc.hf.swap as swap

    real_swap = swap.swap_attention

    def failing_swap(model, format, **options):
        if format == "2:4" and not options.get("mlp"):
            raise swap.SwapError("planted failure")
        return real_swap(model, format, **options)

    monkeypatch.setattr(swap, "swap_attention", failing_swap)
    assert bench_e2e.main([str(tmp_path / "e2e"), "--smoke"]) == 0
    result = json.loads((tmp_path / "e2e" / "e2e.json").read_text())
    assert result["status"] == "complete"
    variants = result["variants"]
    assert variants["2:4"]["error"] == "SwapError: planted failure"
    assert "2:4" not in {row["variant"] for row in result["rows"]}
    for name in ("2:4+mlp", "bitmap50", "bitmap70"):
        assert "error" not in variants[name] and variants[name]["check"]["ok"]
