"""Pruning computes in float32 while the model stays in its dtype (prune/precision.py)."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import restorelcc.prune.api as api
from restorelcc.cli import main
from restorelcc.hf.families import decoder_layers
from restorelcc.prune import prune_model
from restorelcc.prune.calibrate import walk_blocks
from restorelcc.prune.precision import cast_keeping_nonzeros, cast_parameters, parameters_in
from restorelcc.testing import save_checkpoint, tiny_model

TOKENS = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))


def rounding_walk(walk, dtype: torch.dtype):
    """``walk`` (``walk_blocks``) that, once the caller is done with a block, rounds its
    float32 parameters through ``dtype`` and back (keeping nonzeros)."""

    def rounding(*args, **kwargs):
        for step in walk(*args, **kwargs):
            yield step
            for param in step.block.parameters():
                param.data = cast_keeping_nonzeros(param.data, dtype).to(torch.float32)

    return rounding


# gemma3 scales its embeddings in the embedding's dtype, cohere2 gives block types their
# own masks and rotary tables, olmo2 normalises q/k over the projection
@pytest.mark.parametrize("name", ["llama-gqa", "gemma3-gqa", "cohere2-gqa", "olmo2-gqa"])
@pytest.mark.parametrize(
    "method, pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4"), ("wanda", "heads")]
)
@pytest.mark.parametrize("dtype, chunk_size", [(torch.bfloat16, 8), (torch.float16, 3)])
def test_a_half_model_prunes_as_its_float32_copy_would(
    name, method, pattern, dtype, chunk_size, tmp_path, monkeypatch
):
    source = save_checkpoint(tiny_model(name).to(dtype), tmp_path / name)
    half = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    fp32 = copy.deepcopy(half)
    # the same model with float32 parameters; buffers as loaded (gemma's embed_scale is
    # rounded in bf16, rotary inv_freq float32)
    cast_parameters(fp32, torch.float32)
    with monkeypatch.context() as patch:
        # each pruned block stored as the half model stores it (SparseGPT's updated weights
        # rounded) before it computes the next block's inputs, as the half model's walk does
        patch.setattr(api, "walk_blocks", rounding_walk(api.walk_blocks, dtype))
        prune_model(fp32, method, 0.5, pattern, TOKENS, chunk_size=chunk_size, progress=False)
    prune_model(half, method, 0.5, pattern, TOKENS, chunk_size=chunk_size, progress=False)
    assert {p.dtype for p in half.parameters()} == {dtype}
    expected = fp32.state_dict()
    for key, value in half.state_dict().items():
        # same masks; SparseGPT's updated weights rounded once, from the same float32 ones
        assert torch.equal(value, expected[key].to(value.dtype)), key


def test_cast_parameters_leaves_buffers_as_they_are(tmp_path):
    source = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "fp32")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    assert cast_parameters(model, torch.bfloat16) is model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)  # float32, not rounded


def test_only_the_block_at_hand_is_float32(tmp_path):
    source = save_checkpoint(tiny_model("llama-3x5").to(torch.bfloat16), tmp_path / "bf16")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    inv_freq = model.model.rotary_emb.inv_freq.clone()  # loaded bf16 models keep it float32
    assert inv_freq.dtype == torch.float32
    layers = decoder_layers(model)
    seen_in_capture = []

    def record(module, args, kwargs):
        seen_in_capture.append([layer.self_attn.q_proj.weight.dtype for layer in layers])

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    steps = walk_blocks(model, TOKENS, chunk_size=3, progress=False)
    step = next(steps)
    for handle in handles:
        handle.remove()
    # while the inputs were captured, each block was float32 only while it ran
    assert seen_in_capture and all(dtypes.count(torch.float32) == 1 for dtypes in seen_in_capture)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # cast for the capture only
    assert all(hidden.dtype == torch.float32 for hidden in step.inputs)
    visited = []
    while step is not None:
        dtypes = [{p.dtype for p in layer.parameters()} for layer in layers]
        assert dtypes == [
            {torch.float32} if i == step.index else {torch.bfloat16} for i in range(len(layers))
        ]
        visited.append(step.index)
        step = next(steps, None)
    assert visited == list(range(len(layers)))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)


def test_parameters_go_back_to_their_own_dtypes_even_on_error():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).to(torch.float16)
    module[1].float()  # a float32 part of an fp16 module stays float32
    module.register_buffer("table", torch.arange(3, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="stop"), parameters_in(module):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
        # a parameter replaced under its name (structured pruning) goes back too
        module[0].weight = torch.nn.Parameter(module[0].weight.data[:2].clone())
        raise RuntimeError("stop")
    assert [p.dtype for p in module[0].parameters()] == [torch.float16, torch.float16]
    assert [p.dtype for p in module[1].parameters()] == [torch.float32, torch.float32]
    assert module.table.dtype == torch.float16  # buffers are never cast


@pytest.mark.parametrize(
    "name, eval_dtype", [("llama-gqa", "auto"), ("llama-gqa", "bfloat16"), ("gemma3-gqa", "auto")]
)
def test_prune_command_holds_a_bf16_checkpoint_in_bf16(
    name, eval_dtype, tmp_path, monkeypatch, calib_file
):
    import restorelcc.assets as assets

    source = save_checkpoint(tiny_model(name).to(torch.bfloat16), tmp_path / "source")
    loaded = []
    real_load = assets.load_model
    monkeypatch.setattr(
        assets,
        "load_model",
        lambda *a, **k: loaded.append(k.get("dtype")) or real_load(*a, **k),
    )
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(source), "--method", "sparsegpt", "--pattern", "2:4",
            "--calibration", str(calib_file), "--nsamples", "4", "--seqlen", "16",
            "--eval", "--dtype", eval_dtype, "--ppl-tokens", "200", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    scored_in = torch.float32 if eval_dtype == "auto" else torch.bfloat16  # auto: CPU's
    assert loaded == [torch.bfloat16, scored_in]  # pruned as stored, then the output scored
    report = json.loads((out / "prune_report.json").read_text())
    assert report["saved_dtype"] == "bfloat16"
    assert report["evaluation"]["dtype"] == str(scored_in).removeprefix("torch.")
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}

    # --eval scored the checkpoint it wrote, as `restorelcc eval` loads it (a cast of the
    # pruned model would round rotary inv_freq in bf16; gemma3's embed_scale in float32)
    scored = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--tasks", "none", "--ppl-tokens", "200",
                 "--dtype", eval_dtype, "--json", str(scored), "--quiet"]) == 0  # fmt: skip
    again = json.loads(scored.read_text())["perplexity"]["perplexity"]
    assert report["evaluation"]["perplexity"]["perplexity"] == again


def test_the_checkpoint_stays_where_its_evaluation_fails(tiny_dir, tmp_path, monkeypatch, capsys):
    import restorelcc.evaluate as evaluate

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(evaluate, "perplexity_report", out_of_memory)
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--eval", "--out", str(out),
            "--quiet"]  # fmt: skip
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        main(argv)
    assert f"wrote {out}; its --eval did not finish" in capsys.readouterr().err
    report = json.loads((out / "prune_report.json").read_text())
    assert report["evaluation"] is None and report["method"] == "magnitude"
    assert (out / "model.safetensors").exists()


def test_dtype_needs_eval(tiny_dir, tmp_path, capsys):
    argv = ["prune", "--model", str(tiny_dir), "--dtype", "bfloat16", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert "--dtype applies only to --eval" in capsys.readouterr().err
