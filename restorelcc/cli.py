"""The ``restorelcc`` command line. Each subcommand lives in ``restorelcc.commands``."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import functools
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import NoReturn

from restorelcc.errors import RestoreLCCError

# subcommand -> module with ``register(subparsers)`` that sets ``func`` on its parser
COMMANDS: dict[str, str] = {
    "prune": "restorelcc.commands.prune",
    "inspect": "restorelcc.commands.inspect",
    "pack": "restorelcc.commands.pack",
    "eval": "restorelcc.commands.evaluate",
    "restore": "restorelcc.commands.restore",
    "demo": "restorelcc.commands.demo",
    "bench": "restorelcc.commands.bench",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help, unless the help already names its default
    or there is none to show (``None``, a flag's ``False``, ``argparse.SUPPRESS``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings:
            return text
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default)) or "none"
            return f"{text} (default: {shown.replace('%', '%%')})"
        return f"{text} (default: %(default)s)"


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose refusals read as the commands' own: one line, ``restorelcc <command>:
    error: <argparse's message> (see restorelcc <command> --help)``, exit status 2, rather
    than the whole usage block first. ``--help`` is argparse's, unchanged."""

    # The top parser's {command name: its parser}, set by build_parser.
    command_parsers: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.splitlines())  # the user's values as typed
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """As argparse's, but an option the command does not know is refused by the
        command's parser (``restorelcc eval: ... (see restorelcc eval --help)``), whose
        help lists its options, not by the top one."""
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = self.command_parsers.get(getattr(namespace, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="restorelcc",
        description="Prune LLMs and restore their accuracy by lost-component compensation.",
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=functools.partial(OneLineErrorParser, formatter_class=DefaultsHelpFormatter),
    )
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    parser.command_parsers = dict(sub.choices)
    return parser


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' own bars (loading and writing weights) follow ``--quiet`` too."""
    if enabled:
        yield
        return
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """A warning shows as one line, ``restorelcc <command>: warning: <message>``, not as
    Python's file, line number, category and source line (``RESTORELCC_DEBUG=1`` keeps
    those). Only the text changes: which warnings show, and where, stays as it was."""
    if os.environ.get("RESTORELCC_DEBUG"):
        yield
        return

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"restorelcc {command}: warning: {' '.join(str(message).split())}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as Ctrl-C does."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop) unwinds the stack like Ctrl-C, so the
    atomic writes remove their temporary files instead of leaving half a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stops_in_finalizers_kept() -> Iterator[None]:
    """A Ctrl-C (or SIGTERM's ``Terminated``) that lands while the garbage collector runs a
    finalizer (a ``__del__``: a tokenizer's regex objects, say) is one Python reports as
    "Exception ignored" and drops, and the command would run on to its end. The stop is
    signalled to the main thread again instead, to be raised where the program is: from
    another thread once this hook is done, since a signal the main thread sends itself is
    raised at its next instruction, still inside the hook, where it would be dropped again
    (one landing in another finalizer comes back here)."""
    previous = sys.unraisablehook

    def signal_when_done(hook_done: threading.Event, signum: int) -> None:
        hook_done.wait()
        _thread.interrupt_main(signum)

    def raise_again(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        terminated = isinstance(unraisable.exc_value, Terminated)
        hook_done = threading.Event()
        signum = signal.SIGTERM if terminated else signal.SIGINT
        threading.Thread(target=signal_when_done, args=(hook_done, signum), daemon=True).start()
        hook_done.set()

    sys.unraisablehook = raise_again
    try:
        yield
    finally:
        sys.unraisablehook = previous


# The exit status of a command whose standard output was closed by its reader (``| head``):
# 128 + SIGPIPE, what a shell reports for a program that SIGPIPE stopped.
STDOUT_CLOSED = 128 + 13


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: ``sys.argv``); its exit status. Bad input:
    one error line, 2; Ctrl-C: 130; SIGTERM: 143. A reader that closes the standard
    output early (``restorelcc inspect DIR | head -1``) ends the command quietly with
    ``STDOUT_CLOSED`` (141), as a program stopped by SIGPIPE: no error line, and what it
    wrote stays (the commands write their files before they print their tables)."""
    try:
        args = _expand_home(build_parser().parse_args(argv))
    except KeyboardInterrupt:  # while the commands' modules import torch (a second or so)
        print("restorelcc: interrupted", file=sys.stderr)
        return 130
    try:
        quiet = getattr(args, "quiet", False)
        with (
            _terminate_as_interrupt(),
            _stops_in_finalizers_kept(),
            _plain_warnings(args.command),
            _library_progress_bars(not quiet),
        ):
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe fails here, not in Python's flush at exit
            return status
    except BrokenPipeError:
        _discard_stdout()
        return STDOUT_CLOSED
    except (RestoreLCCError, ValueError, OSError) as exc:
        # Bad input, or a file that cannot be read or written (a full disk, a folder that
        # refuses writes): one line for the user; RESTORELCC_DEBUG=1 shows the traceback.
        if os.environ.get("RESTORELCC_DEBUG"):
            raise
        print(f"restorelcc {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        word = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"restorelcc {args.command}: {word}{_after_output(args)}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # what the stop left behind (io)
            print(f"restorelcc {args.command}: {note}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130


def _discard_stdout() -> None:
    """Send what is left to print to the null device, so that Python's flush at exit does
    not fail on the closed pipe again (the Python docs' "Note on SIGPIPE")."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's captured output)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open until the process ends
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


def _after_output(args: argparse.Namespace) -> str:
    """What follows "interrupted" (or "terminated"): nothing, or, where the command had
    already published its output in full (``reports.mark_written``), that it did, so that
    a stop while the summary prints is not read as a lost output. The exit status stays
    the signal's: the run was stopped, as asked, before it returned."""
    written = getattr(args, "written", None)
    return "" if written is None else f" after {written} was written in full"


def _expand_home(args: argparse.Namespace) -> argparse.Namespace:
    """Values given as ``~/path`` as the paths they name: the shell leaves ``--out=~/x``
    as it is, and an output written to the home folder must be checked against the
    inputs as the same path (no option value other than a path starts with ``~``)."""
    for name, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    return args


def _one_line(exc: BaseException) -> str:
    """The error's message; an operating-system error's as "what: file" (without its
    ``[Errno N]``), the message of our own ``OSError`` subclasses as it is."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
