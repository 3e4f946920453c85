"""How the MySQL backend's connections run their transactions, on the suite's MariaDB: READ COMMITTED by
default, so that a write batch starts with START TRANSACTION alone (one statement fewer in every
write's query); a read transaction asks for REPEATABLE READ and keeps one snapshot while others commit;
workers of one kinepy keep their write caches chained through the commits they tell each other of."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiomysql
import pytest
from fresh_backends import fresh_backends

from kinepy.backends.base import LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.mysql import MySQLBackend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer
from kinepy.types import Event, EventType, KeyRange, KeyValue, RangeQuery

pytestmark = pytest.mark.mysql


@pytest.fixture
async def pair(mariadb_server: DatabaseServer) -> AsyncIterator[tuple[MySQLBackend, MySQLBackend]]:
    """Two backends (two kinepy processes) on one fresh database."""
    async with fresh_backends(mariadb_server, 2) as (backends, _):
        yield cast(MySQLBackend, backends[0]), cast(MySQLBackend, backends[1])


def _watch_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The queries the backends send from now on (they still run on the server: execute is only watched)."""
    sent: list[str] = []
    execute = aiomysql.Cursor.execute

    async def watched(self: Any, query: str, args: Any = None) -> Any:
        sent.append(query)
        return await execute(self, query, args)

    monkeypatch.setattr(aiomysql.Cursor, "execute", watched)
    return sent


def _put(key: bytes) -> Callable[[Snapshot], WriteSet]:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        kv = KeyValue(key, revision, revision, 1, b"v", 0)
        log = [LogRow(revision, 0, key, revision, 1, 0, b"v", False)]
        return WriteSet(revision, log, {key: kv}, base_revision=snapshot.revision, events=[_event(kv)])

    return evaluate


async def test_connections_default_to_read_committed(pair: tuple[MySQLBackend, MySQLBackend]) -> None:
    backend, _ = pair
    async with backend._session("none") as session:
        row = await session.fetchone("SELECT @@tx_isolation")
    assert row is not None and row[0] == "READ-COMMITTED"


async def test_a_write_batch_sets_no_isolation_level(
    pair: tuple[MySQLBackend, MySQLBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = pair
    sent = _watch_queries(monkeypatch)
    await backend.write(ReadSet(keys={b"a"}), _put(b"a"))  # reads first: the cache knows nothing
    await backend.write(ReadSet(keys={b"b"}), _put(b"b"))  # from the cache: one compound statement
    assert sent[-1].startswith("BEGIN NOT ATOMIC START TRANSACTION;") and sent[-1].endswith("COMMIT; END")
    statements = [text for query in sent for text in query.removeprefix("BEGIN NOT ATOMIC ").split(";")]
    assert statements.count("START TRANSACTION") == 2
    assert not [text for text in statements if "ISOLATION" in text]
    assert [
        (kv.key, kv.mod_revision) for kv in (await backend.read_range(RangeQuery(KeyRange(b"", None)))).kvs
    ] == [(b"a", 2), (b"b", 3)]


async def test_a_read_transaction_keeps_its_snapshot_while_another_process_commits(
    pair: tuple[MySQLBackend, MySQLBackend],
) -> None:
    reader, writer = pair
    async with reader._session("read") as session:
        before = await session.fetchone(sql.SELECT_META)
        await writer.write(ReadSet(keys={b"k"}), _put(b"k"))
        during = await session.fetchone(sql.SELECT_META)
        rows = await session.fetch("SELECT key FROM kv_current")
    assert before is not None and during is not None
    assert (tuple(during), rows) == (tuple(before), [])
    async with reader._session("none") as session:
        after = await session.fetchone(sql.SELECT_META)
    assert after is not None and after[0] == before[0] + 1


@pytest.fixture
async def workers(mariadb_server: DatabaseServer) -> AsyncIterator[tuple[MySQLBackend, MySQLBackend]]:
    """Two backends as two workers of one kinepy: each tells the other of its commits (real pipes)."""
    name = mariadb_server.create_database()
    spec = backend_spec(Config(datastore_endpoint=mariadb_server.url(name)))
    first, second = os.pipe(), os.pipe()
    pipes = [(first[0], (second[1],)), (second[0], (first[1],))]
    backends = [
        cast(MySQLBackend, create_backend(spec, BackendSettings(notify_read_fd=read, notify_write_fds=write)))
        for read, write in pipes
    ]
    for backend in backends:
        await backend.start()
    yield backends[0], backends[1]
    for backend in backends:
        await backend.aclose()
    for fd in (*first, *second):
        os.close(fd)
    mariadb_server.drop_database(name)


async def test_workers_taking_turns_write_in_one_query_each(
    workers: tuple[MySQLBackend, MySQLBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker's write cache follows the other's commits as told: a batch after the other's commit
    is one guarded query, evaluated once on the right rows."""
    this, other = workers
    for backend in workers:
        await backend.wait_for_change(0.0)  # listening from now on
    await this.write(ReadSet(keys={b"k"}), _put(b"k"))  # each starts its cache by reading
    await other.wait_for_change(1.0)  # told, with nothing to follow yet
    await other.write(ReadSet(keys={b"k"}), _put(b"k"))
    await this.wait_for_change(1.0)  # followed
    sent = _watch_queries(monkeypatch)
    for turn in range(6):
        writer, follower = (this, other) if turn % 2 == 0 else (other, this)
        seen: list[tuple[int, int]] = []
        written = await writer.write(ReadSet(keys={b"k"}), _increment(seen, b"k"))
        assert written is not None and seen == [(written.revision - 1, written.revision - 3)]
        told = await follower.wait_for_change(1.0)
        assert [(c.after, c.revision) for c in told] == [(written.revision - 1, written.revision)]
    assert len(sent) == 6  # one query a batch: no failed check, no read
    rows = await this.read_range(RangeQuery(KeyRange(b"k", b"k\0")))
    assert [(kv.mod_revision, kv.version, kv.value) for kv in rows.kvs] == [(9, 7, b"v9")]


def _increment(seen: list[tuple[int, int]], key: bytes) -> Callable[[Snapshot], WriteSet]:
    """A put of `key`'s next version; each evaluation appends (revision, `key`'s version) to `seen`."""

    def evaluate(snapshot: Snapshot) -> WriteSet:
        old = snapshot.rows[key]
        seen.append((snapshot.revision, old.version))
        revision = snapshot.revision + 1
        kv = KeyValue(key, old.create_revision, revision, old.version + 1, b"v%d" % revision, 0)
        log = LogRow(revision, 0, key, kv.create_revision, kv.version, 0, kv.value, False)
        return WriteSet(revision, [log], {key: kv}, base_revision=snapshot.revision, events=[_event(kv)])

    return evaluate


def _event(kv: KeyValue) -> Event:
    return Event(EventType.PUT, kv)
