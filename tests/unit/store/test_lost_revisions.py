"""The database loses revisions the store acknowledged (an asynchronous standby promoted, a backup
restored under a running kinepy): the store never reuses a revision, compacts LOST_GAP revisions after the
last one it acknowledged, and cancels every watch as compacted (and a watch resumed after the last
revision its client saw), whether a write or the follower notices first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.store.store import Store, StoreSettings
from kinepy.store.txn import LOST_GAP
from kinepy.store.watch import WatchResponse, WatchStream
from kinepy.types import KeyValue, PutRequest, RangeRequest


def lose_revisions_after(backend: FakeBackend, kept: int) -> None:
    """What a promoted standby that had received revisions up to `kept` holds."""
    backend.log = [row for row in backend.log if row.revision <= kept]
    backend.current = {}
    for row in backend.log:
        if row.tombstone:
            backend.current.pop(row.key, None)
        else:
            backend.current[row.key] = KeyValue(
                row.key, row.create_revision, row.revision, row.version, row.value, row.lease
            )
    backend.revision = kept


async def _next(stream: WatchStream) -> WatchResponse:
    async with asyncio.timeout(2):
        return await stream.next_response()


async def _watching(store: Store) -> AsyncIterator[WatchStream]:
    with store.open_watch() as stream:
        stream.create(b"k", b"l")
        assert (await _next(stream)).created
        yield stream


@pytest.mark.parametrize("shared", [False, True], ids=["a write notices", "the follower notices"])
async def test_lost_revisions_are_skipped_compacted_and_every_watch_cancelled(
    shared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend(shared=shared)
    store = Store(backend, StoreSettings(datastore_poll_interval=0.01))
    await store.start()
    try:
        async for stream in _watching(store):
            for i in range(2, 5):  # revisions 2, 3, 4
                await store.put(PutRequest(b"k%d" % i, b"v"))
                assert [e.kv.mod_revision for e in (await _next(stream)).events] == [i]
            lose_revisions_after(backend, 2)
            fence = 4 + LOST_GAP
            with caplog.at_level(logging.ERROR, logger="kinepy.store.store"):
                if shared:  # nobody writes: the follower finds the database behind
                    async with asyncio.timeout(5):
                        await backend.until(lambda: backend.revision == fence)  # noqa: B023
                else:
                    assert (await store.put(PutRequest(b"k5", b"v"))).revision == fence + 1
            assert "the datastore lost revisions 3..4" in caplog.text
            cancelled = await _next(stream)
            assert cancelled.canceled and cancelled.compact_revision == fence
            assert backend.compact_revision == fence
        with pytest.raises(errors.CompactedError):
            await store.range(RangeRequest(b"k3", revision=3))
        # A client that saw revision 4 and resumes its watch after it is told to list again.
        with store.open_watch() as stream:
            stream.create(b"k", b"l", start_revision=5)
            assert (await _next(stream)).created
            resumed = await _next(stream)
            assert resumed.canceled and resumed.compact_revision == fence
        # A watch from the compaction on sees the writes after it, exactly once.
        with store.open_watch() as stream:
            stream.create(b"k", b"l", start_revision=fence)
            assert (await _next(stream)).created
            expected = [fence + 1] if not shared else []
            revision = (await store.put(PutRequest(b"k6", b"v"))).revision
            expected.append(revision)
            seen: list[int] = []
            while len(seen) < len(expected):
                seen += [e.kv.mod_revision for e in (await _next(stream)).events]
            assert seen == expected == list(range(fence + 1, revision + 1))
    finally:
        await store.aclose()


class SlowReads(FakeBackend):
    """Reads the revisions, then takes a moment to answer: commits land in between."""

    async def revisions(self) -> tuple[int, int]:
        read = self.revision, self.compact_revision
        await asyncio.sleep(0.002)
        return read


async def test_a_database_that_kept_everything_is_never_taken_for_one_that_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The follower reads the revision while this process commits: a read that started before a
    commit and ends after it is not behind."""
    backend = SlowReads(shared=True)
    store = Store(backend, StoreSettings(datastore_poll_interval=0.001))
    await store.start()
    try:
        # Bounded: a hang must fail with a trace, not stall CI. The one seen (a full-suite run of 2ac9055,
        # in aclose) was the fake's wait_for swallowing the follower's cancellation: test_follower.py.
        with caplog.at_level(logging.ERROR, logger="kinepy.store.store"):
            async with asyncio.timeout(30):
                await asyncio.gather(*(store.put(PutRequest(b"k%d" % i, b"v")) for i in range(300)))
                for i in range(100):
                    await store.put(PutRequest(b"s%d" % i, b"v"))
        assert "lost" not in caplog.text
        assert backend.compact_revision == -1
    finally:
        async with asyncio.timeout(10):
            await store.aclose()
