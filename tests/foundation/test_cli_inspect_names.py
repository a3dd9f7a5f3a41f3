"""``restorelcc inspect`` takes a built-in model name as every other command does: it
reads the name's converted checkpoint in the model cache, converting it first where the
cache holds none yet (as loading it would). It had said "no such directory: smollm2-135m"."""

import json

import pytest
from _assets_helpers import tiny_gguf_loading

from restorelcc import assets, cli
from restorelcc.prune.checkpoint import inspect_checkpoint


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache and the default model's GGUF as installed: a stand-in file
    that ``tiny_gguf_loading`` "converts" to the tiny llama-mha model."""
    monkeypatch.setenv("RESTORELCC_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: gguf)
    monkeypatch.chdir(tmp_path)  # no folder named after the model here
    return tmp_path / "cache"


@pytest.mark.parametrize("name", ["smollm2-135m", "SmolLM2-135M"])
def test_inspect_converts_and_reads_a_built_in_name(cache, tmp_path, capsys, name):
    report = tmp_path / "i.json"
    with tiny_gguf_loading():
        assert cli.main(["inspect", name, "--json", str(report)]) == 0
    target = cache / assets.DEFAULT_MODEL
    assert (target / assets.CACHE_MARKER).is_file()
    written = json.loads(report.read_text())
    assert written["directory"] == str(target) and written["model_type"] == "llama"
    assert len(written["matrices"]) == 7 * written["geometry"]["layers"]
    assert "shapes_match_config" in capsys.readouterr().out


def test_inspect_checkpoint_reads_the_converted_cache_as_it_is(cache):
    with tiny_gguf_loading():
        first = inspect_checkpoint(assets.DEFAULT_MODEL)
    assert first["directory"] == str(cache / assets.DEFAULT_MODEL)
    # converted once: a second read goes to the cache, with no GGUF loading patched in
    assert inspect_checkpoint(assets.DEFAULT_MODEL)["matrices"] == first["matrices"]


def test_a_folder_named_as_the_model_is_read_as_a_folder(cache, capsys):
    (cache.parent / assets.DEFAULT_MODEL).mkdir()
    assert cli.main(["inspect", assets.DEFAULT_MODEL]) == 2
    assert capsys.readouterr().err == (
        f"restorelcc inspect: error: {assets.DEFAULT_MODEL} is not a checkpoint directory "
        "(no config.json)\n"
    )
    assert not cache.exists()
