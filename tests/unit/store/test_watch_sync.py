"""The watch hub's synced and unsynced watchers, fed by a Store on the in-memory backend.

A watcher whose stream is full is demoted (unsynced) and caught up by the sync task, from the window
of recent revisions or from the log: every event exactly once, in revision order, then promoted back.
A watcher behind the compaction revision is cancelled as compacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy.errors import CompactedError
from kinepy.store.store import Store, StoreSettings
from kinepy.store.watch import CATCH_UP_MAX_BYTES, PROGRESS_WATCH_ID, WatchResponse, WatchStream
from kinepy.types import DeleteRangeRequest, Event, KeyRange, PutRequest, TxnRequest

BUFFER = 4  # events a stream holds before its watchers are demoted


class CountingBackend(FakeBackend):
    """Counts the log reads, so a test knows the catch-up came from the database."""

    def __init__(self) -> None:
        super().__init__()
        self.history_reads = 0

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        self.history_reads += 1
        return await super().read_events(key_range, after=after, upto=upto, prev_kv=prev_kv, limit=limit)


@pytest.fixture
def backend() -> CountingBackend:
    return CountingBackend()


async def _store(backend: FakeBackend, *, window_events: int, **settings_: int) -> Store:
    settings = StoreSettings(
        **{"watch_stream_buffer_events": BUFFER, "watch_window_events": window_events, **settings_}
    )
    store = Store(backend, settings)
    await store.start()
    return store


@pytest.fixture
async def store(backend: CountingBackend) -> AsyncIterator[Store]:
    store = await _store(backend, window_events=8192)
    yield store
    await store.aclose()


@pytest.fixture
async def store_without_window(backend: CountingBackend) -> AsyncIterator[Store]:
    store = await _store(backend, window_events=1)  # the window keeps only the latest revision
    yield store
    await store.aclose()


async def _next(stream: WatchStream, count: int = 1) -> list[WatchResponse]:
    async with asyncio.timeout(2):
        return [await stream.next_response() for _ in range(count)]


async def _revisions_until(stream: WatchStream, last: int) -> list[int]:
    """The mod revisions of every event the stream sends, until one at `last`."""
    seen: list[int] = []
    while not seen or seen[-1] < last:
        [resp] = await _next(stream)
        assert not resp.canceled
        seen.extend(e.kv.mod_revision for e in resp.events)
    return seen


async def _puts(store: Store, count: int, key: bytes = b"k") -> None:
    for i in range(count):
        await store.put(PutRequest(key, b"%d" % i))


async def test_a_slow_stream_is_demoted_and_caught_up_from_the_window(
    store: Store, backend: CountingBackend
) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        watcher = stream.watchers[0]
        await _puts(store, BUFFER + 6)  # revisions 2..11, nobody reading
        assert not watcher.synced  # the stream filled up at revision BUFFER + 1
        assert stream.buffered_events == BUFFER
        assert await _revisions_until(stream, BUFFER + 7) == list(range(2, BUFFER + 8))
        assert watcher.synced  # caught up: fed live again
        await store.put(PutRequest(b"k", b"live"))
        [live] = await _next(stream)
        assert [e.kv.mod_revision for e in live.events] == [BUFFER + 8]
    assert backend.history_reads == 0  # the window held everything


async def test_a_slow_stream_catches_up_from_the_log(
    store_without_window: Store, backend: CountingBackend
) -> None:
    store = store_without_window
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        await _puts(store, 3 * BUFFER)  # revisions 2..13
        assert await _revisions_until(stream, 3 * BUFFER + 1) == list(range(2, 3 * BUFFER + 2))
        assert stream.watchers[0].synced
    assert backend.history_reads > 0


VALUE = b"v" * 10_000  # bytes: each event counts about this much against the byte caps


async def test_the_window_is_capped_in_bytes_and_the_log_serves_the_rest(backend: CountingBackend) -> None:
    """A window of 3 values' bytes keeps the last 2 revisions (prev_kv included); a watcher from
    revision 2 reads the rest from the log and gets every event once, in order."""
    store = await _store(backend, window_events=8192, watch_window_bytes=3 * len(VALUE))
    try:
        for _ in range(10):  # revisions 2..11
            await store.put(PutRequest(b"k", VALUE))
        with store.open_watch() as stream:
            stream.create(b"k", b"", start_revision=2)
            await _next(stream)
            assert await _revisions_until(stream, 11) == list(range(2, 12))
        assert backend.history_reads > 0
    finally:
        await store.aclose()


async def test_a_stream_full_in_bytes_is_demoted_and_loses_nothing(backend: CountingBackend) -> None:
    """A stream holds 3 values' bytes at most, whatever its room in events; its watcher is demoted
    and caught up (from the window, then from the log as it is capped too), every event exactly once."""
    store = await _store(
        backend,
        window_events=8192,
        watch_window_bytes=5 * len(VALUE),
        watch_stream_buffer_events=1000,
        watch_stream_buffer_bytes=3 * len(VALUE),
    )
    try:
        with store.open_watch() as stream:
            stream.create(b"k", b"")
            await _next(stream)
            watcher = stream.watchers[0]
            for _ in range(12):  # revisions 2..13, nobody reading
                await store.put(PutRequest(b"k", VALUE))
            assert not watcher.synced
            # full in bytes (an event is about two values: its prev_kv too), far from full in events
            assert stream.buffered_events == 2 and 3 * len(VALUE) <= stream.buffered_bytes < 5 * len(VALUE)
            assert await _revisions_until(stream, 13) == list(range(2, 14))
            assert watcher.synced and stream.buffered_bytes == 0
        assert backend.history_reads > 0
    finally:
        await store.aclose()


async def test_a_watcher_from_an_old_revision_catches_up_with_prev_kv(
    store_without_window: Store, backend: CountingBackend
) -> None:
    store = store_without_window
    await _puts(store, 3)  # revisions 2..4
    await store.delete_range(DeleteRangeRequest(b"k"))  # revision 5
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=3, prev_kv=True)
        [created] = await _next(stream)
        assert created.created
        assert not stream.watchers[0].synced
        events: list[Event] = []
        while len(events) < 3:
            [resp] = await _next(stream)
            events.extend(resp.events)
        assert [(e.kv.mod_revision, e.prev_kv.mod_revision if e.prev_kv else None) for e in events] == [
            (3, 2),
            (4, 3),
            (5, 4),
        ]


async def test_one_revision_bigger_than_the_buffer_travels_whole(
    store_without_window: Store,
) -> None:
    store = store_without_window
    await store.txn(TxnRequest([], [PutRequest(b"k%d" % i, b"v") for i in range(BUFFER + 2)], []))  # rev 2
    await store.put(PutRequest(b"k0", b"again"))  # revision 3
    with store.open_watch() as stream:
        stream.create(b"k", b"l", start_revision=2)
        await _next(stream)
        [whole] = await _next(stream)
        assert len(whole.events) == BUFFER + 2 and {e.kv.mod_revision for e in whole.events} == {2}
        [rest] = await _next(stream)
        assert [e.kv.mod_revision for e in rest.events] == [3]


async def test_a_log_catch_up_stops_before_a_revision_that_does_not_fit(store_without_window: Store) -> None:
    store = store_without_window
    await store.txn(TxnRequest([], [PutRequest(b"k%d" % i, b"v") for i in range(BUFFER - 1)], []))  # rev 2
    await store.txn(TxnRequest([], [PutRequest(b"k%d" % i, b"v") for i in range(BUFFER - 1)], []))  # rev 3
    await store.put(PutRequest(b"k0", b"last"))  # revision 4
    with store.open_watch() as stream:
        stream.create(b"k", b"l", start_revision=2)
        await _next(stream)
        [first] = await _next(stream)
        assert {e.kv.mod_revision for e in first.events} == {2}  # revision 3 would not fit beside it
        seen = [e.kv.mod_revision for e in first.events]
        while seen[-1] < 4:
            [resp] = await _next(stream)
            seen.extend(e.kv.mod_revision for e in resp.events)
        assert seen == [2] * (BUFFER - 1) + [3] * (BUFFER - 1) + [4]


async def test_a_watcher_below_the_compaction_revision_is_cancelled(store: Store) -> None:
    await _puts(store, 4)  # revisions 2..5
    await store.compact(4)
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=2)
        created, cancelled = await _next(stream, 2)
        assert created.created and cancelled.canceled and cancelled.compact_revision == 4
        assert stream.watchers == {}
        stream.create(b"k", b"", start_revision=4)  # at the compaction revision: still readable
        created, events = await _next(stream, 2)
        assert [e.kv.mod_revision for e in events.events] == [4, 5]


async def test_a_demoted_watcher_overtaken_by_compaction_is_cancelled(store_without_window: Store) -> None:
    store = store_without_window
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        await _puts(store, BUFFER + 4)  # revisions 2..9; demoted from revision BUFFER + 2
        assert not stream.watchers[0].synced
        await store.compact(BUFFER + 4)
        assert await _revisions_until(stream, BUFFER + 1) == list(range(2, BUFFER + 2))  # what was queued
        [cancelled] = await _next(stream)
        assert cancelled.canceled and cancelled.compact_revision == BUFFER + 4


async def test_a_negative_start_revision_is_refused(store: Store) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=-1)
        [refused] = await _next(stream)
        assert refused.created and refused.canceled and refused.cancel_reason == CompactedError.message


async def test_a_future_start_revision_waits_synced(store: Store) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=4)
        await _next(stream)
        assert stream.watchers[0].synced
        await _puts(store, 3)  # revisions 2..4
        [resp] = await _next(stream)
        assert [e.kv.mod_revision for e in resp.events] == [4]


async def test_progress_is_answered_once_the_catch_up_is_done(store_without_window: Store) -> None:
    store = store_without_window
    await _puts(store, 3)  # revisions 2..4
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=2)
        stream.request_progress()
        responses = await _next(stream, 3)
        assert responses[0].created
        assert [e.kv.mod_revision for e in responses[1].events] == [2, 3, 4]
        assert responses[2].watch_id == PROGRESS_WATCH_ID and responses[2].revision == 4


async def test_a_watcher_cancelled_while_unsynced_gets_nothing_more(store_without_window: Store) -> None:
    store = store_without_window
    await _puts(store, 3)
    with store.open_watch() as stream:
        stream.create(b"k", b"", start_revision=2)
        stream.cancel(0)
        created, cancelled = await _next(stream, 2)
        assert created.created and cancelled.canceled and cancelled.watch_id == 0
        stream.cancel(0)  # unknown by now: no reply
        stream.create(b"other", b"")
        [created] = await _next(stream)
        assert created.watch_id == 1


BIG_VALUE = b"b" * 300_000  # 7 of them exceed CATCH_UP_MAX_BYTES (2 MiB)


@pytest.mark.parametrize("window_events", [8192, 1], ids=["from the window", "from the log"])
async def test_a_catch_up_response_stays_under_the_byte_cap(
    backend: CountingBackend, window_events: int
) -> None:
    """20 values of 300 kB (6 MB) behind a watcher arrive in responses of at most CATCH_UP_MAX_BYTES,
    so a client with gRPC's default 4 MiB receive limit can take them; every event once, in order."""
    store = await _store(backend, window_events=window_events, watch_stream_buffer_events=1000)
    try:
        for _ in range(20):  # revisions 2..21
            await store.put(PutRequest(b"k", BIG_VALUE))
        with store.open_watch() as stream:
            stream.create(b"k", b"", start_revision=2)
            await _next(stream)
            seen: list[int] = []
            while not seen or seen[-1] < 21:
                [resp] = await _next(stream)
                assert 0 < sum(len(e.kv.value) for e in resp.events) <= CATCH_UP_MAX_BYTES
                seen.extend(e.kv.mod_revision for e in resp.events)
            assert seen == list(range(2, 22))
    finally:
        await store.aclose()


async def test_revisions_queued_for_one_watcher_go_out_in_one_response(store: Store) -> None:
    """A stream that fell behind catches up in one message, not one per revision."""
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        await _puts(store, 3)  # revisions 2..4, queued while nobody reads the stream
        [resp] = await _next(stream)
        assert [e.kv.mod_revision for e in resp.events] == [2, 3, 4] and resp.revision == 4
        assert (stream.buffered_events, stream.buffered_bytes) == (0, 0)


async def test_a_queued_progress_notification_or_another_watcher_is_not_overtaken(store: Store) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        stream.create(b"k", b"", watch_id=1)
        await _next(stream, 2)
        await _puts(store, 1)  # revision 2, for watcher 0 then watcher 1
        stream.request_progress()
        await _puts(store, 1)  # 3
        sent = [(r.watch_id, [e.kv.mod_revision for e in r.events]) for r in await _next(stream, 5)]
        assert sorted(sent[:2]) == [(0, [2]), (1, [2])]  # the watchers in the hub's order
        assert sent[2] == (PROGRESS_WATCH_ID, [])
        assert sorted(sent[3:]) == [(0, [3]), (1, [3])]


async def test_revisions_queued_beyond_the_catch_up_bytes_go_out_in_more_responses(store: Store) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        for _ in range(2):  # each more than half of a catch-up response
            await store.put(PutRequest(b"k", b"v" * (CATCH_UP_MAX_BYTES // 2 + 1)))
        assert [len(r.events) for r in await _next(stream, 2)] == [1, 1]
