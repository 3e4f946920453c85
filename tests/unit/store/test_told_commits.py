"""Workers on one SQLite file tell each other of their commits with the events (`ChangePipes`): the
follower of the other worker publishes a told commit that follows its hub's revision without reading
the database, and reads the log for anything else (a commit told to nobody, one told without its
events, one it already has), so every event reaches its watchers once and in order either way.

Real SQLite files and real pipes; the poll interval is an hour, so what arrives came from a message."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kinepy.backends.base import WriteSet
from kinepy.backends.changes import ChangePipes, encode
from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.store.store import Store, StoreSettings
from kinepy.store.watch import WatchStream
from kinepy.types import Event, KeyRange, PutRequest


class CountedReads(SQLiteBackend):
    """Counts the log reads (`read_events`): what a told commit spares the follower."""

    log_reads = 0

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        self.log_reads += 1
        return await super().read_events(key_range, after=after, upto=upto, prev_kv=prev_kv, limit=limit)


class Workers:
    """Stores on one SQLite file, as `kinepy --workers` runs them: `teller` tells `follower` of its
    commits, `mute` tells nobody (its messages to the follower are lost)."""

    def __init__(self, path: Path) -> None:
        self.pipe = os.pipe()  # the follower's
        self.spare = os.pipe()  # the others': nobody writes to them
        state = str(path / "state.db")
        self.follower_backend = CountedReads(state, changes=ChangePipes(self.pipe[0], ()))
        self.follower = Store(
            self.follower_backend, StoreSettings(datastore_poll_interval=3600), leader=False
        )
        teller_backend = SQLiteBackend(state, changes=ChangePipes(self.spare[0], (self.pipe[1],)))
        self.teller = Store(teller_backend, StoreSettings(datastore_poll_interval=3600))
        mute_backend = SQLiteBackend(state, changes=ChangePipes(self.spare[0], ()))
        self.mute = Store(mute_backend, StoreSettings(datastore_poll_interval=3600), leader=False)
        self._all = [
            (teller_backend, self.teller),  # first: it creates the schema
            (self.follower_backend, self.follower),
            (mute_backend, self.mute),
        ]

    async def start(self) -> None:
        for backend, store in self._all:
            await backend.start()
            await store.start()

    async def aclose(self) -> None:
        for backend, store in reversed(self._all):
            await store.aclose()
            await backend.aclose()
        for fd in (*self.pipe, *self.spare):
            os.close(fd)


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    both = Workers(tmp_path)
    await both.start()
    try:
        yield both
    finally:
        async with asyncio.timeout(10):
            await both.aclose()


async def _revisions(stream: WatchStream, upto: int) -> list[int]:
    """The revisions of the events `stream` gets, until one at `upto`."""
    seen: list[int] = []
    async with asyncio.timeout(5):
        while not seen or seen[-1] < upto:
            seen += [e.kv.mod_revision for e in (await stream.next_response()).events]
    return seen


async def _watching(store: Store) -> AsyncIterator[WatchStream]:
    with store.open_watch() as stream:
        stream.create(b"k", b"l", prev_kv=True)
        async with asyncio.timeout(5):
            assert (await stream.next_response()).created
        yield stream


async def test_a_told_commit_reaches_the_other_workers_watchers_without_a_log_read(workers: Workers) -> None:
    async for stream in _watching(workers.follower):
        for i in range(20):
            await workers.teller.put(PutRequest(b"k", b"v%d" % i))
        events: list[Event] = []
        async with asyncio.timeout(5):
            while len(events) < 20:
                events += (await stream.next_response()).events
    assert [e.kv.mod_revision for e in events] == list(range(2, 22))
    assert [e.kv.value for e in events] == [b"v%d" % i for i in range(20)]
    assert [e.prev_kv and e.prev_kv.value for e in events] == [None] + [b"v%d" % i for i in range(19)]
    assert workers.follower_backend.log_reads == 0


async def test_a_commit_told_to_nobody_is_read_from_the_log_before_the_next_told_one(
    workers: Workers,
) -> None:
    async for stream in _watching(workers.follower):
        await workers.teller.put(PutRequest(b"k", b"told"))  # 2
        assert await _revisions(stream, 2) == [2]
        await workers.mute.put(PutRequest(b"k", b"lost"))  # 3: its message is lost
        await workers.teller.put(PutRequest(b"k", b"told"))  # 4: told, but after 3
        assert await _revisions(stream, 4) == [3, 4]
    assert workers.follower_backend.log_reads == 1


async def test_a_commit_told_again_is_not_published_twice(workers: Workers) -> None:
    """As a third worker's message overtaken by a later commit's arrives: at the hub's revision."""
    async for stream in _watching(workers.follower):
        await workers.teller.put(PutRequest(b"k", b"one"))  # 2
        async with asyncio.timeout(5):
            events = (await stream.next_response()).events
        assert [e.kv.mod_revision for e in events] == [2]
        os.write(workers.pipe[1], encode(WriteSet(revision=2, base_revision=1, events=events)))
        await workers.teller.put(PutRequest(b"k", b"two"))  # 3
        assert await _revisions(stream, 3) == [3]


async def test_a_compaction_is_told_without_events_and_seen_before_the_next_commit(workers: Workers) -> None:
    async for stream in _watching(workers.follower):
        for i in range(3):
            await workers.teller.put(PutRequest(b"k", b"v%d" % i))  # 2, 3, 4
        await workers.teller.compact(3)
        await workers.teller.put(PutRequest(b"k", b"after"))  # 5
        assert await _revisions(stream, 5) == [2, 3, 4, 5]
        figures = workers.follower.watch_figures()
        assert figures is not None and figures.compact_revision == 3
