"""DatabaseThreads: blocking calls run on their threads, in order, results and errors handed back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kinepy.backends.sql.threads import DatabaseThreads


async def test_calls_run_on_the_thread_in_order_and_return_their_results() -> None:
    threads = DatabaseThreads(1, "test-db")
    ran: list[tuple[int, str]] = []

    def call(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * 2

    try:
        results = await asyncio.gather(*(threads.run(call, i) for i in range(50)))
    finally:
        await asyncio.to_thread(threads.shutdown)
    assert results == [i * 2 for i in range(50)]
    assert ran == [(i, "test-db_0") for i in range(50)]


async def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    threads = DatabaseThreads(2, "test-db")

    def fail() -> None:
        raise ValueError("no such table")

    try:
        with pytest.raises(ValueError, match="no such table"):
            await threads.run(fail)
        assert await threads.run(lambda: 7) == 7
    finally:
        await asyncio.to_thread(threads.shutdown)


async def test_shutdown_finishes_the_calls_queued() -> None:
    threads = DatabaseThreads(1, "test-db")
    release = threading.Event()
    done: list[int] = []
    first = asyncio.ensure_future(threads.run(release.wait))
    queued = [asyncio.ensure_future(threads.run(done.append, i)) for i in range(3)]
    await asyncio.sleep(0)  # every call queued
    stopping = asyncio.ensure_future(asyncio.to_thread(threads.shutdown))
    release.set()
    await asyncio.gather(first, *queued, stopping)
    assert done == [0, 1, 2]


def test_threads_start_at_the_first_call() -> None:
    before = threading.active_count()
    threads = DatabaseThreads(4, "test-db")
    assert threading.active_count() == before
    threads.shutdown()  # nothing started: nothing to wait for
