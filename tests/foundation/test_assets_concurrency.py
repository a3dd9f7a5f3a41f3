"""Two processes converting (or rebuilding) the default model at once, killed conversions,
cache modes."""

import json
import os
import subprocess
import sys
import time

import pytest
from _assets_helpers import tiny_gguf_loading

from restorelcc import assets
from restorelcc.errors import CorruptCacheError

# Resolves the default model with the GGUF steps replaced by a tiny model and a sleep, so
# that two such processes started together overlap; convert_gguf's own code runs as is.
SLOW_TINY_CONVERSION = """
import sys, time
from pathlib import Path
import transformers
from restorelcc import assets
from restorelcc.testing import byte_tokenizer, tiny_config

config, tokenizer = tiny_config("llama-mha"), byte_tokenizer()
real = transformers.AutoModelForCausalLM

class Model:
    @staticmethod
    def from_pretrained(src, gguf_file=None, **kwargs):
        print("converting", file=sys.stderr)
        time.sleep(3)
        return real.from_config(config)

    @staticmethod
    def from_config(config, **kwargs):
        return real.from_config(config)

class Config:
    from_pretrained = staticmethod(lambda src, gguf_file=None: config)

class Tokenizer:
    from_pretrained = staticmethod(lambda src, gguf_file=None: tokenizer)

transformers.AutoModelForCausalLM, transformers.AutoConfig = Model, Config
transformers.AutoTokenizer = Tokenizer
assets.GgufAsset.locate = lambda self: Path(sys.argv[1])
print(assets.resolve_model(assets.DEFAULT_MODEL))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORELCC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _convert_tiny(gguf, target):
    """Run convert_gguf on a tiny model instead of a GGUF file (in this process)."""
    with tiny_gguf_loading():
        assets.convert_gguf(gguf, target)


@pytest.mark.parametrize("stale", [False, True], ids=["no cache", "stale cache"])
def test_two_processes_converting_at_once_both_get_the_cache(cache, tmp_path, stale):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    target = cache / assets.DEFAULT_MODEL
    if stale:  # converted from another GGUF: both processes find it stale at first
        other = tmp_path / "other.gguf"
        other.write_bytes(b"older")
        _convert_tiny(other, target)
    env = dict(os.environ, RESTORELCC_CACHE=str(cache))
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_TINY_CONVERSION, str(gguf)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err
        assert out.strip() == str(target)
    # one converts, the other waits for it and finds the cache up to date
    assert sum(err.count("converting") for _, err in results) == 1
    assets.check_cache(target)
    distribution = assets.KNOWN_MODELS[assets.DEFAULT_MODEL].distribution
    marker = json.loads((target / assets.CACHE_MARKER).read_text())
    assert marker["gguf"] == assets.gguf_identity(gguf, distribution)
    assert sorted(p.name for p in cache.iterdir()) == [
        f".{assets.DEFAULT_MODEL}.lock",
        assets.DEFAULT_MODEL,
    ]


def test_a_cache_converted_meanwhile_elsewhere_is_kept(cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    target = cache / "m"
    _convert_tiny(gguf, target)
    first = (target / assets.CACHE_MARKER).read_text()
    _convert_tiny(gguf, target)  # as if it had raced: the target exists at the rename
    assets.check_cache(target)
    assert (target / assets.CACHE_MARKER).read_text() == first
    assert [p.name for p in cache.iterdir()] == ["m"]


def test_a_corrupt_cache_appearing_meanwhile_is_not_kept(cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    target = cache / "m"
    target.mkdir(parents=True)
    (target / "junk").write_text("x")
    with pytest.raises(CorruptCacheError, match="incomplete"):
        _convert_tiny(gguf, target)


def test_the_cache_directory_gets_the_usual_mode(cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    umask = os.umask(0o022)
    try:
        _convert_tiny(gguf, cache / "m")
    finally:
        os.umask(umask)
    assert (cache / "m").stat().st_mode & 0o777 == 0o755
    # the weights too: safetensors writes 0600, unreadable to the users of a shared cache
    modes = {f.name: f.stat().st_mode & 0o777 for f in (cache / "m").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_old_temporaries_of_killed_conversions_are_removed(cache, monkeypatch):
    name = assets.DEFAULT_MODEL
    cache.mkdir()
    old, fresh, other = cache / f".{name}-old1", cache / f".{name}-new1", cache / ".other-x"
    for path in (old, fresh, other):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x")
    hours_ago = time.time() - assets.STALE_TEMP_SECONDS - 60
    for path in (old, other):
        os.utime(path, (hours_ago, hours_ago))

    def convert(gguf, target, distribution):
        target.mkdir()
        (target / assets.CACHE_MARKER).write_text(json.dumps({"format": 1, "files": {}}))

    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: cache / "m.gguf")
    monkeypatch.setattr(assets, "convert_gguf", convert)
    assets.resolve_model(name)
    assert not old.exists()
    assert fresh.exists() and other.exists()


@pytest.mark.parametrize(
    "files", ["[]", '"x"', '{"model.safetensors": null}', '{"model.safetensors": "1"}']
)
def test_a_malformed_marker_is_a_corrupt_cache(tmp_path, files):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / assets.CACHE_MARKER).write_text(f'{{"format": 1, "files": {files}}}')
    with pytest.raises(CorruptCacheError, match="malformed file list.*delete"):
        assets.check_cache(tmp_path)
