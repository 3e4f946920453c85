"""`kinepy` command line: flags and environment -> Config; logging; runs the App until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from kinepy import __version__
from kinepy.config import (
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS,
    SQLITE_INTEGRITY_CHECKS,
    Config,
)
from kinepy.errors import ConfigError, KinepyError
from kinepy.runtime import event_loop_runner, exit_code, notify_systemd, setup_logging
from kinepy.workers.count import worker_count

log = logging.getLogger("kinepy")

ENV_PREFIX = "KINEPY_"
_DEFAULTS = Config()
_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("", "0", "f", "false", "no", "off")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str | float) -> float:
    """Seconds from a Go-style duration (`5s`, `100ms`, `1m30s`, `-1s`, as kine and etcd flags take
    them) or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    raw = text.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    sign, body = (-1.0, raw[1:]) if raw.startswith("-") else (1.0, raw.removeprefix("+"))
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 5s, 100ms, 1m30s or seconds")
    return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def boolean(text: str | bool) -> bool:
    """`true`/`false` as kine's (Go's) boolean flags and variables take them, and `yes`/`no`/`on`/`off`."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


# kine flags kinepy refuses: each is a feature of a kine driver kinepy does not have. Only the flag
# (and kine's own KINE_* variable) is refused; the AWS_* variables kine also reads are left alone.
REFUSED: dict[str, str | None] = {
    "--peer-bind-address": "KINE_PEER_BIND_ADDRESS",
    "--peer-advertise-address": "KINE_PEER_ADVERTISE_ADDRESS",
    "--s3-bucket": None,
    "--s3-folder": None,
    "--s3-endpoint": None,
    "--s3-region": None,
    "--s3-access-key": None,
    "--s3-secret-key": None,
    "--s3-session-token": None,
    "--s3-profile": None,
    "--s3-ca-bundle": None,
}
_REFUSED_WHY = (
    "is for kine's t4 driver (peer WAL streaming, S3), which kinepy does not have; remove it and use "
    "--datastore-endpoint with sqlite://, postgres://, mysql:// or an etcd URL"
)
_PROFILING_WHY = (
    "--metrics-enable-profiling serves Go's net/http/pprof, which a Python process does not have; "
    "remove it (profile kinepy with py-spy: py-spy top --pid PID)"
)

# kine flags kinepy accepts but that change nothing here; a value other than kine's default is
# reported once at start (WARNING) with the reason.
NO_EFFECT = {
    "--datastore-max-idle-connections": (
        20,
        "the pool keeps at most --datastore-max-connections connections and closes idle ones after "
        "--datastore-connection-max-idle-time",
    ),
    "--datastore-connection-max-lifetime": (
        0.0,
        "asyncpg and aiomysql retire connections by idle time only (--datastore-connection-max-idle-time)",
    ),
    "--compact-timeout": (
        5.0,
        "kinepy compacts in windows of --compact-batch-size rows, each its own short transaction",
    ),
    "--poll-batch-size": (
        500,
        "kinepy reads other processes' commits from its own change log, whole revisions at a time",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one line on stderr (exit 2), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kinepy: {message} (see kinepy --help)\n")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kinepy",
        description="Serve the etcd v3 API (KV, Watch, Lease, Maintenance, Cluster) from a SQL database.",
        epilog="Every flag can also be set by the environment variables shown in brackets, the first "
        "one set winning; kine's flags and KINE_* variables are accepted with kine's meaning "
        "(docs/configuration.md has the table). Other commands: `kinepy migrate --from URL --to URL` "
        "copies a whole store, `kinepy backup FILE` and `kinepy restore FILE` (each has --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def env_default(names: Sequence[str], default: Any) -> Any:
        for name in names:
            if name in env:
                return env[name]
        return default

    def add(
        flags: str | tuple[str, ...],
        default: Any,
        help: str,
        *,
        env_names: tuple[str, ...] = (),
        kind: Callable[[str], Any] = str,
        metavar: str | None = None,
        dest: str | None = None,
    ) -> None:
        names = (flags,) if isinstance(flags, str) else flags
        variables = (_env_name(names[0]), *env_names)
        value = env_default(variables, default)
        extra: dict[str, Any] = {"dest": dest} if dest else {}
        if kind is boolean:
            extra.update(nargs="?", const=True)
        parser.add_argument(
            *names,
            default=value,
            type=kind,
            metavar=metavar or ("BOOL" if kind is boolean else None),
            help=f"{help} [{', '.join(variables)}]",
            **extra,
        )

    add(
        "--listen-address",
        DEFAULT_LISTEN_ADDRESS,
        "address to serve on: HOST:PORT, :PORT (every interface), [IPv6]:PORT or unix://PATH",
        env_names=("KINE_LISTEN_ADDRESS",),
        metavar="ADDRESS",
    )
    add(
        ("--datastore-endpoint", "--endpoint"),
        "",
        "database to use: empty (SQLite at ./db/state.db), sqlite://PATH, postgres://…, "
        "mysql://…, or http(s)://… / unix(s)://… for a real etcd",
        env_names=("KINE_ENDPOINT", "K3S_DATASTORE_ENDPOINT"),
        metavar="URL",
    )
    add(
        ("--datastore-ca-file", "--ca-file"),
        "",
        "CA bundle (PEM) the database's or etcd's certificate must chain to; turns TLS on",
        env_names=("KINE_CA_FILE", "K3S_DATASTORE_CAFILE"),
        metavar="PATH",
    )
    add(
        ("--datastore-cert-file", "--cert-file"),
        "",
        "client certificate (PEM) kinepy presents to the database or etcd; turns TLS on",
        env_names=("KINE_CERT_FILE", "K3S_DATASTORE_CERTFILE"),
        metavar="PATH",
    )
    add(
        ("--datastore-key-file", "--key-file"),
        "",
        "private key (PEM) of --datastore-cert-file",
        env_names=("KINE_KEY_FILE", "K3S_DATASTORE_KEYFILE"),
        metavar="PATH",
    )
    add(
        ("--datastore-skip-verify", "--skip-verify"),
        False,
        "PostgreSQL/MySQL: use TLS without verifying the database's certificate",
        env_names=("KINE_SKIP_VERIFY",),
        kind=boolean,
    )
    add(
        "--server-cert-file",
        "",
        "TLS certificate (PEM) for the listener; clients then must use TLS",
        env_names=("KINE_SERVER_CERT_FILE",),
        metavar="PATH",
    )
    add(
        "--server-key-file",
        "",
        "TLS private key (PEM) for the listener",
        env_names=("KINE_SERVER_KEY_FILE",),
        metavar="PATH",
    )
    add(
        "--trusted-ca-file",
        "",
        "CA bundle (PEM) client certificates must chain to; turns client-certificate auth on",
        env_names=("KINE_TRUSTED_CA_FILE",),
        metavar="PATH",
    )
    add(
        "--client-cert-auth",
        False,
        "etcd's name: require client certificates (they always are with --trusted-ca-file, which this needs)",
        kind=boolean,
    )
    add(
        ("--metrics-address", "--metrics-bind-address"),
        "",
        "serve Prometheus metrics on ADDRESS/metrics, and etcd's /health, /livez and /readyz: "
        ":9090 and 127.0.0.1:9090 = loopback only, "
        "0.0.0.0:9090 or [::]:9090 = every interface; empty or 0 = off",
        env_names=("KINE_METRICS_BIND_ADDRESS",),
        metavar="HOST:PORT",
    )
    add(
        "--metrics-ignore-tls-config",
        False,
        "serve metrics over plain HTTP even when the listener has TLS (by default they use its certificate)",
        env_names=("KINE_METRICS_IGNORE_TLS_CONFIG",),
        kind=boolean,
    )
    add(
        "--metrics-cert-file",
        "",
        "TLS certificate (PEM) for the metrics listener instead of the listener's; HTTPS on",
        metavar="PATH",
    )
    add("--metrics-key-file", "", "TLS private key (PEM) of --metrics-cert-file", metavar="PATH")
    add(
        "--metrics-trusted-ca-file",
        "",
        "CA bundle (PEM) scrapers' client certificates must chain to; client-certificate auth on for metrics",
        metavar="PATH",
    )
    add(
        "--metrics-enable-profiling",
        False,
        "kine's Go profiler: refused when true",
        env_names=("KINE_METRICS_ENABLE_PROFILING",),
        kind=boolean,
    )
    add(
        "--slow-sql-threshold",
        _DEFAULTS.slow_sql_threshold,
        "log each datastore call slower than this at INFO (e.g. 500ms); 0 = never",
        env_names=("KINE_SLOW_SQL_THRESHOLD",),
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--slow-sql-warning-threshold",
        _DEFAULTS.slow_sql_warning_threshold,
        "log each datastore call slower than this at WARNING; 0 = never",
        env_names=("KINE_SLOW_SQL_WARNING_THRESHOLD",),
        kind=duration,
        metavar="DURATION",
    )
    add("--log-level", "info", "debug, info, warning or error", metavar="LEVEL")
    add(
        "--log-format",
        "text",
        "text (kine: plain) or json",
        env_names=("KINE_LOG_FORMAT",),
        metavar="FORMAT",
    )
    add("--debug", False, "the same as --log-level debug", env_names=("KINE_DEBUG",), kind=boolean)
    add(
        "--unsafe-no-fsync",
        False,
        "acknowledge writes before they reach the disk (faster, not durable)",
        kind=boolean,
    )
    add(
        "--sqlite-integrity-check",
        _DEFAULTS.sqlite_integrity_check,
        "check the SQLite file at start: quick (quick_check, at most 10 s), full (integrity_check) or off",
        kind=_integrity_check,
        metavar="MODE",
    )
    add(
        "--max-request-bytes",
        DEFAULT_MAX_REQUEST_BYTES,
        "largest request accepted, in bytes",
        kind=int,
        metavar="BYTES",
    )
    add("--max-txn-ops", DEFAULT_MAX_TXN_OPS, "most operations in one txn branch", kind=int, metavar="N")
    add(
        "--watch-progress-notify-interval",
        _DEFAULTS.watch_progress_notify_interval,
        "how often idle watchers that asked for progress notifications get one (e.g. 5s, 10m)",
        env_names=("KINE_WATCH_PROGRESS_NOTIFY_INTERVAL",),
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--watch-window-bytes",
        _DEFAULTS.watch_window_bytes,
        "most bytes of recent events kept in memory for watchers that start behind or fall behind "
        "(older ones are read from the database)",
        kind=int,
        metavar="BYTES",
    )
    add(
        "--emulated-etcd-version",
        _DEFAULTS.emulated_etcd_version,
        "the etcd version Status reports (kube-apiserver asks for watch progress from 3.5.13 on)",
        env_names=("KINE_EMULATED_ETCD_VERSION",),
        metavar="VERSION",
    )
    add(
        "--compact-interval",
        _DEFAULTS.compact_interval,
        "time between automatic compactions (e.g. 5m); 0 = only when a client asks (kube-apiserver does)",
        env_names=("KINE_COMPACT_INTERVAL",),
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--compact-interval-jitter",
        _DEFAULTS.compact_interval_jitter,
        "percent (0-99) by which each compaction interval varies at random",
        env_names=("KINE_COMPACT_INTERVAL_JITTER",),
        kind=int,
        metavar="PERCENT",
    )
    add(
        ("--compact-retention", "--compact-min-retain"),
        _DEFAULTS.compact_retention,
        "revisions of history automatic compaction keeps",
        env_names=("KINE_COMPACT_MIN_RETAIN",),
        kind=int,
        metavar="N",
    )
    add(
        "--compact-batch-size",
        _DEFAULTS.compact_batch_rows,
        "history rows one compaction transaction works through (whole revisions)",
        env_names=("KINE_COMPACT_BATCH_SIZE",),
        kind=int,
        metavar="N",
    )
    add(
        ("--datastore-max-connections", "--datastore-max-open-connections"),
        _DEFAULTS.datastore_max_connections,
        "PostgreSQL/MySQL: most connections to the database per process (PostgreSQL: plus one for "
        f"LISTEN); 0 or less = {_DEFAULTS.datastore_max_connections}",
        env_names=("KINE_DATASTORE_MAX_OPEN_CONNECTIONS",),
        kind=int,
        metavar="N",
    )
    add(
        "--datastore-connection-max-idle-time",
        _DEFAULTS.datastore_max_idle_time,
        "PostgreSQL/MySQL: close a connection idle in the pool this long; 0 or less = never",
        env_names=("KINE_DATASTORE_CONNECTION_MAX_IDLE_TIME",),
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--datastore-poll-interval",
        _DEFAULTS.datastore_poll_interval,
        "how often to look for other processes' commits on a shared database (MySQL; "
        "PostgreSQL is told by NOTIFY and polls only as a fallback)",
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--datastore-connect-timeout",
        _DEFAULTS.datastore_connect_timeout,
        "PostgreSQL/MySQL: how long to keep retrying an unreachable database at start",
        kind=duration,
        metavar="DURATION",
    )
    add(
        "--workers",
        "auto",
        "serving processes behind the listen address, each with its own event loop (TCP only); "
        "auto = one per two CPUs on TCP, 1 on a Unix socket or an in-memory database",
        metavar="N",
    )
    parser.add_argument(
        "--worker-socket-dir",
        default=env.get(_env_name("--worker-socket-dir"), ""),
        help=argparse.SUPPRESS,  # each worker also on DIR/worker-N.sock: tests, per-worker health checks
    )
    for flag, (default, why) in NO_EFFECT.items():
        add(
            flag,
            default,
            f"kine's; accepted, no effect: {why}",
            env_names=("KINE_" + flag[2:].replace("-", "_").upper(),),
            kind=duration if isinstance(default, float) else int,
            metavar="DURATION" if isinstance(default, float) else "N",
        )
    for flag, variable in REFUSED.items():
        parser.add_argument(flag, default=env.get(variable, "") if variable else "", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"kinepy {__version__}")
    return parser


def _refusal(args: argparse.Namespace) -> str | None:
    """The one line refusing a kine flag kinepy cannot honour, if one was given."""
    for flag in REFUSED:
        if getattr(args, flag[2:].replace("-", "_")):
            return f"{flag} {_REFUSED_WHY}"
    if args.metrics_enable_profiling:
        return _PROFILING_WHY
    if args.client_cert_auth and not args.trusted_ca_file:
        return "--client-cert-auth needs --trusted-ca-file, the CA client certificates must chain to"
    return None


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """A `Config` from flags and environment; raises `ConfigError` for a refused kine flag and
    `ValueError` for values `Config` rejects; exits 2 (one line) for a malformed flag or value."""
    return parse(argv, env)[0]


def parse(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """`parse_config`, plus one line for each accepted kine flag that has no effect in kinepy but
    was set to something other than kine's default."""
    environment = os.environ if env is None else env
    args = build_parser(environment).parse_args(argv)
    refusal = _refusal(args)
    if refusal is not None:
        raise ConfigError(refusal)
    ignored = [
        f"{flag} has no effect in kinepy: {why}"
        for flag, (default, why) in NO_EFFECT.items()
        if getattr(args, flag[2:].replace("-", "_")) != default
    ]
    metrics_address = "" if args.metrics_address.strip() == "0" else args.metrics_address
    log_format = "text" if args.log_format == "plain" else args.log_format
    max_connections = int(args.datastore_max_connections)
    config = Config(
        listen_address=args.listen_address,
        datastore_endpoint=args.datastore_endpoint,
        datastore_ca_file=args.datastore_ca_file,
        datastore_cert_file=args.datastore_cert_file,
        datastore_key_file=args.datastore_key_file,
        datastore_skip_verify=boolean(args.datastore_skip_verify),
        server_cert_file=args.server_cert_file,
        server_key_file=args.server_key_file,
        trusted_ca_file=args.trusted_ca_file,
        metrics_address=metrics_address,
        metrics_ignore_tls_config=boolean(args.metrics_ignore_tls_config),
        metrics_cert_file=args.metrics_cert_file,
        metrics_key_file=args.metrics_key_file,
        metrics_trusted_ca_file=args.metrics_trusted_ca_file,
        slow_sql_threshold=max(0.0, duration(args.slow_sql_threshold)),
        slow_sql_warning_threshold=max(0.0, duration(args.slow_sql_warning_threshold)),
        log_level="debug" if boolean(args.debug) else args.log_level,
        log_format=log_format,
        unsafe_no_fsync=boolean(args.unsafe_no_fsync),
        sqlite_integrity_check=args.sqlite_integrity_check,
        max_request_bytes=int(args.max_request_bytes),
        max_txn_ops=int(args.max_txn_ops),
        emulated_etcd_version=args.emulated_etcd_version,
        compact_interval=duration(args.compact_interval),
        compact_interval_jitter=int(args.compact_interval_jitter),
        watch_progress_notify_interval=duration(args.watch_progress_notify_interval),
        watch_window_bytes=int(args.watch_window_bytes),
        compact_retention=int(args.compact_retention),
        compact_batch_rows=int(args.compact_batch_size),
        datastore_max_connections=max_connections
        if max_connections > 0
        else _DEFAULTS.datastore_max_connections,
        datastore_max_idle_time=max(0.0, duration(args.datastore_connection_max_idle_time)),
        datastore_poll_interval=duration(args.datastore_poll_interval),
        datastore_connect_timeout=duration(args.datastore_connect_timeout),
        workers=worker_count(args.workers, args.listen_address, args.datastore_endpoint),
        worker_socket_dir=args.worker_socket_dir,
    )
    return config, ignored


def _integrity_check(value: str) -> str:
    if value not in SQLITE_INTEGRITY_CHECKS:
        choices = ", ".join(SQLITE_INTEGRITY_CHECKS)
        raise ValueError(f"--sqlite-integrity-check must be one of {choices}, not {value!r}")
    return value


async def serve(config: Config) -> None:
    from kinepy.app import App  # here, not at the top: grpc must load after GRPC_VERBOSITY is set

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
        config, ignored = parse(argv)
    except (ValueError, KinepyError) as exc:
        print(f"kinepy: {exc}", file=sys.stderr)
        return 2
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR") or config.log_format not in (
        "text",
        "json",
    ):
        print(
            "kinepy: --log-level must be debug|info|warning|error and --log-format text|plain|json",
            file=sys.stderr,
        )
        return 2
    if config.log_level.upper() != "DEBUG":
        # grpc-core prints its own log lines (C++, straight to stderr) unless told before it loads;
        # kinepy reports what matters itself, in one line. `--log-level debug` keeps grpc's errors.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    setup_logging(config.log_level, config.log_format)
    for line in ignored:
        log.warning("%s", line)
    if config.workers > 1:
        from kinepy.workers.supervisor import Supervisor

        return exit_code(Supervisor(config).run, config.datastore_endpoint)

    def run() -> None:
        with event_loop_runner() as runner:
            runner.run(serve(config))

    return exit_code(run, config.datastore_endpoint)
