"""Automatic compaction: every interval (give or take the jitter, 10 % by default), compact to
`retention` revisions behind the current one.

An error is logged and the next interval tries again; compaction never stops for good.

On a database shared with other kinepy processes, one compacts at a time: a process that saw another
one compact within the last 1.5 intervals stands back (so the first to compact keeps doing it, and
another takes over 1.5 intervals after it stops); and the compaction is a compare-and-swap on the
compaction revision, so of two processes that tick together one wins, the other gets CompactedError.
Only the winner deletes the history (its compactor does).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

from kinepy import errors
from kinepy.backends.base import Backend
from kinepy.store import tasks

log = logging.getLogger(__name__)

Compact = Callable[[int, int], Awaitable[object]]
"""Compact to a revision if the compaction revision is still the expected one: (revision, expected)."""


class AutoCompactor:
    def __init__(
        self, backend: Backend, compact: Compact, *, interval: float, retention: int, jitter: float = 0.1
    ) -> None:
        self._backend = backend
        self._compact = compact
        self._interval = interval
        self._jitter = jitter
        self._retention = retention
        self._foreign_compaction_at = -math.inf  # when another process was last seen compacting
        self._compact_seen = -1  # the last compaction revision seen in the database
        self._compacting_to = -1  # the last compaction through this process
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Compact every interval (give or take the jitter); nothing if the interval is 0."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="kinepy-auto-compact")

    async def aclose(self) -> None:
        await tasks.cancel(self._task)
        self._task = None

    def compacting(self, revision: int) -> None:
        """This process compacts to `revision` (automatically or for a client)."""
        self._compacting_to = revision

    def saw(self, compact_revision: int) -> None:
        """The compaction revision read from the database: a new one this process did not make
        means another process compacts."""
        if compact_revision > self._compact_seen:
            self._compact_seen = compact_revision
            if compact_revision != self._compacting_to:
                self._foreign_compaction_at = time.monotonic()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval * random.uniform(1 - self._jitter, 1 + self._jitter))
            await self.tick()

    async def tick(self) -> int | None:
        """One interval's work: the revision compacted to, or None."""
        if time.monotonic() - self._foreign_compaction_at < 1.5 * self._interval:
            return None
        try:
            revision, compact_revision = await self._backend.revisions()
        except Exception as exc:
            log.warning("automatic compaction: reading the revisions failed, will retry: %s", exc)
            return None
        target = revision - self._retention
        if target <= compact_revision:
            return None
        try:
            await self._compact(target, compact_revision)
        except errors.CompactedError:
            return None  # another process compacted meanwhile
        except Exception as exc:
            log.warning("automatic compaction to %d failed, will retry: %s", target, exc)
            return None
        log.info("automatic compaction to revision %d", target)
        return target
