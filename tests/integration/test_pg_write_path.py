"""PostgreSQL's write path: a batch is read in autocommit and written in one statement that writes only
if no other write committed since the read; when one did, the batch runs again in the transaction that
locks the meta row first. Another writer here is a real one: psql, committing between the read and the
write (from inside `evaluate`, which runs between them). The write cache's steady state (one statement
per batch): test_write_cache.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kinepy.backends.base import LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql import postgres
from kinepy.backends.sql.core import WriteRows
from kinepy.backends.sql.postgres import PostgresBackend
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer
from kinepy.types import KeyRange, KeyValue, RangeQuery

pytestmark = pytest.mark.postgres


def _backend(server: DatabaseServer, name: str) -> PostgresBackend:
    backend = create_backend(backend_spec(Config(datastore_endpoint=server.url(name))), BackendSettings())
    assert isinstance(backend, PostgresBackend)
    return backend


@pytest.fixture
async def database(postgres_server: DatabaseServer) -> AsyncIterator[tuple[PostgresBackend, str]]:
    name = postgres_server.create_database()
    backend = _backend(postgres_server, name)
    await backend.start()
    yield backend, name
    await backend.aclose()
    postgres_server.drop_database(name)


def _put(snapshot: Snapshot, key: bytes) -> WriteSet:
    revision = snapshot.revision + 1
    old = snapshot.rows.get(key)
    version = old.version + 1 if old else 1
    create = old.create_revision if old else revision
    kv = KeyValue(key, create, revision, version, b"v%d" % revision, 0)
    return WriteSet(revision, [LogRow(revision, 0, key, create, version, 0, kv.value, False)], {key: kv})


async def test_a_batch_nobody_overtook_is_evaluated_once(database: tuple[PostgresBackend, str]) -> None:
    backend, _ = database
    seen: list[int] = []

    def evaluate(snapshot: Snapshot) -> WriteSet:
        seen.append(snapshot.revision)
        return _put(snapshot, b"k")

    written = await backend.write(ReadSet(keys={b"k"}), evaluate)
    assert written is not None and written.revision == 2
    assert seen == [1]
    assert await backend.revisions() == (2, -1)


async def test_a_batch_another_writer_overtook_runs_again_under_the_lock(
    database: tuple[PostgresBackend, str], postgres_server: DatabaseServer
) -> None:
    backend, name = database
    await backend.write(ReadSet(keys={b"k"}), lambda snapshot: _put(snapshot, b"k"))  # k at 2
    seen: list[tuple[int, int]] = []

    def evaluate(snapshot: Snapshot) -> WriteSet:
        seen.append((snapshot.revision, snapshot.rows[b"k"].version))
        if len(seen) == 1:  # another process commits k's next version between the read and the write
            postgres_server.sql(
                "BEGIN; INSERT INTO kv_log VALUES (3, 0, 'k', 2, 2, 0, 'other', 0); "
                "UPDATE kv_current SET mod_revision = 3, version = 2, value = 'other' WHERE key = 'k'; "
                "UPDATE meta SET revision = 3 WHERE id = 1; COMMIT",
                database=name,
            )
        return _put(snapshot, b"k")

    written = await backend.write(ReadSet(keys={b"k"}), evaluate)
    # Evaluated again on what the other writer committed; nothing of the first evaluation was written.
    assert seen == [(2, 1), (3, 2)]
    assert written is not None and written.revision == 4
    rows = await backend.read_range(RangeQuery(KeyRange(b"k", b"k\0")))
    assert [(kv.mod_revision, kv.version, kv.value) for kv in rows.kvs] == [(4, 3, b"v4")]
    history = await backend.read_range(RangeQuery(KeyRange(b"k", b"k\0"), revision=3))
    assert [(kv.mod_revision, kv.value) for kv in history.kvs] == [(3, b"other")]
    assert await backend.revisions() == (4, -1)


async def test_a_batch_that_writes_nothing_changes_nothing(database: tuple[PostgresBackend, str]) -> None:
    backend, _ = database
    assert await backend.write(ReadSet(keys={b"k"}), lambda snapshot: None) is None
    assert await backend.revisions() == (1, -1)


async def _tables(backend: PostgresBackend) -> list[list[tuple[object, ...]]]:
    async with backend._connection() as conn:
        return [
            [tuple(row) for row in await conn.fetch(statement)]
            for statement in (
                "SELECT * FROM kv_log ORDER BY revision, sub",
                "SELECT * FROM kv_current ORDER BY key",
                "SELECT revision, compact_revision FROM meta",
            )
        ]


async def test_one_keys_writes_leave_the_rows_the_whole_write_set_statement_leaves(
    postgres_server: DatabaseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Puts and deletes of one key go in scalar parameters (`_one_key_statement`); written through
    `_APPLY_UNMOVED` instead, on another database, they leave the same tables."""

    def put(key: bytes, lease: int = 0) -> Callable[[Snapshot], WriteSet]:
        def evaluate(snapshot: Snapshot) -> WriteSet:
            write_set = _put(snapshot, key)
            kv = write_set.current[key]
            assert kv is not None
            write_set.current[key] = kv._replace(lease=lease)
            write_set.log[0] = dataclasses.replace(write_set.log[0], lease=lease)
            return write_set

        return evaluate

    def delete(key: bytes) -> Callable[[Snapshot], WriteSet]:
        def evaluate(snapshot: Snapshot) -> WriteSet:
            old = snapshot.rows[key]
            assert old is not None
            revision = snapshot.revision + 1
            log = [LogRow(revision, 0, key, old.create_revision, old.version, 0, b"", True)]
            return WriteSet(revision, log, {key: None})

        return evaluate

    async def writes(backend: PostgresBackend) -> list[list[tuple[object, ...]]]:
        for key in (b"a", b"b", b"a", b"b"):  # a create, another, an update of each (cached, chained)
            assert await backend.write(ReadSet(keys={key}), put(key)) is not None
        assert await backend.write(ReadSet(keys={b"a"}), delete(b"a")) is not None
        backend._cache.invalidate()  # the next batch reads first (`_UnlockedSession`)
        assert await backend.write(ReadSet(keys={b"b"}), delete(b"b")) is not None
        assert await backend.write(ReadSet(keys={b"a"}), put(b"a", lease=7)) is not None
        return await _tables(backend)

    one_key_args = postgres._one_key_args
    statements: list[str] = []

    def spied(rows: WriteRows) -> tuple[str, list[Any]] | None:
        found = one_key_args(rows)
        statements.append("" if found is None else found[0])
        return found

    names = [postgres_server.create_database() for _ in range(2)]
    backends = [_backend(postgres_server, name) for name in names]
    try:
        for backend in backends:
            await backend.start()
        monkeypatch.setattr(postgres, "_one_key_args", spied)
        one_key = await writes(backends[0])
        monkeypatch.setattr(postgres, "_one_key_args", lambda rows: None)
        whole = await writes(backends[1])
    finally:
        for backend in backends:
            await backend.aclose()
        for name in names:
            postgres_server.drop_database(name)
    puts, deletes = postgres._PUT_ONE_UNMOVED, postgres._DELETE_ONE_UNMOVED
    assert statements == [puts] * 4 + [deletes] * 2 + [puts]
    assert one_key == whole
    assert [row[0] for row in one_key[1]] == [b"a"]
