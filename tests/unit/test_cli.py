"""The `kinepy` command: flags and environment -> Config, logging levels, and how it fails."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinepy import __version__
from kinepy.cli import _scrub, main, parse_config, setup_logging
from kinepy.config import Config

ROOT = Path(__file__).resolve().parents[2]
FAIL_FAST_SECONDS = 10.0  # an unusable configuration must stop the server well within this
# A record of the text log format at INFO or DEBUG: "2025-01-31 12:00:00,000 INFO kinepy.app: ..."
_QUIET_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|DEBUG) kinepy[.\w]*: ")

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
ALL_FLAGS_CONFIG = Config(
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


KINEPY = [sys.executable, "-m", "kinepy"]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without kinepy's, k3s's or systemd's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINEPY_", "K3S_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_kinepy(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, float]:
    """`python -m kinepy ARGS` to completion: (exit code, stderr, seconds taken)."""
    started = time.monotonic()
    proc = subprocess.run(
        [*KINEPY, *args],
        capture_output=True,
        text=True,
        env=clean_environment(**(env or {})),
        cwd=cwd or ROOT,
        timeout=30,
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


def error_lines(stderr: str) -> list[str]:
    """stderr without INFO/DEBUG log records: what the user must read to know what went wrong."""
    return [line for line in stderr.splitlines() if not _QUIET_LOG_LINE.match(line)]


# -- flags and environment -------------------------------------------------------------------


def test_no_flags_no_environment_is_the_config_defaults() -> None:
    assert parse_config([], {}) == Config()


def test_config_from_flags() -> None:
    assert parse_config(ALL_FLAGS, {}) == ALL_FLAGS_CONFIG


def test_config_from_kinepy_environment() -> None:
    assert parse_config([], ALL_ENV) == Config(
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


def test_kinepy_datastore_endpoint_wins_over_k3s() -> None:
    env = {
        "K3S_DATASTORE_ENDPOINT": "sqlite:///tmp/k3s.db",
        "KINEPY_DATASTORE_ENDPOINT": "sqlite:///tmp/own.db",
    }
    assert parse_config([], env).datastore_endpoint == "sqlite:///tmp/own.db"


def test_k3s_variable_sets_only_the_datastore_endpoint() -> None:
    assert parse_config([], {"K3S_LISTEN_ADDRESS": "0.0.0.0:1"}).listen_address == Config().listen_address


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "on"])
def test_boolean_environment_true(value: str) -> None:
    assert parse_config([], {"KINEPY_UNSAFE_NO_FSYNC": value}).unsafe_no_fsync is True


@pytest.mark.parametrize("value", ["false", "0", "", "no", "off"])
def test_boolean_environment_false(value: str) -> None:
    assert parse_config([], {"KINEPY_UNSAFE_NO_FSYNC": value}).unsafe_no_fsync is False


def test_numbers_from_environment_are_validated() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config([], {"KINEPY_MAX_TXN_OPS": "lots"})
    assert exc.value.code == 2


# -- version, help, bad values ---------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"kinepy {__version__}\n"


def test_python_m_kinepy_version() -> None:
    proc = subprocess.run([*KINEPY, "--version"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, f"kinepy {__version__}\n")


def test_python_m_kinepy_help() -> None:
    proc = subprocess.run([*KINEPY, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: kinepy")
    assert "--datastore-endpoint" in proc.stdout and "KINEPY_DATASTORE_ENDPOINT" in proc.stdout


@pytest.mark.parametrize("args", [["--log-level", "verbose"], ["--log-format", "xml"]])
def test_bad_log_settings_exit_2_with_one_line(args: list[str]) -> None:
    code, stderr, _ = run_kinepy(*args)
    assert code == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("kinepy: --log-level must be")


# -- failing fast ----------------------------------------------------------------------------


def test_unsupported_endpoint_fails_fast_with_one_line(tmp_path: Path) -> None:
    code, stderr, seconds = run_kinepy("--datastore-endpoint", "foo://x", cwd=tmp_path)
    assert code != 0 and seconds < FAIL_FAST_SECONDS
    assert stderr.splitlines() == [stderr.rstrip("\n")], stderr
    assert stderr.startswith(
        "kinepy: invalid datastore endpoint 'foo://x': unknown scheme 'foo'; expected one of:"
    )
    assert not (tmp_path / "db").exists()


def test_unavailable_postgres_fails_fast_without_the_password(tmp_path: Path) -> None:
    # `h.invalid` never resolves (RFC 6761), so this stays quick once PostgreSQL is available.
    code, stderr, seconds = run_kinepy(
        "--datastore-endpoint", "postgres://u:secret@h.invalid/db", cwd=tmp_path
    )
    assert code != 0 and seconds < FAIL_FAST_SECONDS
    assert "secret" not in stderr
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kinepy: ") and "postgres://u:***@h.invalid" in lines[0]


def test_password_from_environment_is_not_shown(tmp_path: Path) -> None:
    env = {"K3S_DATASTORE_ENDPOINT": "mysql://kine:hunter2@tcp(db.invalid:3306)/k8s"}
    code, stderr, _ = run_kinepy(env=env, cwd=tmp_path)
    assert code != 0 and "hunter2" not in stderr
    assert len(error_lines(stderr)) == 1, stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process is listening on (no SO_REUSEPORT, like Debian's etcd)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_port_in_use_fails_fast_before_opening_the_database(
    tmp_path: Path, taken_port: int, host: str
) -> None:
    database = tmp_path / "state.db"
    address = f"{host}:{taken_port}"
    code, stderr, seconds = run_kinepy(
        "--listen-address", address, "--datastore-endpoint", f"sqlite://{database}", cwd=tmp_path
    )
    assert code == 1 and seconds < FAIL_FAST_SECONDS
    assert stderr == f"kinepy: cannot listen on {address}: address already in use\n"
    assert not database.exists()


def test_second_kinepy_on_the_same_port_is_refused(tmp_path: Path) -> None:
    # grpc binds with SO_REUSEPORT: without kinepy's own check both servers would share the port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    first = subprocess.Popen(
        [*KINEPY, "--listen-address", address, "--datastore-endpoint", f"sqlite://{tmp_path / 'first.db'}"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
    )
    try:
        deadline = time.monotonic() + 20
        while not _accepts(port):
            assert first.poll() is None and time.monotonic() < deadline, "the first server did not start"
            time.sleep(0.05)
        code, stderr, _ = run_kinepy(
            "--listen-address", address, "--datastore-endpoint", f"sqlite://{tmp_path / 'second.db'}"
        )
        assert code == 1 and "address already in use" in stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    assert first.returncode == 0


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- systemd ---------------------------------------------------------------------------------


def test_systemd_ready_and_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(20)
        server = subprocess.Popen(
            [
                *KINEPY,
                "--listen-address",
                "127.0.0.1:0",
                "--datastore-endpoint",
                f"sqlite://{tmp_path / 'state.db'}",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=clean_environment(NOTIFY_SOCKET=address),
        )
        try:
            assert notify.recv(64) == b"READY=1"
            server.send_signal(signal.SIGTERM)
            assert notify.recv(64) == b"STOPPING=1"
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            _, stderr = server.communicate(timeout=20)
    assert server.returncode == 0, stderr
    assert "shutting down" in stderr


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
    scrubbed = _scrub(f"could not connect to {endpoint}: password {secret!r} rejected", endpoint)
    assert secret not in scrubbed
    assert "***" in scrubbed
