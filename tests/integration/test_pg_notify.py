"""PostgreSQL's NOTIFY of a commit reaches every other kinepy process that LISTENs, and is not sent when
none does (kinepy alone on its database: the NOTIFY would only reach its own listener, which drops it).

The observer is a plain connection that LISTENs: it hears every NOTIFY, registered or not. Whether a
commit notified is read without waiting for a silence: notifications reach a listener in commit order,
so a marker NOTIFY sent after the commit arrives after the commit's, or first when it sent none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from fresh_backends import fresh_backends

from kinepy.backends.base import Backend, LogRow, ReadSet, Snapshot, WriteSet
from kinepy.backends.factory import create_backend
from kinepy.backends.sql.postgres import NOTIFY_CHANNEL
from kinepy.config import Config
from kinepy.endpoint import backend_spec
from kinepy.specs import BackendSettings
from kinepy.testing.databases import DatabaseServer
from kinepy.types import KeyValue

pytestmark = pytest.mark.postgres

MARKER = "marker"
_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'"


@dataclass
class Observer:
    """A connection that LISTENs (as another kinepy would, or just a bystander), and a second one."""

    listening: asyncpg.Connection
    other: asyncpg.Connection
    heard: asyncio.Queue[str]

    async def notified(self) -> list[str]:
        """What was notified on the channel since the last call (in commit order)."""
        await self.other.execute(f"NOTIFY {NOTIFY_CHANNEL}, '{MARKER}'")
        payloads = []
        while (payload := await asyncio.wait_for(self.heard.get(), 30)) != MARKER:
            payloads.append(payload)
        return payloads

    async def waiting_on_a_lock(self, application: str) -> None:
        """Until a connection of `application` waits for a lock."""
        async with asyncio.timeout(30):
            while True:
                await self.other.execute("SELECT pg_stat_clear_snapshot()")  # anew inside a transaction
                if await self.other.fetchval(_WAITING, application):
                    return
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _observing(url: str) -> AsyncIterator[Observer]:
    listening = await asyncpg.connect(url, server_settings={"application_name": "observer"})
    other = await asyncpg.connect(url, server_settings={"application_name": "writer"})
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listening.add_listener(NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    try:
        yield Observer(listening, other, heard)
    finally:
        await listening.close()
        await other.close()


@pytest.fixture
async def pair(postgres_server: DatabaseServer) -> AsyncIterator[tuple[list[Backend], Observer]]:
    async with (
        fresh_backends(postgres_server, 2) as (backends, name),
        _observing(postgres_server.url(name)) as seen,
    ):
        yield backends, seen


@pytest.fixture
async def workers(postgres_server: DatabaseServer) -> AsyncIterator[tuple[list[Backend], Backend, Observer]]:
    """Two workers of one server (their change pipes as the supervisor makes them), another kinepy
    process, on one database."""
    async with (
        fresh_backends(postgres_server, 1) as ((other,), name),
        _observing(postgres_server.url(name)) as seen,
    ):
        spec = backend_spec(Config(datastore_endpoint=postgres_server.url(name)))
        first, second = os.pipe(), os.pipe()
        settings = [
            BackendSettings(notify_read_fd=first[0], notify_write_fds=(second[1],)),
            BackendSettings(notify_read_fd=second[0], notify_write_fds=(first[1],)),
        ]
        backends = [create_backend(spec, each) for each in settings]
        try:
            for backend in backends:
                await backend.start()
            yield backends, other, seen
        finally:
            for backend in backends:
                await backend.aclose()
            for fd in (*first, *second):
                os.close(fd)


async def _put(backend: Backend, key: bytes = b"k") -> int:
    def evaluate(snapshot: Snapshot) -> WriteSet:
        revision = snapshot.revision + 1
        old = snapshot.rows.get(key)
        version = old.version + 1 if old else 1
        create = old.create_revision if old else revision
        kv = KeyValue(key, create, revision, version, b"v", 0)
        return WriteSet(revision, [LogRow(revision, 0, key, create, version, 0, b"v", False)], {key: kv})

    written = await backend.write(ReadSet(keys={key}), evaluate)
    assert written is not None
    return written.revision


async def _listen(backend: Backend) -> None:
    """The backend's first wait opens its listener and returns at once (it missed what came before)."""
    assert await backend.wait_for_change(30) == []


async def test_a_commit_only_its_own_process_listens_for_notifies_nobody(
    pair: tuple[list[Backend], Observer],
) -> None:
    (a, _), observer = pair
    await _listen(a)
    await _put(a)
    await _put(a)
    assert await observer.notified() == []


async def test_a_commit_notifies_while_another_process_listens_and_not_after_it_stops(
    pair: tuple[list[Backend], Observer],
) -> None:
    (a, b), observer = pair
    await _listen(a)
    await _listen(b)
    first = await _put(a)
    second = await _put(b)
    assert await observer.notified() == [str(first), str(second)]
    await b.aclose()  # its listener leaves the registry
    await _put(a)
    assert await observer.notified() == []


async def test_a_listener_whose_connection_is_gone_is_dropped_by_the_next_one(
    pair: tuple[list[Backend], Observer],
) -> None:
    (a, b), observer = pair
    await _listen(a)
    await observer.other.execute("INSERT INTO kinepy_listeners VALUES (-1, 'gone')")
    revision = await _put(a)
    assert await observer.notified() == [str(revision)]  # while in doubt, notify
    await _listen(b)
    await b.aclose()
    await _put(a)
    assert await observer.notified() == []


async def test_a_listener_registering_during_a_commit_reads_after_it(
    pair: tuple[list[Backend], Observer],
) -> None:
    """A commit under way when a listener registers (it decided before the registration whether to
    notify) commits before the registration returns: the new listener's next read of the database
    sees it."""
    (a, b), observer = pair
    await _listen(a)
    writer = observer.other
    transaction = writer.transaction()
    await transaction.start()
    revision = await writer.fetchval(
        "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision"
    )
    registering = asyncio.create_task(_listen(b))
    await observer.waiting_on_a_lock("kinepy")
    assert not registering.done()
    await transaction.commit()
    await registering
    assert (await b.revisions())[0] == revision


async def test_a_commit_waiting_on_a_registration_notifies_the_new_listener(
    pair: tuple[list[Backend], Observer],
) -> None:
    """A registration under way when a commit takes the meta row's lock makes the commit wait for it,
    and the commit then notifies the new listener."""
    (a, _), observer = pair
    await _listen(a)
    registering = observer.listening.transaction()
    await registering.start()
    await observer.listening.execute("SELECT FROM meta WHERE id = 1 FOR SHARE")
    await observer.listening.execute("INSERT INTO kinepy_listeners VALUES (pg_backend_pid(), 'observer')")
    committing = asyncio.create_task(_put(a))
    await observer.waiting_on_a_lock("kinepy")
    await registering.commit()
    revision = await committing
    assert await observer.notified() == [str(revision)]


async def test_the_workers_of_one_server_notify_only_another_process(
    workers: tuple[list[Backend], Backend, Observer],
) -> None:
    """The workers tell each other of their commits through their pipes: a NOTIFY among them only
    costs; another process's listener is notified as ever."""
    (zero, one), other, observer = workers
    await _listen(zero)
    await _listen(one)
    await _put(zero)
    await _put(one)
    assert await observer.notified() == []
    await _listen(other)
    first = await _put(zero)
    second = await _put(other)
    assert await observer.notified() == [str(first), str(second)]
