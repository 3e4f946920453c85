"""Physical compaction: deletes superseded history in small batches.

The logical part (the new compaction revision) commits through the writer like any write; the
rows themselves are removed here in windows of about `batch_rows` history rows (whole revisions),
each its own short transaction, so a write never waits behind more than one window. Windows count
rows, not revisions: one revision may hold a txn of 128 puts or a delete of a whole prefix. When
writes arrived during a window, the next one waits as long as that window took, so writes keep at
least half of the database's time while a large backlog is compacted (back to back, a sequential
writer waited behind every window: 35 puts/s while compacting 300k rows). An error backs off and
retries; it never stops compaction for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kinepy.backends.base import Backend
from kinepy.store import tasks

log = logging.getLogger(__name__)

OnCompact = Callable[[float, int], None]
"""Told of every finished physical compaction: (seconds it took, rows deleted)."""

WriteDemand = Callable[[], int]
"""A counter that grows with every write submitted (`Writer.submitted`)."""


class Compactor:
    def __init__(
        self,
        backend: Backend,
        *,
        batch_rows: int = 1000,
        on_compact: OnCompact | None = None,
        write_demand: WriteDemand = lambda: 0,
    ) -> None:
        self._backend = backend
        self._write_demand = write_demand
        self._on_compact = on_compact
        self._batch_rows = batch_rows
        self._done_upto = 0  # every revision <= this has been compacted physically
        self._target = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kinepy-compactor")

    async def aclose(self) -> None:
        await tasks.cancel(self._task)
        self._task = None

    def request(self, compact_revision: int) -> None:
        """Compact physically up to `compact_revision` (already committed logically)."""
        if compact_revision > self._target:
            self._target = compact_revision
            self._idle.clear()
            self._wakeup.set()

    async def wait(self, compact_revision: int) -> None:
        """Return once history up to `compact_revision` is physically gone."""
        while self._done_upto < compact_revision:
            await self._idle.wait()
            if self._done_upto < compact_revision and self._target < compact_revision:
                self.request(compact_revision)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            target = self._target
            started = time.monotonic()
            deleted = 0
            try:
                # Start one revision early: a tombstone kept at the previous compaction
                # revision is deleted now.
                after = max(0, self._done_upto - 1)
                while after < target:
                    demand = self._write_demand()
                    window_started = time.monotonic()
                    rows, after = await self._backend.compact_batch(target, after, target, self._batch_rows)
                    deleted += rows
                    if self._write_demand() != demand and after < target:
                        await asyncio.sleep(time.monotonic() - window_started)
                self._done_upto = target
                backoff = 0.1
            except Exception as exc:
                log.warning(
                    "compaction to %d failed at %d, retrying in %.1fs: %s",
                    target,
                    self._done_upto,
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wakeup.set()
                continue
            elapsed = time.monotonic() - started
            log.info("compacted history up to revision %d: %d rows in %.3fs", target, deleted, elapsed)
            if self._on_compact is not None:
                self._on_compact(elapsed, deleted)
            if self._target == target:
                self._idle.set()
            else:
                self._wakeup.set()
