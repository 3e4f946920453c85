"""The steady state of the PostgreSQL and MySQL write paths: a batch is evaluated on what this process
last read and wrote (its write cache) and written by one statement (one query on MySQL) that writes only
if no other write committed since this process's last one and the keys the cache did not know are
absent. Another kinepy process writing between two batches makes that check fail, and the batch runs
again the ordinary way, evaluated on what it reads. The other process here is a second backend on the
same database. Workers of one kinepy on PostgreSQL keep their caches chained through the commits they
tell each other of, and pass over each other's NOTIFYs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import asyncpg
import pytest
from fresh_backends import fresh_backends

from kinepy.backends.base import Backend, Commit, LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql.mysql import MySQLBackend
from kinepy.backends.sql.postgres import PostgresBackend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer
from kinepy.types import Event, EventType, KeyRange, KeyValue, RangeQuery

Pair = tuple[Backend, Backend]


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mysql),
        pytest.param("mariadb-statements", marks=pytest.mark.mysql),
    ]
)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """Two backends (two kinepy processes) on one fresh database; with `mariadb-statements`, writing
    as on MySQL (a multi-statement query, no compound statement)."""
    kind, _, writes = request.param.partition("-")
    server: DatabaseServer = request.getfixturevalue(f"{kind}_server")
    async with fresh_backends(server, 2) as (backends, _):
        if writes:
            for backend in backends:
                cast(MySQLBackend, backend)._compound_writes = False
        yield backends[0], backends[1]


def _put(seen: list[tuple[int, int]], key: bytes) -> Callable[[Snapshot], WriteSet]:
    """A put of `key`'s next version; each evaluation appends (revision, `key`'s version) to `seen`."""

    def evaluate(snapshot: Snapshot) -> WriteSet:
        old = snapshot.rows.get(key)
        seen.append((snapshot.revision, old.version if old else 0))
        revision = snapshot.revision + 1
        version = old.version + 1 if old else 1
        create = old.create_revision if old else revision
        kv = KeyValue(key, create, revision, version, b"v%d" % revision, 0)
        log = [LogRow(revision, 0, key, create, version, 0, kv.value, False)]
        events = [Event(EventType.PUT, kv)]
        return WriteSet(revision, log, {key: kv}, base_revision=snapshot.revision, events=events)

    return evaluate


async def _current(backend: Backend, key: bytes) -> list[tuple[int, int, bytes]]:
    rows = await backend.read_range(RangeQuery(KeyRange(key, key + b"\0")))
    return [(kv.mod_revision, kv.version, kv.value) for kv in rows.kvs]


async def test_a_write_of_another_process_between_two_batches_fails_the_check(pair: Pair) -> None:
    this, other = pair
    seen: list[tuple[int, int]] = []
    await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))  # k at 2, read: one evaluation
    await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))  # k at 3, from the cache: one
    assert seen == [(1, 0), (2, 1)]
    await other.write(ReadSet(keys={b"k"}), _put([], b"k"))  # k at 4, version 3
    seen.clear()
    connections = getattr(this, "_epoch")  # noqa: B009 (counts the connections the backend opened)
    written = await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))
    # Evaluated first on the cache (revision 3: stale), whose write the check refused; then again on
    # what the other process committed. Nothing of the first evaluation was written, and the refusal
    # left the connection usable (it was not closed for a new one).
    assert seen == [(3, 2), (4, 3)]
    assert getattr(this, "_epoch") == connections  # noqa: B009
    assert written is not None and written.revision == 5
    assert await _current(this, b"k") == [(5, 4, b"v5")]
    history = await this.read_range(RangeQuery(KeyRange(b"k", b"k\0"), revision=4))
    assert [(kv.mod_revision, kv.version) for kv in history.kvs] == [(4, 3)]
    # Batches read while another process writes; once one finds that nobody else wrote since this
    # process's last commit, the next is evaluated on the cache again. Each is evaluated once.
    seen.clear()
    for _ in range(3):
        await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))
    assert seen == [(5, 4), (6, 5), (7, 6)]
    assert await _current(other, b"k") == [(8, 7, b"v8")]


async def test_a_key_the_cache_does_not_know_is_checked_absent(pair: Pair) -> None:
    this, other = pair
    await other.write(ReadSet(keys={b"k"}), _put([], b"k"))  # k at 2, by the other process
    await this.write(ReadSet(keys={b"x"}), _put([], b"x"))  # x at 3: this process's chain starts
    seen: list[tuple[int, int]] = []
    written = await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))
    # The cache took k to be absent; the write found it present and wrote nothing; read, k is at 2.
    assert seen == [(3, 0), (3, 1)]
    assert written is not None and written.revision == 4
    assert await _current(this, b"k") == [(4, 2, b"v4")]


async def test_a_failed_compare_is_answered_from_a_read(pair: Pair) -> None:
    this, other = pair
    await this.write(ReadSet(keys={b"k"}), _put([], b"k"))  # k at 2
    await other.write(ReadSet(keys={b"k"}), _put([], b"k"))  # k at 3
    seen: list[tuple[int, int]] = []

    def compare(snapshot: Snapshot) -> None:
        old = snapshot.rows.get(b"k")
        seen.append((snapshot.revision, old.version if old else 0))

    assert await this.write(ReadSet(keys={b"k"}), compare) is None
    assert seen == [(2, 1), (3, 2)]  # the cache's answer is never the reply: the read's is


async def test_concurrent_increments_through_two_processes_lose_nothing(pair: Pair) -> None:
    """Each process increments one counter by compare-and-swap, both at once: every increment lands."""

    def increment(snapshot: Snapshot) -> WriteSet:
        old = snapshot.rows.get(b"n")
        count = int(old.value) if old else 0
        revision = snapshot.revision + 1
        create = old.create_revision if old else revision
        version = old.version + 1 if old else 1
        kv = KeyValue(b"n", create, revision, version, b"%d" % (count + 1), 0)
        return WriteSet(
            revision, [LogRow(revision, 0, b"n", create, version, 0, kv.value, False)], {b"n": kv}
        )

    async def run(backend: Backend) -> None:
        for _ in range(50):
            await backend.write(ReadSet(keys={b"n"}), increment)

    await asyncio.gather(*(run(backend) for backend in pair))
    [kv] = (await pair[0].read_range(RangeQuery(KeyRange(b"n", b"n\0")))).kvs
    assert (kv.value, kv.version, kv.mod_revision) == (b"100", 100, 101)


Workers = tuple[PostgresBackend, PostgresBackend, PostgresBackend]


@pytest.fixture
async def pg_workers(postgres_server: DatabaseServer) -> AsyncIterator[Workers]:
    """Two backends as two workers of one kinepy (each tells the other of its commits through real
    pipes), and a third as another kinepy process on the same database."""
    name = postgres_server.create_database()
    spec = backend_spec(Config(datastore_endpoint=postgres_server.url(name)))
    first, second = os.pipe(), os.pipe()
    settings = [
        BackendSettings(notify_read_fd=first[0], notify_write_fds=(second[1],)),
        BackendSettings(notify_read_fd=second[0], notify_write_fds=(first[1],)),
        BackendSettings(),
    ]
    backends = [cast(PostgresBackend, create_backend(spec, each)) for each in settings]
    for backend in backends:
        await backend.start()
        await backend.wait_for_change(0.0)  # LISTENing from now on
    yield backends[0], backends[1], backends[2]
    for backend in backends:
        await backend.aclose()
    for fd in (*first, *second):
        os.close(fd)
    postgres_server.drop_database(name)


def _watch_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the backends send from now on (they still run: the driver is only watched)."""
    sent: list[str] = []
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        method = getattr(asyncpg.Connection, name)

        async def watched(self: Any, query: str, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            sent.append(query)
            return await _method(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, name, watched)
    return sent


async def _told(backend: PostgresBackend, revision: int) -> list[Commit]:
    """What `backend` is told until the commit of `revision` with its events, then every NOTIFY sent
    before now handled: PostgreSQL sends a listener the notifications of commits before a query's end."""
    told: list[Commit] = []
    while not any(commit.revision == revision and commit.events for commit in told):
        told += await backend.wait_for_change(10.0)
    await backend._listener.execute("SELECT 1")
    await asyncio.sleep(0)  # the NOTIFY's callback, scheduled before the query's answer
    return told + await backend.wait_for_change(0.0)


@pytest.mark.postgres
async def test_postgres_workers_taking_turns_write_in_one_statement_each(
    pg_workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker's write cache follows the other's commits as told, and the other's NOTIFY neither
    wakes it nor drops its cache: a batch after the other's commit is one guarded statement, evaluated
    once on the right rows. A commit of another kinepy process still wakes it, to read, and drops it."""
    this, other, stranger = pg_workers
    # Each starts its cache by reading and learns the other's connection from what it is told (its
    # first NOTIFY may come first: then it reads).
    for turn in range(4):
        writer, follower = (this, other) if turn % 2 == 0 else (other, this)
        written = await writer.write(ReadSet(keys={b"k"}), _put([], b"k"))
        assert written is not None
        await _told(follower, written.revision)
    sent = _watch_statements(monkeypatch)
    for turn in range(6):
        writer, follower = (this, other) if turn % 2 == 0 else (other, this)
        seen: list[tuple[int, int]] = []
        before = len(sent)
        written = await writer.write(ReadSet(keys={b"k"}), _put(seen, b"k"))
        assert len(sent) == before + 1  # no failed check, no read
        assert written is not None and seen == [(written.revision - 1, written.revision - 2)]
        told = await _told(follower, written.revision)
        assert [(c.after, c.revision) for c in told] == [(written.revision - 1, written.revision)]
    assert await _current(this, b"k") == [(11, 10, b"v11")]
    await stranger.write(ReadSet(keys={b"k"}), _put([], b"k"))  # k at 12, NOTIFY only
    told = await this.wait_for_change(10.0)
    assert [(c.revision, c.events) for c in told] == [(0, None)]  # look at the database
    seen = []
    before = len(sent)
    written = await this.write(ReadSet(keys={b"k"}), _put(seen, b"k"))
    assert written is not None and written.revision == 13 and seen == [(12, 11)]
    assert len(sent) > before + 1  # read, not guessed
