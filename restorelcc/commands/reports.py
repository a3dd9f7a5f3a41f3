"""The ``--json`` report of a command: the checks of its path (``check_json_path``:
before the work, so a path that cannot be written fails at once), its default name
(``<command>_<model>.json``, never replacing another report), its atomic writing, the
mark that the command's final output is complete (``mark_written``, read by
``cli.main``), and what counts as an earlier report (``is_report``: an output that
``options.check_spares_inputs`` lets replace a file inside an input folder). Sizes in
the printed summaries: ``mib``."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from restorelcc.io import OutputPathError, check_writable_location


class ReportPathError(OutputPathError):
    """A ``--json`` report path that is empty, or whose folder cannot be made or written."""


def check_json_path(path: str | Path, option: str = "--json") -> Path:
    """``path`` as a Path where the report can be written after the work (checked before
    it): ``ReportPathError`` if it is empty or ends in a path separator (``out/`` names a
    folder: it would be written as a file named ``out``); ``FileExistsError`` if it is a
    directory; ``ReportPathError`` if its nearest existing parent is not a directory (the
    missing ones are made when writing) or nothing can be written there
    (``check_writable_location``: the report is written to a temporary file there, then
    renamed)."""
    if not str(path).strip():
        raise ReportPathError(f"{option} is empty: give the report's file path")
    separators = tuple(sep for sep in (os.sep, os.altsep, "/") if sep)
    if isinstance(path, str) and path.endswith(separators):
        raise ReportPathError(
            f"{option} {path} ends in {path[-1]!r}, so it names a folder: give the report's "
            f"file path (such as {path}report.json)"
        )
    path = Path(path).expanduser()
    if path.is_dir():
        raise FileExistsError(f"{option} {path} is a directory")
    try:
        check_writable_location(path, f"{option} {path}")
    except OutputPathError as exc:
        raise ReportPathError(str(exc)) from None
    return path


def _report_stem(model: str) -> str:
    """A file-name-safe name for ``model``: a local folder's name, with its parent's where
    the path as typed names one (``runs/b/merged`` -> ``b-merged``, ``../x`` -> the parent
    folder's name and ``x``; ``wanda24`` -> ``wanda24``; ``.`` -> the current folder's
    name), else the model's name (``org/name`` -> ``org-name``)."""
    if Path(model).exists():
        absolute = Path(os.path.abspath(model))  # as typed: ".." resolved, links not
        typed = Path(os.path.normpath(model)).parts  # "./a/" -> ("a",)
        parts = [absolute.parent.name, absolute.name] if len(typed) > 1 else [absolute.name]
    else:
        parts = str(model).strip("/").split("/")[-2:]
    stem = "-".join(part for part in parts if part)
    return re.sub(r"[^\w.+-]", "_", stem) or "model"


def default_report_path(command: str, model: str, adapter: str | None = None) -> Path:
    """``<command>_<model>.json`` in the current folder (``_report_stem``), or
    ``<command>_<model>+<adapter>.json`` with an adapter (its folder, also where one of its
    files was given), with ``-2``, ``-3``, ... added where that file exists: a default
    report never replaces another. The report line at the end of the run names the file."""
    stem = f"{command}_{_report_stem(model)}"
    if adapter is not None:
        from restorelcc.lcc.adapter import adapter_directory

        stem += f"+{_report_stem(str(adapter_directory(adapter)))}"
    path, number = Path(f"{stem}.json"), 1
    while path.exists():
        number += 1
        path = Path(f"{stem}-{number}.json")
    return path


DEFAULT_REPORT_HELP = (
    "report path (default: {command}_<model>.json in the current folder, "
    "{command}_<model>+<adapter>.json with --adapter, <model> being a local folder's name, "
    "with its parent's where the path names one (b/merged -> b-merged, wanda24 -> wanda24), "
    "or the model's name, <adapter> likewise; -2, -3... is added rather than replace an "
    "existing file)"
)


def report_path(args: argparse.Namespace, command: str) -> Path:
    """The checked ``--json`` path, or the default report path of ``args.model`` and
    ``args.adapter``."""
    if args.json is not None:
        return check_json_path(args.json)
    return check_json_path(default_report_path(command, args.model, args.adapter))


def write_report(args: argparse.Namespace, command: str, out: Path, payload) -> Path:
    """Write ``command``'s JSON report to ``out`` (``report_path``'s choice); the path
    written. A ``--json`` file is replaced. A default name is taken only if still free
    when the report is done: a run that chose the same name meanwhile keeps its report,
    and this one takes the next free name."""
    from restorelcc.io import atomic_write_json

    if args.json is not None:
        written = atomic_write_json(out, payload)
    else:
        while True:
            try:
                written = atomic_write_json(out, payload, replace=False)
                break
            except FileExistsError:
                out = default_report_path(command, args.model, args.adapter)
    mark_written(args, written)
    return written


def mark_written(args: argparse.Namespace, output: str | os.PathLike) -> None:
    """Record on ``args`` that the command's final output ``output`` is complete: a
    Ctrl-C or SIGTERM from here on (while the summary prints) says so (``cli.main``)."""
    args.written = str(output)


def mib(size: int) -> str:
    """``size`` bytes as the commands print sizes: ``12.3 MiB``."""
    return f"{size / 2**20:.1f} MiB"


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a JSON report of a command (with ``run_metadata``) other than
    the reports a checkpoint or adapter keeps (``prune_report.json``, read back by
    ``inspect`` and ``restore``; ``restore_report.json``)."""
    from restorelcc.commands.restore import REPORT_NAME
    from restorelcc.prune.checkpoint import PRUNE_REPORT

    if path.name in (PRUNE_REPORT, REPORT_NAME):
        return False
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and "run_metadata" in report
