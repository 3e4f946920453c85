"""Shared fixtures: real servers on free loopback ports, and the etcdctl runner.

Servers
    ``make_etcd_server()`` starts ``/usr/bin/etcd`` (Debian ``etcd-server``) in a fresh data directory and
    ``make_kinepy_server()`` starts ``python -m kinepy`` on a fresh database of the ``kinepy_backend``;
    both return a handle with ``.endpoint`` (``"127.0.0.1:PORT"``) and ``.stop()``, and both are stopped
    at teardown. ``etcd_server`` and ``kinepy_server`` are one of each. Every server is fresh, so
    revisions start at 1 in every test.

Backends
    ``kinepy_backend`` is ``"sqlite"`` (a fresh SQLite file per server), unless the test is marked
    ``kinepy_backends``: then it is parametrised over the backends of ``--kinepy-backends`` (default
    ``sqlite,postgres,mariadb``; ids ``[sqlite]``, ``[postgres]``, ``[mariadb]``, marks ``postgres`` and
    ``mysql``). On ``postgres``/``mariadb`` each kinepy gets a new database (kinepy creates it) on a
    server that kinepy.testing.databases starts once per session (``kinepy_databases``); it is dropped at
    teardown. ``kinepy_backends("sqlite")`` keeps one test of a marked module on SQLite.
    ``kinepy_datastore_endpoint`` is such a fresh database's ``--datastore-endpoint``, for a kinepy
    built in-process.

    Without ``/usr/bin/etcd`` the etcd tests are skipped with a loud reason, unless ``CI`` is set: then they
    fail, so CI cannot go green by skipping the parity suite. The same holds for PostgreSQL and MariaDB.

Database servers (kinepy/testing/databases.py; one PostgreSQL and one MariaDB for the whole session)
    ``postgres_server`` and ``mariadb_server`` are the session's servers (user ``kinepy``, password
    ``PASSWORD``), the ones ``kinepy_databases`` holds; ``galera_cluster`` is a 3-node MariaDB Galera
    cluster, started on first use. ``make_database_server(kind)`` starts a server of
    the test's own, which the test may ``stop()`` and ``start()`` again on the same port and data
    directory (outage tests); ``make_replicated_postgres(synchronous=…)`` a PostgreSQL primary with a
    streaming standby (failover tests). ``database`` is parametrised over ``sqlite``, ``postgres`` and
    ``mariadb`` (marks ``postgres`` and ``mysql``): a fresh SQLite file, or a fresh database created on
    the session's server and dropped afterwards; ``database.url`` (also the fixture ``database_url``) is
    its ``--datastore-endpoint``. ``make_kinepy_on(url, **overrides)`` is ``make_kinepy_server`` on any
    endpoint.

etcdctl
    ``etcdctl(endpoint, *args, input=None)`` runs ``/usr/bin/etcdctl`` (API v3) and returns the
    ``CompletedProcess``; ``etcdctl_json(endpoint, *args)`` adds ``-w json``, insists on exit code 0 and
    returns the parsed object.

Markers added here: ``kinepy`` marks tests that need the kinepy server, so ``-m "not kinepy"`` runs the
etcd-only half while the server is being written.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from kinepy.testing.databases import (
    DatabaseServer,
    DatabaseStartError,
    DatabaseUnavailable,
    GaleraCluster,
    ReplicatedPostgres,
    SharedDatabaseServers,
    TestDatabase,
    start_database_server,
    start_galera_cluster,
    start_replicated_postgres,
)
from kinepy.testing.databases import free_port as free_port  # tests call conftest.free_port()

ETCD_BIN = "/usr/bin/etcd"
ETCDCTL_BIN = "/usr/bin/etcdctl"
READY_TIMEOUT = 20.0  # seconds to wait for a server to accept requests
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
ETCDCTL_TIMEOUT = 30.0  # seconds for one etcdctl run (its own --command-timeout is 5 s)
REPO_ROOT = Path(__file__).resolve().parent.parent


KINEPY_BACKENDS = ("sqlite", "postgres", "mariadb")
_BACKEND_MARKS = {"sqlite": (), "postgres": (pytest.mark.postgres,), "mariadb": (pytest.mark.mysql,)}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kinepy-backends",
        default=",".join(KINEPY_BACKENDS),
        help="comma-separated backends for tests marked kinepy_backends (default: %(default)s)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kinepy: needs the kinepy server (python -m kinepy)")
    config.addinivalue_line(
        "markers",
        "kinepy_backends(*names): run make_kinepy_server/kinepy_server on each backend of --kinepy-backends "
        "(only those of `names` if given)",
    )
    unknown = set(_selected_backends(config)) - set(KINEPY_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"--kinepy-backends: unknown {sorted(unknown)}; known: {KINEPY_BACKENDS}")


def _selected_backends(config: pytest.Config) -> list[str]:
    return [name.strip() for name in config.getoption("--kinepy-backends").split(",") if name.strip()]


def kinepy_backend_params(config: pytest.Config, *only: str) -> list[Any]:
    """``pytest.param`` per backend of ``--kinepy-backends`` (those in `only`, if given)."""
    return [
        pytest.param(name, id=name, marks=_BACKEND_MARKS[name])
        for name in _selected_backends(config)
        if not only or name in only
    ]


def etcd_and_kinepy_params(config: pytest.Config) -> list[Any]:
    """``"etcd"``, then each backend of ``--kinepy-backends`` (ids ``kinepy-<backend>``): for a module's
    ``server`` fixture that starts ``etcd_server`` or ``make_kinepy_server(backend=...)``, so that etcd
    runs once, not once per backend."""
    return [
        pytest.param("etcd", id="etcd"),
        *(
            pytest.param(name, id=f"kinepy-{name}", marks=_BACKEND_MARKS[name])
            for name in _selected_backends(config)
        ),
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("kinepy_backends")
    if marker is not None and "kinepy_backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "kinepy_backend", kinepy_backend_params(metafunc.config, *marker.args), indirect=True
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"sqlite3: {sqlite3.sqlite_version} (Python {sys.version.split()[0]})",
        f"etcd: {_tool_version([ETCD_BIN, '--version'])}",
        f"etcdctl: {_tool_version([ETCDCTL_BIN, 'version'])}",
        "python packages: "
        + ", ".join(f"{name} {_package_version(name)}" for name in ("grpcio", "protobuf", "etcd3")),
    ]


def _tool_version(argv: list[str]) -> str:
    if not Path(argv[0]).exists():
        return f"MISSING ({argv[0]} not found)"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    first = out.splitlines()[0] if out else "unknown"
    return first.split(":", 1)[-1].strip()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------------
# Failure reports: attach server logs to the failing test.


class Logged(Protocol):
    """A process whose log goes into the report of a failing test (a server of this module, or any
    other with these three)."""

    @property
    def kind(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    def log_tail(self) -> str: ...


_SERVERS = pytest.StashKey[list[Logged]]()


def _track(request: pytest.FixtureRequest, server: Logged) -> None:
    request.node.stash.setdefault(_SERVERS, []).append(server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when == "call":  # a failed start already put the log in its message
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"{server.kind} log ({server.endpoint})", server.log_tail()))
    return report


# --------------------------------------------------------------------------------------------------
# Ports and processes.


def _port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _terminate(proc: subprocess.Popen[bytes], *, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


class PortTaken(Exception):
    """A server could not bind its port: another process took it after ``free_port()`` chose it."""


PORT_ATTEMPTS = 3


def _start_on_a_free_port(server: _Server, start: Callable[[], None]) -> None:
    """``start()``; when another process took the port in the meantime (``free_port`` races with the
    rest of the machine), again on a new port, up to ``PORT_ATTEMPTS`` times."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            start()
            return
        except PortTaken as exc:
            if attempt == PORT_ATTEMPTS:
                pytest.fail(f"{exc}, {PORT_ATTEMPTS} times:\n{server.log_tail()}")
            server.port = free_port()


@dataclass
class _Server:
    """A server subprocess on 127.0.0.1; ``endpoint`` is what etcdctl's ``--endpoints`` takes."""

    kind: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def log_tail(self, max_chars: int = 8_000) -> str:
        """The end of the server's log; runs of lines that differ only in their timestamp are collapsed."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        text = "\n".join(_collapse_repeats(lines))
        return text if len(text) <= max_chars else "…\n" + text[-max_chars:]

    def log_of_last_start(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text.rpartition("\n===== start: ")[2]

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); idempotent; returns its exit code."""
        if self.proc is None:
            return None
        code = _terminate(self.proc)
        self.proc = None
        return code

    def _start(self, argv: list[str], ready: Callable[[], bool]) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                if "address already in use" in self.log_of_last_start():
                    raise PortTaken(f"{self.kind} could not bind {self.endpoint}")
                pytest.fail(f"{self.kind} exited with {code} before it was ready:\n{self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"{self.kind} not ready on {self.endpoint} after {READY_TIMEOUT} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)


@dataclass
class EtcdServer(_Server):
    data_dir: Path = Path()


@dataclass
class KinepyServer(_Server):
    db_path: Path = Path()
    log_level: str = "debug"
    extra_args: list[str] = field(default_factory=list)
    """More flags; a flag given twice takes the later value (``--datastore-endpoint`` for passthrough)."""
    datastore_endpoint: str = ""
    """The database, if not the SQLite file ``db_path`` (a PostgreSQL or MySQL URL)."""
    workers: int = 1
    """``--workers``: one serving process unless a test asks for more (the CLI's default: ``auto``)."""

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "kinepy",
            "--listen-address",
            self.endpoint,
            "--datastore-endpoint",
            self.datastore_endpoint or f"sqlite:///{self.db_path}",
            "--log-level",
            self.log_level,
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]
        self._start(argv, lambda: self._ready())

    def _ready(self) -> bool:
        """Accepting connections; with several workers, all of them (the supervisor logs it)."""
        if not _port_accepts(self.port):
            return False
        return self.workers == 1 or _ALL_WORKERS_SERVING.search(self.log_of_last_start()) is not None

    def restart(self) -> None:
        """SIGTERM the server (if running), insist it exits cleanly, start it again: same port, same DB."""
        code = self.stop()
        assert code in (None, 0), f"kinepy exited with {code} on SIGTERM:\n{self.log_tail()}"
        self.start()


_ALL_WORKERS_SERVING = re.compile(r"serving the etcd v3 API on \S+ with \d+ workers")
_TIMESTAMP = re.compile(r"^\S*\d\d:\d\d:\d\d[.,]?\d*\S*\s*|\"ts\":\"[^\"]*\",?")


def _collapse_repeats(lines: list[str]) -> list[str]:
    out: list[str] = []
    previous, repeats = None, 0
    for line in lines:
        message = _TIMESTAMP.sub("", line)
        if message == previous:
            repeats += 1
            continue
        if repeats:
            out.append(f"    (last line repeated {repeats} more times)")
        out.append(line)
        previous, repeats = message, 0
    if repeats:
        out.append(f"    (last line repeated {repeats} more times)")
    return out


def _require_etcd() -> None:
    missing = [path for path in (ETCD_BIN, ETCDCTL_BIN) if not Path(path).exists()]
    if not missing:
        return
    reason = (
        f"!!! {', '.join(missing)} not installed: the etcd parity tests did NOT run. "
        "Install them with `apt-get install -y etcd-server etcd-client`. !!!"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------
# Fixtures.


@contextlib.contextmanager
def etcd_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], EtcdServer]]:
    """``make_etcd_server``'s factory for any scope: ``with etcd_servers(request, tmp_path_factory) as
    make:``; the servers it started stop when the block ends."""
    servers: list[EtcdServer] = []

    def make() -> EtcdServer:
        _require_etcd()
        root = tmp_path_factory.mktemp("etcd")
        server = EtcdServer(kind="etcd", port=free_port(), log_path=root / "etcd.log", data_dir=root / "data")

        def start() -> None:
            peer = f"http://127.0.0.1:{free_port()}"
            name = f"etcd-{server.port}"
            server.data_dir = root / f"data-{server.port}"  # a failed start may have written to the last one
            argv = [
                ETCD_BIN,
                f"--name={name}",
                f"--data-dir={server.data_dir}",
                f"--listen-client-urls={server.url}",
                f"--advertise-client-urls={server.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={name}={peer}",
                "--logger=zap",
                "--log-outputs=stderr",
            ]
            server._start(argv, lambda: _etcd_healthy(server.endpoint))

        servers.append(server)
        _track(request, server)
        _start_on_a_free_port(server, start)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def make_etcd_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], EtcdServer]]:
    """Factory: each call starts a fresh single-member etcd on free loopback ports and waits until healthy."""
    with etcd_servers(request, tmp_path_factory) as make:
        yield make


@pytest.fixture
def etcd_server(make_etcd_server: Callable[[], EtcdServer]) -> EtcdServer:
    """A fresh real etcd 3.4 (revision 1, no keys)."""
    return make_etcd_server()


_T = TypeVar("_T")


def _database_outcome(start: Callable[[], _T]) -> _T:
    """``start()``; missing database binaries skip the test loudly (fail it when ``CI`` is set), a server
    that does not start fails it."""
    try:
        return start()
    except DatabaseUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    except DatabaseStartError as exc:
        pytest.fail(str(exc), pytrace=False)


def _announce(line: str) -> None:
    sys.stderr.write(f"\n{line}\n")


@pytest.fixture(scope="session")
def kinepy_databases() -> Iterator[SharedDatabaseServers]:
    """The session's PostgreSQL and MariaDB servers (kinepy/testing/databases.py), started on first use."""
    shared = SharedDatabaseServers(announce=_announce)
    yield shared
    shared.close()


@pytest.fixture(scope="session")
def postgres_server(kinepy_databases: SharedDatabaseServers) -> DatabaseServer:
    """The session's PostgreSQL 15 server (user ``kinepy``, password ``PASSWORD``)."""
    return _database_outcome(lambda: kinepy_databases.server("postgres"))


@pytest.fixture(scope="session")
def mariadb_server(kinepy_databases: SharedDatabaseServers) -> DatabaseServer:
    """The session's MariaDB server (user ``kinepy``, password ``PASSWORD``)."""
    return _database_outcome(lambda: kinepy_databases.server("mariadb"))


@pytest.fixture(scope="session")
def galera_cluster() -> Iterator[GaleraCluster]:
    """A 3-node MariaDB Galera cluster on loopback (user ``kinepy``, password ``PASSWORD`` on every
    node), started on first use; ``galera_cluster.urls(name)`` are database `name` through each node."""
    cluster = _database_outcome(start_galera_cluster)
    _announce(
        f"[galera {cluster.version}, {len(cluster.nodes)} nodes, started in {cluster.startup_seconds:.1f} s]"
    )
    yield cluster
    cluster.remove()


@pytest.fixture
def make_database_server() -> Iterator[Callable[[str], DatabaseServer]]:
    """Factory: ``make_database_server("postgres" | "mariadb")`` starts a server of the test's own, which
    the test may ``stop()`` and ``start()`` again (same port, same data directory), unlike the shared
    session servers. Each is stopped and deleted at teardown."""
    servers: list[DatabaseServer] = []

    def make(kind: str) -> DatabaseServer:
        server = _database_outcome(lambda: start_database_server(kind))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.remove()


@pytest.fixture
def make_replicated_postgres() -> Iterator[Callable[..., ReplicatedPostgres]]:
    """Factory: ``make_replicated_postgres(synchronous=…, proxied=False)`` starts a PostgreSQL
    primary and a streaming standby of the test's own (``start_replicated_postgres``); its
    ``fail_over()`` kills the primary and promotes the standby. Both are deleted at teardown."""
    pairs: list[ReplicatedPostgres] = []

    def make(*, synchronous: bool, proxied: bool = False) -> ReplicatedPostgres:
        pair = _database_outcome(lambda: start_replicated_postgres(synchronous=synchronous, proxied=proxied))
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.remove()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql),
    ]
)
def database(
    request: pytest.FixtureRequest, tmp_path: Path, kinepy_databases: SharedDatabaseServers
) -> Iterator[TestDatabase]:
    """A fresh, empty database on each backend in turn (the session's servers start on first use)."""
    kind: str = request.param
    if kind == "sqlite":
        path = tmp_path / "state.db"
        yield TestDatabase(kind, f"sqlite://{path}", str(path))
        return
    server = _database_outcome(lambda: kinepy_databases.server(kind))
    name = server.create_database()
    yield TestDatabase(kind, server.url(name), name, server)
    with contextlib.suppress(Exception):  # the server may already be gone; it is deleted at the end anyway
        server.drop_database(name)


@pytest.fixture
def database_url(database: TestDatabase) -> str:
    """The ``--datastore-endpoint`` of a fresh database, for each of sqlite, postgres and mariadb."""
    return database.url


@pytest.fixture(scope="module")
def kinepy_backend(request: pytest.FixtureRequest) -> str:
    """The database kinepy runs on: ``"sqlite"``, or the parameter of the ``kinepy_backends`` mark."""
    return getattr(request, "param", "sqlite")


def _fresh_datastore(backend: str, databases: SharedDatabaseServers, drops: list[TestDatabase]) -> str:
    """A fresh ``--datastore-endpoint`` on a server `backend` (not sqlite); its database goes in `drops`."""
    database = _database_outcome(lambda: databases.fresh_database(backend))
    drops.append(database)
    return database.url


def _drop(drops: list[TestDatabase]) -> None:
    for database in drops:
        assert database.server is not None
        with contextlib.suppress(Exception):  # the server deletes everything at the end anyway
            database.server.drop_database(database.name)


@contextlib.contextmanager
def kinepy_servers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kinepy_backend: str,
    kinepy_databases: SharedDatabaseServers,
) -> Iterator[Callable[..., KinepyServer]]:
    """``make_kinepy_server``'s factory for any scope: ``with kinepy_servers(request, tmp_path_factory,
    kinepy_backend, kinepy_databases) as make:``; the servers it started stop when the block ends, and
    one that does not exit 0 on SIGTERM fails the test."""
    servers: list[KinepyServer] = []
    drops: list[TestDatabase] = []

    def make(*, backend: str | None = None, **overrides: Any) -> KinepyServer:
        root = tmp_path_factory.mktemp("kinepy")
        fields: dict[str, Any] = {
            "kind": "kinepy",
            "port": free_port(),
            "log_path": root / "kinepy.log",
            "db_path": root / "state.db",
        }
        backend = backend or kinepy_backend
        if backend != "sqlite" and not {"db_path", "datastore_endpoint"} & overrides.keys():
            fields["datastore_endpoint"] = _fresh_datastore(backend, kinepy_databases, drops)
        server = KinepyServer(**(fields | overrides))
        servers.append(server)
        _track(request, server)
        if "port" in overrides:  # the test's own choice: no other port will do
            server.start()
        else:
            _start_on_a_free_port(server, server.start)
        return server

    try:
        yield make
    finally:
        unclean = [(server, server.stop()) for server in servers]
        _drop(drops)
    unclean = [(server, code) for server, code in unclean if code not in (None, 0)]
    if unclean:  # SIGTERM must stop kinepy cleanly; a crash during the test shows up here too
        pytest.fail(
            "\n".join(
                f"kinepy exited with {code} on SIGTERM:\n{server.log_tail()}" for server, code in unclean
            )
        )


@pytest.fixture
def make_kinepy_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kinepy_backend: str,
    kinepy_databases: SharedDatabaseServers,
) -> Iterator[Callable[..., KinepyServer]]:
    """Factory: each call starts ``python -m kinepy`` on a free port and a fresh database of
    ``kinepy_backend`` (a SQLite file, or a new PostgreSQL/MariaDB database), or of ``backend=``.

    Keyword arguments override ``KinepyServer`` fields (``log_level``, ``db_path`` to reuse a SQLite
    database, ``datastore_endpoint`` for any other, ``extra_args`` for more flags).
    The server's log is attached to the report of a failing test.
    """
    with kinepy_servers(request, tmp_path_factory, kinepy_backend, kinepy_databases) as make:
        yield make


@pytest.fixture
def kinepy_server(make_kinepy_server: Callable[..., KinepyServer]) -> KinepyServer:
    """A fresh kinepy on ``kinepy_backend`` (revision 1, no keys); has ``.restart()``, ``.stop()`` and, on
    SQLite, ``.db_path``."""
    return make_kinepy_server()


@pytest.fixture
def make_kinepy_on(make_kinepy_server: Callable[..., KinepyServer]) -> Callable[..., KinepyServer]:
    """Factory: ``make_kinepy_on(url, **overrides)`` is ``make_kinepy_server`` on datastore endpoint `url`
    (any backend, whatever ``kinepy_backend`` is)."""

    def make(url: str, **overrides: Any) -> KinepyServer:
        return make_kinepy_server(datastore_endpoint=url, **overrides)

    return make


@pytest.fixture
def kinepy_datastore_endpoint(
    kinepy_backend: str, kinepy_databases: SharedDatabaseServers, tmp_path: Path
) -> Iterator[str]:
    """The ``--datastore-endpoint`` of a fresh database of ``kinepy_backend``, for an in-process kinepy."""
    if kinepy_backend == "sqlite":
        yield f"sqlite://{tmp_path / 'state.db'}"
        return
    drops: list[TestDatabase] = []
    yield _fresh_datastore(kinepy_backend, kinepy_databases, drops)
    _drop(drops)


# --------------------------------------------------------------------------------------------------
# etcdctl.


def run_etcdctl(
    endpoint: str,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = ETCDCTL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl --endpoints=ENDPOINT ARGS...`` with API v3; never raises on a non-zero exit code."""
    full_env = {**os.environ, "ETCDCTL_API": "3", **(env or {})}
    return subprocess.run(
        [ETCDCTL_BIN, f"--endpoints={endpoint}", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def run_etcdctl_json(endpoint: str, *args: str, input: str | None = None) -> Any:
    """Run etcdctl with ``-w json``; fail the test unless it exits 0; return the parsed JSON.

    Text before the JSON (``txn -i`` prints its prompts to stdout) is skipped.
    """
    proc = run_etcdctl(endpoint, "-w", "json", *args, input=input)
    assert proc.returncode == 0, f"etcdctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    start = proc.stdout.find("{")
    assert start >= 0, f"no JSON in etcdctl output: {proc.stdout!r}"
    return json.loads(proc.stdout[start:])


def _etcd_healthy(endpoint: str) -> bool:
    proc = run_etcdctl(
        endpoint, "--dial-timeout=1s", "--command-timeout=2s", "endpoint", "health", timeout=10
    )
    return proc.returncode == 0


@pytest.fixture
def etcdctl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``etcdctl(endpoint, *args, input=None, env=None)`` → ``CompletedProcess`` (see ``run_etcdctl``)."""
    return run_etcdctl


@pytest.fixture
def etcdctl_json() -> Callable[..., Any]:
    """``etcdctl_json(endpoint, *args, input=None)`` → parsed ``-w json`` output (``run_etcdctl_json``)."""
    return run_etcdctl_json
