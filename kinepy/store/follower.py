"""Commits reach the watch hub in revision order: this process's, and on a database shared with other
kinepy processes, theirs too.

The writer hands each commit to `Follower.publish`. On a shared database another process may have
committed revisions in between: they are read from the log first, so watchers never see revision N+1
before N. The follow loop (started only on a shared database) publishes other processes' commits soon
after they happen while this one is idle, woken by the backend's `wait_for_change`, and reports the
revisions it reads (the store's revision, other processes' compactions).

A commit told with its events (another worker's, `Commit`) that starts right at the hub's revision is
published as told, without reading the database; anything else (a gap, a commit told without its events,
one at or below the hub's revision) is read from the database as before, and so is the database at least
every poll interval, so what a told commit does not say (a compaction, lost revisions) is seen as soon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kinepy.backends.base import Backend, Commit
from kinepy.store import tasks
from kinepy.store.history import read_history
from kinepy.store.watch import CATCH_UP_MAX_REVISIONS, WatchHub
from kinepy.types import Event, KeyRange

log = logging.getLogger(__name__)

_EVERYTHING = KeyRange(b"", None)

Seen = Callable[[int, int], None]
"""Told of the (current, compaction) revisions the follow loop read from the database."""
Behind = Callable[[], None]
"""Told that the database's revision was behind one already published to watchers: revisions were lost."""


class Follower:
    def __init__(
        self, backend: Backend, hub: WatchHub, *, poll_interval: float, seen: Seen, behind: Behind
    ) -> None:
        self._backend = backend
        self._hub = hub
        self._poll_interval = poll_interval
        self._seen = seen
        self._behind = behind
        self._lock = asyncio.Lock()  # one publisher at a time: revisions reach the hub in order
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow other processes' commits (on a shared database only)."""
        self._task = asyncio.create_task(self._follow(), name="kinepy-log-follower")

    async def aclose(self) -> None:
        await tasks.cancel(self._task)
        self._task = None

    async def publish(self, revision: int, events: list[Event]) -> None:
        """Hand a commit's events (non-empty) to the watch hub, after any revisions other processes
        committed before it."""
        hub = self._hub
        async with self._lock:
            first = events[0].kv.mod_revision
            if hub.revision < first - 1 and not await self._catch_up(first - 1):
                return  # the follow loop delivers them, with ours, from the log
            if first <= hub.revision:
                events = [e for e in events if e.kv.mod_revision > hub.revision]
                if not events:
                    return
            hub.publish(revision, events)

    async def _catch_up(self, upto: int) -> bool:
        """Publish what the log holds between the hub's revision and `upto`; False on error."""
        hub = self._hub
        while hub.revision < upto:
            end = min(upto, hub.revision + CATCH_UP_MAX_REVISIONS)
            try:
                events = await read_history(
                    self._backend, _EVERYTHING, after=hub.revision, upto=end, prev_kv=True
                )
            except Exception as exc:
                log.warning("reading revisions %d..%d for watchers failed: %s", hub.revision + 1, end, exc)
                return False
            hub.publish(end, events)
        return True

    async def _publish_told(self, told: list[Commit]) -> bool:
        """Publish commits told with their events, in order, while each starts at the hub's revision;
        False at the first that does not (the rest are then read from the database)."""
        hub = self._hub
        async with self._lock:
            for commit in told:
                if commit.events is None or commit.after != hub.revision:
                    return False
                hub.publish(commit.revision, commit.events)
        self._seen(hub.revision, hub.compact_revision)
        return True

    async def _follow(self) -> None:
        hub = self._hub
        failing_since = 0.0
        looked = time.monotonic()
        while True:
            try:
                told = await self._backend.wait_for_change(self._poll_interval)
                # Told commits first, whether or not a look is due: a look reads the log (a thread hop
                # on SQLite), which the events it would read should not wait for.
                if (
                    told
                    and await self._publish_told(told)
                    and time.monotonic() - looked < self._poll_interval
                ):
                    continue
                looked = time.monotonic()
                published = hub.revision  # committed before the read: the read must see it
                revision, compact_revision = await self._backend.revisions()
            except Exception as exc:
                if not failing_since:  # once per outage; requests report it meanwhile
                    failing_since = time.monotonic()
                    log.warning("following the shared database failed, retrying: %s", exc)
                await asyncio.sleep(self._poll_interval)
                continue
            if failing_since:
                log.info("following the shared database again after %.1fs", time.monotonic() - failing_since)
                failing_since = 0.0
            if revision < published:
                self._behind()
                continue
            if compact_revision > hub.compact_revision:
                hub.compacted(compact_revision)
            self._seen(revision, compact_revision)
            if revision > hub.revision:
                async with self._lock:
                    if hub.revision + 1 < compact_revision:
                        hub.skip_to(compact_revision - 1)  # we were cut off while others compacted
                    await self._catch_up(revision)
