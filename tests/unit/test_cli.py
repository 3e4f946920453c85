"""The `kinepy` command in-process: flags and environment -> Config, kine's flags and variables,
logging levels, passwords in messages. The tests that run `python -m kinepy` as a process are in
tests/integration/test_cli_process.py."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinepy import __version__
from kinepy.cli import build_parser, main, parse, parse_config
from kinepy.config import Config
from kinepy.errors import ConfigError
from kinepy.runtime import scrub, setup_logging
from kinepy.workers.count import auto_workers

AUTO_WORKERS = auto_workers(os.cpu_count() or 1)


def cli_config(**fields: object) -> Config:
    """`Config(**fields)` with the CLI's default of `--workers auto` (the library's is 1)."""
    return Config(**{"workers": AUTO_WORKERS, **fields})  # type: ignore[arg-type]


ALL_FLAGS = [
    "--listen-address",
    "127.0.0.1:12379",
    "--datastore-endpoint",
    "sqlite:///tmp/flags.db",
    "--log-level",
    "debug",
    "--log-format",
    "json",
    "--unsafe-no-fsync",
    "--max-request-bytes",
    "4096",
    "--max-txn-ops",
    "16",
]
ALL_FLAGS_CONFIG = cli_config(
    listen_address="127.0.0.1:12379",
    datastore_endpoint="sqlite:///tmp/flags.db",
    log_level="debug",
    log_format="json",
    unsafe_no_fsync=True,
    max_request_bytes=4096,
    max_txn_ops=16,
)
ALL_ENV = {
    "KINEPY_LISTEN_ADDRESS": "127.0.0.1:22379",
    "KINEPY_DATASTORE_ENDPOINT": "sqlite:///tmp/env.db",
    "KINEPY_LOG_LEVEL": "warning",
    "KINEPY_LOG_FORMAT": "json",
    "KINEPY_UNSAFE_NO_FSYNC": "true",
    "KINEPY_MAX_REQUEST_BYTES": "8192",
    "KINEPY_MAX_TXN_OPS": "32",
}

# Every flag of kine v0.16.4 (pkg/app/app.go), its environment variable(s) and a value kine accepts.
KINE_FLAGS: list[tuple[str, tuple[str, ...], str]] = [
    ("--listen-address", ("KINE_LISTEN_ADDRESS",), "127.0.0.1:23790"),
    ("--endpoint", ("KINE_ENDPOINT",), "sqlite:///tmp/kine.db"),
    ("--ca-file", ("KINE_CA_FILE",), "/etc/db/ca.pem"),
    ("--cert-file", ("KINE_CERT_FILE",), "/etc/db/client.pem"),
    ("--key-file", ("KINE_KEY_FILE",), "/etc/db/client-key.pem"),
    ("--skip-verify", ("KINE_SKIP_VERIFY",), "true"),
    ("--log-format", ("KINE_LOG_FORMAT",), "json"),
    ("--metrics-bind-address", ("KINE_METRICS_BIND_ADDRESS",), ":8080"),
    ("--server-cert-file", ("KINE_SERVER_CERT_FILE",), "/etc/kine/server.pem"),
    ("--server-key-file", ("KINE_SERVER_KEY_FILE",), "/etc/kine/server-key.pem"),
    ("--trusted-ca-file", ("KINE_TRUSTED_CA_FILE",), "/etc/kine/ca.pem"),
    ("--datastore-max-idle-connections", ("KINE_DATASTORE_MAX_IDLE_CONNECTIONS",), "5"),
    ("--datastore-max-open-connections", ("KINE_DATASTORE_MAX_OPEN_CONNECTIONS",), "7"),
    ("--datastore-connection-max-lifetime", ("KINE_DATASTORE_CONNECTION_MAX_LIFETIME",), "1h"),
    ("--datastore-connection-max-idle-time", ("KINE_DATASTORE_CONNECTION_MAX_IDLE_TIME",), "30s"),
    ("--slow-sql-threshold", ("KINE_SLOW_SQL_THRESHOLD",), "2s"),
    ("--slow-sql-warning-threshold", ("KINE_SLOW_SQL_WARNING_THRESHOLD",), "10s"),
    ("--metrics-enable-profiling", ("KINE_METRICS_ENABLE_PROFILING",), "true"),
    ("--metrics-ignore-tls-config", ("KINE_METRICS_IGNORE_TLS_CONFIG",), "true"),
    ("--watch-progress-notify-interval", ("KINE_WATCH_PROGRESS_NOTIFY_INTERVAL",), "7s"),
    ("--emulated-etcd-version", ("KINE_EMULATED_ETCD_VERSION",), "3.5.13"),
    ("--compact-interval", ("KINE_COMPACT_INTERVAL",), "5m"),
    ("--compact-interval-jitter", ("KINE_COMPACT_INTERVAL_JITTER",), "25"),
    ("--compact-timeout", ("KINE_COMPACT_TIMEOUT",), "10s"),
    ("--compact-min-retain", ("KINE_COMPACT_MIN_RETAIN",), "500"),
    ("--compact-batch-size", ("KINE_COMPACT_BATCH_SIZE",), "200"),
    ("--poll-batch-size", ("KINE_POLL_BATCH_SIZE",), "100"),
    ("--peer-bind-address", ("KINE_PEER_BIND_ADDRESS",), "0.0.0.0:3380"),
    ("--peer-advertise-address", ("KINE_PEER_ADVERTISE_ADDRESS",), "10.0.0.1:3380"),
    ("--s3-bucket", (), "bucket"),
    ("--s3-folder", (), "folder"),
    ("--s3-endpoint", (), "https://minio:9000"),
    ("--s3-region", (), "us-east-1"),
    ("--s3-access-key", (), "AKIA"),
    ("--s3-secret-key", (), "secret"),
    ("--s3-session-token", (), "token"),
    ("--s3-profile", (), "default"),
    ("--s3-ca-bundle", (), "/etc/ca.pem"),
    ("--debug", ("KINE_DEBUG",), "true"),
]
# What each accepted kine flag sets in Config (flag value as in KINE_FLAGS).
KINE_MEANINGS: dict[str, dict[str, object]] = {
    "--listen-address": {"listen_address": "127.0.0.1:23790"},
    "--endpoint": {"datastore_endpoint": "sqlite:///tmp/kine.db"},
    "--ca-file": {"datastore_ca_file": "/etc/db/ca.pem"},
    "--skip-verify": {"datastore_skip_verify": True},
    "--log-format": {"log_format": "json"},
    "--metrics-bind-address": {"metrics_address": ":8080"},
    "--datastore-max-idle-connections": {},
    "--datastore-max-open-connections": {"datastore_max_connections": 7},
    "--datastore-connection-max-lifetime": {},
    "--datastore-connection-max-idle-time": {"datastore_max_idle_time": 30.0},
    "--slow-sql-threshold": {"slow_sql_threshold": 2.0},
    "--slow-sql-warning-threshold": {"slow_sql_warning_threshold": 10.0},
    "--metrics-ignore-tls-config": {"metrics_ignore_tls_config": True},
    "--watch-progress-notify-interval": {"watch_progress_notify_interval": 7.0},
    "--emulated-etcd-version": {"emulated_etcd_version": "3.5.13"},
    "--compact-interval": {"compact_interval": 300.0},
    "--compact-interval-jitter": {"compact_interval_jitter": 25},
    "--compact-timeout": {},
    "--compact-min-retain": {"compact_retention": 500},
    "--compact-batch-size": {"compact_batch_rows": 200},
    "--poll-batch-size": {},
    "--debug": {"log_level": "debug"},
}
REFUSED = {
    "--metrics-enable-profiling",
    "--peer-bind-address",
    "--peer-advertise-address",
    *(flag for flag, _, _ in KINE_FLAGS if flag.startswith("--s3-")),
}
# Flags that only make sense in pairs: (flag, value) -> the other flags it needs.
_PARTNERS = {
    "--cert-file": ["--key-file", "/etc/db/client-key.pem"],
    "--key-file": ["--cert-file", "/etc/db/client.pem"],
    "--server-cert-file": ["--server-key-file", "/etc/kine/server-key.pem"],
    "--server-key-file": ["--server-cert-file", "/etc/kine/server.pem"],
    "--trusted-ca-file": ["--server-cert-file", "/etc/kine/server.pem", "--server-key-file", "/k.pem"],
}


def _changed(config: Config) -> dict[str, object]:
    """The fields of `config` that differ from the defaults."""
    defaults = cli_config()
    return {
        f: getattr(config, f)
        for f in config.__dataclass_fields__
        if getattr(config, f) != getattr(defaults, f)
    }


# -- flags and environment -------------------------------------------------------------------


def test_no_flags_no_environment_is_the_config_defaults() -> None:
    # but `--workers auto`: the library's default is its own process
    assert parse_config([], {}) == cli_config()


def test_workers_auto_is_one_per_two_cpus_on_tcp_and_one_where_processes_cannot_share() -> None:
    assert [auto_workers(cpus) for cpus in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 32]
    assert parse_config(["--workers", "auto"], {}).workers == AUTO_WORKERS
    assert parse_config([], {"KINEPY_WORKERS": "3"}).workers == 3
    assert parse_config(["--listen-address", "unix:///tmp/k.sock"], {}).workers == 1
    assert parse_config(["--datastore-endpoint", "sqlite://:memory:"], {}).workers == 1
    assert parse_config(["--workers", "1", "--listen-address", "unix:///tmp/k.sock"], {}).workers == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "1 or more"),
        (["--workers", "many"], "1 or more"),
        (["--workers", "2", "--listen-address", "unix:///tmp/k.sock"], "a Unix socket cannot be shared"),
        (["--workers", "2", "--datastore-endpoint", "sqlite://:memory:"], "an in-memory SQLite database"),
    ],
)
def test_workers_refused_where_they_cannot_serve(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {})


def test_config_from_flags() -> None:
    assert parse_config(ALL_FLAGS, {}) == ALL_FLAGS_CONFIG


def test_config_from_kinepy_environment() -> None:
    assert parse_config([], ALL_ENV) == cli_config(
        listen_address="127.0.0.1:22379",
        datastore_endpoint="sqlite:///tmp/env.db",
        log_level="warning",
        log_format="json",
        unsafe_no_fsync=True,
        max_request_bytes=8192,
        max_txn_ops=32,
    )


def test_flags_win_over_environment() -> None:
    env = {**ALL_ENV, "KINEPY_UNSAFE_NO_FSYNC": "false", "K3S_DATASTORE_ENDPOINT": "sqlite:///tmp/k3s.db"}
    assert parse_config(ALL_FLAGS, env) == ALL_FLAGS_CONFIG


def test_k3s_datastore_endpoint_is_the_fallback() -> None:
    config = parse_config([], {"K3S_DATASTORE_ENDPOINT": "sqlite:///tmp/k3s.db"})
    assert config.datastore_endpoint == "sqlite:///tmp/k3s.db"


def test_environment_precedence_kinepy_then_kine_then_k3s() -> None:
    k3s = {"K3S_DATASTORE_ENDPOINT": "sqlite:///tmp/k3s.db"}
    kine = {**k3s, "KINE_ENDPOINT": "sqlite:///tmp/kine.db"}
    own = {**kine, "KINEPY_DATASTORE_ENDPOINT": "sqlite:///tmp/own.db"}
    assert parse_config([], kine).datastore_endpoint == "sqlite:///tmp/kine.db"
    assert parse_config([], own).datastore_endpoint == "sqlite:///tmp/own.db"
    assert (
        parse_config(["--endpoint", "sqlite:///tmp/flag.db"], own).datastore_endpoint
        == "sqlite:///tmp/flag.db"
    )


def test_k3s_datastore_tls_variables_are_the_database_tls_files() -> None:
    env = {
        "K3S_DATASTORE_CAFILE": "/k3s/ca.pem",
        "K3S_DATASTORE_CERTFILE": "/k3s/client.pem",
        "K3S_DATASTORE_KEYFILE": "/k3s/client-key.pem",
    }
    config = parse_config([], env)
    assert (config.datastore_ca_file, config.datastore_cert_file, config.datastore_key_file) == (
        "/k3s/ca.pem",
        "/k3s/client.pem",
        "/k3s/client-key.pem",
    )
    assert config.server_cert_file == ""


def test_k3s_variable_sets_only_the_datastore_settings() -> None:
    assert parse_config([], {"K3S_LISTEN_ADDRESS": "0.0.0.0:1"}).listen_address == Config().listen_address


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "on", "t"])
def test_boolean_environment_true(value: str) -> None:
    assert parse_config([], {"KINEPY_UNSAFE_NO_FSYNC": value}).unsafe_no_fsync is True


@pytest.mark.parametrize("value", ["false", "0", "", "no", "off", "f"])
def test_boolean_environment_false(value: str) -> None:
    assert parse_config([], {"KINEPY_UNSAFE_NO_FSYNC": value}).unsafe_no_fsync is False


@pytest.mark.parametrize("args", [["--debug"], ["--debug=true"], ["--debug", "--debug=false", "--debug"]])
def test_boolean_flags_take_go_style_values(args: list[str]) -> None:
    assert parse_config(args, {}).log_level == "debug"
    assert parse_config(["--debug=false"], {}).log_level == "info"


def test_numbers_from_environment_are_validated() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config([], {"KINEPY_MAX_TXN_OPS": "lots"})
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--max-txn-ops", "lots"], {}),
        ([], {"KINEPY_MAX_TXN_OPS": "lots"}),
        (["--compact-interval", "soon"], {}),
        ([], {"KINE_DEBUG": "perhaps"}),
        (["--no-such-flag"], {}),
        (["positional"], {}),
    ],
)
def test_a_bad_flag_or_number_is_one_line_on_stderr(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/configuration.md: "stop kinepy at once with one line on stderr and exit code 2"
    with pytest.raises(SystemExit) as exc:
        parse_config(args, env)
    assert exc.value.code == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and stderr.startswith("kinepy: "), stderr


# -- kine's command line ----------------------------------------------------------------------


def test_every_kine_flag_is_known() -> None:
    known = {name for action in build_parser({})._actions for name in action.option_strings}
    assert {flag for flag, _, _ in KINE_FLAGS} <= known
    assert set(KINE_MEANINGS) | REFUSED | set(_PARTNERS) | {"--cert-file", "--key-file"} >= {
        flag for flag, _, _ in KINE_FLAGS
    }


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, _, v in KINE_FLAGS if f in KINE_MEANINGS])
def test_kine_flag_has_kines_meaning(flag: str, value: str) -> None:
    assert _changed(parse_config([flag, value], {})) == KINE_MEANINGS[flag]


@pytest.mark.parametrize(
    ("flag", "variable", "value"), [(f, e[0], v) for f, e, v in KINE_FLAGS if f in KINE_MEANINGS and e]
)
def test_kine_environment_variable_has_the_flags_meaning(flag: str, variable: str, value: str) -> None:
    assert _changed(parse_config([], {variable: value})) == KINE_MEANINGS[flag]


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, _, v in KINE_FLAGS if f in REFUSED])
def test_kine_flag_kinepy_cannot_honour_is_refused_with_one_line(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag, value]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"kinepy: {flag} "), stderr
    assert "kinepy does not have" in stderr or "Python" in stderr


def test_aws_variables_are_not_read_as_refused_s3_flags() -> None:
    env = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "x", "AWS_PROFILE": "default"}
    assert parse_config([], env) == cli_config()


def test_refused_bool_flag_set_false_is_accepted() -> None:
    assert (
        parse_config(["--metrics-enable-profiling=false"], {"KINE_METRICS_ENABLE_PROFILING": "0"})
        == cli_config()
    )


def test_cert_and_key_file_are_the_database_client_tls_files() -> None:
    config = parse_config(
        ["--cert-file", "/db/c.pem", "--key-file", "/db/k.pem", "--ca-file", "/db/ca.pem"], {}
    )
    assert _changed(config) == {
        "datastore_cert_file": "/db/c.pem",
        "datastore_key_file": "/db/k.pem",
        "datastore_ca_file": "/db/ca.pem",
    }


def test_listener_tls_takes_kines_server_flags() -> None:
    config = parse_config(
        ["--server-cert-file", "/s.pem", "--server-key-file", "/s-key.pem", "--trusted-ca-file", "/ca.pem"],
        {},
    )
    assert _changed(config) == {
        "server_cert_file": "/s.pem",
        "server_key_file": "/s-key.pem",
        "trusted_ca_file": "/ca.pem",
    }


def test_client_cert_auth_is_etcds_name_and_needs_a_trusted_ca(capsys: pytest.CaptureFixture[str]) -> None:
    tls = ["--server-cert-file", "/s.pem", "--server-key-file", "/k.pem"]
    assert parse_config([*tls, "--trusted-ca-file", "/ca.pem", "--client-cert-auth"], {}).trusted_ca_file
    assert main([*tls, "--client-cert-auth"]) == 2
    assert capsys.readouterr().err == (
        "kinepy: --client-cert-auth needs --trusted-ca-file, the CA client certificates must chain to\n"
    )


def test_kines_plain_log_format_is_text() -> None:
    assert parse_config(["--log-format", "json"], {"KINE_LOG_FORMAT": "plain"}).log_format == "json"
    assert parse_config([], {"KINEPY_LOG_FORMAT": "json", "KINE_LOG_FORMAT": "plain"}).log_format == "json"
    assert parse_config(["--log-format", "plain"], {"KINEPY_LOG_FORMAT": "json"}).log_format == "text"


@pytest.mark.parametrize("value", ["0", ""])
def test_metrics_address_zero_or_empty_is_off(value: str) -> None:
    assert parse_config(["--metrics-bind-address", value], {}).metrics_address == ""


def test_metrics_tls_files_from_flags_and_environment() -> None:
    config = parse_config(
        ["--metrics-cert-file", "m.pem", "--metrics-key-file", "m-key.pem"],
        {"KINEPY_METRICS_TRUSTED_CA_FILE": "ca.pem"},
    )
    assert (config.metrics_cert_file, config.metrics_key_file, config.metrics_trusted_ca_file) == (
        "m.pem",
        "m-key.pem",
        "ca.pem",
    )
    with pytest.raises(ValueError, match="go together"):
        parse_config(["--metrics-cert-file", "m.pem"], {})
    with pytest.raises(ValueError, match="needs metrics_cert_file"):
        parse_config(["--metrics-trusted-ca-file", "ca.pem"], {})


@pytest.mark.parametrize("value", ["0", "-1"])
def test_unlimited_open_connections_is_kinepys_bounded_default(value: str) -> None:
    config = parse_config(["--datastore-max-open-connections", value], {})
    assert config.datastore_max_connections == Config().datastore_max_connections


def test_flags_without_effect_are_reported_when_set() -> None:
    _, ignored = parse(["--compact-timeout", "10s", "--poll-batch-size", "500"], {})
    assert len(ignored) == 1 and ignored[0].startswith("--compact-timeout has no effect in kinepy: ")
    assert parse([], {})[1] == []


def test_the_whole_k3s_style_command_line_parses() -> None:
    args = [
        "--listen-address=unix:///run/kine.sock",
        "--endpoint=postgres://kine:pw@db:5432/kine",
        "--ca-file=/db/ca.pem",
        "--cert-file=/db/client.pem",
        "--key-file=/db/client-key.pem",
        "--server-cert-file=/tls/server.pem",
        "--server-key-file=/tls/server-key.pem",
        "--trusted-ca-file=/tls/ca.pem",
        "--metrics-bind-address=0",
        "--log-format=plain",
        "--watch-progress-notify-interval=5s",
        "--emulated-etcd-version=3.5.13",
        "--compact-interval=5m",
        "--compact-timeout=5s",
        "--compact-min-retain=1000",
        "--compact-batch-size=1000",
        "--poll-batch-size=500",
        "--datastore-max-idle-connections=20",
        "--datastore-max-open-connections=0",
        "--datastore-connection-max-lifetime=0s",
        "--datastore-connection-max-idle-time=2m0s",
        "--slow-sql-threshold=1s",
        "--slow-sql-warning-threshold=5s",
    ]
    config, ignored = parse(args, {})
    assert ignored == []
    assert config.datastore_endpoint == "postgres://kine:pw@db:5432/kine"
    assert (config.datastore_ca_file, config.server_cert_file) == ("/db/ca.pem", "/tls/server.pem")


# -- version -----------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"kinepy {__version__}\n"


# -- logging ---------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("kinepy")
    saved = root.handlers[:], root.level, ours.level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ours.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
def test_debug_applies_to_kinepy_loggers_only() -> None:
    setup_logging("debug", "text")
    assert logging.getLogger("kinepy.store.writer").isEnabledFor(logging.DEBUG)
    assert logging.getLogger().level == logging.WARNING
    assert not logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.INFO)
    assert not logging.getLogger("asyncio").isEnabledFor(logging.INFO)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", ["warning", "error"])
def test_warning_and_error_apply_to_every_logger(level: str) -> None:
    setup_logging(level, "json")
    number = logging.getLevelName(level.upper())
    assert logging.getLogger().level == number
    assert logging.getLogger("kinepy").getEffectiveLevel() == number
    assert not logging.getLogger("kinepy.app").isEnabledFor(number - 10)


@pytest.mark.usefixtures("restore_logging")
def test_info_shows_kinepy_lifecycle_but_not_other_libraries() -> None:
    setup_logging("info", "text")
    assert logging.getLogger("kinepy.app").isEnabledFor(logging.INFO)
    assert not logging.getLogger("grpc").isEnabledFor(logging.INFO)


# -- passwords in error messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "secret"),
    [
        ("postgres://u:secret@h/db", "secret"),
        ("postgres://u:se%40cret@h/db", "se@cret"),
        ("postgres://u:se%40cret@h/db", "se%40cret"),
        ("postgres://u@h/db?password=topsecret", "topsecret"),
        ("mysql://u:p@ss@tcp(h:3306)/db", "p@ss"),
    ],
)
def test_error_messages_never_show_the_password(endpoint: str, secret: str) -> None:
    scrubbed = scrub(f"could not connect to {endpoint}: password {secret!r} rejected", endpoint)
    assert secret not in scrubbed
    assert "***" in scrubbed


def _kine_app_go() -> Path | None:
    """kine v0.16.4's pkg/app/app.go in the Go module cache, if it was downloaded there
    (`go mod download github.com/k3s-io/kine@v0.16.4`)."""
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")
    path = cache / "github.com" / "k3s-io" / "kine@v0.16.4" / "pkg" / "app" / "app.go"
    return path if path.is_file() else None


def test_kine_flags_list_is_kines_own() -> None:
    app_go = _kine_app_go()
    if app_go is None:
        pytest.skip("kine v0.16.4 is not in the Go module cache")
    source = app_go.read_text(encoding="utf-8")
    assert sorted(f"--{name}" for name in re.findall(r'Name:\s*"([a-z0-9-]+)"', source)) == sorted(
        flag for flag, _, _ in KINE_FLAGS
    )
    kine_variables = set(re.findall(r'"(KINE_[A-Z_]+)"', source))
    assert kine_variables == {variable for _, variables, _ in KINE_FLAGS for variable in variables}
