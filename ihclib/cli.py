"""The `ihclib` command (also `python -m ihclib`).

Each subcommand lives in ``ihclib/commands/<name>.py`` with ``register(subparsers)``; errors
that are the user's (bad file, bad folder, bad option) become one line on stderr and exit 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .data import DataError
from .images import ImageError

# subcommand modules, in the order `ihclib --help` lists them
COMMANDS = ("check_data", "train", "denoise")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ihclib", description="Restore noisy IHC images with CNNs.")
    parser.add_argument("--version", action="version", version=f"ihclib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ihclib.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ihclib.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ImageError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"ihclib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ihclib {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
