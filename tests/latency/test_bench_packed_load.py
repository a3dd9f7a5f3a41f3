"""benchmarks/bench_packed_load.py: options refused before any work, the rounds' rotation
and ratios, and one real run on a tiny 2:4-pruned checkpoint."""

import json

import bench_packed_load
import pytest
import torch

from restorelcc.hf.families import decoder_layers
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory):
    """A tiny llama saved in float32 with 2 of every 4 weights zeroed in each attention and
    MLP projection (as `restorelcc prune --pattern 2:4` leaves them)."""
    model = tiny_model("llama-gqa")
    with torch.no_grad():
        for block in decoder_layers(model):
            for linear in (*block.self_attn.children(), *block.mlp.children()):
                if isinstance(linear, torch.nn.Linear):
                    linear.weight.view(-1, 4)[:, :2] = 0
    return save_checkpoint(model, tmp_path_factory.mktemp("bench") / "pruned")


@pytest.fixture
def no_work(monkeypatch):
    """Pruning, packing and the children replaced by failures: an option checked too late
    fails the test with this instead of the usage error."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    for name in ("prune_default", "write_packed", "run_child"):
        monkeypatch.setattr(bench_packed_load, name, refuse)


def usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        bench_packed_load.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--format", "4:8"], "argument --format: invalid choice: '4:8'"),
        (["--model", "{tmp}/missing"], "/missing: no such directory"),
        (["--model", "{tmp}/file.txt"], "file.txt: a file, not a checkpoint directory"),
        (["--model", "{tmp}"], ": holds no config.json"),
        (["--model", "{tmp}/packed"], "a packed checkpoint; give the pruned checkpoint"),
        (["--model", "{tmp}/config-only"], "config-only: holds no *.safetensors weights"),
        (["--out", "{tmp}/file.txt/result.json"], "is a file, not a directory"),
    ],
)
def test_checks_its_options_first(capsys, tmp_path, no_work, argv, message):
    (tmp_path / "file.txt").write_text("x")
    for folder, files in (("packed", ("config.json", "restorelcc_packed.json")),
                          ("config-only", ("config.json",))):  # fmt: skip
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_text("{}")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert message in usage_error(capsys, argv)


def test_refuses_an_out_that_would_replace_the_checkpoint(capsys, no_work, pruned_checkpoint):
    out = pruned_checkpoint / "config.json"
    argv = ["--model", str(pruned_checkpoint), "--out", str(out)]
    assert "is a file of --model" in usage_error(capsys, argv)
    assert json.loads(out.read_text())["model_type"] == "llama"  # left as it was


def test_rounds_rotate_the_first_path_and_ratios_pair_runs_of_a_round(monkeypatch, tmp_path):
    """Three rounds: each path once per round, the first one rotating; a ratio is the
    median of the per-round ratios (not the ratio of the medians)."""
    ready = {"packed": [1.0, 4.0, 2.0], "load_swap": [2.0, 5.0, 10.0], "dense": [1, 1, 1]}

    def child(path, spec, threads, scratch):
        seconds = pending[path].pop(0)
        return {
            "path": path,
            "torch_threads": threads,
            "packed_modules": {"modules": 0 if path == "dense" else 4, "formats": "2:4"},
            "logits_sha256": path,
            **{metric: seconds for metric in bench_packed_load.METRICS if metric != "process_s"},
        }

    pending = {path: list(values) for path, values in ready.items()}
    monkeypatch.setattr(bench_packed_load, "run_child", child)
    runs = bench_packed_load.measure({}, rounds=3, threads=1, scratch=tmp_path)
    assert [r["path"] for r in runs] == [
        "packed", "load_swap", "dense",
        "load_swap", "dense", "packed",
        "dense", "packed", "load_swap",
    ]  # fmt: skip
    assert [(r["round"], r["position"]) for r in runs] == [(i // 3, i % 3) for i in range(9)]
    assert all(r["process_s"] >= 0 for r in runs)
    paths, ratios, checks = bench_packed_load.summarise(runs)
    assert paths["packed"]["ready_s"] == {"median": 2.0, "min": 1.0, "max": 4.0}
    assert ratios["packed_vs_load_swap"]["ready_s"] == pytest.approx(0.5)  # of 0.5, 0.8, 0.2
    assert ratios["packed_vs_dense"]["peak_mib"] == pytest.approx(2.0)
    assert checks == {"same_packed_modules": True, "same_logits": False}


def test_writes_every_path_with_plausible_figures(tmp_path, pruned_checkpoint, capsys):
    """Run from a parent whose peak is 512 MiB above its children's: a child's peak is its
    own (getrusage's ru_maxrss would carry the parent's across fork and exec)."""
    out = tmp_path / "results" / "packed_load.json"
    argv = ["--model", str(pruned_checkpoint), "--rounds", "1", "--out", str(out)]
    ballast = bytearray(512 << 20)
    ballast[:: 1 << 12] = b"x" * len(ballast[:: 1 << 12])  # every page resident
    try:
        assert bench_packed_load.main(argv) == 0
    finally:
        del ballast
    result = json.loads(out.read_text())
    assert (result["format"], result["mlp"], result["dtype"]) == ("2:4", True, "bfloat16")
    assert set(result["paths"]) == {"packed", "load_swap", "dense"}
    assert [r["path"] for r in result["runs"]] == ["packed", "load_swap", "dense"]
    for run in result["runs"]:
        assert 0 < run["load_s"] < run["ready_s"] < run["process_s"]
        assert run["peak_mib"] >= run["load_peak_mib"] >= run["rss_before_mib"] > 0
        assert run["peak_increase_mib"] == pytest.approx(run["peak_mib"] - run["rss_before_mib"])
        assert run["peak_increase_mib"] < 256  # a model of 0.9 MB, in a parent 512 MiB larger
        assert run["torch_threads"] == 1
    assert result["child_env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # 2 layers x (q/k/v, o, gate/up, down), 2:4
    assert result["packed_modules"] == {"modules": 8, "formats": "2:4"}
    assert result["checks"] == {"same_packed_modules": True, "same_logits": True}
    files = result["files"]
    assert files["pruned_dtypes"] == ["F32"]
    # bf16, and 9/16 of that for the packed projections: below the float32 file and below
    # the same tensors in bf16
    assert 0 < files["packed_bytes"] < files["dense_bytes_at_dtype"] < files["pruned_bytes"]
    for figures in result["ratios"].values():
        assert all(ratio > 0 for ratio in figures.values())
    assert set(result["load_average"]) == {"before", "after"}
    assert "load_average" in result["run_metadata"]
    assert "packed" in capsys.readouterr().out
