"""`Store`: etcd's KV, Lease, Watch and Maintenance semantics over a backend, protobuf-free.

The one object the servicers see. Reads go straight to the backend; writes, lease changes and
compactions go through the group-commit writer; committed events reach the watch hub through the
follower. The store owns the revision it reports (`revision()`): it moves forward on the event loop,
when a batch commits or the follower reads the database, never from a database thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import cast

from kinepy.backends.base import Backend, BackendStatus
from kinepy.config import DEFAULT_WATCH_STREAM_BUFFER_BYTES, DEFAULT_WATCH_WINDOW_BYTES, Config
from kinepy.errors import BackendNoSpace, NoSpaceError
from kinepy.store import txn
from kinepy.store.alarms import AlarmMember, Alarms, AlarmType, adds_data
from kinepy.store.autocompact import AutoCompactor
from kinepy.store.compactor import Compactor, OnCompact
from kinepy.store.follower import Follower
from kinepy.store.keys import key_range
from kinepy.store.leases import LeaseManager
from kinepy.store.pages import PageCounts
from kinepy.store.watch import WatchHub, WatchStream
from kinepy.store.writer import OnCommit, Writer
from kinepy.types import (
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    Lease,
    PutRequest,
    PutResponse,
    RangeQuery,
    RangeRequest,
    RangeResponse,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class StoreSettings:
    """Everything that tunes the store's components: the `Config` fields of the same names, types and
    defaults (a unit test holds them to it), copied by `of`."""

    max_txn_ops: int = 128
    write_batch_max: int = 1000
    compact_batch_rows: int = 1000
    watch_window_events: int = 8192
    watch_window_bytes: int = DEFAULT_WATCH_WINDOW_BYTES
    watch_stream_buffer_events: int = 4096
    watch_stream_buffer_bytes: int = DEFAULT_WATCH_STREAM_BUFFER_BYTES
    watch_progress_notify_interval: float = 5.0
    lease_expiry_interval: float = 0.5
    compact_interval: float = 0.0
    compact_interval_jitter: int = 10
    """Percent by which each automatic compaction interval varies, either way."""
    compact_retention: int = 1000
    datastore_poll_interval: float = 0.1
    """How long the follower of a shared database waits for a change before it looks anyway."""

    @classmethod
    def of(cls, config: Config) -> StoreSettings:
        return cls(**{item.name: getattr(config, item.name) for item in fields(cls)})


@dataclass(slots=True, frozen=True)
class HashKV:
    """Maintenance.HashKV's answer."""

    revision: int  # the current revision
    hash: int
    compact_revision: int
    hash_revision: int


@dataclass(slots=True, frozen=True)
class WatchFigures:
    """The watch hub's figures, for metrics."""

    watchers: int
    streams: int
    events_sent: int
    revision: int  # the last revision published to watchers
    compact_revision: int


class Store:
    """Build it, `await start()`, use it, `end_streams()` at shutdown, then `await aclose()`."""

    def __init__(
        self,
        backend: Backend,
        settings: StoreSettings | None = None,
        *,
        on_commit: OnCommit | None = None,
        on_compact: OnCompact | None = None,
        leader: bool = True,
        alarm_fd: int = -1,
    ) -> None:
        """`leader`: run the duties one process of several suffices for (lease expiry, automatic
        compaction, resuming an interrupted compaction at start); False in every worker of `kinepy
        --workers` but worker 0. Each is also safe run twice: expiry and compaction re-check inside
        their commit, as for several processes on one PostgreSQL or MySQL database. `alarm_fd`: the
        alarm table the workers share (`SharedAlarmTable`), if any."""
        self._leader = leader
        self._backend = backend
        self._settings = settings = settings or StoreSettings()
        self._revision = 0
        self._alarms = Alarms(alarm_fd)
        self._writer = Writer(
            backend,
            committed=self._committed,
            batch_max=settings.write_batch_max,
            on_commit=on_commit,
            floor=self.revision,
            lost=self._lost,
            on_no_space=self._disk_full,
        )
        self._revision_check: asyncio.Task[object] | None = None
        self._compactor = Compactor(
            backend,
            batch_rows=settings.compact_batch_rows,
            on_compact=on_compact,
            write_demand=lambda: self._writer.submitted,
        )
        self._auto_compactor = AutoCompactor(
            backend,
            lambda revision, expected: self.compact(revision, expected=expected),
            interval=settings.compact_interval,
            jitter=settings.compact_interval_jitter / 100,
            retention=settings.compact_retention,
        )
        self._leases = LeaseManager(backend, self._writer, expiry_interval=settings.lease_expiry_interval)
        self._page_counts = PageCounts()
        self._hub: WatchHub | None = None
        self._follower: Follower | None = None
        self.streams_ended = asyncio.Event()
        """Set at shutdown: streams that never end by themselves (Watch, LeaseKeepAlive) end now."""

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self._settings
        status = await self._backend.status()
        self._revision = status.revision
        hub = self._hub = WatchHub(
            self._backend,
            revision=status.revision,
            compact_revision=status.compact_revision,
            window_events=settings.watch_window_events,
            window_bytes=settings.watch_window_bytes,
            max_buffered_events=settings.watch_stream_buffer_events,
            max_buffered_bytes=settings.watch_stream_buffer_bytes,
            progress_interval=settings.watch_progress_notify_interval,
        )
        self._follower = Follower(
            self._backend,
            hub,
            poll_interval=settings.datastore_poll_interval,
            seen=self._seen,
            behind=self._behind,
        )
        hub.start()
        self._writer.start()
        self._compactor.start()
        if self._backend.shared:
            self._follower.start()
        await self._leases.start(expire=self._leader)  # every worker writes the renewals it holds
        if not self._leader:
            return
        if status.compact_revision > 0:
            self._compactor.request(status.compact_revision)
        self._auto_compactor.start()

    def end_streams(self) -> None:
        """Shutdown: end every Watch stream once its queue is sent, and every LeaseKeepAlive stream
        (`streams_ended`), so that clients retry elsewhere instead of waiting out the grace."""
        self.streams_ended.set()
        if self._hub is not None:
            self._hub.end_streams()

    async def aclose(self) -> None:
        """Stop the background work, commit every write already queued, stop."""
        await self._auto_compactor.aclose()
        if self._follower is not None:
            await self._follower.aclose()
        await self._leases.aclose()
        await self._writer.aclose()
        if self._revision_check is not None:
            await self._revision_check  # the writer answered it while closing
        await self._compactor.aclose()
        if self._hub is not None:
            await self._hub.aclose()
        self._alarms.close()

    # -- the revision ----------------------------------------------------------------------------

    def revision(self) -> int:
        """The latest revision this process knows committed."""
        return self._revision

    async def _committed(self, revision: int, events: list[Event]) -> None:
        """The writer's report of a committed batch, on the event loop."""
        self._revision = max(self._revision, revision)
        if events and self._follower is not None:
            await self._follower.publish(revision, events)

    def _seen(self, revision: int, compact_revision: int) -> None:
        """The follower read the database's revisions (other processes may have moved them)."""
        self._revision = max(self._revision, revision)
        self._auto_compactor.saw(compact_revision)

    def _behind(self) -> None:
        """The follower found the database behind revisions already published: they were lost. A
        batch of its own skips them now (`_lost`), rather than the next write."""
        if self._revision_check is None:
            self._revision_check = asyncio.create_task(self._check_revision(), name="kinepy-revision-check")

    async def _check_revision(self) -> None:
        try:
            await self._writer.submit(txn.RevisionCheck())
        except Exception as exc:  # the next write or follower pass tries again
            log.warning("skipping the revisions the datastore lost failed: %s", exc)
        finally:
            self._revision_check = None

    def _lost(self, kept: int, acknowledged: int, fence: int) -> None:
        """A batch found the database at `kept`, behind `acknowledged`, and went on from `fence`."""
        log.error(
            "the datastore lost revisions %d..%d, which were acknowledged (a standby that had not "
            "received them was promoted?); going on from revision %d, compacted there: every watch "
            "is cancelled as compacted, so that clients list again",
            kept + 1,
            acknowledged,
            fence,
        )
        if self._hub is not None:
            self._hub.lost(fence)
        self._compactor.request(fence)
        self._auto_compactor.saw(fence)

    # -- KV --------------------------------------------------------------------------------------

    async def range(self, req: RangeRequest) -> RangeResponse:
        txn.validate_range(req)
        fetch = txn.range_fetch_limit(req)
        known_count = self._page_counts.take(req, fetch)
        rows = await self._backend.read_range(
            RangeQuery(
                key_range(req.key, req.range_end),
                revision=req.revision,
                limit=fetch,
                keys_only=req.keys_only and req.sort_target != SortTarget.VALUE,
                count_only=req.count_only,
                count=known_count is None,
            )
        )
        txn.check_read_revision(req.revision, rows.revision, rows.compact_revision)
        count = rows.count if known_count is None else known_count
        resp = txn.finish_range(req, rows.kvs, count, rows.revision)
        self._page_counts.remember(req, fetch, resp)
        return resp

    async def put(self, req: PutRequest) -> PutResponse:
        txn.validate_put(req)
        txn.check_key_lengths(req, self._backend.max_key_bytes)
        self._check_space(req)
        return cast(PutResponse, await self._writer.submit(req))

    async def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        txn.validate_delete_range(req)
        return cast(DeleteRangeResponse, await self._writer.submit(req))

    async def txn(self, req: TxnRequest) -> TxnResponse:
        txn.validate_txn(req, self._settings.max_txn_ops)
        txn.check_key_lengths(req, self._backend.max_key_bytes)
        self._check_space(req)
        return cast(TxnResponse, await self._writer.submit(req))

    async def compact(self, revision: int, *, physical: bool = False, expected: int | None = None) -> int:
        """Compact history up to `revision` (if `expected` is given: only if the compaction revision
        is still `expected`, else CompactedError); returns the header revision."""
        self._auto_compactor.compacting(revision)
        resp = cast(
            txn.CompactResponse, await self._writer.submit(txn.CompactRequest(revision, physical, expected))
        )
        # Watchers learn the new compaction revision before any history is deleted.
        if self._hub is not None:
            self._hub.compacted(revision)
        self._compactor.request(revision)
        if physical:
            await self._compactor.wait(revision)
        return resp.revision

    # -- leases ----------------------------------------------------------------------------------

    async def lease_grant(self, lease_id: int, ttl: int) -> tuple[int, Lease]:
        """Grant a lease (`lease_id` 0: the store picks one); returns the revision and the lease."""
        if self._alarms.no_space:
            raise NoSpaceError()
        return await self._leases.grant(lease_id, ttl)

    async def lease_revoke(self, lease_id: int) -> int:
        """Revoke a lease and delete its keys; returns the revision."""
        return await self._leases.revoke(lease_id)

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, or 0 if it does not exist or has expired."""
        return await self._leases.keep_alive(lease_id)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> tuple[Lease, int, list[bytes]] | None:
        """The lease, its remaining whole seconds and (if asked) its keys; None if unknown."""
        return await self._leases.time_to_live(lease_id, keys=keys)

    async def lease_leases(self) -> list[int]:
        """The IDs of every lease, in order."""
        return await self._leases.leases()

    # -- watch -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_watch(self) -> Iterator[WatchStream]:
        """A Watch stream for the block's duration: its watchers go when it closes."""
        hub = self._hub
        assert hub is not None, "Store.start() first"
        stream = hub.open_stream()
        try:
            yield stream
        finally:
            hub.close_stream(stream)

    def watch_figures(self) -> WatchFigures | None:
        """The watch hub's figures; None before `start`."""
        hub = self._hub
        if hub is None:
            return None
        return WatchFigures(
            hub.watcher_count, hub.stream_count, hub.events_sent, hub.revision, hub.compact_revision
        )

    # -- alarms ----------------------------------------------------------------------------------

    def alarm(self, action: int, member_id: int, alarm: int) -> list[AlarmMember]:
        """Maintenance.Alarm: list, activate or deactivate an alarm (see `kinepy.store.alarms`)."""
        return self._alarms.apply(action, member_id, alarm)

    def active_alarms(self) -> list[AlarmMember]:
        """The alarms raised now (Maintenance.Status's errors)."""
        return self._alarms.active()

    def _check_space(self, req: PutRequest | TxnRequest) -> None:
        if self._alarms.no_space and adds_data(req):
            raise NoSpaceError()

    def _disk_full(self, exc: BackendNoSpace) -> None:
        """A write failed for want of space: raise NOSPACE for this member, as etcd does past its quota."""
        if self._alarms.activate(AlarmMember(self._backend.member_id, AlarmType.NOSPACE)):
            log.error(
                "%s; NOSPACE alarm raised: puts, txns with puts and lease grants fail with "
                "'database space exceeded' until space is freed and `etcdctl alarm disarm` is run",
                exc,
            )

    # -- maintenance -----------------------------------------------------------------------------

    async def status(self) -> BackendStatus:
        """The database's revisions and size."""
        return await self._backend.status()

    async def hash_kv(self, revision: int) -> HashKV:
        """A hash of the history at or below `revision` (<= 0: the current revision), as etcd's
        HashKV: a compacted or future revision is refused."""
        current, compact_revision = await self._backend.revisions()
        txn.check_read_revision(revision, current, compact_revision)
        crc, compact = await self._backend.hash_kv(revision)
        return HashKV(current, crc, compact, revision if revision > 0 else current)

    async def defragment(self) -> int:
        """Give free space back to the file system; returns the revision."""
        await self._backend.defragment()
        return (await self._backend.status()).revision

    async def snapshot(self, path: str) -> int:
        """Write a consistent copy of the database to `path`; returns the revision."""
        await self._backend.snapshot(path)
        return (await self._backend.status()).revision
