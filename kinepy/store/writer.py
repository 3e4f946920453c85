"""Group commit: every write waiting in the queue is committed in one database transaction.

One `Writer` task per process takes all queued requests, asks the backend for one transaction,
evaluates each request in arrival order against the snapshot plus the writes before it, commits
once, then answers every request and publishes the batch's events in revision order. Concurrency
turns into bigger batches instead of more fsyncs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kinepy.backends.base import Backend, ReadSet, Snapshot, WriteSet
from kinepy.errors import (
    BackendConflict,
    BackendNoSpace,
    EtcdError,
    NoSpaceError,
    TooManyRequestsError,
    UnavailableError,
)
from kinepy.store import txn
from kinepy.types import Event

log = logging.getLogger(__name__)

Committed = Callable[[int, list[Event]], Awaitable[None]]
"""Told on the event loop of every committed batch, before its callers are answered: the revision
after it, and its events (maybe none)."""
OnCommit = Callable[[float, int], None]
"""Told of every committed batch: (seconds the database transaction took, requests in it)."""
Floor = Callable[[], int]
"""The highest revision this process acknowledged or saw committed: the database must not be behind it."""
Lost = Callable[[int, int, int], None]
"""Told on the event loop, before `Committed`, that a batch found the database at a revision (the
first argument) behind the floor (the second) and went on from a revision compacted after it (the third:
`txn.BatchState.skip_lost`)."""
OnNoSpace = Callable[[BackendNoSpace], None]
"""Told of a batch that failed for want of disk space (its callers get NoSpaceError)."""


@dataclass(slots=True)
class _Pending:
    request: txn.BatchRequest
    future: asyncio.Future[txn.BatchResponse]
    result: txn.BatchResponse | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class BatchStats:
    """Figures of the last batches, for metrics and tests."""

    batches: int = 0
    requests: int = 0
    last_size: int = 0
    commit_seconds: list[float] = field(default_factory=list)


class Writer:
    """Serialises every write of this process through one task and one transaction per batch."""

    def __init__(
        self,
        backend: Backend,
        *,
        committed: Committed,
        batch_max: int = 1000,
        on_commit: OnCommit | None = None,
        floor: Floor = lambda: 0,
        lost: Lost | None = None,
        on_no_space: OnNoSpace | None = None,
    ) -> None:
        self._backend = backend
        self._floor = floor
        self._lost = lost
        self._on_commit = on_commit
        self._on_no_space = on_no_space
        self._committed = committed
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = BatchStats()
        self.submitted = 0  # requests ever queued: the compactor watches it for write demand

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kinepy-writer")

    async def aclose(self) -> None:
        """Commit everything already queued, then stop."""
        if self._task is None or self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)
        await self._task

    async def submit(self, request: txn.BatchRequest) -> txn.BatchResponse:
        """Queue `request` and wait until its batch has committed (or failed)."""
        if self._closing:
            raise UnavailableError("kinepy: server is shutting down")
        future: asyncio.Future[txn.BatchResponse] = asyncio.get_running_loop().create_future()
        self.submitted += 1
        self._queue.put_nowait(_Pending(request, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch, stop = await self._next_batch()
            if batch:
                await self._commit(batch)
            if stop:
                return

    async def _next_batch(self) -> tuple[list[_Pending], bool]:
        batch: list[_Pending] = []
        first = self._carry
        self._carry = None
        if first is None:
            first = await self._queue.get()
            if first is None:
                return batch, True
        batch.append(first)
        while len(batch) < self._batch_max and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                return batch, True
            if txn.needs_own_snapshot(item.request):
                self._carry = item
                break
            batch.append(item)
        return batch, False

    async def _commit(self, batch: list[_Pending]) -> None:
        # A caller cancelled before its batch started drops out; after this point it commits.
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        read_set = ReadSet()
        for pending in batch:
            txn.add_to_read_set(pending.request, read_set)
        evaluated: list[txn.BatchState] = []
        floor = self._floor()
        skipped: list[tuple[int, int]] = []

        def evaluate(snapshot: Snapshot) -> WriteSet | None:
            # Runs wherever the backend runs its transaction (maybe a database thread, maybe more
            # than once): pure, it only fills `evaluated`, `skipped` and the pending results.
            state = txn.BatchState.of(snapshot)
            skipped[:] = []
            if snapshot.revision < floor:
                skipped.append((snapshot.revision, state.skip_lost(floor)))
            for pending in batch:
                try:
                    pending.result = txn.apply(state, pending.request)
                    pending.error = None
                except EtcdError as exc:
                    pending.result = None
                    pending.error = exc
            evaluated[:] = [state]
            return state.write_set()

        started = time.perf_counter()
        try:
            await self._backend.write(read_set, evaluate)
        except Exception as exc:
            log.warning("write batch of %d requests failed: %s", len(batch), exc)
            # A batch that kept conflicting with other nodes' commits (the backend retried it) is
            # etcd's answer to overload, which clients back off from and retry.
            error: Exception = TooManyRequestsError() if isinstance(exc, BackendConflict) else exc
            if isinstance(exc, BackendNoSpace):
                if self._on_no_space is not None:
                    self._on_no_space(exc)
                error = NoSpaceError()
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.last_size = len(batch)
        if self._on_commit is not None:
            self._on_commit(elapsed, len(batch))
        [state] = evaluated
        if skipped and self._lost is not None:
            kept, fence = skipped[0]
            self._lost(kept, floor, fence)
        # Publish before answering: a client that reads its write's revision and then opens a
        # watch from "now" must not see that write again, nor miss the next one.
        try:
            await self._committed(state.revision, state.events)
        except Exception:
            # Committed is committed: the writes are answered; the watch hub catches up from
            # the log (a shared database's follower re-reads it).
            log.exception("publishing revision %d to watchers failed", state.revision)
        for pending in batch:
            if pending.future.done():
                continue
            if pending.error is not None:
                pending.future.set_exception(pending.error)
            else:
                assert pending.result is not None  # evaluated: a result or an error
                pending.future.set_result(pending.result)
        if elapsed > 1.0:
            log.warning("slow commit: %d requests took %.3fs", len(batch), elapsed)
