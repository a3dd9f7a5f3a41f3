import copy
import json

import pytest
import torch
from lcc_helpers import pruned_copy, trained_like

from restorelcc.errors import NonFiniteError, UnsupportedModelError
from restorelcc.hf.families import decoder_layers
from restorelcc.lcc.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_merged, load_adapter
from restorelcc.lcc.restoration import AdapterError, AdapterMismatchError, Restoration
from restorelcc.testing import tiny_model


@pytest.fixture
def pruned():
    return pruned_copy(tiny_model("llama-3x5"))


def test_save_load_round_trip(pruned, tmp_path):
    restoration = trained_like(pruned)
    restoration.hyperparameters = {"lr": 1e-3}
    restoration.save(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert meta["selected_heads"] == restoration.heads.tolist()
    assert meta["fingerprint"] == restoration.fingerprint.to_json()
    assert meta["hyperparameters"]["lr"] == 1e-3
    assert "metadata" in meta
    loaded = Restoration.load(tmp_path / "adapter")
    for field in ("heads", "directions", "beta", "b"):
        assert torch.equal(getattr(loaded, field), getattr(restoration, field))
    assert torch.equal(loaded.fingerprint.sketches(), restoration.fingerprint.sketches())
    assert loaded.geometry == restoration.geometry and loaded.model_type == "llama"
    with pytest.raises(FileExistsError):
        restoration.save(tmp_path / "adapter")
    restoration.save(tmp_path / "adapter", overwrite=True)


def test_adapter_for_another_model_is_refused(pruned, tmp_path):
    restoration = trained_like(pruned)
    restoration.save(tmp_path / "a")
    loaded = load_adapter(tmp_path / "a")
    other_mask = pruned_copy(tiny_model("llama-3x5"), sparsity=0.6)
    other_weights = pruned_copy(tiny_model("llama-3x5", seed=1))
    other_family = pruned_copy(tiny_model("qwen2-gqa"))
    for model, match in [
        (other_mask, "different pruned model"),
        (other_weights, "different pruned model"),
        (other_family, "for a llama model, got a qwen2"),
    ]:
        with pytest.raises(AdapterMismatchError, match=match):
            loaded.fold(model)
    folded = loaded.fold(copy.deepcopy(pruned))
    with pytest.raises(AdapterMismatchError, match="already folded"):
        loaded.fold(folded)  # a second fold would double the compensation
    assert model_weights_equal(pruned, pruned_copy(tiny_model("llama-3x5")))
    loaded.check_model(pruned.to(torch.bfloat16))  # same checkpoint in another dtype


def model_weights_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    "damage,match",
    [
        ("missing", "is not a restoration adapter"),
        ("json", "not valid JSON"),
        ("format", "format 99"),
        ("weights", "cannot be read"),
        ("heads", "disagree"),
        ("nan-beta", r"a malformed adapter: beta holds 1 non-finite value\(s\) .* index \[0, 7\]"),
        ("inf-directions", "a malformed adapter: directions holds 1 non-finite"),
        ("nan-scores", "a malformed adapter: scores holds 1 non-finite"),
        (
            "scores-shape",
            r"a malformed adapter: scores must be \[layers, heads\] = \[3, 5\], got \[7, 2\]",
        ),
        ("method", "a malformed adapter: unknown method 'nonsense'; known: restorelcc, "),
    ],
)
def test_malformed_adapters(pruned, tmp_path, damage, match):
    from safetensors.torch import load_file, save_file

    restoration = trained_like(pruned)
    restoration.scores = torch.rand(3, 5)
    restoration.save(tmp_path / "a")
    config, weights = tmp_path / "a" / ADAPTER_CONFIG, tmp_path / "a" / ADAPTER_WEIGHTS
    meta = json.loads(config.read_text())
    tensors = load_file(str(weights))
    if damage == "missing":
        weights.unlink()
    elif damage == "json":
        config.write_text("{not json")
    elif damage == "format":
        config.write_text(json.dumps({**meta, "format": 99}))
    elif damage == "weights":
        weights.write_bytes(b"garbage")
    elif damage == "heads":
        config.write_text(json.dumps({**meta, "selected_heads": [[0, 0]]}))
    elif damage == "method":
        config.write_text(json.dumps({**meta, "method": "nonsense"}))
    else:
        name, value = {
            "nan-beta": ("beta", float("nan")),
            "inf-directions": ("directions", float("inf")),
            "nan-scores": ("scores", float("nan")),
        }.get(damage, ("scores", None))
        if value is None:
            tensors["scores"] = torch.zeros(7, 2)
        else:
            tensors[name].view(-1)[7] = value
        save_file(tensors, str(weights))
    with pytest.raises(AdapterError, match=match):
        load_adapter(tmp_path / "a")


def test_a_restoration_made_in_memory_is_checked_too(pruned):
    restoration = trained_like(pruned)
    fields = {
        f: getattr(restoration, f) for f in ("model_type", "geometry", "heads", "fingerprint")
    }
    tensors = {f: getattr(restoration, f) for f in ("directions", "beta", "b")}
    Restoration(**fields, **tensors, scores=torch.rand(3, 5), method="training-free")
    b = tensors["b"].clone()
    b[2, 3] = -float("inf")
    with pytest.raises(NonFiniteError, match=r"^b holds 1 non-finite value\(s\) .* \[2, 3\]$"):
        Restoration(**fields, **{**tensors, "b": b})
    with pytest.raises(
        AdapterError, match=r"scores must be \[layers, heads\] = \[3, 5\], got \[15\]"
    ):
        Restoration(**fields, **tensors, scores=torch.rand(15))
    with pytest.raises(AdapterError, match="unknown method 'LoFiT'"):
        Restoration(**fields, **tensors, method="LoFiT")


def test_merged_checkpoint_loads_in_plain_transformers(pruned, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    restoration = trained_like(pruned)
    before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    export_merged(restoration, pruned, tmp_path / "merged", tokenizer)
    # the in-memory pruned model is left as it was (no bias, same weights)
    assert dict(pruned.named_parameters()).keys() == before.keys()
    assert all(torch.equal(p, before[n]) for n, p in pruned.named_parameters())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert loaded.config.attention_bias is True
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        folded = restoration.fold(copy.deepcopy(pruned))(ids).logits
        torch.testing.assert_close(loaded(ids).logits, folded, rtol=1e-5, atol=1e-5)
    for layer in decoder_layers(loaded):
        assert (layer.self_attn.q_proj.bias == 0).all() and (layer.self_attn.v_proj.bias == 0).all()
    loaded_weights = dict(loaded.named_parameters())
    for name, value in before.items():
        assert torch.equal(loaded_weights[name], value), name
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_merged_export_refused_where_o_proj_cannot_hold_a_bias(tmp_path):
    pruned = pruned_copy(tiny_model("mistral-gqa"))
    with pytest.raises(UnsupportedModelError, match="mistral models cannot hold"):
        export_merged(trained_like(pruned), pruned, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_documented_adapter_size_counts_the_heads_a_quarter_selects():
    """The module's size figure is for SmolLM2-135M at --heads 0.25: 68 of its 270 heads
    (30 layers x 9), which it had given as 67."""
    import re

    from restorelcc.hf.families import HeadGeometry
    from restorelcc.lcc import adapter, head_count

    smollm2 = HeadGeometry(layers=30, heads=9, kv_heads=3, head_dim=64, hidden_size=576)
    text = " ".join(adapter.__doc__.split())
    documented = int(re.search(r"SmolLM2-135M's (\d+) heads", text).group(1))
    assert documented == head_count(smollm2, 0.25) == 68
    assert f"~{documented * 64 * 64 * 4 / 1e6:.0f} MB for SmolLM2-135M's" in text
