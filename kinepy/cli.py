"""`kinepy` command line: flags and environment -> Config; logging; runs the App until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kinepy import __version__
from kinepy.app import App
from kinepy.config import DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, Config
from kinepy.endpoint import parse_endpoint
from kinepy.errors import ConfigError, KinepyError

log = logging.getLogger("kinepy")

ENV_PREFIX = "KINEPY_"
_DEFAULTS = Config()


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str | float) -> float:
    """Seconds from a Go-style duration (`5s`, `100ms`, `1m30s`, as kine and etcd flags take them)
    or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    raw = text.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 5s, 100ms, 1m30s or seconds")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


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
        parser.add_argument(
            flag, default=env_default(flag, default), help=f"{help} [{_env_name(flag)}]", **kwargs
        )

    def add_bool(flag: str, help: str) -> None:
        raw = env.get(_env_name(flag), "")
        parser.add_argument(
            flag,
            action="store_true",
            default=raw.lower() in ("1", "true", "yes", "on"),
            help=f"{help} [{_env_name(flag)}]",
        )

    add(
        "--listen-address",
        DEFAULT_LISTEN_ADDRESS,
        "address to serve on: HOST:PORT or unix://PATH",
        metavar="ADDRESS",
    )
    add(
        "--datastore-endpoint",
        "",
        "database to use: empty (SQLite at ./db/state.db), sqlite://PATH, postgres://…, "
        "mysql://…, or http(s)://HOST:2379 for a real etcd",
        metavar="URL",
    )
    add(
        "--cert-file", "", "TLS certificate (PEM) for the listener; clients then must use TLS", metavar="PATH"
    )
    add("--key-file", "", "TLS private key (PEM) for the listener", metavar="PATH")
    add(
        "--trusted-ca-file",
        "",
        "CA bundle (PEM) client certificates must chain to; turns client-certificate auth on",
        metavar="PATH",
    )
    add(
        "--metrics-address",
        "",
        "serve Prometheus metrics on http://ADDRESS/metrics (e.g. 127.0.0.1:9090); empty = off",
        metavar="HOST:PORT",
    )
    add(
        "--slow-sql-threshold",
        _DEFAULTS.slow_sql_threshold,
        "log a warning for each datastore call slower than this (e.g. 500ms); 0 = never",
        type=duration,
        metavar="DURATION",
    )
    add("--log-level", "info", "debug, info, warning or error", metavar="LEVEL")
    add("--log-format", "text", "text or json", metavar="FORMAT")
    add_bool("--unsafe-no-fsync", "acknowledge writes before they reach the disk (faster, not durable)")
    add(
        "--max-request-bytes",
        DEFAULT_MAX_REQUEST_BYTES,
        "largest request accepted, in bytes",
        type=int,
        metavar="BYTES",
    )
    add("--max-txn-ops", DEFAULT_MAX_TXN_OPS, "most operations in one txn branch", type=int, metavar="N")
    add(
        "--watch-progress-notify-interval",
        _DEFAULTS.watch_progress_notify_interval,
        "how often idle watchers that asked for progress notifications get one (e.g. 5s, 10m)",
        type=duration,
        metavar="DURATION",
    )
    add(
        "--compact-interval",
        _DEFAULTS.compact_interval,
        "time between automatic compactions (e.g. 5m); 0 = only when a client asks (kube-apiserver does)",
        type=duration,
        metavar="DURATION",
    )
    add(
        "--compact-retention",
        _DEFAULTS.compact_retention,
        "revisions of history automatic compaction keeps",
        type=int,
        metavar="N",
    )
    add(
        "--datastore-max-connections",
        _DEFAULTS.datastore_max_connections,
        "PostgreSQL/MySQL: most connections to the database per process (PostgreSQL: plus one for LISTEN)",
        type=int,
        metavar="N",
    )
    add(
        "--datastore-poll-interval",
        _DEFAULTS.datastore_poll_interval,
        "how often to look for other processes' commits on a shared database (MySQL; "
        "PostgreSQL is told by NOTIFY and polls only as a fallback)",
        type=duration,
        metavar="DURATION",
    )
    add(
        "--datastore-connect-timeout",
        _DEFAULTS.datastore_connect_timeout,
        "PostgreSQL/MySQL: how long to keep retrying an unreachable database at start",
        type=duration,
        metavar="DURATION",
    )
    parser.add_argument("--version", action="version", version=f"kinepy {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    environment = os.environ if env is None else env
    args = build_parser(environment).parse_args(argv)
    return Config(
        listen_address=args.listen_address,
        datastore_endpoint=args.datastore_endpoint,
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        metrics_address=args.metrics_address,
        slow_sql_threshold=duration(args.slow_sql_threshold),
        log_level=args.log_level,
        log_format=args.log_format,
        unsafe_no_fsync=args.unsafe_no_fsync,
        max_request_bytes=int(args.max_request_bytes),
        max_txn_ops=int(args.max_txn_ops),
        compact_interval=duration(args.compact_interval),
        watch_progress_notify_interval=duration(args.watch_progress_notify_interval),
        compact_retention=int(args.compact_retention),
        datastore_max_connections=int(args.datastore_max_connections),
        datastore_poll_interval=duration(args.datastore_poll_interval),
        datastore_connect_timeout=duration(args.datastore_connect_timeout),
    )


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    """One stderr handler on the root logger; `level` applies to the `kinepy.*` loggers.

    Other libraries' loggers stay at WARNING whatever `level` says: at DEBUG, grpc would otherwise
    log a `[_cygrpc] Loaded running loop` line for every call.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    number = logging.getLevelName(level.upper())
    root.setLevel(max(number, logging.WARNING))
    logging.getLogger("kinepy").setLevel(number)


def check_listen_address(listen_address: str) -> None:
    """Raise `OSError` when another process holds the TCP address, before any database is opened.

    grpc binds with SO_REUSEPORT, so without this check a second server on a taken port could start
    and silently share it. Other bind errors are left for grpc to report.
    """
    if listen_address.startswith("unix://"):
        return
    host, sep, port = listen_address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve the listen address {listen_address}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen on {listen_address}: address already in use") from None


def _secrets(endpoint: str) -> list[str]:
    """The passwords written in `endpoint` (as written and percent-decoded), longest first."""
    found: set[str] = set()
    try:
        password = getattr(parse_endpoint(endpoint), "password", None)
    except KinepyError:
        password = None
    if password:
        found.add(password)
    _, sep, rest = endpoint.partition("://")
    _, colon, raw = rest.rpartition("@")[0].partition(":") if sep else ("", "", "")
    if colon and raw:
        found.add(raw)
    found.update(m[1] for m in re.finditer(r"(?i)[?&](?:ssl)?password=([^&]+)", endpoint))
    return sorted(found, key=len, reverse=True)


def _scrub(message: str, endpoint: str) -> str:
    """`message` with every password of `endpoint` shown as `***` (a last line of defence)."""
    for secret in _secrets(endpoint):
        message = message.replace(secret, "***")
    return message


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
    """Run the server until SIGTERM/SIGINT; exit 0 after a clean shutdown, 1 when the server
    cannot start or fails, 2 for bad configuration. Errors are one line on stderr."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("migrate", "backup", "restore"):
        from kinepy.migrate.cli import main as copy_main  # kinepy/migrate/cli.py: the copy subcommands

        return copy_main(args)
    try:
        config = parse_config(argv)
    except (ValueError, KinepyError) as exc:
        print(f"kinepy: {exc}", file=sys.stderr)
        return 2
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR") or config.log_format not in (
        "text",
        "json",
    ):
        print(
            "kinepy: --log-level must be debug|info|warning|error and --log-format text|json", file=sys.stderr
        )
        return 2
    try:
        check_listen_address(config.listen_address)
    except OSError as exc:
        print(f"kinepy: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level, config.log_format)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve(config))
    except ConfigError as exc:
        print(f"kinepy: {_scrub(str(exc), config.datastore_endpoint)}", file=sys.stderr)
        return 2
    except KinepyError as exc:
        print(f"kinepy: {_scrub(str(exc), config.datastore_endpoint)}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"kinepy: cannot start: {_scrub(str(exc), config.datastore_endpoint)}", file=sys.stderr)
        return 1
    return 0
