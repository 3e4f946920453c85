"""WatchHub on its own, with a fake backend: ordering, progress, compaction and skipping ahead."""

from __future__ import annotations

import asyncio

import pytest

from kinepy.store.watch import PROGRESS_WATCH_ID, WatchHub, WatchResponse
from kinepy.types import Event, EventType, KeyRange, KeyValue


class _NoHistory:
    """A backend whose log holds nothing: the tests serve catch-up from the window."""

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        return []


def _put(key: bytes, revision: int) -> Event:
    return Event(EventType.PUT, KeyValue(key, revision, revision, 1, b"v", 0))


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
