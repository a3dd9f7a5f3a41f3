"""``load_model``'s checks of its arguments, and of a folded model saved with
``save_pretrained`` (whose restoration transformers would drop)."""

import copy
import re

import pytest
import torch

from restorelcc import assets
from restorelcc.errors import CorruptCacheError
from restorelcc.hf.families import decoder_layers, o_proj_of
from restorelcc.lcc.fold import fold_offsets
from restorelcc.testing import save_checkpoint, tiny_model


@pytest.mark.parametrize("dtype", ["bf16", "int8", torch.int8, torch.bool, None], ids=str)
def test_a_dtype_that_is_not_a_floating_torch_dtype_is_named_before_anything_is_read(
    tmp_path, dtype
):
    """'bf16' and torch.int8 had been reported as a corrupt checkpoint, after reading it.
    The folder does not exist: the check comes first."""
    choices = "float32, bfloat16, float16, float64 (a torch.dtype or its name) or 'auto'"
    message = f"dtype must be one of {choices} (the checkpoint's own); got {dtype!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        assets.load_model(tmp_path / "nowhere", dtype=dtype)


@pytest.mark.parametrize(
    "device,message",
    [
        ("cuda:99", r"^device=cuda:99: (no CUDA device is available|only \d+ CUDA device)"),
        ("gpu", r"^device='gpu' is not a device \(cpu, cuda, cuda:1, \.\.\.\)$"),
        ("mps", r"^device=mps: only cpu and cuda devices are supported$"),
        (0.5, r"^device must be a str \(cpu, cuda, cuda:1\.\.\.\), a CUDA index or a torch"),
        (3, r"^device=cuda:3: (no CUDA device is available|only \d+ CUDA device)"),
    ],
)
def test_a_device_that_cannot_be_used_is_named_before_anything_is_read(tmp_path, device, message):
    """A missing CUDA device had failed with torch's bare AssertionError, after loading."""
    with pytest.raises(ValueError, match=message):
        assets.load_model(tmp_path / "nowhere", device=device)


def test_on_a_checkpoint_bad_arguments_are_named_and_good_ones_load(tmp_path):
    """On a checkpoint that loads, 'bf16' had been a CorruptCacheError and a missing CUDA
    device torch's AssertionError."""
    path = save_checkpoint(tiny_model("llama-gqa"), tmp_path / "m")
    with pytest.raises(ValueError, match="^dtype must be one of .*; got 'bf16'$"):
        assets.load_model(path, dtype="bf16")
    with pytest.raises(ValueError, match="^device=cuda:99: "):
        assets.load_model(path, device="cuda:99")
    model, _ = assets.load_model(path, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16
    # names, and "auto" (the checkpoint's own dtype), as from_pretrained had taken them
    model, _ = assets.load_model(path, dtype="float16")
    assert next(model.parameters()).dtype == torch.float16
    save_checkpoint(tiny_model("llama-gqa").to(torch.bfloat16), tmp_path / "bf16")
    model, _ = assets.load_model(tmp_path / "bf16", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def _fold_something(model):
    """Fold non-zero offsets into ``model``'s o_proj biases (as ``Restoration.fold``)."""
    layers, width = len(decoder_layers(model)), o_proj_of(model, 0).in_features
    offsets = torch.randn(layers, width, generator=torch.Generator().manual_seed(0))
    fold_offsets(model, offsets)
    return model


def test_a_folded_model_saved_with_save_pretrained_says_to_export_it(tmp_path):
    """It had been "the weights ... do not match its config ... unexpected tensors
    ...o_proj.bias" (a CorruptCacheError) while plain transformers dropped the biases."""
    path = save_checkpoint(_fold_something(tiny_model("llama-gqa")), tmp_path / "folded")
    with pytest.raises(assets.CheckpointError) as refused:
        assets.load_model(path)
    message = str(refused.value)
    assert not isinstance(refused.value, CorruptCacheError)
    assert message.startswith(
        f"{path} holds o_proj biases (model.layers.0.self_attn.o_proj.bias, "
        "model.layers.1.self_attn.o_proj.bias) that its config does not enable: a model "
        "with a restoration folded in (Restoration.fold) saved with save_pretrained"
    )
    assert message.endswith(
        "Save a folded model with Restoration.export_merged(model, folder, tokenizer), "
        "given the pruned model before folding: it sets attention_bias in the config"
    )


def test_a_folded_model_of_a_family_without_o_proj_biases_says_to_keep_the_adapter(tmp_path):
    path = save_checkpoint(_fold_something(tiny_model("mistral-gqa")), tmp_path / "folded")
    with pytest.raises(
        assets.CheckpointError,
        match=re.escape(
            "; mistral models cannot hold an o_proj bias in transformers: save the "
            "restoration as an adapter (Restoration.save)"
        ),
    ):
        assets.load_model(path)


def test_o_proj_biases_with_other_unused_weights_are_still_a_mismatch(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_checkpoint(_fold_something(tiny_model("llama-gqa")), tmp_path / "folded")
    weights = load_file(path / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(1)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptCacheError, match="unexpected tensors .*q_proj.bias"):
        assets.load_model(path)


def test_a_checkpoint_whose_config_enables_o_proj_biases_loads_them(tmp_path):
    folded = _fold_something(tiny_model("llama-gqa"))
    folded.config.attention_bias = True  # as export_merged sets it (q/k/v biases: zeros)
    for layer in decoder_layers(folded):
        for name in ("q_proj", "k_proj", "v_proj"):
            linear = getattr(layer.self_attn, name)
            linear.bias = torch.nn.Parameter(torch.zeros(linear.out_features))
    path = save_checkpoint(copy.deepcopy(folded), tmp_path / "merged")
    loaded, _ = assets.load_model(path)
    assert torch.equal(o_proj_of(loaded, 1).bias, o_proj_of(folded, 1).bias)
