"""`kinepy migrate`, `backup` and `restore` on real stores: SQLite files and the suite's PostgreSQL and
MariaDB servers. A store is written through a kinepy server (puts, updates, deletes, a lease, a
compaction), copied, and a kinepy server on the copy must answer like the original: Range at old
revisions, Watch from an old revision, the lease, the compaction point, HashKV.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conftest
import grpc
import pytest

from kinepy.backends.base import LogRow
from kinepy.endpoint import parse_endpoint
from kinepy.migrate.copy import CopyOptions, copy_store
from kinepy.migrate.endpoints import open_source, open_target
from kinepy.migrate.model import Header, TargetState
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.types import Lease

pytestmark = pytest.mark.kinepy

REPO = Path(__file__).resolve().parents[2]
MakeKinepy = Callable[..., conftest.KinepyServer]
ALL = b"\x00"  # key and range_end of "every key"


def kinepy_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "kinepy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


class Client:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        return int(self.kv.Put(request, timeout=30).header.revision)

    def delete(self, key: bytes) -> int:
        return int(self.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=30).header.revision)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def connect() -> Iterator[Callable[[str], Client]]:
    clients: list[Client] = []

    def make(endpoint: str) -> Client:
        clients.append(Client(endpoint))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def write_history(client: Client) -> int:
    """Puts, updates, deletes, a leased key, a compaction, and changes after it; the compaction revision."""
    for i in range(20):
        client.put(b"k/%02d" % i, b"v0-%d" % i)
    for i in range(0, 20, 2):
        client.put(b"k/%02d" % i, b"v1-%d" % i)
    client.delete(b"k/05")
    lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=30).ID
    client.put(b"leased", b"l", lease=lease)
    compact = client.put(b"k/03", b"v1-3")
    client.kv.Compact(rpc_pb2.CompactionRequest(revision=compact, physical=True), timeout=30)
    client.put(b"k/01", b"v2-1")
    client.delete(b"k/07")
    client.put(b"k/new", b"n")
    client.put(b"k/00", b"v2-0")
    return compact


@dataclass
class View:
    """What a client sees of a store: everything a copy must keep."""

    revision: int
    compact_revision: int
    hash: int
    ranges: dict[int, list[tuple[Any, ...]]]
    events: list[tuple[Any, ...]]
    leases: list[tuple[int, int]]
    below_compaction: str


def view(client: Client, compact: int) -> View:
    status = client.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
    revision = status.header.revision
    hashed = client.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30)
    ranges = {}
    for rev in range(compact, revision + 1):
        response = client.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev), timeout=30)
        ranges[rev] = [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in response.kvs
        ]
    try:
        client.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=compact - 1), timeout=30)
        below = "served"
    except grpc.RpcError as exc:
        below = f"{exc.code()} {exc.details()}"
    leases = []
    for lease in client.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30).leases:
        ttl = client.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID), timeout=30)
        assert 0 < ttl.TTL <= ttl.grantedTTL
        leases.append((lease.ID, ttl.grantedTTL))
    return View(
        revision,
        hashed.compact_revision,
        hashed.hash,
        ranges,
        watch_all(client, compact, revision),
        leases,
        below,
    )


def watch_all(client: Client, start: int, upto: int) -> list[tuple[Any, ...]]:
    """Every event of every key from `start` to `upto`, as a Watch from an old revision sees them."""
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    create = rpc_pb2.WatchCreateRequest(key=ALL, range_end=ALL, start_revision=start, prev_kv=True)
    requests.put(rpc_pb2.WatchRequest(create_request=create))
    call = client.watch.Watch(iter(requests.get, None), timeout=30)
    events: list[tuple[Any, ...]] = []
    try:
        for response in call:
            for e in response.events:
                events.append(
                    (e.type, e.kv.key, e.kv.value, e.kv.mod_revision, e.kv.version, e.prev_kv.value)
                )
            if events and events[-1][3] >= upto:
                break
    finally:
        requests.put(None)
        call.cancel()
    return events


def sqlite_url(path: Path) -> str:
    return f"sqlite://{path}"


@pytest.fixture
def fresh_url(kinepy_databases: Any) -> Iterator[Callable[[str], str]]:
    """A new empty database's endpoint on the suite's `postgres` or `mariadb` server."""
    made: list[Any] = []

    def make(backend: str) -> str:
        database = kinepy_databases.fresh_database(backend)
        made.append(database)
        return str(database.url)

    yield make
    for database in made:
        try:
            database.server.drop_database(database.name)
        except Exception:  # the server removes everything at the end anyway
            pass


def source_store(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], path: Path
) -> tuple[Any, View, int]:
    server = make_kinepy_server(backend="sqlite", db_path=path)
    client = connect(server.endpoint)
    compact = write_history(client)
    return server, view(client, compact), compact


def serve_and_view(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], url: str, compact: int
) -> View:
    if url.startswith("sqlite://"):
        server = make_kinepy_server(backend="sqlite", db_path=Path(url.removeprefix("sqlite://")))
    else:
        server = make_kinepy_server(backend="sqlite", datastore_endpoint=url)
    try:
        return view(connect(server.endpoint), compact)
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------


def test_sqlite_copy_of_a_running_server_serves_the_same_store(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    _, original, compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    target = tmp_path / "b.db"
    out = ok(kinepy_cli("migrate", "--from", sqlite_url(tmp_path / "a.db"), "--to", sqlite_url(target)))
    assert f"revision {original.revision}, compacted at {compact}" in out
    assert f"HashKV {original.hash} at revision {original.revision} on both sides" in out
    copy = serve_and_view(make_kinepy_server, connect, sqlite_url(target), compact)
    assert copy == original
    assert original.events and original.leases and "compacted" in original.below_compaction


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.slow  # three copies and four servers: about 10 s
def test_round_trip_sqlite_postgres_mariadb_sqlite(
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    fresh_url: Callable[[str], str],
    tmp_path: Path,
) -> None:
    server, original, compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    server.stop()
    chain = [
        sqlite_url(tmp_path / "a.db"),
        fresh_url("postgres"),
        fresh_url("mariadb"),
        sqlite_url(tmp_path / "z.db"),
    ]
    first = (tmp_path / "a.db").read_bytes()
    for source, target in itertools.pairwise(chain):
        out = ok(kinepy_cli("migrate", "--from", source, "--to", target))
        assert f"HashKV {original.hash} at revision {original.revision} on both sides" in out
        assert serve_and_view(make_kinepy_server, connect, target, compact) == original
    assert (tmp_path / "a.db").read_bytes() == first  # a source is only read


def test_current_only_keeps_revisions_of_the_current_state(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    _, original, _compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    target = tmp_path / "b.db"
    ok(
        kinepy_cli(
            "migrate", "--current-only", "--from", sqlite_url(tmp_path / "a.db"), "--to", sqlite_url(target)
        )
    )
    copy = serve_and_view(make_kinepy_server, connect, sqlite_url(target), original.revision)
    assert copy.revision == original.revision
    assert copy.compact_revision == original.revision
    assert copy.ranges[original.revision] == original.ranges[original.revision]
    assert copy.leases == original.leases


def test_refuses_a_target_with_data_and_changes_nothing(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    source_store(make_kinepy_server, connect, tmp_path / "a.db")
    other = make_kinepy_server(backend="sqlite", db_path=tmp_path / "b.db")
    client = connect(other.endpoint)
    client.put(b"mine", b"keep")
    other.stop()
    before = (tmp_path / "b.db").read_bytes()
    proc = kinepy_cli(
        "migrate", "--from", sqlite_url(tmp_path / "a.db"), "--to", sqlite_url(tmp_path / "b.db")
    )
    assert proc.returncode == 1
    assert "already holds a store (revision 2, 1 keys, 1 history rows, 0 leases)" in proc.stderr
    assert "--replace" in proc.stderr
    assert (tmp_path / "b.db").read_bytes() == before
    ok(
        kinepy_cli(
            "migrate",
            "--replace",
            "--from",
            sqlite_url(tmp_path / "a.db"),
            "--to",
            sqlite_url(tmp_path / "b.db"),
        )
    )


def test_unreachable_or_missing_source_fails_clearly_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "b.db"
    closed = conftest.free_port()
    proc = kinepy_cli(
        "migrate",
        "--connect-timeout",
        "0",
        "--from",
        f"postgres://u:secret@127.0.0.1:{closed}/db",
        "--to",
        sqlite_url(target),
    )
    assert proc.returncode == 1, proc.stderr
    assert "migrate failed: PostgreSQL at postgres://u:***@127.0.0.1" in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout
    assert not target.exists()
    proc = kinepy_cli("migrate", "--from", sqlite_url(tmp_path / "typo.db"), "--to", sqlite_url(target))
    assert proc.returncode == 1
    assert f"SQLite database {tmp_path / 'typo.db'} does not exist" in proc.stderr
    assert not target.exists() and not (tmp_path / "typo.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not a database at all")
    proc = kinepy_cli("restore", str(tmp_path / "junk.db"), "--to", sqlite_url(target))
    assert proc.returncode == 1
    assert "is not a SQLite file" in proc.stderr
    assert not target.exists()


def test_an_unreachable_target_fails_clearly_and_leaves_the_source_as_it_was(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    server, _, _ = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    server.stop()
    before = (tmp_path / "a.db").read_bytes()
    closed = conftest.free_port()
    proc = kinepy_cli(
        "migrate",
        "--connect-timeout",
        "0",
        "--from",
        sqlite_url(tmp_path / "a.db"),
        "--to",
        f"mysql://u:secret@tcp(127.0.0.1:{closed})/db",
    )
    assert proc.returncode == 1, proc.stderr
    assert "migrate failed: MySQL at mysql://u:***@tcp(127.0.0.1" in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout
    assert (tmp_path / "a.db").read_bytes() == before


class FailingTarget:
    """A real target whose history writes stop after `batches` (a copy interrupted part way)."""

    def __init__(self, inner: Any, batches: int) -> None:
        self._inner = inner
        self._left = batches
        self.description = inner.description

    async def open(self) -> TargetState:
        return await self._inner.open()  # type: ignore[no-any-return]

    async def write_log(self, rows: list[LogRow]) -> None:
        if self._left == 0:
            raise KeyboardInterrupt
        self._left -= 1
        await self._inner.write_log(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_interrupted_copy_is_not_served_and_a_rerun_finishes_it(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    server, original, compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    source_url, target_url = sqlite_url(tmp_path / "a.db"), sqlite_url(tmp_path / "b.db")

    async def interrupted() -> None:
        target = FailingTarget(open_target(target_url), batches=2)
        await copy_store(open_source(source_url), target, CopyOptions(batch_rows=5))

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupted())
    with sqlite3.connect(tmp_path / "b.db") as db:
        assert db.execute("SELECT count(*) FROM kv_log").fetchone() == (10,)
        assert db.execute("SELECT count(*) FROM kv_current").fetchone() == (0,)
    port = conftest.free_port()
    proc = kinepy_cli("--listen-address", f"127.0.0.1:{port}", "--datastore-endpoint", target_url, timeout=60)
    assert proc.returncode == 1
    assert "holds an incomplete copy" in proc.stderr and "run the same command again" in proc.stderr
    # Nor is it a source: copying it further would spread a half store.
    proc = kinepy_cli("migrate", "--from", target_url, "--to", sqlite_url(tmp_path / "c.db"))
    assert proc.returncode == 1
    assert f"{target_url} holds an incomplete copy, not a store" in proc.stderr
    assert not (tmp_path / "c.db").exists()
    # A copy of the same store resumes; the check at the end covers the rows of both runs.
    proc = kinepy_cli("migrate", "--batch-rows", "5", "--from", source_url, "--to", target_url)
    ok(proc)
    assert "resuming the interrupted copy" in proc.stderr
    server.stop()
    assert serve_and_view(make_kinepy_server, connect, target_url, compact) == original


def test_an_interrupted_copy_of_another_store_restarts(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    source_store(make_kinepy_server, connect, tmp_path / "a.db")
    source_url, target_url = sqlite_url(tmp_path / "a.db"), sqlite_url(tmp_path / "b.db")

    async def interrupted() -> None:
        target = FailingTarget(open_target(target_url), batches=1)
        await copy_store(open_source(source_url), target, CopyOptions(batch_rows=5))

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(interrupted())
    proc = kinepy_cli("migrate", "--current-only", "--from", source_url, "--to", target_url)
    ok(proc)
    assert "holds an interrupted copy of another store" in proc.stderr


@pytest.mark.slow  # 2000 puts, then a backup while a writer keeps going: about 6 s per backend
@pytest.mark.kinepy_backends
def test_backup_of_a_running_server_under_writes_restores_a_consistent_store(
    kinepy_server: conftest.KinepyServer,
    kinepy_backend: str,
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    fresh_url: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The procedure of docs/operations.md on each backend: `kinepy backup` of the running store,
    `kinepy restore` into an empty store of the same backend, kinepy served from it."""
    server = kinepy_server
    source = server.datastore_endpoint or sqlite_url(server.db_path)
    client = connect(server.endpoint)
    for i in range(2000):
        client.put(b"pre/%05d" % i, b"x" * 100)
    stop, writing = threading.Event(), threading.Event()
    written: list[int] = []

    def writer() -> None:
        c = Client(server.endpoint)
        n = 0
        while not stop.is_set():
            written.append(c.put(b"live/%06d" % n, b"%d" % n))
            n += 1
            if n == 20:
                writing.set()
        c.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(30)
        backup = tmp_path / "backup.db"
        out = ok(kinepy_cli("backup", "--from", source, "--batch-rows", "100", str(backup)))
    finally:
        stop.set()
        thread.join()
    if kinepy_backend == "sqlite":
        restored_url = sqlite_url(tmp_path / "restored.db")
        ok(kinepy_cli("restore", str(backup), "--to", restored_url))
        restored = make_kinepy_server(backend="sqlite", db_path=tmp_path / "restored.db")
    else:
        restored_url = fresh_url(kinepy_backend)
        ok(kinepy_cli("restore", str(backup), "--to", restored_url))
        restored = make_kinepy_server(datastore_endpoint=restored_url)
    copy = Client(restored.endpoint)
    status = copy.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
    revision = status.header.revision
    assert f"revision {revision}," in out
    live = copy.kv.Range(rpc_pb2.RangeRequest(key=b"live/", range_end=b"live0", count_only=True), timeout=30)
    # The backup is the store at one revision: exactly the writes acknowledged at or below it.
    assert live.count == sum(1 for r in written if r <= revision)
    original_hash = client.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30).hash
    assert copy.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30).hash == original_hash
    copy.close()


@pytest.mark.etcd
@pytest.mark.kinepy_backends
def test_etcdctl_snapshot_save_on_every_backend_gives_a_backup_that_restores(
    kinepy_server: conftest.KinepyServer,
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    etcdctl: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    client = connect(kinepy_server.endpoint)
    compact = write_history(client)
    original = view(client, compact)
    snapshot = tmp_path / "snapshot.db"
    proc = etcdctl(kinepy_server.endpoint, "snapshot", "save", str(snapshot))
    assert (proc.returncode, proc.stdout) == (0, f"Snapshot saved at {snapshot}\n"), proc.stderr
    restored = tmp_path / "restored.db"
    ok(kinepy_cli("restore", str(snapshot), "--to", sqlite_url(restored)))
    assert serve_and_view(make_kinepy_server, connect, sqlite_url(restored), compact) == original


@pytest.mark.etcd
@pytest.mark.kinepy_backends("postgres", "mariadb")
def test_a_failed_snapshot_fails_etcdctl_at_once_with_the_reason(
    kinepy_server: conftest.KinepyServer,
    kinepy_backend: str,
    kinepy_databases: Any,
    etcdctl: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """etcdctl retries UNAVAILABLE for ever: a snapshot that cannot be taken (here kv_log is renamed
    away under the running server) must fail with another code and say why."""
    database = parse_endpoint(kinepy_server.datastore_endpoint).database  # type: ignore[union-attr]
    server = kinepy_databases.server(kinepy_backend)
    server.sql("ALTER TABLE kv_log RENAME TO kv_log_away", database=database)
    try:
        proc = etcdctl(kinepy_server.endpoint, "snapshot", "save", str(tmp_path / "snap.db"), timeout=20)
    finally:
        server.sql("ALTER TABLE kv_log_away RENAME TO kv_log", database=database)
    assert proc.returncode != 0
    assert "kinepy: snapshot failed:" in proc.stderr and "kinepy backup" in proc.stderr, proc.stderr
    assert not (tmp_path / "snap.db").exists()


class CountingSource:
    """A store of `keys` keys written once each (revisions 2..keys+1), built without a server."""

    description = "generated store"

    def __init__(self, keys: int) -> None:
        self._keys = keys

    async def open(self, *, current_only: bool) -> Header:
        return Header(self._keys + 1, -1, 0, 0, self._keys, self._keys)

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        for start in range(0, self._keys, batch_rows):
            stop = min(start + batch_rows, self._keys)
            yield [LogRow(2 + i, 0, b"g/%07d" % i, 2 + i, 1, 0, b"v", False) for i in range(start, stop)]

    async def leases(self) -> list[Lease]:
        return []

    async def hash_kv(self, revision: int) -> int | None:
        return None

    async def aclose(self) -> None:
        return None


def test_ctrl_c_leaves_an_incomplete_target_that_the_same_command_finishes(tmp_path: Path) -> None:
    source, target = tmp_path / "a.db", tmp_path / "b.db"
    asyncio.run(copy_store(CountingSource(100_000), open_target(sqlite_url(source)), CopyOptions()))
    argv = [sys.executable, "-m", "kinepy", "migrate", "--progress", "log", "--batch-rows", "10"]
    argv += ["--from", sqlite_url(source), "--to", sqlite_url(target)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # 10,000 transactions of 10 rows follow this line: seconds of work
        if "copying history: 100000 rows" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; the target is marked incomplete" in err and "run the same command again" in err
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT schema_version FROM meta").fetchone() == (-1,)
        copied = db.execute("SELECT count(*) FROM kv_log").fetchone()[0]
    assert 0 <= copied < 100_000
    rerun = kinepy_cli("migrate", "--from", sqlite_url(source), "--to", sqlite_url(target))
    assert "resuming the interrupted copy" in rerun.stderr
    assert "100000 keys, 100000 history rows" in ok(rerun)
