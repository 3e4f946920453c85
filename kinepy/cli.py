"""`kinepy` command line: flags and environment -> Config; logging; runs the App until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kinepy import __version__
from kinepy.app import App
from kinepy.config import DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, Config
from kinepy.endpoint import redact
from kinepy.errors import KinepyError

log = logging.getLogger("kinepy")

ENV_PREFIX = "KINEPY_"


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinepy",
        description="Serve the etcd v3 API (KV, Watch, Lease, Maintenance, Cluster) from a SQL database.",
        epilog="Every flag can also be set by the environment variable shown in brackets; "
        "K3S_DATASTORE_ENDPOINT is read when KINEPY_DATASTORE_ENDPOINT is not set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def env_default(flag: str, default: Any) -> Any:
        value = env.get(_env_name(flag))
        if flag == "--datastore-endpoint" and value is None:
            value = env.get("K3S_DATASTORE_ENDPOINT")
        return default if value is None else value

    def add(flag: str, default: Any, help: str, **kwargs: Any) -> None:
        parser.add_argument(flag, default=env_default(flag, default), help=f"{help} [{_env_name(flag)}]", **kwargs)

    def add_bool(flag: str, help: str) -> None:
        raw = env.get(_env_name(flag), "")
        parser.add_argument(
            flag,
            action="store_true",
            default=raw.lower() in ("1", "true", "yes", "on"),
            help=f"{help} [{_env_name(flag)}]",
        )

    add("--listen-address", DEFAULT_LISTEN_ADDRESS, "address to serve on: HOST:PORT or unix://PATH")
    add(
        "--datastore-endpoint",
        "",
        "database to use: empty (SQLite at ./db/state.db), sqlite://PATH, postgres://…, "
        "mysql://…, or http(s)://HOST:2379 for a real etcd",
    )
    add("--log-level", "info", "debug, info, warning or error")
    add("--log-format", "text", "text or json")
    add_bool("--unsafe-no-fsync", "acknowledge writes before they reach the disk (faster, not durable)")
    add("--max-request-bytes", DEFAULT_MAX_REQUEST_BYTES, "largest request accepted, in bytes", type=int)
    add("--max-txn-ops", DEFAULT_MAX_TXN_OPS, "most operations in one txn branch", type=int)
    parser.add_argument("--version", action="version", version=f"kinepy {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    environment = os.environ if env is None else env
    args = build_parser(environment).parse_args(argv)
    return Config(
        listen_address=args.listen_address,
        datastore_endpoint=args.datastore_endpoint,
        log_level=args.log_level,
        log_format=args.log_format,
        unsafe_no_fsync=args.unsafe_no_fsync,
        max_request_bytes=int(args.max_request_bytes),
        max_txn_ops=int(args.max_txn_ops),
    )


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) about our state, when it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


async def serve(config: Config) -> None:
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app:
        notify_systemd("READY=1")
        await stop.wait()
        log.info("shutting down")
        notify_systemd("STOPPING=1")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except (ValueError, KinepyError) as exc:
        print(f"kinepy: {exc}", file=sys.stderr)
        return 2
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR") or config.log_format not in (
        "text",
        "json",
    ):
        print("kinepy: --log-level must be debug|info|warning|error and --log-format text|json", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve(config))
    except KinepyError as exc:
        print(f"kinepy: {redact(str(exc)) if '://' in str(exc) else exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"kinepy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
