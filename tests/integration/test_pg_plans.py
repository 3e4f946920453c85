"""How PostgreSQL plans kinepy's write statement. asyncpg prepares each statement once per connection,
and after five executions PostgreSQL may keep one generic plan for it, made from what the tables held
then. On a new database that is almost nothing, and the plan stays while the tables grow: it must
read kv_current through its primary key whatever the table holds. And the statement must settle on
that plan instead of planning anew for the values of each call (planning it costs more than running
it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from fresh_backends import fresh_backends

from kinepy.backends.base import LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql import postgres
from kinepy.backends.sql.postgres import PostgresBackend
from kinepy.testing.databases import DatabaseServer
from kinepy.types import KeyValue

pytestmark = pytest.mark.postgres


@pytest.fixture
async def backend(postgres_server: DatabaseServer) -> AsyncIterator[PostgresBackend]:
    async with fresh_backends(postgres_server) as ([backend], _):
        assert isinstance(backend, PostgresBackend)
        yield backend


def _connections(backend: PostgresBackend) -> list[asyncpg.Connection]:
    assert backend._pool is not None
    pool: Any = backend._pool.pool  # asyncpg's, behind the free list
    return [holder._con for holder in pool._holders if holder._con is not None]


def _scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, table) of every node of `plan` that reads a table."""
    own = [(plan["Node Type"], plan["Relation Name"])] if "Relation Name" in plan else []
    return own + [scan for child in plan.get("Plans", []) for scan in _scans(child)]


@pytest.mark.parametrize(
    "statement",
    ["_APPLY_UNMOVED", "_APPLY", "_PUT_ONE_UNMOVED", "_DELETE_ONE_UNMOVED", "_SELECT_META_XMIN_KEYS"],
)
async def test_generic_plans_on_a_new_database_read_the_tables_by_their_indexes(
    backend: PostgresBackend, statement: str
) -> None:
    (conn,) = _connections(backend)[:1]
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        await conn.execute(f"PREPARE planned AS {getattr(postgres, statement)}")
        count = await conn.fetchval(
            "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = 'planned'"
        )
        nulls = ", ".join(["NULL"] * count)
        text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE planned({nulls})")
    finally:
        await conn.execute("DEALLOCATE ALL")
        await conn.execute("RESET plan_cache_mode")
    scans = _scans(json.loads(text)[0]["Plan"])
    assert ("Index Only Scan", "kv_current") in scans or ("Bitmap Heap Scan", "kv_current") in scans
    assert [scan for scan in scans if scan[0] == "Seq Scan" and scan[1] != "meta"] == []


def _put(key: bytes) -> Any:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        kv = KeyValue(key, revision, revision, 1, b"v" * 1500, 0)  # a ConfigMap of 1.5 KiB
        return WriteSet(revision, [LogRow(revision, 0, key, revision, 1, 0, kv.value, False)], {key: kv})

    return evaluate


def _delete(key: bytes) -> Any:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        old = snapshot.rows[key]
        revision = snapshot.revision + 1
        log = [LogRow(revision, 0, key, old.create_revision, old.version, 0, b"", True)]
        return WriteSet(revision, log, {key: None})

    return evaluate


async def test_the_write_statement_settles_on_one_plan(backend: PostgresBackend) -> None:
    keys = [b"/registry/configmaps/ns/cm-%03d" % i for i in range(300)]
    for key in keys[:100]:  # creates: the absence of each key is checked by the statement
        assert await backend.write(ReadSet(keys={key}), _put(key)) is not None
    # The table grows (other keys, written here directly), and autovacuum analyses it: every
    # connection's plans are made again, from the statistics of a table that is large now.
    conn = _connections(backend)[0]
    await conn.execute(
        "INSERT INTO kv_current SELECT convert_to('/registry/other/' || i, 'UTF8'), 1, 1, 1, 0, "
        "convert_to(repeat('x', 1500), 'UTF8') FROM generate_series(1, 20000) i"
    )
    await conn.execute("ANALYZE kv_current")
    for key in keys[100:]:
        assert await backend.write(ReadSet(keys={key}), _put(key)) is not None
    for key in keys:  # deletions: the rows the write cache holds
        assert await backend.write(ReadSet(keys={key}), _delete(key)) is not None
    # One key's put or delete each: the one-key statements (`_one_key_statement`).
    for statement, executions in ((postgres._PUT_ONE_UNMOVED, 300), (postgres._DELETE_ONE_UNMOVED, 300)):
        custom = generic = 0
        for conn in _connections(backend):
            row = await conn.fetchrow(
                "SELECT custom_plans, generic_plans FROM pg_prepared_statements WHERE statement = $1",
                statement,
            )
            if row is not None:
                custom, generic = custom + row[0], generic + row[1]
        # PostgreSQL plans the first five executions for their values, then compares; nothing after.
        assert custom + generic >= executions - 5
        assert custom <= 5 * len(_connections(backend))
