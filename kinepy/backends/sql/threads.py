"""Database threads: blocking functions run for the event loop, with one hand-off each way.

SQLite's connections block, so the SQLite backend runs each call (a whole read, a whole write batch) as
one function on a thread of its own, and so do the SQLite exports and import (`bulk.SQLiteThread`).
`loop.run_in_executor` would do it with a `concurrent.futures` future chained to an asyncio one (a lock
and a condition built per call, two callbacks and a semaphore); here a call is a tuple on a queue one way
and `call_soon_threadsafe` back, which costs the loop a third less CPU per call (≈ 23 against ≈ 33 µs
measured on this machine, docs/performance.md). A kube-apiserver write is one such call.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Future = asyncio.Future[Any]
_Call = tuple[asyncio.AbstractEventLoop, Future, Callable[..., Any], tuple[Any, ...]]


def _resolve(future: Future, result: Any) -> None:
    if not future.done():  # its caller may have been cancelled meanwhile
        future.set_result(result)


def _fail(future: Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class DatabaseThreads:
    """`count` threads taking calls from one queue in order, started at the first call. A call runs
    even if its caller was cancelled while it waited (as one already running does)."""

    def __init__(self, count: int, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._count = count
        self._name = name
        self._threads: list[threading.Thread] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on one of the threads; its result or its exception."""
        if not self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return await future

    def _start(self) -> None:
        for i in range(self._count):
            thread = threading.Thread(target=self._serve, name=f"{self._name}_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, *, wait: bool = True) -> None:
        """Let the threads finish the calls queued, then end them; with `wait`, block until they have."""
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            _run_one(*call)
            del call  # hold nothing of it while waiting for the next


def _run_one(
    loop: asyncio.AbstractEventLoop, future: Future, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:
        done: tuple[Callable[..., None], Any] = (_fail, exc)
    else:
        done = (_resolve, result)
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it any more
        loop.call_soon_threadsafe(done[0], future, done[1])
