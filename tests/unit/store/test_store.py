"""The Store facade against the in-memory backend: every operation the servicers use."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.config import Config
from kinepy.store.alarms import AlarmAction, AlarmMember, AlarmType
from kinepy.store.autocompact import AutoCompactor
from kinepy.store.history import read_history
from kinepy.store.store import HashKV, Store, StoreSettings
from kinepy.store.watch import WatchResponse, WatchStream
from kinepy.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    KeyRange,
    PutRequest,
    RangeRequest,
    TxnRequest,
)

EVERYTHING = KeyRange(b"", None)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(max_key_bytes=16)


@pytest.fixture
async def store(backend: FakeBackend) -> AsyncIterator[Store]:
    store = Store(backend, StoreSettings(max_txn_ops=4))
    await store.start()
    yield store
    await store.aclose()


async def _next(stream: WatchStream, count: int = 1) -> list[WatchResponse]:
    async with asyncio.timeout(2):
        return [await stream.next_response() for _ in range(count)]


def test_settings_are_config_fields_of_the_same_names_types_and_defaults() -> None:
    # `StoreSettings.of` copies them by name, which mypy does not check: this does.
    config = {item.name: item for item in dataclasses.fields(Config)}
    for item in dataclasses.fields(StoreSettings):
        assert item.name in config, item.name
        assert (item.type, item.default) == (config[item.name].type, config[item.name].default), item.name


def test_settings_come_from_the_config() -> None:
    assert StoreSettings.of(Config()) == StoreSettings()
    config = Config(
        max_txn_ops=7,
        watch_window_bytes=1 << 20,
        watch_progress_notify_interval=1.5,
        compact_interval_jitter=20,
        datastore_poll_interval=0.5,
    )
    assert StoreSettings.of(config) == StoreSettings(
        max_txn_ops=7,
        watch_window_bytes=1 << 20,
        watch_progress_notify_interval=1.5,
        compact_interval_jitter=20,
        datastore_poll_interval=0.5,
    )


async def test_put_range_delete_and_the_revision(store: Store) -> None:
    assert store.revision() == 1
    assert (await store.put(PutRequest(b"a", b"1"))).revision == 2
    assert (await store.put(PutRequest(b"b", b"2"))).revision == 3
    assert store.revision() == 3
    got = await store.range(RangeRequest(b"a", b"c"))
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"a", b"1"), (b"b", b"2")]
    assert got.revision == 3 and got.count == 2
    old = await store.range(RangeRequest(b"a", b"c", revision=2))
    assert [kv.key for kv in old.kvs] == [b"a"]
    deleted = await store.delete_range(DeleteRangeRequest(b"a", b"c", prev_kv=True))
    assert (
        deleted.revision == 4 and deleted.deleted == 2 and [kv.key for kv in deleted.prev_kvs] == [b"a", b"b"]
    )
    assert store.revision() == 4
    assert (await store.range(RangeRequest(b"a", b"c"))).kvs == []


async def test_requests_are_validated_before_they_reach_the_writer(
    store: Store, backend: FakeBackend
) -> None:
    with pytest.raises(errors.KeyNotProvidedError):
        await store.range(RangeRequest(b""))
    with pytest.raises(errors.KeyNotProvidedError):
        await store.put(PutRequest(b""))
    with pytest.raises(errors.KeyNotProvidedError):
        await store.delete_range(DeleteRangeRequest(b""))
    with pytest.raises(errors.TooManyOpsError):
        await store.txn(TxnRequest([], [PutRequest(b"k%d" % i) for i in range(5)], []))
    with pytest.raises(errors.KeyTooLongError):
        await store.put(PutRequest(b"k" * 17))
    with pytest.raises(errors.KeyTooLongError):
        await store.txn(TxnRequest([], [PutRequest(b"k" * 17)], []))
    assert backend.writes == []


async def test_range_refuses_future_and_compacted_revisions(store: Store) -> None:
    for i in range(4):
        await store.put(PutRequest(b"k", b"%d" % i))  # revisions 2..5
    with pytest.raises(errors.FutureRevisionError):
        await store.range(RangeRequest(b"k", revision=6))
    await store.compact(4)
    with pytest.raises(errors.CompactedError):
        await store.range(RangeRequest(b"k", revision=3))
    assert (await store.range(RangeRequest(b"k", revision=4))).kvs[0].value == b"2"


async def test_a_paginated_list_counts_once(store: Store) -> None:
    for i in range(5):
        await store.put(PutRequest(b"k%d" % i, b"v"))
    first = await store.range(RangeRequest(b"k", b"l", limit=2))
    assert first.more and first.count == 5
    nxt = await store.range(RangeRequest(first.kvs[-1].key + b"\x00", b"l", limit=2, revision=first.revision))
    assert [kv.key for kv in nxt.kvs] == [b"k2", b"k3"] and nxt.count == 3


async def test_txn_compares_and_branches(store: Store) -> None:
    await store.put(PutRequest(b"flag", b"on"))
    txn = TxnRequest(
        [Compare(CompareResult.EQUAL, CompareTarget.VALUE, b"flag", b"", b"on")],
        [PutRequest(b"x", b"then")],
        [PutRequest(b"x", b"else")],
    )
    resp = await store.txn(txn)
    assert resp.succeeded and resp.revision == 3
    assert (await store.range(RangeRequest(b"x"))).kvs[0].value == b"then"


async def test_compaction_moves_the_watchers_and_deletes_history(store: Store, backend: FakeBackend) -> None:
    for i in range(4):
        await store.put(PutRequest(b"k", b"%d" % i))  # revisions 2..5
    assert len(backend.log) == 4
    assert await store.compact(4, physical=True) == 5
    assert [row.revision for row in backend.log] == [4, 5]  # superseded history is gone
    assert backend.compact_revision == 4
    figures = store.watch_figures()
    assert figures is not None and figures.compact_revision == 4
    with pytest.raises(errors.CompactedError):
        await store.compact(4)
    with pytest.raises(errors.CompactedError):
        await store.compact(5, expected=3)
    with pytest.raises(errors.FutureRevisionError):
        await store.compact(6)


async def test_a_restarted_store_resumes_the_physical_compaction(backend: FakeBackend) -> None:
    first = Store(backend)
    await first.start()
    for i in range(4):
        await first.put(PutRequest(b"k", b"%d" % i))
    backend.compact_revision = 4  # committed logically, the process stopped before deleting
    await first.aclose()
    second = Store(backend)
    await second.start()
    try:
        await second._compactor.wait(4)
        assert [row.revision for row in backend.log] == [4, 5]
    finally:
        await second.aclose()


async def test_status_hash_kv_defragment_and_snapshot(
    store: Store, backend: FakeBackend, tmp_path: Path
) -> None:
    await store.put(PutRequest(b"a", b"1"))
    await store.put(PutRequest(b"a", b"2"))
    status = await store.status()
    assert (status.revision, status.compact_revision) == (3, -1) and status.db_size >= status.db_size_in_use
    latest = await store.hash_kv(0)
    assert latest == HashKV(3, latest.hash, -1, 3)
    at_2 = await store.hash_kv(2)
    assert at_2.hash_revision == 2 and at_2.revision == 3 and at_2.hash != latest.hash
    assert await store.hash_kv(3) == latest
    with pytest.raises(errors.FutureRevisionError):
        await store.hash_kv(4)
    await store.compact(3)
    with pytest.raises(errors.CompactedError):
        await store.hash_kv(2)
    assert (await store.hash_kv(3)).compact_revision == 3
    assert await store.defragment() == 3 and backend.defragmented == 1
    path = tmp_path / "snap"
    assert await store.snapshot(str(path)) == 3
    assert path.read_bytes().count(b"\n") == 2


async def test_leases_through_the_store(store: Store) -> None:
    revision, lease = await store.lease_grant(0, 1)
    assert revision == 1 and lease.id > 0 and lease.ttl == 2  # etcd's minimum TTL
    await store.put(PutRequest(b"owned", b"v", lease=lease.id))
    assert await store.lease_keep_alive(lease.id) == 2
    found = await store.lease_time_to_live(lease.id, keys=True)
    assert found is not None and found[0].id == lease.id and found[2] == [b"owned"] and 0 <= found[1] <= 2
    assert await store.lease_leases() == [lease.id]
    assert await store.lease_revoke(lease.id) == 3  # the key's delete
    assert (await store.range(RangeRequest(b"owned"))).kvs == []
    assert await store.lease_time_to_live(lease.id, keys=False) is None
    assert await store.lease_keep_alive(lease.id) == 0


async def test_a_watch_sees_commits_and_closes_with_its_block(store: Store) -> None:
    with store.open_watch() as stream:
        stream.create(b"k", b"")
        [created] = await _next(stream)
        assert created.created and created.revision == 1
        await store.put(PutRequest(b"k", b"v"))
        [events] = await _next(stream)
        assert [e.kv.value for e in events.events] == [b"v"] and events.revision == 2
        figures = store.watch_figures()
        assert figures is not None
        assert (figures.watchers, figures.streams, figures.events_sent, figures.revision) == (1, 1, 1, 2)
    figures = store.watch_figures()
    assert figures is not None and (figures.watchers, figures.streams) == (0, 0)


async def test_ending_streams_ends_watches_and_signals_keep_alives(store: Store) -> None:
    with store.open_watch() as stream:
        store.end_streams()
        assert store.streams_ended.is_set()
        with pytest.raises(errors.StoppedError):
            await _next(stream)
        with store.open_watch() as late:  # opened during shutdown: ends at once
            with pytest.raises(errors.StoppedError):
                await _next(late)


async def test_a_full_disk_raises_nospace_which_refuses_what_adds_data_until_disarmed(
    store: Store, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """As etcd past its quota: the NOSPACE alarm of this member; puts, txns with puts and lease
    grants are refused with "database space exceeded" before they reach the database; deletes go on."""
    await store.put(PutRequest(b"a", b"1"))  # revision 2
    backend.outcomes = [errors.BackendNoSpace("disk full")]
    with caplog.at_level(logging.ERROR, logger="kinepy.store.store"), pytest.raises(errors.NoSpaceError):
        await store.put(PutRequest(b"b", b"2"))
    nospace = AlarmMember(backend.member_id, AlarmType.NOSPACE)
    assert store.alarm(AlarmAction.GET, 0, AlarmType.NONE) == [nospace]
    writes = len(backend.writes)
    with pytest.raises(errors.NoSpaceError):
        await store.put(PutRequest(b"b", b"2"))
    with pytest.raises(errors.NoSpaceError):
        await store.txn(TxnRequest([], [PutRequest(b"b", b"2")], []))
    with pytest.raises(errors.NoSpaceError):
        await store.lease_grant(0, 60)
    assert len(backend.writes) == writes  # refused before the database
    # A delete that still finds the disk full fails; the alarm, active already, is not raised again.
    backend.outcomes = [errors.BackendNoSpace("disk full")]
    with pytest.raises(errors.NoSpaceError):
        await store.delete_range(DeleteRangeRequest(b"a"))
    assert caplog.text.count("NOSPACE alarm raised") == 1
    assert (await store.delete_range(DeleteRangeRequest(b"a"))).deleted == 1
    assert store.alarm(AlarmAction.DEACTIVATE, backend.member_id, AlarmType.NOSPACE) == [nospace]
    assert (await store.put(PutRequest(b"b", b"2"))).revision == 4


async def test_a_store_not_started_has_no_watch_figures(backend: FakeBackend) -> None:
    store = Store(backend)
    assert store.watch_figures() is None
    store.end_streams()
    await store.aclose()


async def test_a_history_read_below_the_compaction_revision_is_refused(
    store: Store, backend: FakeBackend
) -> None:
    for i in range(4):
        await store.put(PutRequest(b"k", b"%d" % i))  # revisions 2..5
    await store.compact(4)
    events = await read_history(backend, EVERYTHING, after=3, upto=5, prev_kv=False)
    assert [e.kv.mod_revision for e in events] == [4, 5]
    with pytest.raises(errors.CompactedError):
        await read_history(backend, EVERYTHING, after=2, upto=5, prev_kv=False)


# -- a database shared by two stores (two kinepy processes) ------------------------------------


@pytest.fixture
def shared() -> FakeBackend:
    return FakeBackend(shared=True)


@pytest.fixture
async def two_stores(shared: FakeBackend) -> AsyncIterator[tuple[Store, Store]]:
    stores = (
        Store(shared, StoreSettings(datastore_poll_interval=0.01)),
        Store(shared, StoreSettings(datastore_poll_interval=0.01)),
    )
    for store in stores:
        await store.start()
    yield stores
    for store in stores:
        await store.aclose()


async def test_another_process_commits_reach_watchers_in_order(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    with b.open_watch() as stream:
        stream.create(b"k", b"\x00")
        await _next(stream)
        await a.put(PutRequest(b"k1", b"from a"))  # revision 2, committed by the other process
        await b.put(PutRequest(b"k2", b"from b"))  # revision 3: b publishes 2 first
        await a.put(PutRequest(b"k3", b"from a"))  # revision 4: b's follower finds it
        seen: list[int] = []
        while len(seen) < 3:
            [resp] = await _next(stream)
            seen.extend(e.kv.mod_revision for e in resp.events)
        assert seen == [2, 3, 4]
        assert b.revision() == 4  # learnt from the database before its events were published


async def test_another_process_compaction_reaches_watchers(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    for i in range(4):
        await a.put(PutRequest(b"k", b"%d" % i))  # revisions 2..5
    with b.open_watch() as stream:
        stream.create(b"after", b"")
        await _next(stream)
        await a.compact(4)
        await a.put(PutRequest(b"after", b"v"))  # revision 6: when b sees it, it has seen the compaction
        [resp] = await _next(stream)
        assert resp.events[0].kv.mod_revision == 6
        figures = b.watch_figures()
        assert figures is not None and figures.compact_revision == 4
        stream.create(b"k", b"", start_revision=2)
        created, cancelled = await _next(stream, 2)
        assert created.created and cancelled.canceled and cancelled.compact_revision == 4


async def test_the_follower_retries_a_failing_database(
    two_stores: tuple[Store, Store],
    shared: FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = two_stores
    real = shared.revisions
    calls = 0

    async def failing() -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise errors.BackendUnavailable("connection refused")
        return await real()

    monkeypatch.setattr(shared, "revisions", failing)
    with caplog.at_level(logging.INFO, logger="kinepy.store.follower"), b.open_watch() as stream:
        stream.create(b"k", b"")
        await _next(stream)
        await a.put(PutRequest(b"k", b"v"))
        [resp] = await _next(stream)
        assert resp.revision == 2 and b.revision() == 2
    assert "following the shared database failed" in caplog.text
    assert "following the shared database again" in caplog.text


# -- automatic compaction ----------------------------------------------------------------------


async def test_automatic_compaction_keeps_the_retention(store: Store, backend: FakeBackend) -> None:
    for i in range(6):
        await store.put(PutRequest(b"k", b"%d" % i))  # revisions 2..7
    auto = AutoCompactor(backend, lambda r, e: store.compact(r, expected=e), interval=60, retention=2)
    assert await auto.tick() == 5
    assert backend.compact_revision == 5
    assert await auto.tick() is None  # nothing new to compact


async def test_automatic_compaction_stands_back_while_another_process_compacts(
    store: Store, backend: FakeBackend
) -> None:
    for i in range(6):
        await store.put(PutRequest(b"k", b"%d" % i))
    auto = AutoCompactor(backend, lambda r, e: store.compact(r, expected=e), interval=60, retention=2)
    auto.compacting(3)
    auto.saw(3)  # our own compaction: no reason to stand back
    auto.saw(2)  # an older one: nothing new
    assert await auto.tick() == 5
    auto.saw(6)  # someone else's
    assert await auto.tick() is None


async def test_automatic_compaction_survives_errors(
    store: Store, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(6):
        await store.put(PutRequest(b"k", b"%d" % i))

    async def lost(revision: int, expected: int) -> int:
        raise errors.CompactedError()

    async def broken(revision: int, expected: int) -> int:
        raise errors.BackendError("disk on fire")

    assert await AutoCompactor(backend, lost, interval=60, retention=2).tick() is None
    assert await AutoCompactor(backend, broken, interval=60, retention=2).tick() is None
    assert "automatic compaction to 5 failed" in caplog.text

    async def unreadable() -> tuple[int, int]:
        raise errors.BackendUnavailable("connection refused")

    monkeypatch.setattr(backend, "revisions", unreadable)
    assert await AutoCompactor(backend, broken, interval=60, retention=2).tick() is None
    assert "reading the revisions failed" in caplog.text


async def test_automatic_compaction_runs_every_interval(backend: FakeBackend) -> None:
    store = Store(backend, StoreSettings(compact_interval=0.01, compact_retention=1))
    await store.start()
    try:
        for i in range(3):
            await store.put(PutRequest(b"k", b"%d" % i))  # revisions 2..4
        async with asyncio.timeout(2):
            await backend.until(lambda: backend.compact_revision == 3)
    finally:
        await store.aclose()
