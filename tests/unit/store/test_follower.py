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

from fake_backend import FakeBackend

from kinepy.store import tasks
from kinepy.store.store import Store, StoreSettings
from kinepy.types import PutRequest


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
