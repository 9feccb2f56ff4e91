"""Operator command for the poison queue.

    python -m admin list
    python -m admin replay (--all | ID ...)
    python -m admin purge (--all | ID ...) --confirm <poison queue name>

Settings come from local.settings.json `Values` with environment variables taking precedence,
as the Functions host reads them; for an Azure account use `AzureWebJobsStorage__accountName`
and sign in with `az login` (your user needs the storage data roles).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.host import local_setting_values, merge_settings, read_local_settings
from shared.errors import MailgateError
from shared.gateway import Gateway
from shared.settings import Settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m admin", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list dead letters with their reasons")
    for name, help_text in (
        ("replay", "re-enqueue dead letters"),
        ("purge", "delete dead letters"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("ids", nargs="*", metavar="ID", help="gateway message ids")
        command.add_argument("--all", action="store_true", help="every dead letter")
    commands.choices["purge"].add_argument(
        "--confirm", metavar="QUEUE", help="the poison queue's name, to confirm a purge"
    )
    args = parser.parse_args(argv)
    if args.command != "list" and bool(args.ids) == args.all:
        parser.error("give message ids or --all (not both)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print its result as JSON."""
    args = parse_args(argv)
    local = local_setting_values(read_local_settings(Path.cwd()))
    try:
        gateway = Gateway.from_settings(Settings.from_env(merge_settings(local, os.environ)))
        dead_letters = gateway.dead_letters
        chosen = None if getattr(args, "all", False) else args.__dict__.get("ids")
        if args.command == "list":
            entries = dead_letters.entries()
            result: object = {"dead_letters": [e.to_document() for e in entries]}
        elif args.command == "replay":
            result = dead_letters.replay(chosen).to_document()
        else:
            dead_letters.confirm_purge(args.confirm)
            result = dead_letters.purge(chosen).to_document()
    except MailgateError as error:
        print(f"mailgate admin: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
