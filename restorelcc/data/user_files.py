"""User data: Alpaca JSON/JSONL, ``save_to_disk`` folders, text files and folders.

Files are read as UTF-8, a leading byte-order mark dropped (``utf-8-sig``: files saved by
Notepad or PowerShell); suffixes match in any case. JSONL lines end at ``\n`` only (an
``\r`` before it is JSON whitespace): JSON strings may hold U+2028 or U+0085 unescaped;
blank lines are skipped. Each record keeps where it was (``line N`` of a JSONL file,
``element N (index i)`` of a JSON list, ``row i`` of a ``save_to_disk`` folder) for the
messages. A single file of another suffix is read as text, except compressed, archive and
table files (``.gz``, ``.zip``, ``.csv``, ``.parquet``...), which are refused. Text folders
skip hidden files and folders (a name starting with ``.``: ``.ipynb_checkpoints``, macOS
``._x.txt``). The readers return ``Sourced`` lists: what they read carries its origin, a
file's hashed from the very bytes parsed (``read_text``).
"""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Sequence
from pathlib import Path

from restorelcc.data.origin import Sourced, file_origin, folder_origin
from restorelcc.data.pairs import InstructionPair, make_pair, unique_pairs
from restorelcc.data.wheel import first_line, load_saved_dataset
from restorelcc.errors import DataError, warn_user

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
ENCODING = "utf-8-sig"  # UTF-8, without the byte-order mark some editors write first
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
_TABLES = (".csv", ".tsv", ".parquet", ".arrow")
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_JSON_HINT = "a .json file holds one JSON list of objects; one object per line is .jsonl"

Record = tuple[str, dict]  # (where it was: "line 3", "element 2 (index 1)", "row 0"; the row)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_text(path: Path, what: str = "") -> tuple[str, dict]:
    """File ``path``'s text, decoded as ``Path.read_text(encoding=ENCODING)`` does
    (universal newlines), and its ``file_origin``: the size and sha256 of the bytes decoded,
    read once. ``DataError`` naming the file (as ``what``: ``"text file "``) where it
    cannot be read or decoded."""
    try:
        data = path.read_bytes()
        text = io.TextIOWrapper(io.BytesIO(data), encoding=ENCODING).read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what}{path}: {first_line(exc)}") from exc
    return text, file_origin(path, data)


def _read_json_records(path: Path) -> Sourced:
    text, origin = read_text(path)
    records = Sourced(origin=origin)
    if _suffix(path) == ".jsonl":
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: malformed JSON on line {number}: {exc}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            records.append((f"line {number}", obj))
        return records
    if not text.strip():
        raise DataError(f"{path} is empty; {_JSON_HINT}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = f" ({_JSON_HINT})" if exc.msg == "Extra data" else ""
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}"
        ) from None
    if not isinstance(obj, list):
        raise DataError(
            f"{path}: expected a JSON list of objects (Alpaca format), got "
            f"{_json_kind(obj)}; {_JSON_HINT}"
        )
    for i, element in enumerate(obj):
        where = f"element {i + 1} (index {i})"
        if not isinstance(element, dict):
            raise DataError(f"{path}: {where} is {_json_kind(element)}, expected an object")
        records.append((where, element))
    return records


def _json_kind(value) -> str:
    """What a parsed JSON value is, as JSON names it: ``null``, ``an object``, ``a list``..."""
    if value is None:
        return "null"
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return kinds.get(type(value), "a number")


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / n).is_file() for n in SAVED_DATASET_FILES)


def _check_readable(path: Path) -> None:
    """``DataError`` for what is read as something it is not: a pipe or a device (read once
    at most, while a source is read more than once), a compressed, archive or table file."""
    if path.is_dir():
        return
    if not path.is_file():
        mode = path.stat().st_mode
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        raise DataError(
            f"{path} is not a regular file ({kind}); save the data to a file and give its path"
        )
    suffix = _suffix(path)
    if suffix in _COMPRESSED:
        raise DataError(
            f"{path} is a compressed or archive file ({suffix}), which is not read: "
            "decompress or unpack it first and give the .jsonl, .json or .txt file (or the "
            "folder) it holds"
        )
    if suffix in _TABLES:
        saved = "; give a save_to_disk dataset's folder, not its files" * (suffix == ".arrow")
        raise DataError(
            f"{path} is a {suffix} table, which is not read: convert it to .jsonl (one object "
            f"per line with 'instruction', 'input' and 'output' fields, or a 'text' field) "
            f"or to .txt{saved}"
        )


def user_records(path: Path, one_split_for: str | None = None) -> Sourced | None:
    """Rows of a JSON/JSONL file or a save_to_disk folder, each with where it was, and
    their origin; None for plain text sources. ``DataError`` for a pipe, a device, a
    compressed or a table file. ``one_split_for``: see ``load_saved_dataset``."""
    _check_readable(path)
    if path.is_file() and _suffix(path) in JSON_SUFFIXES:
        return _read_json_records(path)
    if path.is_dir() and _is_saved_dataset(path):
        rows = load_saved_dataset(path, one_split_for)
        return Sourced(((f"row {i}", row) for i, row in enumerate(rows)), folder_origin(path))
    return None


def _visible(path: Path, folder: Path) -> bool:
    """No part of ``path`` below ``folder`` is hidden (a name starting with ``.``)."""
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def text_documents(path: Path) -> Sourced:
    """A text file is one document (its origin: ``file_origin`` of the bytes read); a
    folder gives one document per .txt/.md file in it or its subfolders, hidden ones
    skipped (its origin: ``folder_origin``)."""
    if path.is_file():
        text, origin = read_text(path, "text file ")
        return Sourced([text], origin)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and _suffix(p) in TEXT_SUFFIXES and _visible(p, path)
    )
    if not files:
        raise DataError(
            f"folder {path} holds no .txt/.md files (hidden ones skipped) and is not a "
            f"save_to_disk dataset (no {', '.join(SAVED_DATASET_FILES)}): a text folder "
            "gives one document per .txt/.md file in it or its subfolders"
        )
    return Sourced((read_text(f, "text file ")[0] for f in files), folder_origin(path))


def _field(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required and key in record:
            raise DataError(f"{where}: field {key!r} is null, expected a string")
        if required:
            raise DataError(f"{where} has no {key!r} field (has: {', '.join(sorted(record))})")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
    return value


def records_to_pairs(records: Sequence[Record], source: str) -> list[InstructionPair]:
    pairs = []
    for place, record in records:
        where = f"{source}: {place}"
        instruction = _field(record, "instruction", where)
        output = _field(record, "output", where)
        for name, value in (("instruction", instruction), ("output", output)):
            if not value.strip():
                raise DataError(f"{where} has an empty {name!r}")
        pairs.append(make_pair(instruction, _field(record, "input", where, False), output, source))
    return pairs


def user_pairs(path: Path) -> Sourced:
    """The instruction pairs of an Alpaca JSON/JSONL file or save_to_disk folder, in stored
    order, exact repeats of an earlier pair dropped (``unique_pairs``) with a warning, and
    the origin of what was read."""
    records = user_records(path)
    if records is None and path.is_dir():
        raise DataError(
            f"folder {path} is not a save_to_disk dataset (it holds no "
            f"{', '.join(SAVED_DATASET_FILES)}); instruction pairs need an Alpaca JSON/JSONL "
            "file or a save_to_disk folder with 'instruction' and 'output' columns"
        )
    if records is None:
        raise DataError(
            f"{path} is plain text; instruction pairs need Alpaca JSON/JSONL or a "
            "save_to_disk folder with 'instruction' and 'output' columns"
        )
    if not records:
        raise DataError(f"{path} holds no records")
    pairs = records_to_pairs(records, str(path))
    unique = unique_pairs(pairs)
    if len(unique) < len(pairs):
        warn_user(
            f"{path}: {len(pairs) - len(unique)} of {len(pairs)} pairs repeat an earlier "
            f"(prompt, response) pair exactly and were dropped, the first of each kept (a "
            f"repeat would sit on both sides of the held-out and probe splits): "
            f"{len(unique)} pairs left"
        )
    return records.holding(unique)


def records_to_texts(
    records: Sequence[Record], source: str, text_column_only: bool = False
) -> list[str]:
    """The rows' ``text`` column; without one, each Alpaca pair's prompt + response unless
    ``text_column_only``."""
    first = records[0][1] if records else {}
    if text_column_only or "text" in first:
        return [_field(r, "text", f"{source}: {place}") for place, r in records]
    if records and "instruction" not in first:  # neither form: name both
        raise DataError(
            f"{source}: {records[0][0]} has neither a 'text' field nor Alpaca 'instruction' "
            f"and 'output' fields (has: {', '.join(map(str, first)) or 'none'})"
        )
    return [p.text for p in records_to_pairs(records, source)]


def user_texts(
    path: Path,
    text_column_only: bool = False,
    keep_blank_rows: bool = False,
    one_split_for: str | None = None,
) -> Sourced:
    """The non-blank documents of a user source: one per text file, else the rows' text
    (see ``records_to_texts``), and the origin of what was read. ``keep_blank_rows``: every
    row as it is, blank ones too (WikiText-2's test split as the pruning papers join it,
    ``"\\n\\n".join(rows)``); blank text files are dropped either way. ``one_split_for``:
    see ``load_saved_dataset``."""
    records = user_records(path, one_split_for)
    if records is None:
        texts = text_documents(path)
    else:
        texts = records.holding(records_to_texts(records, str(path), text_column_only))
        if keep_blank_rows:
            return texts
    return texts.holding(t for t in texts if t.strip())
