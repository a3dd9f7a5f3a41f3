"""The ``restorelcc`` command line. Each subcommand lives in ``restorelcc.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from restorelcc.errors import RestoreLCCError

# subcommand -> module with ``register(subparsers)`` that sets ``func`` on its parser
COMMANDS: dict[str, str] = {
    "prune": "restorelcc.commands.prune",
    "inspect": "restorelcc.commands.inspect",
    "eval": "restorelcc.commands.evaluate",
    "restore": "restorelcc.commands.restore",
    "demo": "restorelcc.commands.demo",
    "bench": "restorelcc.commands.bench",
}


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
    except (RestoreLCCError, ValueError, FileExistsError, FileNotFoundError) as exc:
        # Bad input: one line for the user; RESTORELCC_DEBUG=1 shows the traceback.
        if os.environ.get("RESTORELCC_DEBUG"):
            raise
        print(f"restorelcc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"restorelcc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
