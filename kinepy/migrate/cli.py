"""`kinepy migrate`, `kinepy backup` and `kinepy restore`.

Exit codes: 0 copied and checked; 1 the copy failed or was refused (nothing served changed: the
source is only read, a refused target is untouched, an interrupted target is marked incomplete);
2 bad usage; 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from kinepy.endpoint import redact
from kinepy.errors import KinepyError
from kinepy.migrate.copy import DEFAULT_BATCH_ROWS, CopyOptions, copy_store
from kinepy.migrate.endpoints import open_source, open_target, same_location
from kinepy.migrate.progress import progress_for

COMMANDS = ("migrate", "backup", "restore")
DEFAULT_DATASTORE = "sqlite://./db/state.db"

log = logging.getLogger("kinepy.migrate")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--current-only", action="store_true", help="copy only the current state, no history")
    parser.add_argument("--replace", action="store_true", help="overwrite a target that holds data")
    parser.add_argument(
        "--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help="history rows per target transaction"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to keep retrying an unreachable database"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "log"),
        default="auto",
        help="a progress bar (on a terminal, by default) or log lines",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinepy", description="Copy, back up and restore kinepy stores.")
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate",
        help="copy a whole store between SQLite, PostgreSQL and MySQL, in from kine or etcd, back to etcd",
        description="Copy a whole store (revisions, leases, compaction point, history) into an empty one, "
        "then check the copy. URLs are datastore endpoints as --datastore-endpoint takes them (kinepy's "
        "store, or kine's table at the endpoint kine was given), file paths (a SQLite file, an etcd "
        "snapshot), or http://HOST:PORT for a live etcd (from it: the keys at one revision; to it: the "
        "current state, with etcd's own revisions); etcd-snapshot://FILE writes an etcd snapshot that "
        "etcdctl snapshot restore accepts, every revision kept.",
    )
    migrate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="the store to copy: a datastore endpoint, a file, or http://HOST:PORT (etcd)",
    )
    migrate.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="where to copy it: a datastore endpoint, http://HOST:PORT (etcd), or etcd-snapshot://FILE",
    )
    _common(migrate)
    default = env.get("KINEPY_DATASTORE_ENDPOINT") or env.get("K3S_DATASTORE_ENDPOINT") or DEFAULT_DATASTORE
    backup = commands.add_parser(
        "backup",
        help="write a consistent SQLite copy of a store (running or not)",
        description="Write a consistent, portable SQLite copy of a store; it runs as is "
        "(kinepy --datastore-endpoint sqlite://FILE) and restores anywhere (kinepy restore).",
    )
    backup.add_argument("file", help="the SQLite file to write")
    backup.add_argument(
        "--from",
        "--datastore-endpoint",
        dest="source",
        default=default,
        metavar="URL",
        help="the store to back up [KINEPY_DATASTORE_ENDPOINT, K3S_DATASTORE_ENDPOINT] "
        "(default: %(default)s)",
    )
    _common(backup)
    restore = commands.add_parser(
        "restore",
        help="put a backup (or a kinepy snapshot) back into a store",
        description="Copy a backup file into an empty store (or any store with --replace), then check it.",
    )
    restore.add_argument(
        "file", help="the backup: a SQLite file written by kinepy backup or etcdctl snapshot save"
    )
    restore.add_argument(
        "--to",
        "--datastore-endpoint",
        dest="target",
        default=default,
        metavar="URL",
        help="the store to restore into [KINEPY_DATASTORE_ENDPOINT, K3S_DATASTORE_ENDPOINT] "
        "(default: %(default)s)",
    )
    _common(restore)
    return parser


def _locations(args: argparse.Namespace) -> tuple[str, str]:
    if args.command == "backup":
        return args.source, args.file
    if args.command == "restore":
        return args.file, args.target
    return args.source, args.target


async def _run(source_url: str, target_url: str, args: argparse.Namespace) -> str:
    options = CopyOptions(current_only=args.current_only, replace=args.replace, batch_rows=args.batch_rows)
    bar = {"auto": None, "bar": True, "log": False}[args.progress]
    source = open_source(source_url, connect_timeout=args.connect_timeout)
    target = open_target(target_url, connect_timeout=args.connect_timeout)
    if getattr(target, "current_state_only", False):
        options = dataclasses.replace(options, current_only=True)
    report = await copy_store(source, target, options, progress_for(sys.stderr, bar=bar))
    return report.summary()


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.batch_rows < 1:
        print("kinepy: --batch-rows must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    source_url, target_url = _locations(args)
    secrets = (source_url, target_url)
    try:
        if same_location(source_url, target_url):
            print("kinepy: the source and the target are the same store", file=sys.stderr)
            return 2
        summary = asyncio.run(_run(source_url, target_url, args))
    except KeyboardInterrupt:
        print(
            f"kinepy: {args.command} interrupted; the target is marked incomplete and cannot be served: "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (KinepyError, ValueError, OSError) as exc:
        print(f"kinepy: {args.command} failed: {_scrub(str(exc), secrets)}", file=sys.stderr)
        return 1
    print(_scrub(summary, secrets))
    return 0


def _scrub(text: str, locations: Sequence[str]) -> str:
    """`text` with each location's password hidden."""
    for location in locations:
        if "://" in location and location != redact(location):
            text = text.replace(location, redact(location))
            from kinepy.endpoint import parse_endpoint

            try:
                password = getattr(parse_endpoint(location), "password", None)
            except KinepyError:
                password = None
            if password:
                text = text.replace(password, "***")
    return text
