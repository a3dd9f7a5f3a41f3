"""``capture_dtype``: the activations behind the SVD captured in fp32 while the models run in
bf16/fp16 (the research code captured them in fp16, a defect ``method.md`` lists). Each
model is cast to fp32 for its capture and back: bit for bit, with its flags, also when the
capture fails; packed sparse weights' integer metadata and fp32 models are left alone."""

import copy
import json

import pytest
import torch
from lcc_helpers import method_argv, pruned_copy, refused, restore_argv

import restorelcc.lcc.pipeline as pipeline
from restorelcc.cli import main
from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.swap import swap_attention
from restorelcc.lcc import (
    RestoreConfig,
    TrainConfig,
    capture_last_token,
    capture_probe_activations,
    plan_heads,
)
from restorelcc.lcc.tokens import encode_probe_set
from restorelcc.testing import tiny_model

NARROW = [torch.bfloat16, torch.float16]
FIELDS = ("dense", "pruned", "positive", "negative")
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]


def _sequences(tokenizer, pairs, n=12):
    return encode_probe_set(tokenizer, pairs[:n], [(i + 1) % n for i in range(n)], 64)


def _snapshot(model) -> dict:
    """Every parameter and buffer by name: (a copy, its dtype, its requires_grad)."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return {n: (t.detach().clone(), t.dtype, t.requires_grad) for n, t in tensors.items()}


def _assert_unchanged(model, before: dict) -> None:
    """``model`` holds what ``_snapshot`` saw, bit for bit (a -0.0 stays -0.0)."""
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for name, (tensor, dtype, requires_grad) in before.items():
        now, now_dtype, now_requires_grad = after[name]
        assert (now_dtype, now_requires_grad) == (dtype, requires_grad), name
        bits = torch.uint8 if tensor.is_floating_point() else tensor.dtype
        assert torch.equal(now.reshape(-1).view(bits), tensor.reshape(-1).view(bits)), name


@pytest.mark.parametrize("dtype", NARROW, ids=str)
def test_float32_capture_equals_an_fp32_copys_and_not_the_narrow_one(
    models, tokenizer, pairs, dtype
):
    dense, pruned = (model.to(dtype) for model in models)
    sequences = _sequences(tokenizer, pairs)
    wide = [copy.deepcopy(model).float() for model in (dense, pruned)]
    want = capture_probe_activations(*wide, sequences, progress=False)
    before = [_snapshot(model) for model in (dense, pruned)]
    running = []  # at each forward: the model run, and the dtypes both models are in

    def spy(model, args):
        dtypes = tuple(next(m.parameters()).dtype for m in (dense, pruned))
        running.append(("dense" if model is dense else "pruned", *dtypes))

    for model in (dense, pruned):
        model.register_forward_pre_hook(spy)
    got = capture_probe_activations(
        dense, pruned, sequences, progress=False, capture_dtype="float32"
    )
    # one model in fp32 at a time: all the dense forwards, then all the pruned ones
    assert sorted(set(running)) == [
        ("dense", torch.float32, dtype),
        ("pruned", dtype, torch.float32),
    ]
    assert [name for name, *_ in running] == sorted(name for name, *_ in running)
    narrow = capture_probe_activations(dense, pruned, sequences, progress=False)  # "model"
    for field in FIELDS:
        torch.testing.assert_close(getattr(got, field), getattr(want, field), msg=field)
        error = (getattr(narrow, field) - getattr(want, field)).abs().max()
        assert error > 1e-3, field  # the narrow capture's rounding: 2e-3 (fp16), 2e-2 (bf16)
    for model, snapshot in zip((dense, pruned), before, strict=True):
        _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("dtype", NARROW, ids=str)
def test_weights_come_back_bit_for_bit_with_their_flags(dtype):
    model = tiny_model("llama-3x5", tie_word_embeddings=True).to(dtype)
    norm = model.model.layers[0].input_layernorm
    norm.weight.data = norm.weight.data.float()  # a parameter kept in fp32: not touched
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, :4] = -0.0
    for i, param in enumerate(model.parameters()):
        param.requires_grad_(i % 2 == 0)
    params, kept = list(model.parameters()), norm.weight.data.data_ptr()
    before = _snapshot(model)
    seen = []
    norm.register_forward_pre_hook(lambda m, args: seen.append(m.weight.data_ptr()))
    capture_last_token(model, PROMPTS, progress=False, capture_dtype="float32")
    assert seen and set(seen) == {kept}  # the fp32 norm ran as it was, not copied
    _assert_unchanged(model, before)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def test_a_failing_capture_leaves_the_model_as_it_was():
    model = tiny_model("llama-3x5").to(torch.bfloat16)
    before = _snapshot(model)
    with pytest.raises(IndexError):  # an id outside the vocab, in the fp32 forward
        capture_last_token(model, [[1, 2, 10_000]], progress=False, capture_dtype="float32")
    _assert_unchanged(model, before)


def test_packed_sparse_weights_are_cast_through_their_module_and_back():
    """A swapped model: its packed values go to fp32 and back, rebuilt by the module; its
    integer metadata is not touched (the very same tensors). (Capture itself refuses a
    swapped model, casting it first and back: the cast is called directly here.)"""
    from restorelcc.lcc.capture_precision import capture_precision  # new with capture_dtype

    model = pruned_copy(tiny_model("llama-3x5")).to(torch.bfloat16)
    swap_attention(model, mlp=True)
    wide = copy.deepcopy(model).float()
    ids = torch.tensor([PROMPTS[2]])
    metadata = {n: b for n, b in model.named_buffers() if not b.is_floating_point()}
    assert metadata  # bitmap bits and offsets
    before = _snapshot(model)
    o_proj = model.model.layers[0].self_attn.o_proj
    with capture_precision(model, "float32") as used:
        assert used == "float32" and o_proj.packed.dtype == torch.float32
        assert all(b is metadata[n] for n, b in model.named_buffers() if n in metadata)
        torch.testing.assert_close(model(ids).logits, wide(ids).logits, rtol=0, atol=0)
    assert o_proj.packed.dtype == torch.bfloat16
    _assert_unchanged(model, before)
    assert model(ids).logits.dtype == torch.bfloat16
    with pytest.raises(UnsupportedModelError, match="swapped"):  # capture needs nn.Linear
        capture_last_token(model, PROMPTS, progress=False, capture_dtype="float32")
    _assert_unchanged(model, before)


def test_a_model_in_float32_is_not_touched(monkeypatch):
    model = tiny_model("llama-3x5")
    before = _snapshot(model)
    pointers = [p.data_ptr() for p in model.parameters()]
    seen = []
    model.register_forward_pre_hook(
        lambda m, args: seen.append([p.data_ptr() for p in m.parameters()])
    )

    def never(*args, **kwargs):
        raise AssertionError("an fp32 model was converted")

    monkeypatch.setattr(torch.nn.Module, "_apply", never)
    capture_last_token(model, PROMPTS, progress=False, capture_dtype="float32")
    assert seen and all(s == pointers for s in seen)
    _assert_unchanged(model, before)


def test_what_cannot_be_cast_back_or_run_in_fp32_is_refused_before_casting():
    model = tiny_model("llama-3x5").to(torch.bfloat16)
    buffer = torch.zeros(8, dtype=torch.bfloat16)
    model.model.register_buffer("whole", buffer)
    model.model.norm.register_buffer("part", buffer[2:])
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"model.whole and model.norm.part share memory"):
        capture_last_token(model, PROMPTS, progress=False, capture_dtype="float32")
    _assert_unchanged(model, before)
    model = tiny_model("llama-3x5").to(torch.bfloat16)
    model.config._attn_implementation = "flash_attention_2"
    before = _snapshot(model)
    with pytest.raises(
        ValueError, match=r"runs the pruned model in float32, .*'flash_attention_2'"
    ):
        capture_last_token(
            model, PROMPTS, progress=False, model_name="pruned", capture_dtype="float32"
        )
    _assert_unchanged(model, before)


def test_the_config_checks_records_and_defaults_to_float32(models, tokenizer, pairs, monkeypatch):
    assert RestoreConfig().capture_dtype == "float32"
    with pytest.raises(ValueError, match=r"capture_dtype must be 'model' .* got 'float16'"):
        RestoreConfig(capture_dtype="float16")
    dense, pruned = (model.to(torch.bfloat16) for model in models)
    train = TrainConfig(progress=False)
    recorded = {}
    for setting in ("model", "float32"):
        config = RestoreConfig(
            heads=4, probe_pairs=16, negatives="tfidf", capture_dtype=setting, train=train
        )
        plan = plan_heads(dense, pruned, tokenizer, pairs, config)
        recorded[setting] = (plan.report["capture_dtype"], plan.config.to_dict()["capture_dtype"])
    assert recorded == {
        "model": ({"dense": "bfloat16", "pruned": "bfloat16"}, "model"),
        "float32": ({"dense": "float32", "pruned": "float32"}, "float32"),
    }
    dense.config._attn_implementation = "flash_attention_2"  # refused before any stage

    def never(*args, **kwargs):
        raise AssertionError("plan_heads went on past its checks")

    monkeypatch.setattr(pipeline, "model_fingerprint", never)
    with pytest.raises(ValueError, match="runs the dense model in float32"):
        plan_heads(dense, pruned, tokenizer, pairs, RestoreConfig(heads=4, train=train))


def test_the_option_reaches_the_report_and_the_adapter(restore_checkpoints, capsys):
    tmp_path, _ = restore_checkpoints
    out = tmp_path / "out"
    for setting, captured in (("float32", "float32"), ("model", "bfloat16")):
        extra = ["--dtype", "bfloat16", "--overwrite"]
        extra += [] if setting == "float32" else ["--capture-dtype", "MODEL"]  # the default
        assert main(restore_argv(tmp_path, *extra)) == 0
        report = json.loads((out / "restore_report.json").read_text())
        adapter = json.loads((out / "adapter.json").read_text())
        assert report["config"]["capture_dtype"] == setting
        assert adapter["hyperparameters"]["capture_dtype"] == setting
        assert report["capture_dtype"] == {"dense": captured, "pruned": captured}
        assert report["report"]["capture_dtype"] == report["capture_dtype"]
    argv = method_argv(tmp_path, "--method", "training-free", "--dtype", "bfloat16", "--overwrite")
    assert main(argv) == 0
    report = json.loads((out / "restore_report.json").read_text())
    assert report["capture_dtype"] == {"dense": "float32", "pruned": "float32"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # argparse's refusal: one line too
        main(restore_argv(tmp_path, "--capture-dtype", "float16"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "argument --capture-dtype: invalid choice: 'float16' (choose from 'model', " in err
    err = refused(method_argv(tmp_path, "--method", "lofit", "--capture-dtype", "model"), capsys)
    assert "--method lofit does not use --capture-dtype" in err
