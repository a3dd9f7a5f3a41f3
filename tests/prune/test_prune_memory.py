"""The calibration's memory, estimated from the config and checked before the weights load;
the command line's warnings as one plain line."""

import os
import subprocess
import sys

import pytest
import torch

from restorelcc import assets
from restorelcc.cli import main
from restorelcc.prune import memory
from restorelcc.prune.memory import (
    CalibrationMemoryError,
    calibration_memory,
    check_calibration_memory,
    device_memory,
)
from restorelcc.testing import tiny_config

GIB = 2**30
# smollm2-135m, the default model: hidden 576, MLP 1536, 9 query heads of 64
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, max_position_embeddings=8192)  # fmt: skip


def test_the_estimate_holds_two_copies_of_the_hidden_states_and_the_tokens():
    config = tiny_config("llama-3x5")  # 5 heads of 16 (80 wide) over a hidden size of 60
    small, large = (calibration_memory(config, "wanda", n, 32, chunk_size=4) for n in (4, 10))
    assert large.hidden_states == 2 * 10 * 32 * 60 * 4  # float32 inputs and outputs
    assert large.tokens == 10 * 32 * 8  # int64 ids
    assert large.chunk_forward == small.chunk_forward  # one chunk of 4, whatever nsamples
    per_token = 4 * config.intermediate_size + 8 * 60  # no attention scores: SDPA
    assert large.chunk_forward == 4 * 32 * per_token * 4
    assert calibration_memory(config, "wanda", 2, 32, chunk_size=4).chunk_forward == (
        2 * 32 * per_token * 4
    )  # fewer samples than a chunk: the chunk holds them only
    assert large.gram == 0 and large.total == sum(vars(large).values())


def test_sparsegpt_adds_its_gram_matrices_and_their_factorisation():
    config = tiny_config("llama-3x5")
    wanda = calibration_memory(config, "wanda", 4, 32)
    sparsegpt = calibration_memory(config, "sparsegpt", 4, 32)
    widths = (60, 80, 60, config.intermediate_size)  # q/k/v, o, gate/up, down inputs
    # beside the Gram matrices: the scaled Hessian and two of its factorisation's matrices
    assert sparsegpt.gram == 8 * (sum(w * w for w in widths) + 3 * max(widths) ** 2)
    assert sparsegpt.total - wanda.total == sparsegpt.gram


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize(
    "nsamples, seqlen",
    [(64, 512), (32, 256), (128, 2048), (8, 128)],
    ids=["prune-defaults", "demo-defaults", "demo-paper", "bench-quick"],
)
def test_defaults_and_benchmark_settings_fit_a_machine_of_8_gib(
    monkeypatch, method, nsamples, seqlen
):
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * GIB, "this machine has"))
    config = tiny_config("llama-mha", **SMOLLM2)
    assert check_calibration_memory(config, method, nsamples, seqlen, "cpu").total < 8 * GIB


def test_the_reported_request_is_refused_on_the_machine_it_was_killed_on(monkeypatch):
    """--nsamples 100000 --seqlen 2048 was OOM-killed at ~24 GB after 484 s."""
    monkeypatch.setattr(memory, "device_memory", lambda device: (24 * GIB, "this machine has"))
    config = tiny_config("llama-mha", **SMOLLM2)
    flags = ("--nsamples", "--seqlen")
    with pytest.raises(CalibrationMemoryError) as caught:
        check_calibration_memory(config, "wanda", 100000, 2048, "cpu", flags=flags)
    assert str(caught.value) == (
        "--nsamples 100000 x --seqlen 2048: calibration would hold about 881.1 GiB at once "
        "(878.9 GiB of them a block's float32 inputs and outputs, 100000 x 2048 x 576 each) "
        "but this machine has 24.0 GiB; lower --nsamples or --seqlen"
    )


def test_long_windows_that_fit_are_not_refused_and_a_large_chunk_names_chunk_size(monkeypatch):
    """SDPA holds no attention scores: 64 x 8192 on the default model is about 5 GiB (the
    estimate had counted eager attention's scores, 41 GiB, and refused it on 24 GiB); where
    one chunk's forward is the larger part, the message names --chunk-size too."""
    monkeypatch.setattr(memory, "device_memory", lambda device: (24 * GIB, "this machine has"))
    config = tiny_config("llama-mha", **SMOLLM2)
    assert check_calibration_memory(config, "wanda", 64, 8192, "cpu").total < 5 * GIB
    monkeypatch.setattr(memory, "device_memory", lambda device: (GIB // 4, "this machine has"))
    flags = ("--nsamples", "--seqlen")
    with pytest.raises(CalibrationMemoryError, match="lower --chunk-size .one chunk's forward"):
        check_calibration_memory(config, "wanda", 8, 8192, "cpu", 8, flags, "--chunk-size")
    with pytest.raises(CalibrationMemoryError, match="; lower --nsamples or --seqlen$"):
        check_calibration_memory(config, "wanda", 8, 8192, "cpu", 1, flags, "--chunk-size")


def test_a_container_limit_below_the_physical_memory_is_the_limit(monkeypatch, tmp_path):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    limit = tmp_path / "memory.max"
    read = memory._container_limit
    monkeypatch.setattr(memory, "_container_limit", lambda: read(str(limit)))
    for text, expected in [
        ("1000000\n", (1000000, "this container may use")),
        ("max\n", (4096 * 1000, "this machine has")),
        ("9999999\n", (4096 * 1000, "this machine has")),  # above the physical memory
    ]:
        limit.write_text(text)
        assert device_memory(torch.device("cpu")) == expected


def test_the_limit_is_the_physical_memory_or_the_cuda_device_total(monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert device_memory(torch.device("cpu")) == (4096 * 1000, "this machine has")
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return 3 * GIB, 80 * GIB  # (free, total)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert device_memory(torch.device("cuda:1")) == (80 * GIB, "cuda:1 has")
    assert asked == [torch.device("cuda:1")]


def test_the_command_refuses_a_calibration_larger_than_memory_before_the_weights_load(
    tiny_dir, calib_file, tmp_path, monkeypatch, capsys
):
    real_sysconf = os.sysconf
    phys_pages = 16 * 2**20 // real_sysconf("SC_PAGE_SIZE")  # a machine of 16 MiB
    monkeypatch.setattr(
        os, "sysconf", lambda name: phys_pages if name == "SC_PHYS_PAGES" else real_sysconf(name)
    )

    def load_model(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(assets, "load_model", load_model)
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_dir), "--calibration", str(calib_file), "--nsamples",
            "64", "--seqlen", "256", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "restorelcc prune: error: --nsamples 64 x --seqlen 256: calibration would hold about "
    )
    assert "64 x 256 x 96 each) but this machine has 0.0 GiB; lower --chunk-size (one " in err
    assert "chunk's forward holds 0.0 GiB), --nsamples or --seqlen\n" in err
    assert not out.exists()


def test_prune_model_makes_the_commands_calibration_checks(monkeypatch):
    """Through the Python API too: a calibration longer than the model's positions, or
    larger than the device's memory, is refused before any weight changes."""
    from restorelcc.prune import PruneArgumentError, prune_model
    from restorelcc.testing import tiny_model

    model = tiny_model("llama-gqa", max_position_embeddings=32)
    weights = {name: param.clone() for name, param in model.named_parameters()}
    too_long = torch.randint(0, 259, (2, 33))
    with pytest.raises(PruneArgumentError, match=r"^calibration of 33 tokens per sample: more "
                       r"tokens than the 32 positions the model serves$"):  # fmt: skip
        prune_model(model, "wanda", 0.5, calibration=too_long, progress=False)
    monkeypatch.setattr(memory, "device_memory", lambda device: (2**20, "this machine has"))
    with pytest.raises(CalibrationMemoryError, match=r"^nsamples 64 x seqlen 32: calibration "):
        prune_model(model, "sparsegpt", 0.5, calibration=torch.ones(64, 32).long())
    with pytest.raises(CalibrationMemoryError, match=r"; lower chunk_size \(one chunk's forward "
                       r"holds 0\.\d GiB\), nsamples or seqlen$"):  # fmt: skip
        prune_model(model, "wanda", 0.5, calibration=torch.ones(64, 32).long(), chunk_size=64)
    assert all(torch.equal(param, weights[name]) for name, param in model.named_parameters())


def test_a_warning_is_one_plain_line(tiny_dir, tmp_path):
    """A source shorter than asked warns: one line naming the command, not Python's
    file:line, category and source line."""
    text = tmp_path / "small.txt"
    text.write_text("word " * 40)
    env = {k: v for k, v in os.environ.items() if k != "RESTORELCC_DEBUG"}
    argv = ["prune", "--model", str(tiny_dir), "--calibration", str(text), "--nsamples", "4",
            "--seqlen", "64", "--device", "cpu", "--quiet", "--out",
            str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "restorelcc.cli", *argv], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "restorelcc prune: warning: calibration source "
        f"'{text}' gives only 202 tokens for 4 windows of 64 (256 tokens asked): it holds 3 "
        "disjoint windows, so the windows overlap and repeat; give more text or lower "
        "--nsamples/--seqlen"
    ]
