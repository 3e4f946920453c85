"""A Range of one key, as Kubernetes asks for it (`limit=1`), on the server databases: the right row and
count, read by the plainest plan. The statement carries no LIMIT and no count for one key, which has at
most one row: with them MariaDB copied the row into a temporary table on every Get."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest
from fresh_backends import fresh_backends

from kinepy.backends.base import Backend, Evaluate, LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql import core, mysql
from kinepy.backends.sql.dialect import ServerBackend
from kinepy.backends.sql.mysql import MySQLBackend
from kinepy.testing.databases import DatabaseServer
from kinepy.types import KeyRange, KeyValue, RangeQuery

ONE_KEY = KeyRange(b"/registry/configmaps/bench/a", b"/registry/configmaps/bench/a\0")


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mysql),
    ]
)
async def database(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, DatabaseServer, str]]:
    server: DatabaseServer = request.getfixturevalue(f"{request.param}_server")
    async with fresh_backends(server) as ([backend], name):
        yield backend, server, name


def _puts(*keys: bytes) -> Evaluate:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        rows = [
            LogRow(revision, sub, key, revision, 1, 0, b"v-" + key, False) for sub, key in enumerate(keys)
        ]
        return WriteSet(
            revision, rows, {key: KeyValue(key, revision, revision, 1, b"v-" + key, 0) for key in keys}
        )

    return evaluate


@pytest.mark.parametrize("count", [True, False])
async def test_one_key_with_a_limit_reads_its_row_and_count(
    database: tuple[Backend, DatabaseServer, str], count: bool
) -> None:
    backend, _, _ = database
    other = b"/registry/configmaps/bench/a0"  # right after the key: a range, not the key, would hold it
    await backend.write(ReadSet(keys={ONE_KEY.start, other}), _puts(ONE_KEY.start, other))
    for limit in (1, 2):
        rows = await backend.read_range(RangeQuery(ONE_KEY, limit=limit, count=count))
        assert [(kv.key, kv.value) for kv in rows.kvs] == [(ONE_KEY.start, b"v-" + ONE_KEY.start)]
        assert (rows.revision, rows.count) == (2, 1)
    absent = KeyRange(b"/registry/configmaps/bench/b", b"/registry/configmaps/bench/b\0")
    rows = await backend.read_range(RangeQuery(absent, limit=1, count=count))
    assert (rows.kvs, rows.revision, rows.count) == ([], 2, 0)
    # A range of two keys with a limit of one still reads one row and counts both.
    both = KeyRange(ONE_KEY.start, other + b"\0")
    rows = await backend.read_range(RangeQuery(both, limit=1))
    assert ([kv.key for kv in rows.kvs], rows.count) == ([ONE_KEY.start], 2)


@pytest.mark.mysql
async def test_mariadb_reads_one_key_without_a_derived_table(mariadb_server: DatabaseServer) -> None:
    async with fresh_backends(mariadb_server) as (_, name):  # the schema, made by a backend
        stmt, args = core.range_statement(MySQLBackend.statements, RangeQuery(ONE_KEY, limit=2))
        plan = mariadb_server.sql("EXPLAIN " + mysql.render(stmt, args), database=name)
    # id, select_type, table, type, …: the meta row and the key, each one primary-key lookup.
    assert [(row[1], row[2], row[3]) for row in plan] == [
        ("SIMPLE", "m", "const"),
        ("SIMPLE", "kv_current", "const"),
    ]


@pytest.mark.mysql
async def test_mariadb_reads_one_key_as_every_server_database_does(mariadb_server: DatabaseServer) -> None:
    """The MySQL backend reads one key at the latest revision by a statement of its own, of two columns
    (`mysql._GET`): the same rows as the statement of every server database, present or not."""
    keys = [b"a", b"A", b"a ", b"\x00\xff", b"/registry/pods/x"]
    async with fresh_backends(mariadb_server) as (backends, name):
        backend = cast(MySQLBackend, backends[0])
        await backend.write(ReadSet(keys=set(keys)), _puts(*keys[:4]))
        await backend.write(ReadSet(keys={b"a"}), _puts(b"a"))  # a second version, at another revision
        for key in [*keys, b"a\x00", b""]:
            for keys_only in (False, True):
                query = RangeQuery(KeyRange(key, key + b"\0"), limit=1, keys_only=keys_only)
                read = await backend.read_range(query)
                assert read == await ServerBackend.read_range(backend, query)
                assert read.revision == 3 and len(read.kvs) == (key in keys[:4])
        plan = mariadb_server.sql("EXPLAIN " + mysql.render(mysql._GET, [b"a"]), database=name)
    assert [(row[1], row[2], row[3]) for row in plan] == [("SIMPLE", "m", "const"), ("SIMPLE", "c", "const")]
