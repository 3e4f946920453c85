"""Real database servers for the test suite: PostgreSQL 15 and MariaDB, started by the suite itself.

Servers (session-scoped, started on first use, stopped and deleted at the end of the session)
    ``postgres_server``: ``initdb`` into a fresh directory under /tmp, then ``postgres`` on a free
    loopback port, its Unix socket in that directory; password (SCRAM) auth on TCP. As root the
    cluster belongs to, and runs as, the ``postgres`` system user: PostgreSQL refuses to run as root.
    ``mariadb_server``: ``mariadb-install-db`` into a fresh directory, then ``mariadbd`` on a free
    loopback port (``--user=root`` when root). Both get a ``kinepy`` user with password ``PASSWORD``
    that may create databases. Each start is waited for with a bounded poll.
    ``make_database_server(kind)`` starts a server of the test's own (function-scoped), which the test
    may ``stop()`` and ``start()`` again on the same port and data directory (outage tests).

Per test
    ``database`` is parametrised over ``sqlite``, ``postgres`` and ``mariadb`` (marks ``postgres`` and
    ``mysql``): a fresh SQLite file, or a fresh ``kinepy_<random>`` database created on the shared
    server and dropped afterwards. ``database.url`` is its ``--datastore-endpoint``;
    ``database_url`` is just that string.
    ``make_kinepy_on(url, **overrides)`` starts ``python -m kinepy`` on any endpoint with the same
    teardown checks as conftest's ``make_kinepy_server``.

For conftest (``make_kinepy_server`` on ``kinepy_backend``)
    ``SharedDatabaseServers`` starts a PostgreSQL and a MariaDB server on first use, for the session
    (conftest's ``kinepy_databases`` holds one); ``fresh_database(kind)`` names a new database on it,
    which kinepy creates on its first start.

Missing binaries skip the tests loudly, unless ``CI`` is set: then they fail, so CI cannot go green by
skipping a backend. ``scripts/test`` installs ``postgresql-15`` and ``mariadb-server`` when missing.

Use it from a test module with ``from databases import *  # noqa: F403`` (it exports only fixtures).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import conftest
import pytest

__all__ = [
    "database",
    "database_url",
    "make_database_server",
    "make_kinepy_on",
    "mariadb_server",
    "postgres_server",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
USER = "kinepy"
PASSWORD = "kinepy-test-Secret-42"
START_TIMEOUT = 60.0  # seconds for initdb/install-db plus the first accepted connection
STOP_TIMEOUT = 20.0


def _require(what: str, paths: list[Path], package: str) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if not missing:
        return
    reason = (
        f"!!! {', '.join(missing)} not installed: the {what} backend tests did NOT run. "
        f"Install with `apt-get install -y {package}` (scripts/test does). !!!"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _tail(path: Path, max_chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text if len(text) <= max_chars else "…\n" + text[-max_chars:]


def _wait(what: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> float:
    """Poll `ready()` until it holds (returns the seconds it took); fail if the process exits or
    `START_TIMEOUT` passes."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"{what} exited with {proc.returncode} before it was ready:\n{_tail(log)}", pytrace=False
            )
        if ready():
            return time.monotonic() - started
        if time.monotonic() - started > START_TIMEOUT:
            _stop(proc, signal.SIGINT)
            pytest.fail(f"{what} not ready after {START_TIMEOUT} s:\n{_tail(log)}", pytrace=False)
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    return proc.returncode


@dataclass
class DatabaseServer:
    """A database server on 127.0.0.1; `url(name)` is a kinepy endpoint for database `name`."""

    kind: str  # "postgres" or "mariadb"
    port: int
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    version: str = ""
    startup_seconds: float = 0.0

    def url(self, database: str, *, password: str = PASSWORD, user: str = USER) -> str:
        if self.kind == "postgres":
            return f"postgres://{user}:{password}@127.0.0.1:{self.port}/{database}?sslmode=disable"
        return f"mysql://{user}:{password}@tcp(127.0.0.1:{self.port})/{database}"

    def sql(self, statement: str, *, database: str = "") -> list[tuple[Any, ...]]:
        """Run `statement` as the server's superuser over the Unix socket, in `database` if given;
        rows as tuples of text."""
        if self.kind == "postgres":
            argv = [str(PG_BIN / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres"]
            argv += [
                "-d",
                database or "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
            ]
            proc = subprocess.run(
                [*argv, "-c", statement], capture_output=True, text=True, timeout=30, check=False
            )
            if proc.returncode != 0:
                raise RuntimeError(f"psql {statement!r} failed: {proc.stderr.strip()}")
            return [tuple(line.split("\t")) for line in proc.stdout.splitlines() if line]
        import pymysql

        conn = pymysql.connect(
            unix_socket=str(self.root / "mariadbd.sock"),
            user="root",
            database=database or None,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return [tuple(str(v) for v in row) for row in cur.fetchall()]
        finally:
            conn.close()

    def create_database(self) -> str:
        name = f"kinepy_{secrets.token_hex(6)}"
        if self.kind == "postgres":
            self.sql(f'CREATE DATABASE "{name}" OWNER {USER}')
        else:
            self.sql(f"CREATE DATABASE `{name}`")
        return name

    def drop_database(self, name: str) -> None:
        if self.kind == "postgres":
            self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            self.sql(f"DROP DATABASE IF EXISTS `{name}`")

    def stop(self) -> None:
        if self.proc is not None:
            # PostgreSQL: SIGINT is a fast shutdown (SIGTERM would wait for every client to leave).
            _stop(self.proc, signal.SIGINT if self.kind == "postgres" else signal.SIGTERM)
            self.proc = None

    def start(self) -> float:
        """Start the stopped server again: same port, same data directory. Returns the seconds it
        took to accept connections."""
        assert self.proc is None, "the server is running"
        return _launch_postgres(self) if self.kind == "postgres" else _launch_mariadb(self)


def _owner() -> tuple[list[str], int, int]:
    """An argv prefix running a child as the `postgres` system user when we are root (and its ids).

    `setpriv` rather than Popen's `user=`/`group=`: those make CPython fork() instead of vfork(), and
    fork() in a test process with live gRPC threads runs gRPC's fork handlers, which can crash the
    child (a restarted PostgreSQL once died with SIGSEGV before writing a line). `setpriv` drops the
    privileges after a plain vfork+exec.
    """
    if os.geteuid() != 0:
        return [], -1, -1
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    uid, gid = entry.pw_uid, entry.pw_gid
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"], uid, gid


def _start_postgres() -> DatabaseServer:
    _require("PostgreSQL", [PG_BIN / "initdb", PG_BIN / "postgres", PG_BIN / "psql"], "postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="kinepy-pg-"))  # not under pytest's tmp: that is root-only (0700)
    as_owner, uid, gid = _owner()
    if uid >= 0:
        os.chown(root, uid, gid)
    password_file = root / "superuser-password"
    password_file.write_text(PASSWORD + "\n")
    if uid >= 0:
        os.chown(password_file, uid, gid)
    log_path = root / "postgres.log"
    started = time.monotonic()
    argv = [str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", f"--pwfile={password_file}"]
    argv += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    initdb = subprocess.run(
        [*as_owner, *argv], capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )
    if initdb.returncode != 0:
        pytest.fail(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}", pytrace=False)
    server = DatabaseServer("postgres", conftest.free_port(), root, log_path)
    _launch_postgres(server)
    server.sql(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    server.version = server.sql("SHOW server_version")[0][0]
    server.startup_seconds = time.monotonic() - started
    return server


def _launch_postgres(server: DatabaseServer) -> float:
    """Run `postgres` on the server's data directory and port; wait until it accepts connections."""
    as_owner, _, _ = _owner()
    root = server.root
    argv = [str(PG_BIN / "postgres"), "-D", str(root / "data"), "-p", str(server.port)]
    argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]
    argv += ["-c", "max_connections=200", "-c", "fsync=on"]
    with server.log_path.open("ab") as log:
        server.proc = subprocess.Popen([*as_owner, *argv], stdout=log, stderr=subprocess.STDOUT)
    pg_isready = [
        str(PG_BIN / "pg_isready"),
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-d",
        "postgres",
    ]
    return _wait(
        "postgres",
        server.proc,
        lambda: subprocess.run(pg_isready, check=False).returncode == 0,
        server.log_path,
    )


def _start_mariadb() -> DatabaseServer:
    _require("MariaDB", [MARIADBD, MARIADB_INSTALL_DB], "mariadb-server")
    root = Path(tempfile.mkdtemp(prefix="kinepy-mariadb-"))
    log_path = root / "mariadbd.log"
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    started = time.monotonic()
    argv = [str(MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={root / 'data'}"]
    argv += ["--auth-root-authentication-method=normal", "--skip-test-db", *as_root]
    install = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    if install.returncode != 0:
        pytest.fail(f"mariadb-install-db failed ({install.returncode}):\n{install.stdout}\n{install.stderr}")
    server = DatabaseServer("mariadb", conftest.free_port(), root, log_path)
    _launch_mariadb(server)
    server.sql(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
    server.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'")
    server.version = server.sql("SELECT VERSION()")[0][0]
    server.startup_seconds = time.monotonic() - started
    return server


def _launch_mariadb(server: DatabaseServer) -> float:
    """Run `mariadbd` on the server's data directory and port; wait until it accepts connections."""
    root = server.root
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    socket_path = root / "mariadbd.sock"
    argv = [str(MARIADBD), "--no-defaults", f"--datadir={root / 'data'}", f"--port={server.port}"]
    argv += ["--bind-address=127.0.0.1", f"--socket={socket_path}", f"--pid-file={root / 'mariadbd.pid'}"]
    argv += [f"--log-error={server.log_path}", "--max-connections=300", *as_root]
    with (root / "mariadbd.out").open("ab") as out:
        server.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            server.sql("SELECT 1")
        except Exception:
            return False
        return True

    return _wait("mariadbd", server.proc, ready, server.log_path)


def _session_server(start: Callable[[], DatabaseServer]) -> Iterator[DatabaseServer]:
    server = start()
    sys.stderr.write(f"\n[{server.kind} {server.version} started in {server.startup_seconds:.1f} s]\n")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[DatabaseServer]:
    """A PostgreSQL 15 server for the whole session (user ``kinepy``, password ``PASSWORD``)."""
    yield from _session_server(_start_postgres)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[DatabaseServer]:
    """A MariaDB server for the whole session (user ``kinepy``, password ``PASSWORD``)."""
    yield from _session_server(_start_mariadb)


@pytest.fixture
def make_database_server() -> Iterator[Callable[[str], DatabaseServer]]:
    """Factory: ``make_database_server("postgres" | "mariadb")`` starts a server of the test's own, which
    the test may ``stop()`` and ``start()`` again (same port, same data directory), unlike the shared
    session servers. Each is stopped and deleted at teardown."""
    servers: list[DatabaseServer] = []

    def make(kind: str) -> DatabaseServer:
        server = _start_postgres() if kind == "postgres" else _start_mariadb()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@dataclass
class TestDatabase:
    """One fresh database: `url` is the kinepy endpoint; `server` is None for SQLite."""

    __test__ = False  # not a test class, whatever its name

    kind: str
    url: str
    name: str
    server: DatabaseServer | None = None


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestDatabase]:
    """A fresh, empty database on each backend in turn (servers start on first use)."""
    kind: str = request.param
    if kind == "sqlite":
        path = tmp_path / "state.db"
        yield TestDatabase(kind, f"sqlite://{path}", str(path))
        return
    server: DatabaseServer = request.getfixturevalue(f"{kind}_server")
    name = server.create_database()
    yield TestDatabase(kind, server.url(name), name, server)
    with contextlib.suppress(Exception):  # the server may already be gone; it is deleted at the end anyway
        server.drop_database(name)


class SharedDatabaseServers:
    """A PostgreSQL and a MariaDB server, each started on first use and kept until `close()`.

    Separate from the ``*_server`` fixtures (each module that imports those gets servers of its own):
    conftest's session fixture ``kinepy_databases`` holds one, so ``make_kinepy_server`` can reach a
    server without the test module importing this one's fixtures.
    """

    def __init__(self) -> None:
        self._servers: dict[str, DatabaseServer] = {}

    def server(self, kind: str) -> DatabaseServer:
        """The ``"postgres"`` or ``"mariadb"`` server, started now if it is not running yet."""
        if kind not in self._servers:
            start = {"postgres": _start_postgres, "mariadb": _start_mariadb}[kind]
            server = self._servers[kind] = start()
            sys.stderr.write(f"\n[{kind} {server.version} started in {server.startup_seconds:.1f} s]\n")
        return self._servers[kind]

    def fresh_database(self, kind: str) -> TestDatabase:
        """A database name not used before on the `kind` server; the database itself does not exist
        yet: kinepy creates a missing database when it starts. ``drop_database`` it when done."""
        server = self.server(kind)
        name = f"kinepy_{secrets.token_hex(6)}"
        return TestDatabase(kind, server.url(name), name, server)

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        self._servers.clear()


@pytest.fixture
def database_url(database: TestDatabase) -> str:
    """The ``--datastore-endpoint`` of a fresh database, for each of sqlite, postgres and mariadb."""
    return database.url


@dataclass
class KinepyOn(conftest.KinepyServer):
    """``python -m kinepy`` on any datastore endpoint."""

    datastore_endpoint: str = ""
    extra_args: list[str] = field(default_factory=list)

    def start(self) -> None:
        argv = [sys.executable, "-m", "kinepy", "--listen-address", self.endpoint]
        argv += [
            "--datastore-endpoint",
            self.datastore_endpoint,
            "--log-level",
            self.log_level,
            *self.extra_args,
        ]
        self._start(argv, lambda: conftest._port_accepts(self.port))


@pytest.fixture
def make_kinepy_on(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., KinepyOn]]:
    """Factory: ``make_kinepy_on(url, **overrides)`` starts kinepy on datastore `url` and waits for it.

    Keyword arguments override ``KinepyOn`` fields (``log_level``, ``extra_args``). The server's log is
    attached to a failing test's report; an unclean exit on SIGTERM fails the test.
    """
    servers: list[KinepyOn] = []

    def make(url: str, **overrides: Any) -> KinepyOn:
        root = tmp_path_factory.mktemp("kinepy")
        fields: dict[str, Any] = {
            "kind": "kinepy",
            "port": conftest.free_port(),
            "log_path": root / "kinepy.log",
            "db_path": root / "unused.db",
            "datastore_endpoint": url,
        }
        server = KinepyOn(**(fields | overrides))
        servers.append(server)
        conftest._track(request, server)
        server.start()
        return server

    yield make
    unclean = [(server, server.stop()) for server in servers]
    unclean = [(server, code) for server, code in unclean if code not in (None, 0)]
    if unclean:
        pytest.fail(
            "\n".join(
                f"kinepy exited with {code} on SIGTERM:\n{server.log_tail()}" for server, code in unclean
            )
        )
