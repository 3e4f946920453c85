"""WatchHub on its own, with a fake backend: creates etcd refuses, filters, ordering, progress, compaction,
skipping ahead, and catch-up from the log while clients cancel or the history is compacted."""

from __future__ import annotations

import asyncio

import pytest

from kinepy.errors import WATCH_DUPLICATE_ID, WATCH_RANGE_EMPTY
from kinepy.store.watch import (
    PROGRESS_WATCH_ID,
    WatchHub,
    WatchResponse,
    WatchStream,
    _whole_revisions_within,
    event_bytes,
)
from kinepy.types import Event, EventType, KeyRange, KeyValue


class _NoHistory:
    """A backend whose log holds nothing: the tests serve catch-up from the window."""

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        return []


def _put(key: bytes, revision: int) -> Event:
    return Event(EventType.PUT, KeyValue(key, revision, revision, 1, b"v", 0))


def _delete(key: bytes, revision: int) -> Event:
    return Event(EventType.DELETE, KeyValue(key, 0, revision, 0, b"", 0))


async def _responses(stream: object, count: int) -> list[WatchResponse]:
    out = []
    async with asyncio.timeout(2):
        for _ in range(count):
            out.append(await stream.next_response())  # type: ignore[attr-defined]
    return out


@pytest.fixture
def hub() -> WatchHub:
    return WatchHub(_NoHistory(), revision=4, compact_revision=-1)  # type: ignore[arg-type]


async def test_progress_is_queued_behind_the_events_it_covers(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"b")
    hub.publish(6, [_put(b"a1", 5), _put(b"a2", 6)])
    stream.request_progress()
    created, events, progress = await _responses(stream, 3)
    assert created.created and created.revision == 4
    assert [e.kv.mod_revision for e in events.events] == [5, 6]
    assert progress.watch_id == PROGRESS_WATCH_ID and progress.revision == 6 and not progress.events


async def test_progress_waits_while_a_watcher_is_catching_up(hub: WatchHub) -> None:
    hub.publish(6, [_put(b"a1", 5), _put(b"a2", 6)])
    stream = hub.open_stream()
    stream.create(b"a", b"b", start_revision=5)  # unsynced: revisions 5 and 6 come from the window
    stream.request_progress()
    [created] = await _responses(stream, 1)
    assert created.created
    assert stream.progress_pending  # not answered before the catch-up
    assert await hub._sync_once()
    events, progress = await _responses(stream, 2)
    assert [e.kv.mod_revision for e in events.events] == [5, 6]
    assert progress.watch_id == PROGRESS_WATCH_ID and progress.revision == 6


async def test_skip_to_cancels_watchers_behind_another_process_compaction(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"b")  # next revision 5
    hub.compacted(10)
    hub.skip_to(10)
    assert hub.revision == 10
    await hub._sync_once()
    created, canceled = await _responses(stream, 2)
    assert created.created
    assert canceled.canceled and canceled.compact_revision == 10
    assert stream.watchers == {}


async def test_events_below_a_future_start_revision_are_not_sent(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"b", start_revision=6)  # future: waits for revision 6
    hub.publish(5, [_put(b"a1", 5)])
    hub.publish(6, [_put(b"a2", 6)])
    created, events = await _responses(stream, 2)
    assert created.created
    assert [e.kv.mod_revision for e in events.events] == [6]


async def test_each_watcher_gets_the_events_of_its_range_from_one_batch(hub: WatchHub) -> None:
    ranges = {
        "one key": (b"b", b""),
        "prefix b": (b"b", b"c"),
        "between the batch's keys": (b"ba", b"bz"),
        "to the end": (b"c", b"\x00"),
        "before the batch": (b"0", b"a"),
        "after the batch": (b"x", b"y"),
    }
    streams = {}
    for name, (key, range_end) in ranges.items():
        streams[name] = stream = hub.open_stream()
        stream.create(key, range_end)
    batch = [_put(b"a", 5), _put(b"b", 5), _put(b"bz", 5), _put(b"c", 5), _put(b"d", 5)]
    hub.publish(5, batch)
    expected = {
        "one key": [b"b"],
        "prefix b": [b"b", b"bz"],
        "between the batch's keys": [],
        "to the end": [b"c", b"d"],
        "before the batch": [],
        "after the batch": [],
    }
    for name, keys in expected.items():
        stream = streams[name]
        responses = await _responses(stream, 1 + (1 if keys else 0))
        got = [e.kv.key for r in responses[1:] for e in r.events]
        assert got == keys, name
        assert stream.watchers and all(w.next_revision == 6 for w in stream.watchers.values()), name


def test_a_key_range_meets_every_span_holding_one_of_its_keys() -> None:
    """`meets` lets the hub pass over a watcher for a whole batch: it must never miss a key."""
    alphabet = [b"", b"a", b"a\x00", b"ab", b"b", b"b\x00", b"c"]
    for start in alphabet:
        for end in [None, *alphabet]:
            key_range = KeyRange(start, end)
            for low in alphabet:
                for high in alphabet:
                    if low > high:
                        continue
                    if any(low <= k <= high and k in key_range for k in alphabet):
                        assert key_range.meets(low, high), (key_range, low, high)


async def _nothing_queued(stream: WatchStream) -> None:
    """Every watcher of `stream` is synced: a progress request is answered at once, behind whatever
    was queued, so it comes next exactly when nothing else was queued."""
    stream.request_progress()
    [progress] = await _responses(stream, 1)
    assert progress.watch_id == PROGRESS_WATCH_ID and not progress.events, progress


async def test_filters_drop_puts_or_deletes_and_a_response_left_empty_is_not_sent(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"b", no_put=True)  # id 0
    stream.create(b"a", b"b", no_delete=True)  # id 1
    await _responses(stream, 2)
    hub.publish(5, [_put(b"a1", 5)])  # only watcher 1 wants it
    hub.publish(6, [_delete(b"a1", 6)])  # only watcher 0 wants it
    put, delete = await _responses(stream, 2)
    assert (put.watch_id, [e.type for e in put.events]) == (1, [EventType.PUT])
    assert (delete.watch_id, [e.type for e in delete.events]) == (0, [EventType.DELETE])
    await _nothing_queued(stream)


async def test_an_empty_key_watches_the_smallest_key(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"", b"")
    await _responses(stream, 1)
    hub.publish(6, [_put(b"\x00", 5), _put(b"a", 6)])
    [events] = await _responses(stream, 1)
    assert [e.kv.key for e in events.events] == [b"\x00"]


async def test_creates_etcd_refuses_are_created_and_canceled_with_its_reason(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"b", b"a")  # range_end <= key: empty
    stream.create(b"a", b"", watch_id=3)
    stream.create(b"b", b"", watch_id=3)  # in use
    empty, created, duplicate = await _responses(stream, 3)
    assert (empty.watch_id, empty.created, empty.canceled) == (-1, True, True)
    assert empty.cancel_reason == WATCH_RANGE_EMPTY == "mvcc: watcher range is empty"
    assert (created.watch_id, created.canceled) == (3, False)
    assert (duplicate.watch_id, duplicate.created, duplicate.canceled) == (-1, True, True)
    assert duplicate.cancel_reason == WATCH_DUPLICATE_ID
    assert WATCH_DUPLICATE_ID == "mvcc: duplicate watch ID provided on the WatchStream"
    assert list(stream.watchers) == [3]  # the refused ones watch nothing


async def test_ids_the_stream_picks_pass_over_the_ids_clients_chose(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"", watch_id=1)
    stream.create(b"b", b"")
    stream.create(b"c", b"")
    assert [r.watch_id for r in await _responses(stream, 3)] == [1, 0, 2]  # as etcd's nextID


async def test_a_progress_request_on_a_stream_without_watchers_is_not_answered(hub: WatchHub) -> None:
    """As etcd's progressIfSync: no watcher to send it through, and nothing pending afterwards."""
    stream = hub.open_stream()
    stream.request_progress()
    assert not stream.progress_pending
    stream.create(b"a", b"b")
    hub.publish(5, [_put(b"a1", 5)])
    created, events = await _responses(stream, 2)
    assert created.created and [e.kv.mod_revision for e in events.events] == [5]
    await _nothing_queued(stream)


async def test_a_pending_progress_request_waits_through_live_events_until_every_watcher_is_synced(
    hub: WatchHub,
) -> None:
    hub.publish(6, [_put(b"a1", 5), _put(b"a2", 6)])
    stream = hub.open_stream()
    stream.create(b"a", b"b")  # 0: synced
    stream.create(b"a", b"b", start_revision=5)  # 1: catching up
    stream.request_progress()
    hub.publish(7, [_put(b"a3", 7)])  # live, to watcher 0; watcher 1 is still behind
    assert stream.progress_pending
    assert await hub._sync_once()
    _, _, live, caught_up, progress = await _responses(stream, 5)
    assert (live.watch_id, [e.kv.mod_revision for e in live.events]) == (0, [7])
    assert (caught_up.watch_id, [e.kv.mod_revision for e in caught_up.events]) == (1, [5, 6, 7])
    assert (progress.watch_id, progress.revision, progress.events) == (PROGRESS_WATCH_ID, 7, [])


async def test_skip_to_keeps_a_watcher_waiting_for_a_revision_after_it(hub: WatchHub) -> None:
    stream = hub.open_stream()
    stream.create(b"a", b"b", start_revision=20)
    hub.compacted(10)
    hub.skip_to(10)
    assert not await hub._sync_once()  # nothing to catch up, nothing cancelled
    hub.publish(20, [_put(b"a", 20)])
    created, events = await _responses(stream, 2)
    assert created.created and not events.canceled
    assert [e.kv.mod_revision for e in events.events] == [20]


async def test_progress_notify_watchers_sent_nothing_since_the_last_tick_get_a_progress_response(
    hub: WatchHub,
) -> None:
    hub.publish(6, [_put(b"a1", 5), _put(b"a2", 6)])
    stream = hub.open_stream()
    stream.create(b"a", b"b", progress_notify=True)  # 0
    stream.create(b"x", b"y", progress_notify=True)  # 1
    stream.create(b"a", b"b")  # 2: not asked for
    stream.create(b"a", b"b", progress_notify=True, start_revision=5)  # 3: behind, not synced
    await _responses(stream, 4)
    hub.publish(7, [_put(b"a3", 7)])  # to 0 and 2
    hub.progress_tick()  # 0 was sent events since the last tick: only 1 is notified
    *events, progress_1 = await _responses(stream, 3)
    assert sorted(r.watch_id for r in events) == [0, 2]  # in no particular order
    assert (progress_1.watch_id, progress_1.revision, progress_1.events) == (1, 7, [])
    hub.progress_tick()  # now 0 too: nothing was sent to it in this interval
    ticked = await _responses(stream, 2)
    assert [(r.watch_id, r.revision, r.events) for r in ticked] == [(0, 7, []), (1, 7, [])]


class _GatedHistory:
    """A log of `events` whose reads wait for `release`, so a test acts while one is in flight."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        self.reading.set()
        await self.release.wait()
        found = [e for e in self.events if after < e.kv.mod_revision <= upto and e.kv.key in key_range]
        return found[:limit] if limit else found

    async def revisions(self) -> tuple[int, int]:
        return 10, -1  # compacted nowhere, as far as the database says


@pytest.fixture
def gated() -> _GatedHistory:
    return _GatedHistory([_put(b"a%d" % rev, rev) for rev in range(5, 11)])


@pytest.fixture
def hub_on_the_log(gated: _GatedHistory) -> WatchHub:
    return WatchHub(gated, revision=10, compact_revision=-1)  # type: ignore[arg-type]  # empty window


async def test_a_watcher_canceled_while_its_catch_up_reads_the_log_is_sent_nothing_more(
    hub_on_the_log: WatchHub, gated: _GatedHistory
) -> None:
    hub = hub_on_the_log
    stream, other = hub.open_stream(), hub.open_stream()
    stream.create(b"a", b"b", start_revision=5)
    other.create(b"a", b"b", start_revision=5)
    catch_up = asyncio.create_task(hub._sync_once())
    await gated.reading.wait()
    stream.cancel(0)  # the client's cancel arrives during the read
    hub.close_stream(other)  # and the other stream ends
    gated.release.set()
    await catch_up
    created, canceled = await _responses(stream, 2)
    assert created.created and canceled.canceled and canceled.watch_id == 0
    assert not await hub._sync_once()  # nobody left to catch up
    assert hub.watcher_count == 0
    stream.create(b"z", b"")
    [created] = await _responses(stream, 1)
    assert created.created
    await _nothing_queued(stream)


async def test_a_compaction_during_a_catch_up_read_cancels_the_watcher_as_compacted(
    hub_on_the_log: WatchHub, gated: _GatedHistory
) -> None:
    """The hub learns of a compaction before its rows are deleted: what the read returned may already
    lack them, so it is not sent; the next pass cancels the watcher, as etcd does below compactRev."""
    hub = hub_on_the_log
    stream = hub.open_stream()
    stream.create(b"a", b"b", start_revision=5)
    catch_up = asyncio.create_task(hub._sync_once())
    await gated.reading.wait()
    hub.compacted(8)
    gated.release.set()
    await catch_up
    assert await hub._sync_once()
    created, canceled = await _responses(stream, 2)
    assert created.created
    assert (canceled.watch_id, canceled.canceled, canceled.compact_revision) == (0, True, 8)
    assert not canceled.events


async def test_a_watcher_on_a_full_stream_catches_up_once_the_client_reads() -> None:
    hub = WatchHub(_NoHistory(), revision=4, compact_revision=-1, max_buffered_events=2)  # type: ignore[arg-type]
    hub.publish(6, [_put(b"a1", 5), _put(b"a2", 6)])
    stream = hub.open_stream()
    stream.create(b"a", b"b")  # 0: synced, fills the stream
    hub.publish(8, [_put(b"a3", 7), _put(b"a4", 8)])
    stream.create(b"a", b"b", start_revision=5)  # 1: behind
    assert not stream.has_room()
    assert not await hub._sync_once()  # no room: it waits
    _, live, _ = await _responses(stream, 3)  # the client reads
    assert [e.kv.mod_revision for e in live.events] == [7, 8]
    # In what fits, each time the client has read what was sent.
    for revisions in ([5, 6], [7, 8]):
        assert await hub._sync_once()
        assert not await hub._sync_once()  # full again
        [caught_up] = await _responses(stream, 1)
        assert (caught_up.watch_id, [e.kv.mod_revision for e in caught_up.events]) == (1, revisions)
    assert stream.watchers[1].synced


def test_a_log_catch_up_takes_whole_revisions_within_the_bytes_and_the_first_however_large() -> None:
    big = [Event(EventType.PUT, KeyValue(b"k%d" % i, 5, 5, 1, b"v" * 1000, 0)) for i in range(3)]
    small = [_put(b"s6", 6), _put(b"s7", 7)]
    room = event_bytes(big[0]) + 1  # less than revision 5 alone
    assert _whole_revisions_within([*big, *small], 7, room) == (big, 5)
    room = sum(map(event_bytes, big)) + event_bytes(small[0])
    assert _whole_revisions_within([*big, *small], 7, room) == ([*big, small[0]], 6)
    assert _whole_revisions_within([*big, *small], 9, 1 << 20) == ([*big, *small], 9)
