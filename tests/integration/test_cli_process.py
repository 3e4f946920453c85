"""`python -m kinepy` as a process: version and help, how it fails (exit codes, one line on stderr,
nothing created), the port check, systemd notifications, and kine's command line as k3s starts it."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[2]
FAIL_FAST_SECONDS = 10.0  # an unusable configuration must stop the server well within this
# A record of the text log format at INFO or DEBUG: "2025-01-31 12:00:00,000 INFO kinepy.app: ..."
_QUIET_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|DEBUG) kinepy[.\w]*: ")

KINEPY = [sys.executable, "-m", "kinepy"]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without kinepy's, kine's, k3s's or systemd's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINEPY_", "KINE_", "K3S_", "NOTIFY_"))}
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


# -- version, help, bad values ---------------------------------------------------------------


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
    # docs/operations.md: an unreachable datastore is exit code 1 (2 is for bad configuration)
    assert code == 1 and seconds < FAIL_FAST_SECONDS
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


# -- kine's command line -----------------------------------------------------------------------


def _kine_tls_files(tmp_path: Path) -> dict[str, Path]:
    """Server and client certificates of one CA, as k3s keeps them for its datastore listener."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("kube-apiserver-etcd-client")
    files = {
        name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key", "client", "client-key")
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server-key"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["server"]), append=True)
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files["client"]), append=True)
    return files


def test_kines_own_flag_set_as_k3s_passes_it_serves(tmp_path: Path) -> None:
    """kine v0.16.4's flags only, with the values k3s gives kine (its unix socket, its etcd server
    certificates, the datastore TLS files from K3S_DATASTORE_*, 5 s progress notifications) and
    typical values for the rest: kinepy serves etcdctl over TLS on the socket and reports the
    emulated version."""
    tls = _kine_tls_files(tmp_path)
    socket_path = tmp_path / "kine.sock"
    argv = [
        f"--listen-address=unix://{socket_path}",
        f"--endpoint=sqlite://{tmp_path / 'state.db'}",
        f"--server-cert-file={tls['server']}",
        f"--server-key-file={tls['server-key']}",
        f"--trusted-ca-file={tls['ca']}",
        "--skip-verify=false",
        "--log-format=plain",
        "--metrics-bind-address=0",
        "--metrics-enable-profiling=false",
        "--metrics-ignore-tls-config=false",
        "--datastore-max-idle-connections=20",
        "--datastore-max-open-connections=0",
        "--datastore-connection-max-lifetime=0s",
        "--datastore-connection-max-idle-time=2m0s",
        "--slow-sql-threshold=1s",
        "--slow-sql-warning-threshold=5s",
        "--watch-progress-notify-interval=5s",
        "--emulated-etcd-version=3.5.13",
        "--compact-interval=5m",
        "--compact-interval-jitter=10",
        "--compact-timeout=5s",
        "--compact-min-retain=1000",
        "--compact-batch-size=1000",
        "--poll-batch-size=500",
        "--debug=false",
    ]
    env = clean_environment(
        K3S_DATASTORE_CAFILE=str(tls["ca"]),
        K3S_DATASTORE_CERTFILE=str(tls["client"]),
        K3S_DATASTORE_KEYFILE=str(tls["client-key"]),
    )
    server = subprocess.Popen([*KINEPY, *argv], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    etcdctl = [
        "/usr/bin/etcdctl",
        f"--endpoints=unixs://{socket_path}",
        f"--cacert={tls['ca']}",
        f"--cert={tls['client']}",
        f"--key={tls['client-key']}",
        # etcdctl takes the socket path for the server name; kinepy still insists on the client certificate
        "--insecure-skip-tls-verify",
        "--dial-timeout=3s",
        "--command-timeout=5s",
    ]
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert server.poll() is None and time.monotonic() < deadline, "kinepy did not start"
            time.sleep(0.05)
        env3 = {**os.environ, "ETCDCTL_API": "3"}
        put = subprocess.run(
            [*etcdctl, "put", "k3s", "yes"], capture_output=True, text=True, env=env3, timeout=30
        )
        assert put.returncode == 0, put.stderr
        status = subprocess.run(
            [*etcdctl, "endpoint", "status", "-w", "json"],
            capture_output=True,
            text=True,
            env=env3,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert '"version":"3.5.13"' in status.stdout.replace(" ", "")
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    assert server.returncode == 0, stderr
    assert "has no effect" not in stderr and "WARNING" not in stderr, stderr


# -- --listen-address --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.1:99999", "unix://", ":2379x", "garbage", "http://127.0.0.1:2379"]
)
def test_bad_listen_address_exits_2_with_one_line_before_anything_is_created(
    tmp_path: Path, address: str
) -> None:
    code, stderr, seconds = run_kinepy("--listen-address", address, cwd=tmp_path)
    assert code == 2 and seconds < FAIL_FAST_SECONDS
    assert stderr.startswith(f"kinepy: invalid listen address {address!r}: ") and stderr.count("\n") == 1, (
        stderr
    )
    assert list(tmp_path.iterdir()) == []  # not even ./db


def test_every_interface_is_logged_as_bound(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [*KINEPY, "--listen-address", ":0", "--datastore-endpoint", "sqlite://:memory:"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
        cwd=tmp_path,
    )
    try:
        assert server.stderr is not None
        line = ""
        while "serving the etcd v3 API" not in line:
            line = server.stderr.readline()
            assert line, "kinepy exited before serving"
        assert re.search(
            r"serving the etcd v3 API on http://(\[::\]|0\.0\.0\.0):[1-9]\d* \(every interface\)$", line
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    assert server.returncode == 0


def test_no_grpc_core_line_reaches_the_user(tmp_path: Path) -> None:
    """A plain-text client on a TLS listener makes grpc-core log a handshake error of its own (with
    --log-level debug it does); it stays quiet by default."""
    tls = _kine_tls_files(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *KINEPY,
            f"--listen-address=127.0.0.1:{port}",
            "--datastore-endpoint=sqlite://:memory:",
            f"--server-cert-file={tls['server']}",
            f"--server-key-file={tls['server-key']}",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while not _accepts(port):
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2 without TLS
                conn.settimeout(2)
                try:
                    conn.recv(100)
                except OSError:
                    pass
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    assert server.returncode == 0
    assert not re.search(r"^[EWI]\d{4} ", stderr, re.MULTILINE), stderr
