"""The servers under test: kinepy on SQLite, PostgreSQL or MariaDB; a real etcd; kine on SQLite.

Every target is started fresh (empty store, free loopback port, its own temporary directory) for each
dataset the orchestrator loads, and stopped after it. Each has ``endpoint``, ``pid`` (the process that
serves gRPC) and ``db_pid`` (a database server whose CPU is part of the target's cost, or None), and
``unsupported`` maps workload kinds the target cannot run to the reason.

    kinepy-sqlite     python -m kinepy --datastore-endpoint sqlite://DIR/state.db (default, durable settings)
    kinepy-postgres   python -m kinepy on a fresh database of a PostgreSQL 15 the run starts itself
    kinepy-mariadb    python -m kinepy on a fresh database of a MariaDB the run starts itself
    etcd              /usr/bin/etcd (Debian etcd-server) with default settings: fsync on, 2 GiB quota
    kine-sqlite       kine vX (``go install github.com/k3s-io/kine@KINE_VERSION``) with its default SQLite
                      (./db/state.db, WAL, synchronous=NORMAL), exactly as k3s runs it

The PostgreSQL and MariaDB servers are the test suite's own (``kinepy/testing/databases.py``: temporary
data directory, free port, fsync on), started once per run on first use.
"""

from __future__ import annotations

import contextlib
import os
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

if TYPE_CHECKING:
    from kinepy.testing.databases import DatabaseServer

REPO_ROOT = Path(__file__).resolve().parent.parent
ETCD_BIN = "/usr/bin/etcd"
KINE_VERSION = "v0.16.4"
KINE_MODULE = "github.com/k3s-io/kine"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kinepy-bench"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

TARGETS = ("kinepy-sqlite", "kinepy-postgres", "kinepy-mariadb", "etcd", "kine-sqlite")

# kine accepts four Txn shapes, no lease keepalive/revoke (its LeaseGrant stores nothing) and no
# DeleteRange; the loadgen also detects rejections at run time, this list only saves the attempt.
KINE_UNSUPPORTED = {"lease_churn": "kine rejects LeaseKeepAlive and LeaseRevoke (lease.go: 'not supported')"}


class TargetUnavailable(Exception):
    """A target cannot run on this machine (missing binary, failed build); the message says why."""


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
        while not _port_accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start ({' '.join(argv)}):\n{_tail(log)}")
            time.sleep(0.1)

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
class Kinepy(Target):
    backend: str = "sqlite"
    database: DatabaseServer | None = None  # for postgres and mariadb
    _db_name: str = ""

    def prepare(self) -> None:
        if self.backend != "sqlite":
            assert self.database is not None
            self._db_name = self.database.create_database()

    def datastore(self) -> str:
        assert self.workdir is not None
        if self.backend == "sqlite":
            return f"sqlite://{self.workdir / 'state.db'}"
        assert self.database is not None
        return self.database.url(self._db_name)

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
        ]

    def env(self) -> dict[str, str] | None:
        # The server runs in its temporary directory: make this checkout's kinepy importable there.
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        return {**os.environ, "PYTHONPATH": path}

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
class Etcd(Target):
    def prepare(self) -> None:
        if not Path(ETCD_BIN).exists():
            raise TargetUnavailable(f"{ETCD_BIN} not installed (apt-get install etcd-server)")

    def argv(self) -> list[str]:
        assert self.workdir is not None
        url, peer, name = f"http://{self.endpoint}", f"http://127.0.0.1:{free_port()}", f"bench-{self.port}"
        return [
            ETCD_BIN,
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
class Kine(Target):
    binary: Path = Path()

    def argv(self) -> list[str]:
        # No --endpoint: kine then uses ./db/state.db (under workdir) with its default SQLite parameters,
        # as k3s does. Metrics on a free port instead of :8080.
        return [
            str(self.binary),
            "--listen-address",
            self.endpoint,
            "--metrics-bind-address",
            f"127.0.0.1:{free_port()}",
        ]


def build_kine(log: Callable[[str], None]) -> Path:
    """The kine binary: $KINE_BIN, else CACHE_DIR/bin/kine-VERSION, built with `go install` if missing.
    Raises `TargetUnavailable` saying why it cannot be had (no Go, no cgo/gcc for go-sqlite3, build error)."""
    if os.environ.get("KINE_BIN"):
        return Path(os.environ["KINE_BIN"])
    binary = CACHE_DIR / "bin" / f"kine-{KINE_VERSION}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise TargetUnavailable("Go is not installed (kine is built with `go install`)")
    cgo = subprocess.run(
        [go, "env", "CGO_ENABLED"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if cgo != "1" or shutil.which("gcc") is None:
        raise TargetUnavailable(
            f"kine's SQLite driver (mattn/go-sqlite3) needs cgo: CGO_ENABLED={cgo!r}, gcc "
            f"{'found' if shutil.which('gcc') else 'missing'}"
        )
    gobin = CACHE_DIR / "gobin"
    gobin.mkdir(parents=True, exist_ok=True)
    log(f"building kine {KINE_VERSION} with go install (first run only; a few minutes)…")
    proc = subprocess.run(
        [go, "install", f"{KINE_MODULE}@{KINE_VERSION}"],
        env={**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise TargetUnavailable(f"go install {KINE_MODULE}@{KINE_VERSION} failed:\n{proc.stderr[-3000:]}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(gobin / "kine"), binary)
    return binary


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


def make_target(name: str, databases: DatabaseServers, log: Callable[[str], None]) -> Target:
    """The target called `name` (one of TARGETS), ready to `start()`; raises `TargetUnavailable`."""
    if name == "kinepy-sqlite":
        return Kinepy(name)
    if name in ("kinepy-postgres", "kinepy-mariadb"):
        kind = name.split("-", 1)[1]
        return Kinepy(name, backend=kind, database=databases.get(kind))
    if name == "etcd":
        if not Path(ETCD_BIN).exists():
            raise TargetUnavailable(f"{ETCD_BIN} not installed (apt-get install etcd-server)")
        return Etcd(name)
    if name == "kine-sqlite":
        return Kine(name, unsupported=dict(KINE_UNSUPPORTED), multi_op_txn=False, binary=build_kine(log))
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")


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


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux ≥ 4.0: write 5 to clear_refs); False if not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
