"""The MySQL backend's connections: a free list in front of aiomysql's pool (`mysql._Connections`) hands
a connection given back in good order, and its cursor, to the next caller, and must keep what the pool
gave: a connection that failed, was lost, was cancelled mid-statement or was left in a transaction is
never handed out again, the pool's size bounds the connections however many callers wait (and however
many of those in use fail), idle connections are closed after the idle time, and closing the backend
leaves none open. On the suite's MariaDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from fresh_backends import DEADLINE, FreshDatabase

from kinepy.backends.sql.mysql import MySQLBackend
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.testing.databases import DatabaseServer

pytestmark = pytest.mark.mysql

Database = FreshDatabase[MySQLBackend]


@pytest.fixture
async def database(mariadb_server: DatabaseServer) -> AsyncIterator[Database]:
    async with FreshDatabase(mariadb_server, MySQLBackend) as database:
        yield database


async def _connection_id(backend: MySQLBackend) -> int:
    async with backend._session("none") as session:
        row = await session.fetchone("SELECT CONNECTION_ID()")
    assert row is not None
    return int(row[0])


async def _hold_together(backend: MySQLBackend, callers: int, *, fail: bool = False) -> set[int]:
    """`callers` concurrent callers each holding a connection for 50 ms (then failing, with `fail`);
    the connection ids they got."""
    ids: set[int] = set()

    async def caller() -> None:
        async with backend._session("none") as session:
            row = await session.fetchone("SELECT CONNECTION_ID(), SLEEP(0.05)")
            assert row is not None
            ids.add(int(row[0]))
            if fail:
                await session.fetch("SELECT * FROM no_such_table")

    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*(caller() for _ in range(callers)), return_exceptions=True)
    for result in results:
        if not fail:
            assert result is None
        else:
            assert isinstance(result, BackendError) and "no_such_table" in str(result)
    return ids


async def test_a_connection_is_reused_and_keeps_the_session_settings(
    database: Database,
) -> None:
    backend = await database.backend()
    first = await _connection_id(backend)
    for _ in range(3):
        async with backend._session("none") as session:
            row = await session.fetchone("SELECT CONNECTION_ID(), @@tx_isolation, @@sql_mode")
        assert row is not None
        assert int(row[0]) == first
        assert row[1] == "READ-COMMITTED" and "STRICT_ALL_TABLES" in str(row[2])
    assert await backend.revisions() == (1, -1)


async def test_callers_beyond_the_pool_size_wait_for_a_connection(
    database: Database,
) -> None:
    backend = await database.backend(pool_size=2)
    assert len(await _hold_together(backend, 8)) <= 2  # six of them wait; none is left waiting for good
    assert await database.settle(2) <= 2
    assert len(await _hold_together(backend, 8)) <= 2  # once both connections idle in the free list
    assert await database.settle(2) <= 2


async def test_callers_waiting_for_the_pool_get_a_connection_when_those_in_use_fail(
    database: Database,
) -> None:
    backend = await database.backend(pool_size=2)
    # Each caller's connection is closed as it fails, none given back: the pool must wake the next.
    assert len(await _hold_together(backend, 8, fail=True)) == 8
    assert await database.settle(0) == 0
    assert len(await _hold_together(backend, 4)) <= 2
    assert await database.settle(2) <= 2


async def test_a_connection_that_failed_is_closed_not_handed_out(
    database: Database,
) -> None:
    backend = await database.backend()
    with pytest.raises(BackendError, match="no_such_table"):
        async with backend._session("none") as session:
            row = await session.fetchone("SELECT CONNECTION_ID()")
            assert row is not None
            failed = int(row[0])
            await session.fetch("SELECT * FROM no_such_table")
    assert await _connection_id(backend) != failed
    assert await database.gone(failed)  # closed, as the server sees it


async def test_a_write_that_failed_leaves_no_transaction_or_lock_behind(
    database: Database,
) -> None:
    backend = await database.backend()
    with pytest.raises(BackendError, match="no_such_table"):
        async with backend._session("write") as session:
            await session.fetchone("SELECT revision FROM meta WHERE id = 1 FOR UPDATE")
            await session.fetch("SELECT * FROM no_such_table")
    other = await database.backend()  # another process takes the meta row's lock at once
    async with asyncio.timeout(DEADLINE), other._session("write") as session:
        await session.execute("SET SESSION innodb_lock_wait_timeout = 1")
        assert await session.fetchone("SELECT revision FROM meta WHERE id = 1 FOR UPDATE") == (1,)


async def test_a_transaction_left_open_is_never_handed_out(database: Database) -> None:
    backend = await database.backend()
    async with backend._session("none") as session:
        await session.execute("START TRANSACTION")
        row = await session.fetchone("SELECT CONNECTION_ID()")
        assert row is not None
        left_open = int(row[0])
    async with backend._session("none") as session:
        row = await session.fetchone("SELECT CONNECTION_ID(), @@in_transaction")
    assert row is not None
    assert int(row[0]) != left_open and row[1] == 0


async def test_a_connection_killed_while_idle_is_not_handed_out(
    database: Database,
) -> None:
    backend = await database.backend()
    killed = await _connection_id(backend)
    await asyncio.to_thread(database.server.sql, f"KILL {killed}")
    pool = backend._pool
    assert pool is not None
    conn = pool._idle[-1][0]
    deadline = time.monotonic() + DEADLINE
    while not (conn._reader.at_eof() or conn._reader.eof_received):  # the server's goodbye arrives
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await backend.revisions() == (1, -1)  # no "Lost connection" from the dead one
    assert await _connection_id(backend) != killed


async def test_a_statement_cancelled_mid_way_leaves_its_connection_closed(
    database: Database,
) -> None:
    backend = await database.backend()
    sending = asyncio.Event()
    ids: list[int] = []

    async def sleeper() -> None:
        async with backend._session("none") as session:
            row = await session.fetchone("SELECT CONNECTION_ID()")
            assert row is not None
            ids.append(int(row[0]))
            sending.set()
            await session.fetch("SELECT SLEEP(30)")

    task = asyncio.create_task(sleeper())
    await sending.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(DEADLINE):
        assert await backend.revisions() == (1, -1)  # not a connection with a SLEEP's answer pending
        assert await _connection_id(backend) != ids[0]
        # The server sleeps on for the closed connection: end it now, not in another test.
        await asyncio.to_thread(database.server.sql, f"KILL QUERY {ids[0]}")
        assert await database.gone(ids[0])


async def test_connections_idle_for_the_idle_time_are_closed(database: Database) -> None:
    backend = await database.backend(pool_size=4, idle_timeout=0.3)
    assert len(await _hold_together(backend, 4)) == 4
    assert await database.settle(0) == 0
    assert await backend.revisions() == (1, -1)  # the pool opens one again
    assert await database.settle(1) == 1


async def test_closing_the_backend_leaves_no_connection_open(database: Database) -> None:
    backend = await database.backend(pool_size=4)
    assert len(await _hold_together(backend, 4)) == 4
    assert await database.settle(4) == 4
    async with asyncio.timeout(DEADLINE / 2):
        await backend.aclose()
    assert await database.settle(0) == 0
    with pytest.raises(BackendUnavailable, match="closed"):
        async with backend._session("none"):
            pass


async def test_closing_waits_for_a_connection_in_use_then_closes_it(
    database: Database,
) -> None:
    backend = await database.backend()
    taken, release = asyncio.Event(), asyncio.Event()

    async def user() -> int:
        async with backend._session("none") as session:
            taken.set()
            await release.wait()
            row = await session.fetchone("SELECT 1")
            assert row is not None
            return int(row[0])

    task = asyncio.create_task(user())
    await taken.wait()
    closing = asyncio.create_task(backend.aclose())
    await asyncio.sleep(0)  # closing runs up to its wait for the connection in use
    assert not closing.done()
    release.set()
    async with asyncio.timeout(DEADLINE):
        assert await task == 1
        await closing
    assert await database.settle(0) == 0


async def test_closing_does_not_wait_on_a_connection_that_failed_meanwhile(
    database: Database,
) -> None:
    backend = await database.backend()
    taken, release = asyncio.Event(), asyncio.Event()

    async def user() -> None:
        async with backend._session("none") as session:
            taken.set()
            await release.wait()
            await session.fetch("SELECT * FROM no_such_table")

    task = asyncio.create_task(user())
    await taken.wait()
    closing = asyncio.create_task(backend.aclose())
    await asyncio.sleep(0)  # closing runs up to its wait for the connection in use
    release.set()
    with pytest.raises(BackendError, match="no_such_table"):
        await task
    async with asyncio.timeout(DEADLINE / 4):  # not the 10 s after which the pool is terminated
        await closing
    assert await database.settle(0) == 0


async def test_connections_closed_here_say_goodbye_to_the_server(
    database: Database,
) -> None:
    backend = await database.backend(idle_timeout=0.3)
    assert await database.settle(1) == 1  # the bootstrap's connection is gone (it just closes)

    async def aborted() -> int:
        rows = await asyncio.to_thread(database.server.sql, "SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
        return int(rows[0][1])

    before = await aborted()
    with pytest.raises(BackendError, match="no_such_table"):
        async with backend._session("none") as session:
            await session.fetch("SELECT * FROM no_such_table")  # closed as it failed
    assert len(await _hold_together(backend, 3)) == 3
    assert await database.settle(0) == 0  # closed after the idle time
    await backend.revisions()
    await backend.aclose()  # closed with the backend
    assert await database.settle(0) == 0
    assert await aborted() == before
