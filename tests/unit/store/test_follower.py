"""The follow loop of a shared database ends when the store closes, whatever it was doing.

A full-suite CI run of 2ac9055 hung so: the last put of
test_lost_revisions.py::test_a_database_that_kept_everything_is_never_taken_for_one_that_lost woke the
parked follower, and `Store.aclose` cancelled the follower in the one loop iteration between the wake-up
and the follower's resumption. The fake's `wait_for_change` then ran `Condition.wait` under
`asyncio.wait_for`, which on Python 3.11 returns the inner result when the outer task is cancelled as the
inner one has just finished: the cancellation was swallowed, the follower went on polling (every 1 ms +
2 ms of SlowReads) and `aclose` waited for it forever. No timer is involved, so the first test below
replays that interleaving exactly: the poll interval is an hour, only the commit wakes the follower.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from fake_backend import FakeBackend

from kinepy import errors
from kinepy.backends.base import Commit
from kinepy.store import tasks, txn
from kinepy.store.follower import Follower
from kinepy.store.store import Store, StoreSettings
from kinepy.store.watch import WatchHub, WatchStream
from kinepy.store.writer import Writer
from kinepy.types import Event, KeyRange, PutRequest


async def test_closing_as_a_commit_wakes_the_follower_ends_it() -> None:
    backend = FakeBackend(shared=True)
    store = Store(backend, StoreSettings(datastore_poll_interval=3600))
    await store.start()
    try:
        async with asyncio.timeout(5):
            await backend.change_awaited.wait()  # the follower is parked in wait_for_change
        # The commit wakes the follower; the put is answered in the same step, so the test resumes in
        # the loop iteration in which the follower's wait ends, before the follower itself resumes.
        await store.put(PutRequest(b"k", b"v"))
    finally:
        async with asyncio.timeout(5):
            await store.aclose()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("kinepy-")]


async def test_a_close_bounded_by_a_timeout_times_out_when_a_task_does_not_end() -> None:
    """`tasks.cancel` passes a cancellation of its caller on to the caller. It awaited the task, which
    handed the cancellation to the task: one that ignores it kept the caller waiting, timeout or not, and
    one that it ended raised CancelledError, which was taken for the task's and swallowed, so the close
    went on and its timeout said nothing (the bound of the test above would have passed the hang)."""
    started, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:  # ignores cancellation until released, as a task with a bug
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.set()

    task = asyncio.create_task(stubborn())
    await started.wait()
    try:
        closing = asyncio.create_task(tasks.cancel(task))
        await cancelled.wait()
        closing.cancel()  # the caller's own cancellation (what a timeout around the close does)
        await asyncio.wait([closing], timeout=5)  # awaiting `closing` would hand the cancellation on
        assert closing.cancelled()
    finally:
        release.set()
        await task


async def test_closing_raises_what_a_task_raised_before_it_was_cancelled() -> None:
    async def broken() -> None:
        raise RuntimeError("the task's own failure")

    task = asyncio.create_task(broken())
    await asyncio.wait([task])
    with pytest.raises(RuntimeError, match="the task's own failure"):
        await tasks.cancel(task, None)
    await tasks.cancel()  # nothing to cancel: returns at once


# -- Follower on its own: a hub, and a log written by "another process" (a writer that publishes nothing)


class Seen:
    """The follower's `seen` and `behind` callbacks, remembered."""

    def __init__(self) -> None:
        self.revisions: list[tuple[int, int]] = []
        self.changed = asyncio.Event()
        self.behind = 0

    def seen(self, revision: int, compact_revision: int) -> None:
        self.revisions.append((revision, compact_revision))
        self.changed.set()

    def lost(self) -> None:
        self.behind += 1
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class Restless(FakeBackend):
    """Its `wait_for_change` returns at once (it may: `max_wait` is a bound), so the follow loop looks
    at the database on every turn, and no timeout cancels a wait inside it: on Python 3.11 coverage.py
    stops recording a coroutine resumed by such a cancellation, and the loop's branches went unseen."""

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        await asyncio.sleep(0)
        return []


@pytest.fixture
def backend() -> FakeBackend:
    return Restless(shared=True)


@pytest.fixture
async def elsewhere(backend: FakeBackend) -> AsyncIterator[Writer]:
    """Another process's writer: its commits reach this process's hub only through the follower."""

    async def tell_nobody(revision: int, events: list[Event]) -> None:
        pass

    writer = Writer(backend, committed=tell_nobody)
    writer.start()
    yield writer
    await writer.aclose()


async def _puts(writer: Writer, count: int) -> None:
    for i in range(count):
        await writer.submit(PutRequest(b"k", b"%d" % i))


async def _log(backend: FakeBackend, revision: int) -> list[Event]:
    return await backend.read_events(KeyRange(b"", None), after=revision - 1, upto=revision, prev_kv=True)


async def _watched_revisions(stream: WatchStream, last: int) -> list[int]:
    """The mod revisions of the events `stream` sends, until one at `last`."""
    seen: list[int] = []
    async with asyncio.timeout(2):
        while not seen or seen[-1] < last:
            resp = await stream.next_response()
            seen.extend(e.kv.mod_revision for e in resp.events)
    return seen


async def test_a_commit_the_hub_already_has_is_not_published_again(
    backend: FakeBackend, elsewhere: Writer
) -> None:
    """The follow loop may read a commit of this process from the log before the writer hands it over."""
    await _puts(elsewhere, 4)  # revisions 2..5
    hub, seen = WatchHub(backend, revision=1, compact_revision=-1), Seen()
    follower = Follower(backend, hub, poll_interval=3600, seen=seen.seen, behind=seen.lost)
    stream = hub.open_stream()
    stream.create(b"k", b"")
    r2, r3, r4, r5 = [(await _log(backend, rev))[0] for rev in range(2, 6)]
    hub.publish(3, [r2, r3])  # the follow loop read these
    await follower.publish(3, [r2, r3])  # the writer's report of the same batch: nothing new
    hub.publish(4, [r4])
    await follower.publish(5, [r4, r5])  # only revision 5 is new
    assert hub.revision == 5
    assert await _watched_revisions(stream, 5) == [2, 3, 4, 5]  # each revision once, in order


async def test_a_commit_after_a_gap_the_log_cannot_fill_waits_for_it(
    backend: FakeBackend,
    elsewhere: Writer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Revision N+1 never reaches watchers before N: if the revisions another process committed in
    between cannot be read, this commit is not published now (the follow loop, or the next commit,
    delivers it later)."""
    await _puts(elsewhere, 3)  # revisions 2..4
    hub, seen = WatchHub(backend, revision=1, compact_revision=-1), Seen()
    follower = Follower(backend, hub, poll_interval=3600, seen=seen.seen, behind=seen.lost)
    stream = hub.open_stream()
    stream.create(b"k", b"")
    r3, r4 = await _log(backend, 3), await _log(backend, 4)
    real = backend.read_events

    async def unreachable(
        key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        raise errors.BackendUnavailable("connection refused")

    monkeypatch.setattr(backend, "read_events", unreachable)
    with caplog.at_level(logging.WARNING, logger="kinepy.store.follower"):
        await follower.publish(3, r3)
    assert hub.revision == 1 and "reading revisions 2..2 for watchers failed" in caplog.text
    monkeypatch.setattr(backend, "read_events", real)
    await follower.publish(4, r4)
    assert await _watched_revisions(stream, 4) == [2, 3, 4]


async def test_the_follow_loop_reports_a_database_behind_what_was_published(backend: FakeBackend) -> None:
    hub, seen = WatchHub(backend, revision=10, compact_revision=-1), Seen()  # published up to 10
    follower = Follower(backend, hub, poll_interval=3600, seen=seen.seen, behind=seen.lost)
    follower.start()  # the database says revision 1: revisions 2..10 were lost
    try:
        await seen.until(lambda: seen.behind > 0)
        assert seen.revisions == [] and hub.revision == 10
    finally:
        await follower.aclose()


async def test_a_hub_cut_off_while_others_compacted_skips_to_the_compaction(
    backend: FakeBackend, elsewhere: Writer
) -> None:
    """Its watchers behind the compaction revision are cancelled as compacted (their clients list
    again); the revisions from the compaction on are published."""
    await _puts(elsewhere, 9)  # revisions 2..10
    await elsewhere.submit(txn.CompactRequest(8))
    await backend.compact_batch(8, 0, 8, 1000)
    hub, seen = WatchHub(backend, revision=1, compact_revision=-1), Seen()
    stream = hub.open_stream()
    stream.create(b"k", b"")  # from revision 2
    follower = Follower(backend, hub, poll_interval=3600, seen=seen.seen, behind=seen.lost)
    follower.start()
    try:
        await seen.until(lambda: hub.revision == 10)
    finally:
        await follower.aclose()
    assert (10, 8) in seen.revisions and hub.compact_revision == 8
    assert await hub._sync_once()
    async with asyncio.timeout(2):
        created, canceled = [await stream.next_response() for _ in range(2)]
    assert created.created and (canceled.canceled, canceled.compact_revision) == (True, 8)
