"""Operator command for the poison queue and the clients.

    python -m admin list [--json]
    python -m admin replay (--all | ID ...) [--json]
    python -m admin purge (--all | ID ...) --confirm <poison queue name> [--json]
    python -m admin client create NAME --senders LIST [--rate N] [--features LIST] [--json]
    python -m admin client features NAME LIST [--json]
    python -m admin client (list | disable NAME | enable NAME | rotate NAME) [--json]

`client create` and `client rotate` print the new key on the last line of their output; it is
shown only then (the gateway keeps a digest of it).

`list`, `replay --all` and `purge --all` go through the whole poison queue, a bounded call at a
time, printing progress on stderr. Every command prints its result on stdout as a readable table
(admin/tables.py), or with `--json` (`--format json`; `FORMAT=json` through make) as one JSON
document, for scripts.

Settings come from local.settings.json `Values` with environment variables taking precedence,
as the Functions host reads them; for an Azure account use `MAILGATE_STORAGE__accountName`
(the gateway's data; it takes precedence over a local AzureWebJobsStorage) and sign in with
`az login` (your user needs the storage data roles).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from admin.tables import DEFAULT_WIDTH, client_lines, dead_letter_lines, walk_report_lines
from devstack.host import local_setting_values, merge_settings, read_local_settings
from shared.clients import DEFAULT_RATE_PER_MINUTE, ClientStore
from shared.dead_letters import DeadLetters
from shared.errors import MailgateError
from shared.gateway import Gateway
from shared.poison_walk import MAX_PAGE_LIMIT
from shared.policy import FEATURES, NO_FEATURES
from shared.settings import Settings


def output_options() -> argparse.ArgumentParser:
    """--format and --json, which every command takes (after its name)."""
    options = argparse.ArgumentParser(add_help=False)
    chosen = options.add_mutually_exclusive_group()
    chosen.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a readable table (the default), or JSON for scripts",
    )
    chosen.add_argument(
        "--json", dest="format", action="store_const", const="json", help="--format json"
    )
    return options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    output = output_options()
    parser = argparse.ArgumentParser(prog="python -m admin", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list dead letters with their reasons", parents=[output])
    for name, help_text in (
        ("replay", "re-enqueue dead letters"),
        ("purge", "delete dead letters"),
    ):
        command = commands.add_parser(name, help=help_text, parents=[output])
        command.add_argument("ids", nargs="*", metavar="ID", help="gateway message ids")
        command.add_argument("--all", action="store_true", help="every dead letter")
    commands.choices["purge"].add_argument(
        "--confirm", metavar="QUEUE", help="the poison queue's name, to confirm a purge"
    )
    clients = commands.add_parser("client", help="manage the apps allowed to send").add_subparsers(
        dest="client_command", required=True
    )
    create = clients.add_parser("create", help="add a client and print its key", parents=[output])
    create.add_argument("name", help="1-40 lowercase letters, digits and hyphens")
    create.add_argument(
        "--senders", required=True, help="comma-separated addresses and @domains it may send as"
    )
    create.add_argument(
        "--rate",
        type=int,
        default=DEFAULT_RATE_PER_MINUTE,
        help="emails per minute (one per recipient)",
    )
    features_help = (
        "comma-separated account-wide controls it may use (none by default): " + ", ".join(FEATURES)
    )
    create.add_argument("--features", default="", help=features_help)
    features = clients.add_parser("features", help="replace a client's features", parents=[output])
    features.add_argument("name")
    features.add_argument("features", help=f"{features_help}; or {NO_FEATURES}")
    clients.add_parser("list", help="list clients (never their keys)", parents=[output])
    for name, help_text in (
        ("disable", "refuse the client's key from now on"),
        ("enable", "accept the client's key again"),
        ("rotate", "give the client a new key; the old one stops working"),
    ):
        clients.add_parser(name, help=help_text, parents=[output]).add_argument("name")
    args = parser.parse_args(argv)
    if args.command in ("replay", "purge") and bool(args.ids) == args.all:
        parser.error("give message ids or --all (not both)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print its result as a table or JSON (and a new key on the last
    line)."""
    args = parse_args(argv)
    local = local_setting_values(read_local_settings(Path.cwd()))
    key = None
    try:
        settings = Settings.from_env(merge_settings(local, os.environ))
        if args.command == "client":
            result, key = client_command(ClientStore.from_settings(settings), args)
        else:
            result = dead_letter_command(Gateway.from_settings(settings).dead_letters, args)
    except MailgateError as error:
        print(f"mailgate admin: {error}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
        print("\n".join(table_lines(args, result, datetime.now(timezone.utc), width)))
    if key is not None:
        print(f"Key of client {args.name!r}, shown only now (send 'Authorization: Bearer <key>'):")
        print(key)
    return 0


DONE = {"replay": "replayed", "purge": "purged"}


def table_lines(args: argparse.Namespace, result: Any, now: datetime, width: int) -> list[str]:
    """A command's result document as the table it prints by default."""
    if args.command == "list":
        return dead_letter_lines(result, now, width)
    if args.command in ("replay", "purge"):
        return walk_report_lines(result, DONE[args.command], width)
    clients = result["clients"] if args.client_command == "list" else [result]
    return client_lines(clients, now, width)


def dead_letter_command(dead_letters: DeadLetters, args: argparse.Namespace) -> object:
    """list, replay or purge: the whole walk through the poison queue, a call at a time, with
    progress on stderr while it goes on."""
    chosen = None if getattr(args, "all", False) else args.__dict__.get("ids")
    if args.command == "list":
        page = dead_letters.list_page(MAX_PAGE_LIMIT)
        entries = list(page.entries)
        while page.continuation is not None:
            progress(f"{len(entries)} dead letter(s) listed so far")
            page = dead_letters.list_page(MAX_PAGE_LIMIT, page.continuation)
            entries.extend(page.entries)
        return {"dead_letters": [e.to_document() for e in entries]}
    if args.command == "replay":
        walk_call = functools.partial(dead_letters.replay_page, chosen, MAX_PAGE_LIMIT)
    else:
        dead_letters.confirm_purge(args.confirm)
        walk_call = functools.partial(dead_letters.purge_page, chosen, MAX_PAGE_LIMIT)
    report = walk_call(None)
    while report.continuation is not None:
        done = "replayed" if args.command == "replay" else "purged"
        progress(f"{len(report.done)} dead letter(s) {done} so far")
        report.merge(walk_call(report.continuation))
    return report.to_document()


def progress(text: str) -> None:
    """A line on stderr while a walk goes on (stdout carries the result alone)."""
    print(f"mailgate admin: {text}...", file=sys.stderr, flush=True)


def client_command(store: ClientStore, args: argparse.Namespace) -> tuple[object, str | None]:
    """client create, list, features, disable, enable or rotate; the key when one was made."""
    store.ensure_exists()
    command = args.client_command
    if command == "list":
        return {"clients": [c.describe() for c in store.all()]}, None
    if command == "create":
        client, key = store.create(args.name, args.senders, args.rate, args.features)
        return client.describe(), key
    if command == "features":
        return store.set_features(args.name, args.features).describe(), None
    if command == "rotate":
        client, key = store.rotate(args.name)
        return client.describe(), key
    return store.set_enabled(args.name, command == "enable").describe(), None


if __name__ == "__main__":
    sys.exit(main())
