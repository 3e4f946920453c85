"""The servers under test: kinepy and kine on SQLite, PostgreSQL or MariaDB; a real etcd (3.4 or 3.6.5).

Every target is started fresh (empty store, free loopback port, its own temporary directory) for each
dataset the orchestrator loads, and stopped after it. Each has ``endpoint``, ``pid`` (the process that
serves gRPC) and ``db_pid`` (a database server whose CPU is part of the target's cost, or None), and
``unsupported`` maps workload kinds the target cannot run to the reason.

    kinepy-sqlite     python -m kinepy --datastore-endpoint sqlite://DIR/state.db (default, durable settings)
    kinepy-postgres   python -m kinepy on a fresh database of a PostgreSQL 15 the run starts itself
    kinepy-mariadb    python -m kinepy on a fresh database of a MariaDB the run starts itself
    etcd              /usr/bin/etcd (Debian etcd-server, 3.4) with default settings: fsync on, 2 GiB quota
    etcd-3.6.5        etcd v3.6.5 built from the module proxy (gobuild.py), the same settings
    kine-sqlite       kine vX (``go install github.com/k3s-io/kine@KINE_VERSION``) with its default SQLite
                      (./db/state.db, WAL, synchronous=NORMAL), exactly as k3s runs it
    kine-postgres     kine on a fresh database of the same PostgreSQL server as kinepy-postgres
    kine-mariadb      kine on a fresh database of the same MariaDB server as kinepy-mariadb
    kinepy-X-wN       kinepy on backend X with --workers N (kinepy-X alone: the default, one per two CPUs)

The PostgreSQL and MariaDB servers are the test suite's own (``kinepy/testing/databases.py``: temporary
data directory, free port, fsync on), started once per run on first use and shared by kinepy and kine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.gobuild import ETCD_VERSION, REPO_ROOT, TargetUnavailable, build_kine, etcd_tools

if TYPE_CHECKING:
    from kinepy.testing.databases import DatabaseServer

__all__ = ["REPO_ROOT", "TargetUnavailable", "build_kine"]  # re-exported: drive.py, the kine tests

ETCD_BIN = "/usr/bin/etcd"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

TARGETS = (
    "kinepy-sqlite",
    "kinepy-postgres",
    "kinepy-mariadb",
    "etcd",
    f"etcd-{ETCD_VERSION.lstrip('v')}",
    "kine-sqlite",
    "kine-postgres",
    "kine-mariadb",
)
WORKERS_SUFFIX = re.compile(r"(kinepy-(?:sqlite|postgres|mariadb))-w([1-9][0-9]*)")

# kine accepts four Txn shapes, no lease keepalive/revoke (its LeaseGrant stores nothing) and no
# DeleteRange; the loadgen also detects rejections at run time, this list only saves the attempt.
KINE_UNSUPPORTED = {"lease_churn": "kine rejects LeaseKeepAlive and LeaseRevoke (lease.go: 'not supported')"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-max_chars:]


@dataclass
class Target:
    name: str
    unsupported: dict[str, str] = field(default_factory=dict)
    multi_op_txn: bool = True  # preload may put 100 keys per txn
    port: int = 0
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def db_pid(self) -> int | None:
        return None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def prepare(self) -> None:
        """Per-start setup before `argv()` (a fresh database); raise `TargetUnavailable` if impossible."""

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kinepy-bench-{self.name}-"))
        self.port = free_port()
        self.prepare()
        log = self.workdir / "server.log"
        argv = self.argv()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=self.env()
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start ({' '.join(argv)}):\n{_tail(log)}")
            time.sleep(0.1)

    def ready(self) -> bool:
        """Serving: the port accepts connections."""
        return _port_accepts(self.port)

    def log_tail(self) -> str:
        return _tail(self.workdir / "server.log") if self.workdir else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.cleanup()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def cleanup(self) -> None:
        """Per-start teardown after the server stopped (drop the database)."""


@dataclass
class OnDatabase(Target):
    """A target storing into SQLite in its directory, or into a fresh database of a shared server."""

    backend: str = "sqlite"
    database: DatabaseServer | None = None  # for postgres and mariadb
    _db_name: str = ""

    def prepare(self) -> None:
        if self.backend != "sqlite":
            assert self.database is not None
            self._db_name = self.database.create_database()

    def database_url(self) -> str:
        assert self.database is not None
        return self.database.url(self._db_name)

    @property
    def db_pid(self) -> int | None:
        if self.database is None or self.database.proc is None:
            return None
        return self.database.proc.pid

    def cleanup(self) -> None:
        if self._db_name and self.database is not None:
            with contextlib.suppress(Exception):
                self.database.drop_database(self._db_name)
            self._db_name = ""


@dataclass
class Kinepy(OnDatabase):
    _notify: socket.socket | None = field(default=None, repr=False)
    extra_args: list[str] = field(default_factory=list)

    def datastore(self) -> str:
        assert self.workdir is not None
        if self.backend == "sqlite":
            return f"sqlite://{self.workdir / 'state.db'}"
        return self.database_url()

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kinepy",
            "--listen-address",
            self.endpoint,
            "--datastore-endpoint",
            self.datastore(),
            "--log-level",
            "warning",
            *self.extra_args,
        ]

    def env(self) -> dict[str, str] | None:
        # The server runs in its temporary directory: make this checkout's kinepy importable there.
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        return {**os.environ, "PYTHONPATH": path, "NOTIFY_SOCKET": str(self._notify_path())}

    def _notify_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "notify"

    def prepare(self) -> None:
        super().prepare()
        # systemd's readiness protocol: READY=1 comes once every worker serves (`--workers`, one per two CPUs
        # by default), not when the first one accepts connections.
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._notify_path()))
        self._notify.setblocking(False)

    def cleanup(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        super().cleanup()

    def ready(self) -> bool:
        notify = self._notify
        if notify is None:
            return _port_accepts(self.port)
        with contextlib.suppress(BlockingIOError):
            while True:
                if notify.recv(64) == b"READY=1":
                    notify.close()
                    self._notify = None
                    return True
        return False


@dataclass
class Etcd(Target):
    binary: str = ETCD_BIN

    def prepare(self) -> None:
        if not Path(self.binary).exists():
            raise TargetUnavailable(f"{self.binary} not installed (apt-get install etcd-server)")

    def argv(self) -> list[str]:
        assert self.workdir is not None
        url, peer, name = f"http://{self.endpoint}", f"http://127.0.0.1:{free_port()}", f"bench-{self.port}"
        return [
            self.binary,
            f"--name={name}",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={name}={peer}",
            "--logger=zap",
            "--log-level=warn",
        ]


@dataclass
class Kine(OnDatabase):
    binary: Path = Path()

    def argv(self) -> list[str]:
        # On SQLite no --endpoint: kine then uses ./db/state.db (under workdir) with its default SQLite
        # parameters, as k3s does. Metrics on a free port instead of :8080.
        endpoint = [] if self.backend == "sqlite" else ["--endpoint", self.database_url()]
        return [
            str(self.binary),
            "--listen-address",
            self.endpoint,
            "--metrics-bind-address",
            f"127.0.0.1:{free_port()}",
            *endpoint,
        ]


class DatabaseServers:
    """The PostgreSQL and MariaDB servers of `kinepy.testing.databases`, started on first use, stopped by
    `close()`. A server that cannot start becomes `TargetUnavailable`."""

    def __init__(self) -> None:
        self._servers: dict[str, DatabaseServer] = {}

    def get(self, kind: str) -> DatabaseServer:
        if kind not in self._servers:
            # Imported here: only runs with a database target pay for it (it imports the pytest plugin).
            from kinepy.testing.databases import (
                DatabaseStartError,
                DatabaseUnavailable,
                start_database_server,
            )

            try:
                self._servers[kind] = start_database_server(kind)
            except (DatabaseUnavailable, DatabaseStartError) as exc:
                raise TargetUnavailable(f"{kind} server did not start: {exc}") from exc
        return self._servers[kind]

    def close(self) -> None:
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                server.remove()
        self._servers.clear()


def check_target(name: str) -> None:
    """Raise `ValueError` unless `name` is one of TARGETS, or kinepy-BACKEND-wN (N workers)."""
    if name not in TARGETS and not WORKERS_SUFFIX.fullmatch(name):
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}, kinepy-BACKEND-wN")


def make_target(name: str, databases: DatabaseServers, log: Callable[[str], None]) -> Target:
    """The target called `name` (see `check_target`), ready to `start()`; raises `TargetUnavailable`."""
    check_target(name)
    workers = WORKERS_SUFFIX.fullmatch(name)
    server, _, backend = (workers.group(1) if workers else name).partition("-")
    if server == "etcd":
        binary = str(etcd_tools(log) / "etcd") if backend else ETCD_BIN
        if not Path(binary).exists():
            raise TargetUnavailable(f"{binary} not installed (apt-get install etcd-server)")
        return Etcd(name, binary=binary)
    database = databases.get(backend) if backend != "sqlite" else None
    if server == "kinepy":
        extra = ["--workers", workers.group(2)] if workers else []
        return Kinepy(name, backend=backend, database=database, extra_args=extra)
    return Kine(
        name,
        unsupported=dict(KINE_UNSUPPORTED),
        multi_op_txn=False,
        backend=backend,
        database=database,
        binary=build_kine(log),
    )


# --------------------------------------------------------------------------------------------------
# Process accounting from /proc.

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float]:
    """(ppid, own user+system CPU seconds, reaped children's CPU seconds) of `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14..17.
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / _CLK_TCK
    return ppid, own, children


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and all its descendants (living ones directly, exited and
    reaped ones through their parents' cutime/cstime): PostgreSQL backends are children of the
    postmaster."""
    parents: dict[int, int] = {}
    own: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid, cpu, children = _stat(int(entry))
            parents[int(entry)] = ppid
            own[int(entry)] = cpu + children
    total, stack = 0.0, [root]
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        kids.setdefault(ppid, []).append(pid)
    while stack:
        pid = stack.pop()
        total += own.get(pid, 0.0)
        stack.extend(kids.get(pid, []))
    return total


def _with_descendants(pid: int) -> list[int]:
    """`pid` and every process below it (kinepy's workers under their supervisor)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
    return found


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """`field_name` of /proc/PID/status, summed over `pid` and its descendants (a server's workers; for
    VmHWM the sum of each process's peak, an upper bound of the peak of the whole)."""
    total = 0
    for member in _with_descendants(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
                    break
    return total


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of `pid` and its descendants (Linux ≥ 4.0: write 5 to clear_refs); False if not
    permitted."""
    try:
        for member in _with_descendants(pid):
            with open(f"/proc/{member}/clear_refs", "w") as f:
                f.write("5")
        return True
    except OSError:
        return False
