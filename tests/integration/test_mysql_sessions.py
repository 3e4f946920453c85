"""How the MySQL backend's connections run their transactions, on the suite's MariaDB: READ COMMITTED by
default, so that a write batch starts with START TRANSACTION alone (one statement fewer in every
write's query); a read transaction asks for REPEATABLE READ and keeps one snapshot while others commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiomysql
import pytest

from kinepy.backends.base import LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.mysql import MySQLBackend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer
from kinepy.types import KeyRange, KeyValue, RangeQuery

pytestmark = pytest.mark.mysql


@pytest.fixture
async def pair(mariadb_server: DatabaseServer) -> AsyncIterator[tuple[MySQLBackend, MySQLBackend]]:
    """Two backends (two kinepy processes) on one fresh database."""
    name = mariadb_server.create_database()
    spec = backend_spec(Config(datastore_endpoint=mariadb_server.url(name)))
    backends = [cast(MySQLBackend, create_backend(spec, BackendSettings())) for _ in range(2)]
    for backend in backends:
        await backend.start()
    yield backends[0], backends[1]
    for backend in backends:
        await backend.aclose()
    mariadb_server.drop_database(name)


def _put(key: bytes) -> Callable[[Snapshot], WriteSet]:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        kv = KeyValue(key, revision, revision, 1, b"v", 0)
        return WriteSet(revision, [LogRow(revision, 0, key, revision, 1, 0, b"v", False)], {key: kv})

    return evaluate


async def test_connections_default_to_read_committed(pair: tuple[MySQLBackend, MySQLBackend]) -> None:
    backend, _ = pair
    async with backend._session("none") as session:
        row = await session.fetchone("SELECT @@tx_isolation")
    assert row is not None and row[0] == "READ-COMMITTED"


async def test_a_write_batch_sets_no_isolation_level(
    pair: tuple[MySQLBackend, MySQLBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statements still run on the server: the driver's execute is only watched."""
    backend, _ = pair
    sent: list[str] = []
    execute = aiomysql.Cursor.execute

    async def watched(self: Any, query: str, args: Any = None) -> Any:
        sent.append(query)
        return await execute(self, query, args)

    monkeypatch.setattr(aiomysql.Cursor, "execute", watched)
    await backend.write(ReadSet(keys={b"a"}), _put(b"a"))  # reads first: the cache knows nothing
    await backend.write(ReadSet(keys={b"b"}), _put(b"b"))  # from the cache: one query
    statements = [text for query in sent for text in query.split(";")]
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
