"""Entry point of the `crosslogic` command.

Each command group lives in its own module exposing `register(subparsers)`; the group's handlers are
set with `parser.set_defaults(handler=...)` and receive the parsed `argparse.Namespace`, returning an
exit code. Handlers may be async (they are run with `asyncio.run`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Sequence

from crosslogic.errors import ConfigError

# Command-group modules, imported lazily so `crosslogic --help` stays fast and a group whose optional
# dependency is missing does not break the others.
GROUP_MODULES: tuple[str, ...] = (
    "crosslogic.cli.models",
    "crosslogic.cli.migrate",
    "crosslogic.cli.admin",
    "crosslogic.cli.local",
    "crosslogic.cli.region",  # `crosslogic local region ...`: after `local`
    "crosslogic.cli.billing",
    "crosslogic.cli.cluster",  # `crosslogic cluster up|down|status` (SkyPilot, via .venv-cloud)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslogic", description="CrossLogic inference cloud")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUP_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # e.g. a malformed secret in the environment: one line, no traceback
        print(f"crosslogic: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
