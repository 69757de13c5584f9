"""`crosslogic models ...`: prepare and list the development models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from crosslogic.errors import ConfigError
from crosslogic.settings import Settings


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("models", help="development models (prepare, list)")
    commands = group.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    from crosslogic.devmodels import DEV_MODELS

    prepare = commands.add_parser(
        "prepare", help="convert/verify development models into local checkpoints (cached)"
    )
    prepare.add_argument(
        "names", nargs="*", metavar="NAME", help=f"one of {', '.join(DEV_MODELS)} (default: all)"
    )
    prepare.add_argument("--force", action="store_true", help="convert again even if cached")
    prepare.set_defaults(handler=_prepare)

    listing = commands.add_parser("list", help="known development models and where they are")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)

    group.set_defaults(handler=lambda _args: group.print_help() or 2)


def _prepare(args: argparse.Namespace) -> int:
    from crosslogic.devmodels import DEV_MODELS, prepare_dev_model

    settings = Settings.from_env()
    names = args.names or list(DEV_MODELS)
    for name in names:
        started = time.perf_counter()

        def progress(line: str, _name: str = name, _started: float = started) -> None:
            elapsed = time.perf_counter() - _started
            print(f"[{_name} {elapsed:6.1f}s] {line}", file=sys.stderr, flush=True)

        try:
            prepared = prepare_dev_model(name, settings, progress=progress, force=args.force)
        except ConfigError as exc:
            print(f"crosslogic models prepare: {exc}", file=sys.stderr)
            return 1
        state = "cached" if prepared.cached else "converted"
        print(f"{name}: {prepared.path} ({state}, {prepared.seconds:.2f}s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from crosslogic.devmodels import model_statuses

    statuses = model_statuses(Settings.from_env())
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
        return 0
    for status in statuses:
        mark = "prepared" if status.prepared else "not prepared"
        print(f"{status.name:<18} {status.task:<9} {mark:<13} {status.path or '-'}")
        print(f"{'':<18} {status.description}; {status.detail}")
    return 0
