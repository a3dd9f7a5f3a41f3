"""Evaluation, the attention swap and the command line with the model and every input
on one device (``cpu`` in CI; ``cuda``, marked ``gpu``, on a GPU: the swapped modules
then run the compiled Triton kernels). Tiny models and user files only.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from devices_helpers import (
    DEVICES,
    PAD,
    assert_finite_on,
    assert_on,
    logits_of,
    pruned_pair,
    token_ids,
)
from torch import nn
from transformers import AutoModelForCausalLM

from restorelcc import swap_attention, unswap_attention
from restorelcc.cli import main
from restorelcc.eval.perplexity import perplexity_report, token_stream, window_plan
from restorelcc.eval.scoring import encode_request, loglikelihoods
from restorelcc.eval.tasks import Question, shared_context
from restorelcc.evaluate import score_questions
from restorelcc.hf.families import decoder_layers, o_proj_of
from restorelcc.latency import logits_check, oracle_dtype
from restorelcc.lcc import Restoration
from restorelcc.testing import WORDS, save_checkpoint, tiny_model

# ------------------------------------------------------------------------------ evaluation

TEXTS = [
    "The river ran past the old mill, and the miller counted the sacks twice.",
    "Seven lanterns hung in the market; the quiet one belonged to the baker.",
    "North of the stone bridge, bread was sold until the evening bell.",
]


@pytest.mark.parametrize("device", DEVICES)
def test_perplexity_on_device_equals_window_by_window(device, tokenizer):
    _, model = pruned_pair("llama-3x5", device)
    tokens, window, stride = 150, 40, 16
    result = perplexity_report(
        model, tokenizer, texts=TEXTS, tokens=tokens, window=window, stride=stride,
        batch_size=3, progress=False,
    )  # fmt: skip
    ids = token_stream(tokenizer, TEXTS, tokens).to(device)
    total, count = 0.0, 0
    for begin, end, scored in window_plan(len(ids), window, stride):
        logits = logits_of(model, ids[None, begin:end])[0]
        targets = ids[end - scored : end]
        total += F.cross_entropy(logits[-scored - 1 : -1].double(), targets, reduction="sum")
        count += scored
    assert result.tokens == count == tokens and result.source == "texts"
    assert result.nll == pytest.approx(float(total), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(float(total) / count), rel=1e-5)


QUESTIONS = [
    shared_context("Question: which colour is the sky?\nAnswer:", ["blue", "a loud red", "x"], 0),
    shared_context("The cat sat on the", ["mat", "moon and stars"], 1),
    Question(  # partial scoring: the contexts differ, the continuation is shared
        contexts=("Tom fed the dog because the dog", "Tom fed the dog because Tom"),
        continuations=(" was hungry.", " was hungry."),
        gold=0,
        choices=("Tom fed the dog because the dog", "Tom fed the dog because Tom"),
    ),
]


@torch.no_grad()
def direct_logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One unpadded forward for one request; the continuation's log-probability."""
    ctx, cont = encode_request(tokenizer, context, continuation)
    device = next(model.parameters()).device
    ids = torch.tensor([ctx + cont[:-1]], device=device)
    logprobs = model(ids).logits[0, len(ctx) - 1 :].double().log_softmax(-1)
    targets = torch.tensor(cont, device=device)
    picked = logprobs.gather(1, targets[:, None]).sum().item()
    return picked, bool((logprobs.argmax(-1) == targets).all())


@pytest.mark.parametrize("device", DEVICES)
def test_multiple_choice_scores_on_device_equal_direct_forwards(device, tokenizer):
    _, model = pruned_pair("llama-3x5", device)
    requests = [(c, t) for q in QUESTIONS for c, t in zip(q.contexts, q.continuations, strict=True)]
    scores = loglikelihoods(model, tokenizer, requests, batch_size=2, progress=False)
    expected = [direct_logprob(model, tokenizer, c, t) for c, t in requests]
    for (context, _), score, (logprob, greedy) in zip(requests, scores, expected, strict=True):
        assert score.logprob == pytest.approx(logprob, abs=2e-4), context
        assert score.is_greedy == greedy
    results = score_questions(QUESTIONS, scores)
    at, best = 0, []
    for q in QUESTIONS:
        lls = [lp for lp, _ in expected[at : at + len(q.continuations)]]
        best.append(float(max(range(len(lls)), key=lambda i: (lls[i], -i)) == q.gold))
        at += len(q.continuations)
    assert results["acc"] == best


# ------------------------------------------------------------------------------ swap


def with_o_bias(model, device: str, seed: int = 7):
    """Give every o_proj a random bias (as a folded compensation does), on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    for layer in range(len(decoder_layers(model))):
        o_proj = o_proj_of(model, layer)
        bias = 0.5 * torch.randn(o_proj.out_features, generator=generator)
        o_proj.bias = nn.Parameter(bias.to(device))
    return model


def assert_logits_rule(swapped, pruned, ids) -> None:
    """kernels.md's rule: |swapped - fp64| <= 2 x |nn.Linear - fp64| + atol."""
    oracle = logits_of(copy.deepcopy(pruned).to(oracle_dtype(torch.float32)), ids)
    check = logits_check(logits_of(swapped, ids), logits_of(pruned, ids), oracle, torch.float32)
    assert check["ok"], check


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("fmt", "pattern"), [("2:4", "2:4"), ("bitmap", "unstructured")])
def test_swapped_model_generates_like_the_pruned_model_on_device(device, fmt, pattern):
    _, pruned = pruned_pair("llama-gqa", device, pattern=pattern)
    with_o_bias(pruned, device)
    swapped = copy.deepcopy(pruned)
    report = swap_attention(swapped, fmt)

    assert {g.format for g in report.groups} == {fmt} and report.swapped_layers == [0, 1]
    assert_on(device, swapped)
    packed = swapped.model.layers[0].self_attn.packed_qkv.packed
    assert packed.format == fmt and packed.device.type == device
    # One prompt for the check and for generate: fewer kernel variants to compile on a GPU.
    prompt = token_ids(device, 2, 5, seed=6)
    assert_logits_rule(swapped, pruned, prompt)
    settings = dict(
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=PAD,
    )
    with torch.no_grad():
        ours = swapped.generate(prompt, **settings)
        plain = pruned.generate(prompt, **settings)
    assert ours.sequences.device.type == device
    assert torch.equal(ours.sequences, plain.sequences)
    oracle = logits_of(copy.deepcopy(pruned).double(), ours.sequences[:, :-1])
    oracle = oracle[:, prompt.shape[1] - 1 :]  # the logits of each generated token
    check = logits_check(
        torch.stack(ours.logits, 1), torch.stack(plain.logits, 1), oracle, torch.float32
    )
    assert check["ok"], check

    assert unswap_attention(swapped) == [0, 1]
    assert_on(device, swapped)
    state, original = swapped.state_dict(), pruned.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items())


# ------------------------------------------------------------------------------ command line


def write_inputs(tmp_path):
    """A tiny dense checkpoint, a calibration text and Alpaca JSONL pairs."""
    save_checkpoint(tiny_model("llama-3x5"), tmp_path / "dense")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(" ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(600)))
    rows = [
        {"instruction": f"Name word {i}.", "output": f"{WORDS[i % 12]} {WORDS[i * 5 % 12]}"}
        for i in range(10)
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return calibration


@pytest.mark.parametrize("device", DEVICES)
def test_cli_prune_restore_bench_on_device(device, tmp_path, capsys):
    calibration = write_inputs(tmp_path)
    pruned_dir, out = tmp_path / "pruned", tmp_path / "restored"
    assert main(
        ["prune", "--model", str(tmp_path / "dense"), "--method", "wanda", "--pattern", "2:4",
         "--calibration", str(calibration), "--nsamples", "4", "--seqlen", "32",
         "--out", str(pruned_dir), "--device", device, "--quiet"]
    ) == 0  # fmt: skip
    report = json.loads((pruned_dir / "prune_report.json").read_text())
    assert report["calibration"]["nsamples"] == 4 and len(report["matrices"]) == 3 * 7
    assert all(m["nm"]["2:4"] and m["sparsity"] == 0.5 for m in report["matrices"])

    assert main(
        ["restore", "--dense", str(tmp_path / "dense"), "--pruned", str(pruned_dir),
         "--out", str(out), "--data", str(tmp_path / "pairs.jsonl"), "--pairs", "8",
         "--heads", "3", "--epochs", "1", "--batch-size", "4", "--negatives", "tfidf",
         "--merged", "--device", device, "--quiet"]
    ) == 0  # fmt: skip
    restored = json.loads((out / "restore_report.json").read_text())
    assert restored["selected_heads"] == 3 and restored["report"]["train"]["steps"] == 2
    assert math.isfinite(restored["report"]["train"]["final_loss"])
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir).to(device).eval()
    restoration = Restoration.load(out)
    restoration.check_model(pruned)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").to(device).eval()
    ids = token_ids(device, 1, 12, seed=8)
    folded = logits_of(restoration.fold(pruned), ids)
    assert_finite_on(device, folded)
    torch.testing.assert_close(logits_of(merged, ids), folded, rtol=1e-5, atol=1e-5)
    capsys.readouterr()

    bench = tmp_path / "bench.json"
    timing = ["--rep-ms", "5"] if device == "cuda" else ["--rounds", "2"]  # the other: refused
    assert main(
        ["bench", "--model", str(pruned_dir), "--adapter", str(out), "--batches", "2",
         "--context", "8", "--prefill", "8", *timing, "--mlp",
         "--device", device, "--json", str(bench), "--quiet"]
    ) == 0  # fmt: skip
    assert "projection check ok" in capsys.readouterr().out
    timed = json.loads(bench.read_text())
    assert timed["device"] == device and timed["timing_claims"] == (device == "cuda")
    assert timed["dtype"] == ("bfloat16" if device == "cuda" else "float32")
    assert timed["formats"] == ["2:4"] and timed["adapter"]["selected_heads"] == 3
    groups = {(g["group"], g["format"]) for g in timed["swap"]["groups"]}
    assert groups == {(g, "2:4") for g in ("qkv", "o_proj", "gate_up", "down_proj")}
    assert timed["check"]["ok"]
    assert [(r["phase"], r["batch"]) for r in timed["rows"]] == [("decode", 2), ("prefill", 1)]
    for row in timed["rows"]:
        assert row["linear_ms"] > 0 and row["swapped_ms"] > 0

    evaluated = tmp_path / "eval.json"
    assert main(
        ["eval", "--model", str(pruned_dir), "--adapter", str(out), "--tasks", "none",
         "--ppl-source", str(calibration), "--ppl-tokens", "64", "--swap", "2:4",
         "--device", device, "--json", str(evaluated), "--quiet"]
    ) == 0  # fmt: skip
    scored = json.loads(evaluated.read_text())
    assert scored["device"].startswith(device) and scored["swap"]["format"] == "2:4"
    assert scored["dtype"] == ("bfloat16" if device == "cuda" else "float32")  # --dtype auto
    assert scored["perplexity"]["tokens"] == 64
    assert math.isfinite(scored["perplexity"]["perplexity"])
