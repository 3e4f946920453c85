"""The PostgreSQL backend's connections: a free list in front of asyncpg's pool (`postgres._Connections`)
hands a connection given back in good order to the next caller, and must keep what the pool gave:
a connection that failed, was lost or was left in a transaction is never handed out as it is, the pool's
size bounds the connections however many callers wait, idle connections are closed after the idle
time, and closing the backend leaves none open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fresh_backends import DEADLINE, FreshDatabase

from kinepy.backends.sql.postgres import PostgresBackend
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.testing.databases import DatabaseServer

pytestmark = pytest.mark.postgres

Database = FreshDatabase[PostgresBackend]


@pytest.fixture
async def database(postgres_server: DatabaseServer) -> AsyncIterator[Database]:
    async with FreshDatabase(postgres_server, PostgresBackend) as database:
        yield database


async def _hold_together(backend: PostgresBackend, callers: int, seconds: float = 0.05) -> set[int]:
    """`callers` concurrent callers each holding a connection for `seconds`; the server pids they got."""
    pids: set[int] = set()

    async def caller() -> None:
        async with backend._connection() as conn:
            pids.add(conn.get_server_pid())
            await conn.execute("SELECT pg_sleep($1)", seconds)

    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(caller() for _ in range(callers)))
    return pids


async def test_a_connection_is_reused_and_keeps_the_instance_setting(
    database: Database,
) -> None:
    backend = await database.backend()
    async with backend._connection() as conn:
        first = conn.get_server_pid()
    for _ in range(3):
        async with backend._connection() as conn:
            assert conn.get_server_pid() == first
            assert await conn.fetchval("SELECT current_setting('kinepy.instance')") == backend._instance
    for pid in await _hold_together(backend, 4):  # new connections are set up as the pool's were
        assert pid in backend._own_pids


async def test_callers_beyond_the_pool_size_wait_for_a_connection(
    database: Database,
) -> None:
    backend = await database.backend(pool_size=2)
    pids = await _hold_together(backend, 8)  # six of them wait; none is left waiting for good
    assert len(pids) <= 2
    assert len(await database.server_connections()) <= 2
    assert len(await _hold_together(backend, 8)) <= 2  # once both connections idle in the free list
    pool = backend._pool
    assert pool is not None
    async with asyncio.timeout(DEADLINE), pool.acquire() as conn:  # bulk import's way in
        assert await conn.fetchval("SELECT 1") == 1
    assert len(await database.server_connections()) <= 2


async def test_a_connection_lost_while_idle_is_not_handed_out(
    database: Database,
) -> None:
    backend = await database.backend()
    lost = asyncio.Event()
    async with backend._connection() as conn:
        pid = conn.get_server_pid()
        conn.add_termination_listener(lambda _: lost.set())
    await asyncio.to_thread(database.server.sql, f"SELECT pg_terminate_backend({pid})")
    async with asyncio.timeout(DEADLINE):
        await lost.wait()
    await backend.revisions()  # no error from the dead connection
    async with backend._connection() as conn:
        assert conn.get_server_pid() != pid


async def test_a_connection_that_failed_is_not_handed_out(database: Database) -> None:
    backend = await database.backend()
    with pytest.raises(BackendUnavailable):
        async with backend._connection() as conn:
            pid = conn.get_server_pid()
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    await backend.revisions()
    async with backend._connection() as conn:
        assert conn.get_server_pid() != pid
        assert not conn.is_closed()


async def test_a_connection_whose_statement_was_cancelled_is_not_handed_out_mid_cancel(
    database: Database,
) -> None:
    backend = await database.backend()
    sending = asyncio.Event()

    async def sleeper() -> None:
        async with backend._connection() as conn:
            sending.set()
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(sleeper())
    await sending.wait()  # the statement is on its way: the task waits for its answer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(DEADLINE):
        await backend.revisions()  # not "another operation is in progress"


async def test_a_transaction_left_open_or_failed_is_rolled_back_first(
    database: Database,
) -> None:
    backend = await database.backend()
    async with backend._connection() as conn:
        await conn.execute("BEGIN")
        await conn.execute("SET statement_timeout = 12345")  # kept only if it commits
    async with backend._connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW statement_timeout") == "0"
    with pytest.raises(BackendError, match="division by zero"):
        async with backend._connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1 / 0")
    async with backend._connection() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT 1") == 1


async def test_connections_idle_for_the_idle_time_are_closed_but_one(
    database: Database,
) -> None:
    backend = await database.backend(pool_size=4, idle_timeout=0.3)
    assert len(await _hold_together(backend, 4)) == 4
    assert await database.settle(1) == 1
    await backend.revisions()


async def test_closing_the_backend_leaves_no_connection_open(
    database: Database,
) -> None:
    backend = await database.backend(pool_size=4)
    assert len(await _hold_together(backend, 4)) == 4
    assert len(await database.server_connections()) == 4
    async with asyncio.timeout(DEADLINE / 2):  # the pool's close waits for every connection given back
        await backend.aclose()
    assert await database.settle(0) == 0
    with pytest.raises(BackendUnavailable, match="closed"):
        async with backend._connection():
            pass


async def test_closing_waits_for_a_connection_in_use(database: Database) -> None:
    backend = await database.backend()
    taken, release = asyncio.Event(), asyncio.Event()

    async def user() -> int:
        async with backend._connection() as conn:
            taken.set()
            await release.wait()
            return int(await conn.fetchval("SELECT 1"))

    task = asyncio.create_task(user())
    await taken.wait()
    closing = asyncio.create_task(backend.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    async with asyncio.timeout(DEADLINE):
        assert await task == 1
        await closing
    assert await database.settle(0) == 0
