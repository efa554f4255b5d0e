"""``python -m export``: one parser, one subcommand per module.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its subcommand and sets
``run`` (args -> exit status). Errors the user can fix (bad sizes, missing files, mismatched
exports, missing optional packages) are one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("export.onnx_export", "export.check", "export.aoti", "export.engine", "export.validate")


class UserError(Exception):
    """A problem the user can fix; printed as one line (raised by commands for their own checks)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export", description="Export HRSAM models and check the exported files."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserError, ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
