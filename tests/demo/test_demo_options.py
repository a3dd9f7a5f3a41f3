"""``restorelcc demo --dtype`` and ``--channel-multiple``: what the command line hands the
run, the report's record of the dtype, and tiny runs that carry them out: pruning in
float32, every other model in ``--dtype``; structured plans keeping whole multiples of MLP
channels. (Refusals before any model loads: ``test_demo_cli.py``.)"""

import json
import math

import pytest
import torch
from demo_helpers import tiny_config

from restorelcc import demo as demo_module
from restorelcc.cli import main
from restorelcc.demo import Demo, run_demo
from restorelcc.demo_config import DemoArgumentError, DemoConfig
from restorelcc.hf.families import decoder_layers


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ([], "auto"),
        (["--dtype", "bfloat16"], "bfloat16"),
        (["--paper", "--dtype", "float16"], "float16"),
    ],
)
def test_demo_takes_dtype(flags, dtype, captured_config, tmp_path):
    assert captured_config(*flags, tmp_path=tmp_path).dtype == dtype


def test_demo_refuses_an_unknown_dtype(tmp_path, capsys, no_model_loads):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--dtype", "float64", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2
    assert "argument --dtype: invalid choice: 'float64'" in capsys.readouterr().err
    with pytest.raises(DemoArgumentError, match="^--dtype must be one of auto, float32, bfloat16"):
        DemoConfig(dtype="float64")


def test_channel_multiple_shapes_the_structured_pattern_only(captured_config, tmp_path):
    flags = ("--patterns", "heads,2:4", "--channel-multiple", "8")
    config = captured_config(*flags, tmp_path=tmp_path)
    assert config.channel_multiple == 8
    assert config.prune_spec("heads").channel_multiple == 8
    assert config.prune_spec("2:4").channel_multiple == 1  # check_spec refuses it there
    assert captured_config("--patterns", "heads", tmp_path=tmp_path).channel_multiple == 1


@pytest.mark.parametrize(
    ("device", "dtype", "ran_in"),
    [
        ("cpu", "auto", "float32"),
        ("cuda", "auto", "bfloat16"),  # resolved only: nothing runs on the device here
        ("cpu", "float16", "float16"),
    ],
)
def test_the_report_records_the_dtype_the_models_ran_in(device, dtype, ran_in, monkeypatch):
    with monkeypatch.context() as patched:  # DemoConfig checks the device (the report not)
        patched.setattr(torch.cuda, "is_available", lambda: True)
        demo = Demo(DemoConfig(tasks=("arc_easy",), device=device, dtype=dtype))
    scores = {"perplexity": {"perplexity": 20.0}, "tasks": {"arc_easy": {"acc": 0.5}}}
    demo.add_row("-", "dense", scores)
    report = demo.report()
    assert report["dtype"] == ran_in
    assert report["config"]["dtype"] == dtype  # as asked


def _spy(monkeypatch, name: str, record) -> None:
    """``demo.<name>`` calls ``record(model, kwargs)`` on its model, then the real one."""
    real = getattr(demo_module, name)

    def spied(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        record(model, kwargs)
        return result

    monkeypatch.setattr(demo_module, name, spied)


def test_demo_runs_in_bfloat16_and_prunes_in_float32(
    tiny_checkpoint, tmp_path, monkeypatch, one_torch_thread
):
    pruned_fp32, evaluated = [], []
    record_prune = lambda model, kwargs: pruned_fp32.append(copy_weights(model))
    record_eval = lambda model, kwargs: evaluated.append(model)
    _spy(monkeypatch, "prune_model", record_prune)
    _spy(monkeypatch, "evaluate_model", record_eval)
    loads, load_model = [], demo_module.load_model

    def recorded_load(name, dtype, device):
        loads.append((dtype, str(device)))
        return load_model(name, dtype=dtype, device=device)

    monkeypatch.setattr(demo_module, "load_model", recorded_load)
    config = tiny_config(tiny_checkpoint, patterns=("2:4",), dtype="bfloat16", tasks=("arc_easy",))
    report = run_demo(config, tmp_path / "out")
    # the float32 model that each pattern prunes a copy of stays in host memory
    assert loads == [(torch.float32, "cpu"), (torch.bfloat16, config.device)]

    assert report["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["dtype"] == "bfloat16"
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["dense", "pruned (wanda)", "lora", "training-free", "restorelcc"]
    for model in evaluated:  # LoRA's base weights; its adapters are peft's to cast
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert {p.dtype for n, p in base.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    # pruned in float32, then cast: the pruned row's weights are the float32 ones rounded
    (weights,) = pruned_fp32
    assert {w.dtype for w in weights.values()} == {torch.float32}
    pruned = dict(evaluated[1].named_parameters())
    for name, weight in weights.items():
        assert torch.equal(pruned[name], weight.to(torch.bfloat16)), name
    for row in report["rows"]:
        assert math.isfinite(row["perplexity"]) and 0 <= row["mean_accuracy"] <= 1
    assert report["rows"][1]["sparsity"] == pytest.approx(0.5, abs=0.01)


def copy_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_demo_keeps_a_multiple_of_channel_multiple_mlp_channels(
    tiny_checkpoint, tmp_path, monkeypatch, one_torch_thread
):
    """The tiny model's MLP is 200 wide; 20% structured (no KV group goes) removes 57
    channels with --channel-multiple 1, and 56 (7 x 8, the nearest) with 8."""
    kept = {}

    def record(model, kwargs):
        widths = {layer.mlp.down_proj.in_features for layer in decoder_layers(model)}
        kept[kwargs["channel_multiple"]] = widths

    _spy(monkeypatch, "prune_model", record)
    for multiple in (1, 8):
        config = tiny_config(
            tiny_checkpoint,
            patterns=("heads",),
            channel_multiple=multiple,
            methods=("training-free",),
            tasks=("arc_easy",),
        )
        report = run_demo(config, tmp_path / f"out{multiple}")
        assert report["config"]["channel_multiple"] == multiple
    assert kept == {1: {143}, 8: {144}}
