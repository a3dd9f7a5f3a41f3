"""``restorelcc bench``'s check of the swapped calls: kernels.md's rule on each swapped
projection, on the input the call gave it (a correct swap of a deep model passes where the
rule on its logits failed), still failing a swap that drops a bias or packs a wrong value,
in float64 blocks that give the same verdict as the whole output; the logits' difference
from nn.Linear's reported as information."""

import json

import pytest
import torch
from _hf_swap_helpers import add_o_bias, attention, prune_attention

from restorelcc.cli import main
from restorelcc.testing import save_checkpoint, tiny_model


def _bench(model: str, out, *extra) -> list[str]:
    return ["bench", "--model", model, "--batches", "2", "1", "--context", "8", "--prefill",
            "--rounds", "3", "--device", "cpu", "--quiet", "--json", str(out), *extra]  # fmt: skip


@pytest.mark.slow
def test_a_correct_swap_of_a_deep_model_passes_where_the_logits_rule_failed(
    tmp_path, monkeypatch, capsys
):
    """SmolLM2 (16 of its 30 layers, magnitude 2:4, float32) with attention and MLP
    swapped: its decode 1x8 logits were 2.8 x nn.Linear's error from float64's, past the
    rule's 2x + atol (rounding differences compound over the layers), so a correct swap
    exited 1 (on the CPU it was found on; where BLAS sums both models alike the logits
    are equal). Every projection is within the rule: exit 0, the logits' difference only
    reported."""
    import restorelcc.assets
    from restorelcc.hf.families import decoder_layers
    from restorelcc.prune import prune_model

    model, _ = restorelcc.assets.load_model("smollm2-135m")
    del decoder_layers(model)[16:]
    model.config.num_hidden_layers = 16
    prune_model(model, "magnitude", 0.5, "2:4", progress=False)
    # bench loads this model for the built-in name (no 300 MB checkpoint written)
    monkeypatch.setattr(restorelcc.assets, "load_model", lambda *args, **kwargs: (model, None))
    out = tmp_path / "bench.json"
    assert main(_bench("smollm2-135m", out, "--mlp")) == 0
    printed = capsys.readouterr().out
    assert "projection check ok on all 2 jobs' calls" in printed
    assert "for information, not checked: the swapped logits differ from nn.Linear's" in printed
    check = json.loads(out.read_text())["check"]
    assert check["ok"] and check["failed_jobs"] == [] and check["projections"] == 16 * 7
    assert check["error"] <= check["limit"]
    assert 0 <= check["logits_difference"] < 1e-3  # not judged, but small


def _swap_then(edit):
    """A swap (as bench does it) followed by ``edit(model)``: a broken swap."""
    import restorelcc.commands.bench as bench

    real = bench.swap_pruned_attention

    def swap(model, *args, dry_run=False):
        report = real(model, *args, dry_run=dry_run)
        if not dry_run:
            edit(model)
        return report

    return swap


def _drop_bias(model):
    attention(model, 1).o_proj.bias = None  # the packed o_proj of layer 1 adds no bias


def _wrong_value(model):
    packed = attention(model, 0).packed_qkv.packed  # q rows first: one q weight changed
    packed.values[3, 5] += 0.25


@pytest.mark.parametrize(
    ("edit", "module"),
    [
        (_drop_bias, "model.layers.1.self_attn.o_proj"),
        (_wrong_value, "model.layers.0.self_attn.q_proj"),
    ],
    ids=["bias-dropped", "wrong-value"],
)
def test_a_broken_swap_fails_naming_the_projection(tmp_path, monkeypatch, capsys, edit, module):
    """The check compares with the dense weights and biases that nn.Linear held before the
    swap, not with the packed modules' own: a module that lost its bias, or a packed
    weight that differs from the pruned one, fails on every job, named."""
    import restorelcc.commands.bench as bench

    model = add_o_bias(tiny_model("llama-gqa", attention_bias=True))  # random o_proj biases
    pruned = prune_attention(model, "2:4")
    folder = save_checkpoint(pruned, tmp_path / "pruned")
    monkeypatch.setattr(bench, "swap_pruned_attention", _swap_then(edit))
    capsys.readouterr()
    out = tmp_path / "bench.json"
    assert main(_bench(str(folder), out)) == 1
    printed = capsys.readouterr().out
    assert f"projection check FAILED on 2 of 2 jobs (decode 2x8, decode 1x8): {module} beyond" in (
        printed
    )
    check = json.loads(out.read_text())["check"]
    assert check["failed_projections"] == [module] and check["module"] == module
    assert check["error"] > check["limit"]


def test_the_logits_difference_is_information_not_the_verdict(pruned_dir, tmp_path, monkeypatch):
    """Logits that differ from nn.Linear's (as rounding over many layers makes them) do not
    fail the check while every projection is within the rule; non-finite logits where
    nn.Linear's are finite do."""
    import restorelcc.commands.bench_timing as bench_timing
    import restorelcc.latency

    real = restorelcc.latency.check_projections
    shift = {"by": 0.5}

    def shifted(model, call, dense):
        logits, check = real(model, call, dense)
        return logits + shift["by"], check

    monkeypatch.setattr(restorelcc.latency, "check_projections", shifted)
    out = tmp_path / "bench.json"
    assert main(_bench(str(pruned_dir), out)) == 0
    check = json.loads(out.read_text())["check"]
    assert check["ok"] and check["logits_difference"] == pytest.approx(0.5, abs=1e-5)
    shift["by"] = float("nan")
    assert main(_bench(str(pruned_dir), out)) == 1
    check = json.loads(out.read_text())["check"]
    assert check["non_finite_logits"] == ["decode 2x8", "decode 1x8"]
    assert check["failed_projections"] == [] and not check["ok"]
    assert bench_timing.summarise_checks([]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_give_the_verdict_of_the_whole_output(monkeypatch, dtype):
    """A long prefill's projection is checked in float64 blocks of at most
    CHECK_BLOCK_BYTES: the maxima of the whole output, and a NaN or a wrong value in the
    last block fails it."""
    import lcc_kernels.reference
    import restorelcc.latency as latency

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 37, 24, generator=generator).to(dtype)
    weight = torch.randn(29, 24, generator=generator).to(dtype)
    bias = torch.randn(29, generator=generator).to(dtype)
    y = torch.nn.functional.linear(x.double(), weight.double(), bias.double()).to(dtype)
    whole = latency.projection_error(y, x, weight, bias)
    assert whole["ok"]
    blocks = []
    real = lcc_kernels.reference.oracle_linear

    def counted(x, weight, bias):
        blocks.append((x.shape[0], weight.shape[0]))
        return real(x, weight, bias)

    monkeypatch.setattr(lcc_kernels.reference, "oracle_linear", counted)
    monkeypatch.setattr(latency, "CHECK_BLOCK_BYTES", 4096)
    blocked = latency.projection_error(y, x, weight, bias)
    assert len(blocks) > 4 and sum(r * c for r, c in blocks) == 37 * 29
    assert blocked == pytest.approx(whole, rel=1e-9)  # float64 sums in other blocks
    for wrong in (float("nan"), y[0, 36, 28].item() + 1):
        y[0, 36, 28] = wrong
        assert not latency.projection_error(y, x, weight, bias)["ok"]


def test_no_check_says_what_the_check_holds_in_memory():
    from restorelcc.cli import build_parser
    from restorelcc.commands.bench_timing import CHECK_MEMORY
    from restorelcc.latency import CHECK_BLOCK_BYTES

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    (action,) = [a for a in bench._actions if a.dest == "no_check"]
    assert CHECK_MEMORY in " ".join(action.help.split())
    assert f"{CHECK_BLOCK_BYTES // 2**20} MiB" in CHECK_MEMORY


@torch.no_grad()
def test_check_projections_refuses_a_model_it_cannot_check():
    from restorelcc.hf.swap import swap_attention
    from restorelcc.latency import check_projections, decode_step, dense_projections

    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    step = decode_step(model, 1, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^LlamaForCausalLM has no swapped projection to check"):
        check_projections(model, step, dense_projections(model))
    swap_attention(model)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj: take dense_proj"):
        check_projections(model, step, dense_projections(model))  # taken after the swap
