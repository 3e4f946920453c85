"""`Store`: etcd's KV service over a backend, protobuf-free."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from typing import cast

from kinepy import errors
from kinepy.backends.base import Backend
from kinepy.store import txn
from kinepy.store.compactor import Compactor, OnCompact
from kinepy.store.keys import key_range
from kinepy.store.leases import LeaseManager
from kinepy.store.pages import PageCounts
from kinepy.store.watch import CATCH_UP_MAX_REVISIONS, WatchHub
from kinepy.store.writer import OnCommit, Writer
from kinepy.types import (
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    KeyRange,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

log = logging.getLogger(__name__)

_EVERYTHING = KeyRange(b"", None)


class Store:
    """The store: reads go straight to the backend; writes, lease changes and compactions go
    through the group-commit writer; committed events feed the watch hub."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_txn_ops: int = 128,
        write_batch_max: int = 1000,
        compact_batch_rows: int = 1000,
        watch_window_events: int = 8192,
        watch_stream_buffer_events: int = 4096,
        lease_expiry_interval: float = 0.5,
        watch_progress_interval: float = 5.0,
        compact_interval: float = 0.0,
        compact_interval_jitter: int = 10,
        compact_retention: int = 1000,
        poll_interval: float = 0.1,
        on_commit: OnCommit | None = None,
        on_compact: OnCompact | None = None,
    ) -> None:
        self._poll_interval = poll_interval
        self._publish_lock = asyncio.Lock()
        self._follow_task: asyncio.Task[None] | None = None
        self._compact_interval = compact_interval
        self._compact_jitter = compact_interval_jitter / 100
        self._compact_retention = compact_retention
        self._auto_compact_task: asyncio.Task[None] | None = None
        self._foreign_compaction_at = -math.inf  # when the follower last saw another process compact
        self._compact_seen = -1  # the compaction revision the follower last saw
        self._compacting_to = -1  # the last compaction through this process
        self._watch_progress_interval = watch_progress_interval
        self.backend = backend
        self.max_txn_ops = max_txn_ops
        self._max_key_bytes: int = getattr(backend, "max_key_bytes", 0)
        self.writer = Writer(backend, publish=self._publish, batch_max=write_batch_max, on_commit=on_commit)
        self.compactor = Compactor(
            backend,
            batch_rows=compact_batch_rows,
            on_compact=on_compact,
            write_demand=lambda: self.writer.submitted,
        )
        self.leases = LeaseManager(backend, self.writer, expiry_interval=lease_expiry_interval)
        self.page_counts = PageCounts()
        self._watch_window_events = watch_window_events
        self._watch_stream_buffer_events = watch_stream_buffer_events
        self.hub: WatchHub | None = None
        self.streams_ended = asyncio.Event()
        """Set at shutdown: streams that never end by themselves (Watch, LeaseKeepAlive) end now."""

    async def _publish(self, revision: int, events: list[Event]) -> None:
        """Hand a commit's events to the watch hub, after any revisions other processes committed
        before it (a shared database): watchers must never see revision N+1 before N."""
        hub = self.hub
        if hub is None:
            return
        async with self._publish_lock:
            first = events[0].kv.mod_revision
            if hub.revision < first - 1 and not await self._catch_up(first - 1):
                return  # the follower delivers them, with ours, from the log
            if first <= hub.revision:
                events = [e for e in events if e.kv.mod_revision > hub.revision]
                if not events:
                    return
            hub.publish(revision, events)

    async def _catch_up(self, upto: int) -> bool:
        """Publish what the log holds between the hub's revision and `upto`; False on error."""
        hub = self.hub
        assert hub is not None
        while hub.revision < upto:
            end = min(upto, hub.revision + CATCH_UP_MAX_REVISIONS)
            try:
                events = await self.backend.read_events(
                    _EVERYTHING, after=hub.revision, upto=end, prev_kv=True
                )
            except Exception as exc:
                log.warning("reading revisions %d..%d for watchers failed: %s", hub.revision + 1, end, exc)
                return False
            hub.publish(end, events)
        return True

    async def _follow(self) -> None:
        """On a database shared with other kinepy processes: publish their commits to our watchers,
        in revision order, soon after they happen, and learn their compactions."""
        hub = self.hub
        assert hub is not None
        failing_since = 0.0
        while True:
            try:
                await self.backend.wait_for_change(self._poll_interval)
                revision, compact_revision = await self.backend.revisions()
            except Exception as exc:
                if not failing_since:  # once per outage; requests report it meanwhile
                    failing_since = time.monotonic()
                    log.warning("following the shared database failed, retrying: %s", exc)
                await asyncio.sleep(self._poll_interval)
                continue
            if failing_since:
                log.info("following the shared database again after %.1fs", time.monotonic() - failing_since)
                failing_since = 0.0
            if compact_revision > hub.compact_revision:
                hub.compacted(compact_revision)
            self.writer.revision = max(self.writer.revision, revision)
            if compact_revision > self._compact_seen:
                self._compact_seen = compact_revision
                if compact_revision != self._compacting_to:
                    self._foreign_compaction_at = time.monotonic()
            self.writer.compact_revision = max(self.writer.compact_revision, compact_revision)
            if revision > hub.revision:
                async with self._publish_lock:
                    if hub.revision + 1 < compact_revision:
                        hub.skip_to(compact_revision - 1)  # we were cut off while others compacted
                    await self._catch_up(revision)

    async def start(self) -> None:
        status = await self.backend.status()
        self.hub = WatchHub(
            self.backend,
            revision=status.revision,
            compact_revision=status.compact_revision,
            window_events=self._watch_window_events,
            max_buffered_events=self._watch_stream_buffer_events,
            progress_interval=self._watch_progress_interval,
        )
        self.hub.start()
        self.writer.revision = status.revision
        self.writer.compact_revision = status.compact_revision
        self.writer.start()
        self.compactor.start()
        await self.leases.start()
        if status.compact_revision > 0:
            self.compactor.request(status.compact_revision)
        if getattr(self.backend, "shared", False):
            self._follow_task = asyncio.create_task(self._follow(), name="kinepy-log-follower")
        if self._compact_interval > 0:
            self._auto_compact_task = asyncio.create_task(self._auto_compact(), name="kinepy-auto-compact")

    def end_streams(self) -> None:
        """Shutdown: end every Watch stream once its queue is sent, and every LeaseKeepAlive stream
        (`streams_ended`), so that clients retry elsewhere instead of waiting out the grace."""
        self.streams_ended.set()
        if self.hub is not None:
            self.hub.end_streams()

    async def aclose(self) -> None:
        for task in (self._auto_compact_task, self._follow_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._auto_compact_task = self._follow_task = None
        await self.leases.aclose()
        await self.writer.aclose()
        await self.compactor.aclose()
        if self.hub is not None:
            await self.hub.aclose()

    async def _auto_compact(self) -> None:
        """Every interval (give or take the jitter, 10 % by default), compact to `retention`
        revisions behind the current one. An error is logged and the next interval tries again;
        compaction never stops for good.

        On a database shared with other kinepy processes, one compacts at a time: a process whose
        follower saw another one compact within the last 1.5 intervals stands back (so the first to
        compact keeps doing it, and another takes over 1.5 intervals after it stops); and the
        compaction is a compare-and-swap on the meta row's compaction revision, so of two processes
        that tick together one wins, the other gets CompactedError. Only the winner deletes the
        history (`compact` hands it to its compactor).
        """
        while True:
            jitter = self._compact_jitter
            await asyncio.sleep(self._compact_interval * random.uniform(1 - jitter, 1 + jitter))
            if time.monotonic() - self._foreign_compaction_at < 1.5 * self._compact_interval:
                continue
            try:
                revision, compact_revision = await self.backend.revisions()
            except Exception as exc:
                log.warning("automatic compaction: reading the revisions failed, will retry: %s", exc)
                continue
            target = revision - self._compact_retention
            if target <= compact_revision:
                continue
            try:
                await self.compact(target, expected=compact_revision)
                log.info("automatic compaction to revision %d", target)
            except errors.CompactedError:
                pass  # another process compacted meanwhile
            except Exception as exc:
                log.warning("automatic compaction to %d failed, will retry: %s", target, exc)

    async def range(self, req: RangeRequest) -> RangeResponse:
        txn.validate_range(req)
        fetch = txn.range_fetch_limit(req)
        known_count = self.page_counts.take(req, fetch)
        rows = await self.backend.read_range(
            key_range(req.key, req.range_end),
            revision=req.revision,
            limit=fetch,
            keys_only=req.keys_only and req.sort_target != SortTarget.VALUE,
            count_only=req.count_only,
            count=known_count is None,
        )
        txn.check_read_revision(req.revision, rows.revision, rows.compact_revision)
        count = rows.count if known_count is None else known_count
        resp = txn.finish_range(req, rows.kvs, count, rows.revision)
        self.page_counts.remember(req, fetch, resp)
        return resp

    async def put(self, req: PutRequest) -> PutResponse:
        txn.validate_put(req)
        txn.check_key_lengths(req, self._max_key_bytes)
        return cast(PutResponse, await self.writer.submit(req))

    async def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        txn.validate_delete_range(req)
        return cast(DeleteRangeResponse, await self.writer.submit(req))

    async def txn(self, req: TxnRequest) -> TxnResponse:
        txn.validate_txn(req, self.max_txn_ops)
        txn.check_key_lengths(req, self._max_key_bytes)
        return cast(TxnResponse, await self.writer.submit(req))

    async def compact(self, revision: int, *, physical: bool = False, expected: int | None = None) -> int:
        """Compact history up to `revision` (if `expected` is given: only if the compaction revision
        is still `expected`, else CompactedError); returns the header revision."""
        self._compacting_to = revision
        req = txn.CompactRequest(revision, physical, expected)
        resp = cast(txn.CompactResponse, await self.writer.submit(req))
        # Watchers learn the new compaction revision before any history is deleted.
        if self.hub is not None:
            self.hub.compacted(revision)
        self.compactor.request(revision)
        if physical:
            await self.compactor.wait(revision)
        return resp.revision
