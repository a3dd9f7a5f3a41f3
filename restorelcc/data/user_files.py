"""User data: Alpaca JSON/JSONL, ``save_to_disk`` folders, text files and folders.

Files are read as UTF-8, a leading byte-order mark dropped (``utf-8-sig``: files saved by
Notepad or PowerShell); suffixes match in any case. JSONL lines end at ``\n`` only (an
``\r`` before it is JSON whitespace): JSON strings may hold U+2028 or U+0085 unescaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from restorelcc.data.pairs import InstructionPair, make_pair
from restorelcc.data.wheel import first_line, load_saved_dataset
from restorelcc.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
ENCODING = "utf-8-sig"  # UTF-8, without the byte-order mark some editors write first


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _read_json_records(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding=ENCODING)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {first_line(exc)}") from exc
    if _suffix(path) == ".jsonl":
        records = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: malformed JSON on line {number}: {exc}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            records.append(obj)
        return records
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{path}: expected a JSON list of objects (Alpaca format)")
    return obj


def _is_saved_dataset(folder: Path) -> bool:
    return any(
        (folder / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def user_records(path: Path) -> list[dict] | None:
    """Rows of a JSON/JSONL file or a save_to_disk folder; None for plain text sources."""
    if path.is_file() and _suffix(path) in JSON_SUFFIXES:
        return _read_json_records(path)
    if path.is_dir() and _is_saved_dataset(path):
        return list(load_saved_dataset(path))
    return None


def text_documents(path: Path) -> list[str]:
    """A text file is one document; a folder gives one document per .txt/.md file."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in TEXT_SUFFIXES)
    )
    if path.is_dir() and not files:
        raise DataError(f"folder {path} holds no .txt/.md files and is not a save_to_disk dataset")
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding=ENCODING))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read text file {f}: {first_line(exc)}") from exc
    return docs


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


def records_to_pairs(records: Sequence[dict], source: str) -> list[InstructionPair]:
    pairs = []
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        instruction = _field(record, "instruction", where)
        output = _field(record, "output", where)
        if not output.strip():
            raise DataError(f"{where} has an empty 'output'")
        pairs.append(make_pair(instruction, _field(record, "input", where, False), output, source))
    return pairs


def records_to_texts(
    records: Sequence[dict], source: str, text_column_only: bool = False
) -> list[str]:
    """The rows' ``text`` column; without one, each Alpaca pair's prompt + response unless
    ``text_column_only``."""
    if text_column_only or (records and "text" in records[0]):
        return [_field(r, "text", f"{source}: record {i}") for i, r in enumerate(records)]
    if records and "instruction" not in records[0]:  # neither form: name both
        raise DataError(
            f"{source}: record 0 has neither a 'text' field nor Alpaca 'instruction' and "
            f"'output' fields (has: {', '.join(map(str, records[0])) or 'none'})"
        )
    return [p.text for p in records_to_pairs(records, source)]


def user_texts(
    path: Path, text_column_only: bool = False, keep_blank_rows: bool = False
) -> list[str]:
    """The non-blank documents of a user source: one per text file, else the rows' text
    (see ``records_to_texts``). ``keep_blank_rows``: every row as it is, blank ones too
    (WikiText-2's test split as the pruning papers join it, ``"\\n\\n".join(rows)``); blank
    text files are dropped either way."""
    records = user_records(path)
    if records is None:
        texts = text_documents(path)
    else:
        texts = records_to_texts(records, str(path), text_column_only)
        if keep_blank_rows:
            return texts
    return [t for t in texts if t.strip()]
