"""A model cache folder that cannot be created or written in is named, with where its
location came from (``RESTORELCC_CACHE``, ``XDG_CACHE_HOME`` or the default) and what to
set: it had been a bare "No such file or directory: /proc/nope" or "File exists: ..."."""

import pytest

from restorelcc import assets, cli
from restorelcc.errors import RestoreLCCError

HINT = "set RESTORELCC_CACHE to a writable folder"


@pytest.fixture
def wheel_gguf(tmp_path, monkeypatch):
    """The default model's GGUF as installed: a stand-in file (no conversion runs here:
    each test's cache fails before one would start)."""
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(assets.GgufAsset, "locate", lambda self: gguf)
    return gguf


def _error() -> RestoreLCCError:
    """The error ``resolve_model`` raises for the default model: a ``CacheLocationError``,
    an ``OSError`` as well, which the command line prints as one line."""
    with pytest.raises(RestoreLCCError) as info:
        assets.resolve_model(assets.DEFAULT_MODEL)
    assert isinstance(info.value, assets.CacheLocationError) and isinstance(info.value, OSError)
    return info.value


def test_a_file_as_the_cache_is_named_with_its_variable(tmp_path, monkeypatch, wheel_gguf):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("RESTORELCC_CACHE", str(afile))
    assert str(_error()) == (
        f"model cache {afile} (RESTORELCC_CACHE): cannot create it: it is a file; {HINT}"
    )


def test_a_cache_under_a_file_is_named_with_its_variable(tmp_path, monkeypatch, wheel_gguf):
    (tmp_path / "afile").write_text("")
    cache = tmp_path / "afile" / "sub"
    monkeypatch.setenv("RESTORELCC_CACHE", str(cache))
    assert str(_error()) == (
        f"model cache {cache} (RESTORELCC_CACHE): cannot create it: Not a directory; {HINT}"
    )


def test_the_xdg_and_the_default_location_are_named_as_such(tmp_path, monkeypatch, wheel_gguf):
    (tmp_path / "afile").write_text("")
    monkeypatch.delenv("RESTORELCC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "afile"))
    assert str(_error()).startswith(
        f"model cache {tmp_path / 'afile' / 'restorelcc'} ($XDG_CACHE_HOME/restorelcc, as "
        "RESTORELCC_CACHE is unset): cannot create it: "
    )
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "afile"))
    message = str(_error())
    assert message.startswith(
        f"model cache {tmp_path / 'afile' / '.cache' / 'restorelcc'} (the default, as "
        "RESTORELCC_CACHE is unset): cannot create it: "
    )
    assert message.endswith(HINT)


def test_a_lock_that_cannot_be_written_is_named(tmp_path, monkeypatch, wheel_gguf):
    cache = tmp_path / "cache"
    (cache / f".{assets.DEFAULT_MODEL}.lock").mkdir(parents=True)  # a folder in its place
    monkeypatch.setenv("RESTORELCC_CACHE", str(cache))
    assert str(_error()) == (
        f"model cache {cache} (RESTORELCC_CACHE): cannot write .{assets.DEFAULT_MODEL}.lock in "
        f"it: Is a directory; {HINT}"
    )


def test_the_command_line_prints_it_as_one_line(tmp_path, monkeypatch, capsys, wheel_gguf):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("RESTORELCC_CACHE", str(afile))
    assert cli.main(["eval", "--tasks", "none", "--json", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err == (
        f"restorelcc eval: error: model cache {afile} (RESTORELCC_CACHE): cannot create it: "
        f"it is a file; {HINT}\n"
    )
    assert not (tmp_path / "r.json").exists()
