"""The ``restorelcc`` command line. Each subcommand lives in ``restorelcc.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from restorelcc.errors import RestoreLCCError

# subcommand -> module with ``register(subparsers)`` that sets ``func`` on its parser
COMMANDS: dict[str, str] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restorelcc",
        description="Prune LLMs and restore their accuracy by lost-component compensation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RestoreLCCError, FileExistsError, FileNotFoundError) as exc:
        print(f"restorelcc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"restorelcc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
