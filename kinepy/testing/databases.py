"""Real database servers for tests and benchmarks: PostgreSQL 15 and MariaDB on free loopback ports.

``start_database_server("postgres" | "mariadb")`` creates a fresh data directory under /tmp and starts
the server on a free loopback port, waiting for it with a bounded poll:

- PostgreSQL: ``initdb``, then ``postgres`` with its Unix socket in that directory; password (SCRAM)
  auth on TCP. As root the cluster belongs to, and runs as, the ``postgres`` system user: PostgreSQL
  refuses to run as root.
- MariaDB: ``mariadb-install-db``, then ``mariadbd`` (``--user=root`` when root).

Both get a ``kinepy`` user with password ``PASSWORD`` that may create databases. A ``DatabaseServer``
can be ``stop()``-ped and ``start()``-ed again on the same port and data directory (outage tests);
``remove()`` stops it and deletes its directory. ``SharedDatabaseServers`` holds one server of each
kind, started on first use.

``start_replicated_postgres(synchronous=…)`` starts a PostgreSQL primary and a streaming standby made from it
(``pg_basebackup -R``); with ``synchronous=True`` the primary waits for the standby at every commit
(``synchronous_standby_names``). ``ReplicatedPostgres.fail_over()`` kills the primary (SIGKILL, every process
of it, like a machine that dies) and promotes the standby (``pg_promote()``).

Missing binaries raise ``DatabaseUnavailable`` (its message says which package to install); a server
that fails to start raises ``DatabaseStartError`` with its log. The test suite's conftest turns these
into skips and failures; nothing here depends on pytest. Debian's packages: ``postgresql-15``,
``mariadb-server`` (``scripts/test`` installs them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinepy.testing.netproxy import Proxy

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
GALERA_PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
RSYNC = Path("/usr/bin/rsync")  # Galera's rsync state transfer
GALERA_JOIN_TIMEOUT = 120.0  # seconds for a joiner: it may wait for a donor, then the transfer
USER = "kinepy"
PASSWORD = "kinepy-test-Secret-42"
START_TIMEOUT = 60.0  # seconds for initdb/install-db plus the first accepted connection
STOP_TIMEOUT = 20.0
KINDS = ("postgres", "mariadb")


class DatabaseUnavailable(Exception):
    """The server's binaries are not installed; the message names them and the package to install."""


class DatabaseStartError(RuntimeError):
    """The server did not start; the message holds the end of its log."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require(what: str, paths: list[Path], package: str) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise DatabaseUnavailable(
            f"!!! {', '.join(missing)} not installed: the {what} backend tests did NOT run. "
            f"Install with `apt-get install -y {package}` (scripts/test does). !!!"
        )


def _tail(path: Path, max_chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text if len(text) <= max_chars else "…\n" + text[-max_chars:]


def _wait(
    what: str,
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    log: Path,
    timeout: float = START_TIMEOUT,
) -> float:
    """Poll `ready()` until it holds (returns the seconds it took); raise if the process exits or
    `timeout` seconds pass."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise DatabaseStartError(
                f"{what} exited with {proc.returncode} before it was ready:\n{_tail(log)}"
            )
        if ready():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            _stop(proc, signal.SIGINT)
            raise DatabaseStartError(f"{what} not ready after {timeout} s:\n{_tail(log)}")
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
    extra_args: list[str] = field(default_factory=list)
    """More `mariadbd` options (a Galera node's wsrep settings)."""
    ready_check: Callable[[DatabaseServer], bool] | None = field(default=None, repr=False)
    """When the server counts as started (default: it answers `SELECT 1`)."""

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

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as if its machine died (PostgreSQL's
        backends would otherwise live on a little, serving their clients, after the postmaster)."""
        if self.proc is None:
            return
        children = _children(self.proc.pid)
        self.proc.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP the server and every process it started (SIGCONT with `paused=False`): connections
        stay open and nothing answers, as when the database's host hangs."""
        if self.proc is None:
            return
        for pid in (self.proc.pid, *_children(self.proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)

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

    def remove(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces and parentheses, so split after the last ')'
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def start_database_server(kind: str) -> DatabaseServer:
    """A new ``"postgres"`` or ``"mariadb"`` server in a fresh directory, accepting connections."""
    if kind == "postgres":
        return _start_postgres()
    if kind == "mariadb":
        return _start_mariadb()
    raise ValueError(f"unknown database server {kind!r}; known: {KINDS}")


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
        raise DatabaseStartError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
    server = DatabaseServer("postgres", free_port(), root, log_path)
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


def _install_mariadb(root: Path, *options: str) -> None:
    """`mariadb-install-db` into `root`/data (with more server `options`)."""
    own_user = any(option.startswith("--user=") for option in options)
    as_root = ["--user=root"] if os.geteuid() == 0 and not own_user else []
    argv = [str(MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={root / 'data'}", *options]
    argv += ["--auth-root-authentication-method=normal", "--skip-test-db", *as_root]
    install = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    if install.returncode != 0:
        raise DatabaseStartError(
            f"mariadb-install-db failed ({install.returncode}):\n{install.stdout}\n{install.stderr}"
        )


def _add_kinepy_user(server: DatabaseServer) -> None:
    server.sql(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
    server.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'")
    server.version = server.sql("SELECT VERSION()")[0][0]


def _start_mariadb() -> DatabaseServer:
    _require("MariaDB", [MARIADBD, MARIADB_INSTALL_DB], "mariadb-server")
    root = Path(tempfile.mkdtemp(prefix="kinepy-mariadb-"))
    started = time.monotonic()
    _install_mariadb(root)
    server = DatabaseServer("mariadb", free_port(), root, root / "mariadbd.log")
    _launch_mariadb(server)
    _add_kinepy_user(server)
    server.startup_seconds = time.monotonic() - started
    return server


def _launch_mariadb(server: DatabaseServer, timeout: float = START_TIMEOUT) -> float:
    """Run `mariadbd` on the server's data directory and port; wait until it accepts connections."""
    root = server.root
    own_user = any(arg.startswith("--user=") for arg in server.extra_args)
    as_root = ["--user=root"] if os.geteuid() == 0 and not own_user else []
    socket_path = root / "mariadbd.sock"
    argv = [str(MARIADBD), "--no-defaults", f"--datadir={root / 'data'}", f"--port={server.port}"]
    argv += ["--bind-address=127.0.0.1", f"--socket={socket_path}", f"--pid-file={root / 'mariadbd.pid'}"]
    argv += [f"--log-error={server.log_path}", "--max-connections=300", *as_root, *server.extra_args]
    with (root / "mariadbd.out").open("ab") as out:
        server.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            if server.ready_check is not None:
                return server.ready_check(server)
            server.sql("SELECT 1")
        except Exception:
            return False
        return True

    return _wait("mariadbd", server.proc, ready, server.log_path, timeout)


def _galera_synced(server: DatabaseServer) -> bool:
    """A Galera node is started when it is part of the primary component and in sync (a joiner
    answers `SELECT 1` before its state transfer ends)."""
    rows = dict(server.sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')"))
    return rows.get("wsrep_ready") == "ON" and rows.get("wsrep_local_state") == "4"  # 4: Synced


@dataclass
class GaleraCluster:
    """MariaDB Galera nodes on 127.0.0.1, each a `DatabaseServer` (stop and start one to test an
    outage); `url(name, node)` is a kinepy endpoint for database `name` through node `node`."""

    nodes: list[DatabaseServer]
    version: str = ""
    startup_seconds: float = 0.0

    def url(self, database: str, node: int = 0) -> str:
        return self.nodes[node].url(database)

    def urls(self, database: str) -> list[str]:
        """`database` through each node, in node order."""
        return [node.url(database) for node in self.nodes]

    def sql(self, statement: str, *, database: str = "", node: int = 0) -> list[tuple[Any, ...]]:
        return self.nodes[node].sql(statement, database=database)

    def create_database(self) -> str:
        return self.nodes[0].create_database()  # DDL replicates to every node (total order isolation)

    def drop_database(self, name: str) -> None:
        self.nodes[0].drop_database(name)

    def cluster_size(self, node: int = 0) -> int:
        return int(self.sql("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'", node=node)[0][1])

    def remove(self) -> None:
        """Stop every node (the last started first) and delete their directories."""
        for node in reversed(self.nodes):
            node.remove()


def _galera_options(name: str, cluster: str, ports: tuple[int, int, int]) -> list[str]:
    """The wsrep options of one node: group communication on `ports[0]`, incremental state transfer
    on `ports[1]`, rsync state transfer on `ports[2]`, all on loopback; a small gcache and redo log
    keep the state transfer short."""
    gcomm, ist, sst = ports
    provider = [
        f"base_host=127.0.0.1;base_port={gcomm};gmcast.listen_addr=tcp://127.0.0.1:{gcomm}",
        f"ist.recv_addr=127.0.0.1:{ist};gcache.size=16M;pc.wait_prim_timeout=PT10S",
    ]
    return [
        "--wsrep-on=ON",
        f"--wsrep-provider={GALERA_PROVIDER}",
        f"--wsrep-provider-options={';'.join(provider)}",
        f"--wsrep-cluster-address={cluster}",
        "--wsrep-cluster-name=kinepy-test",
        f"--wsrep-node-name={name}",
        f"--wsrep-node-address=127.0.0.1:{gcomm}",
        f"--wsrep-sst-receive-address=127.0.0.1:{sst}",
        "--wsrep-sst-method=rsync",
        "--binlog-format=ROW",
        "--default-storage-engine=InnoDB",
        "--innodb-autoinc-lock-mode=2",
        "--innodb-flush-log-at-trx-commit=2",  # Galera's durability is the other nodes' copy
        "--innodb-log-file-size=16M",
        "--innodb-buffer-pool-size=64M",
    ]


def _galera_user(root: Path) -> list[str]:
    """As root, a node runs as the `mysql` system user (and `root` becomes its): the joiner's rsync
    daemon, started as root, would write as `nobody`, which may not write the data directory."""
    if os.geteuid() != 0:
        return []
    _chown_to_galera_user(root)
    return ["--user=mysql"]


def _chown_to_galera_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "mysql", "mysql")


def _wait_for_membership(cluster: GaleraCluster) -> None:
    """Until every node counts every node in its view of the cluster."""
    deadline = time.monotonic() + START_TIMEOUT
    size = len(cluster.nodes)
    while (sizes := [cluster.cluster_size(index) for index in range(size)]) != [size] * size:
        if time.monotonic() > deadline:
            raise DatabaseStartError(f"the Galera nodes do not see each other: cluster sizes {sizes}")
        time.sleep(0.1)


def start_galera_cluster(size: int = 3) -> GaleraCluster:
    """A new MariaDB Galera cluster of `size` nodes on free loopback ports, each in a fresh directory:
    node 0 bootstraps the cluster (`--wsrep-new-cluster`) on a fresh `mariadb-install-db`, then the
    others join, each receiving the state by rsync. Returns when every node is Synced."""
    needed = [MARIADBD, MARIADB_INSTALL_DB, GALERA_PROVIDER, RSYNC]
    _require("MariaDB Galera", needed, "mariadb-server galera-4 rsync")
    started = time.monotonic()
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    address = "gcomm://" + ",".join(f"127.0.0.1:{gcomm}" for gcomm, _, _ in ports)
    cluster = GaleraCluster([])
    try:
        for index, node_ports in enumerate(ports):
            root = Path(tempfile.mkdtemp(prefix=f"kinepy-galera{index}-"))
            port = free_port()
            options = _galera_options(f"node{index}", address, node_ports) + _galera_user(root)
            options.append(f"--wsrep-node-incoming-address=127.0.0.1:{port}")  # else AUTO, no use to kinepy
            if index == 0:
                _install_mariadb(root, *_galera_user(root))
            else:
                (root / "data").mkdir()
                _chown_to_galera_user(root / "data")
            node = DatabaseServer("mariadb", port, root, root / "mariadbd.log", extra_args=options)
            node.ready_check = _galera_synced
            cluster.nodes.append(node)
        first, *joiners = cluster.nodes
        first.extra_args = [*first.extra_args, "--wsrep-new-cluster"]
        _launch_mariadb(first)
        first.extra_args = first.extra_args[:-1]  # a restart joins the running cluster
        _add_kinepy_user(first)
        # The joiners start together: a second joiner waits (Galera retries every second) until the
        # first is synced and can donate too.
        with concurrent.futures.ThreadPoolExecutor(len(joiners) or 1) as pool:
            for launched in [pool.submit(_launch_mariadb, node, GALERA_JOIN_TIMEOUT) for node in joiners]:
                launched.result()
        _wait_for_membership(cluster)
    except BaseException:
        cluster.remove()
        raise
    cluster.version = cluster.nodes[0].version
    cluster.startup_seconds = time.monotonic() - started
    return cluster


@dataclass
class ReplicatedPostgres:
    """A PostgreSQL primary and a standby streaming from it, on 127.0.0.1; `url(name)` is a multi-host
    kinepy endpoint naming both (the primary first), which follows whichever is the primary."""

    primary: DatabaseServer
    standby: DatabaseServer
    synchronous: bool
    replication: Proxy | None = None
    """The TCP proxy the standby streams through (`proxied=True`): `replication.cut()` partitions them."""
    killed_at: float = 0.0
    """`time.monotonic()` once `fail_over` had killed the primary."""

    def url(self, database: str, *, password: str = PASSWORD, user: str = USER) -> str:
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return (
            f"postgres://{user}:{password}@{hosts}/{database}?sslmode=disable&target_session_attrs=read-write"
        )

    def wait_streaming(self) -> None:
        """Wait until the standby streams from the primary (and, when synchronous, is its sync standby)."""
        wanted = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rows = self.primary.sql("SELECT state, sync_state FROM pg_stat_replication")
            if ("streaming", wanted) in rows:
                return
            if time.monotonic() > deadline:
                raise DatabaseStartError(
                    f"the standby is not streaming ({wanted}) after {START_TIMEOUT} s: {rows}\n"
                    f"{_tail(self.standby.log_path)}"
                )
            time.sleep(0.05)

    def replayed(self) -> bool:
        """Whether the standby has replayed everything the primary has written."""
        lsn = self.primary.sql("SELECT pg_current_wal_lsn()")[0][0]
        rows = self.standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
        return bool(rows[0][0] == "t")

    def fail_over(self) -> float:
        """Kill the primary (SIGKILL) and promote the standby; returns the seconds the promotion took
        (until the new primary accepts writes)."""
        self.primary.kill()
        started = self.killed_at = time.monotonic()
        [(promoted,)] = self.standby.sql("SELECT pg_promote(wait => true, wait_seconds => 60)")
        if promoted != "t":
            raise DatabaseStartError(f"the standby was not promoted:\n{_tail(self.standby.log_path)}")
        return time.monotonic() - started

    def remove(self) -> None:
        if self.replication is not None:
            self.replication.close()
        self.primary.remove()
        self.standby.remove()


def start_replicated_postgres(*, synchronous: bool, proxied: bool = False) -> ReplicatedPostgres:
    """A new PostgreSQL primary and a standby made from it with ``pg_basebackup -R``, streaming.

    `synchronous`: the primary waits at each commit until the standby has the commit on disk
    (``synchronous_standby_names = '*'``, set on the primary only: the standby, once promoted, has
    no standby to wait for). `proxied`: the standby streams through a TCP proxy (`replication`) that
    the test can cut, so that the primary goes on alone."""
    _require("PostgreSQL", [PG_BIN / "pg_basebackup", PG_BIN / "postgres"], "postgresql-15")
    primary = _start_postgres()
    proxy = Proxy(primary.port) if proxied else None
    try:
        standby = _start_standby(primary, proxy.port if proxy is not None else primary.port)
    except BaseException:
        if proxy is not None:
            proxy.close()
        primary.remove()
        raise
    pair = ReplicatedPostgres(primary, standby, synchronous, proxy)
    try:
        if synchronous:
            primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            primary.sql("SELECT pg_reload_conf()")
        pair.wait_streaming()
    except BaseException:
        pair.remove()
        raise
    return pair


def _start_standby(primary: DatabaseServer, upstream_port: int) -> DatabaseServer:
    root = Path(tempfile.mkdtemp(prefix="kinepy-pg-standby-"))
    as_owner, uid, gid = _owner()
    if uid >= 0:
        os.chown(root, uid, gid)
    started = time.monotonic()
    argv = [str(PG_BIN / "pg_basebackup"), "-h", str(primary.root), "-p", str(primary.port), "-U", "postgres"]
    argv += ["-D", str(root / "data"), "-R", "-X", "stream", "-c", "fast", "--no-sync"]
    backup = subprocess.run(
        [*as_owner, *argv], capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )
    if backup.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise DatabaseStartError(f"pg_basebackup failed ({backup.returncode}):\n{backup.stderr}")
    # -R wrote a primary_conninfo over the primary's Unix socket; stream over TCP, through `upstream_port`.
    conninfo = (
        f"host=127.0.0.1 port={upstream_port} user=postgres password={PASSWORD} application_name=standby"
    )
    with (root / "data" / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"primary_conninfo = '{conninfo}'\n")
    standby = DatabaseServer("postgres", free_port(), root, root / "postgres.log")
    _launch_postgres(standby)
    standby.version = primary.version
    standby.startup_seconds = time.monotonic() - started
    return standby


@dataclass
class TestDatabase:
    """One fresh database: `url` is the kinepy endpoint; `server` is None for SQLite."""

    __test__ = False  # not a test class, whatever its name

    kind: str
    url: str
    name: str
    server: DatabaseServer | None = None


class SharedDatabaseServers:
    """A PostgreSQL and a MariaDB server, each started on first use and kept until `close()`."""

    def __init__(self, *, announce: Callable[[str], None] | None = None) -> None:
        self._servers: dict[str, DatabaseServer] = {}
        self._announce = announce

    def server(self, kind: str) -> DatabaseServer:
        """The ``"postgres"`` or ``"mariadb"`` server, started now if it is not running yet."""
        if kind not in self._servers:
            server = self._servers[kind] = start_database_server(kind)
            if self._announce is not None:
                self._announce(f"[{kind} {server.version} started in {server.startup_seconds:.1f} s]")
        return self._servers[kind]

    def fresh_database(self, kind: str) -> TestDatabase:
        """A database name not used before on the `kind` server; the database itself does not exist
        yet: kinepy creates a missing database when it starts. ``drop_database`` it when done."""
        server = self.server(kind)
        name = f"kinepy_{secrets.token_hex(6)}"
        return TestDatabase(kind, server.url(name), name, server)

    def close(self) -> None:
        for server in self._servers.values():
            server.remove()
        self._servers.clear()
