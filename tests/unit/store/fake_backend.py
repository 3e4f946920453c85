"""An in-memory `Backend` for the store's unit tests: revisions, current rows, the log, leases and
compaction, kept honestly by the Protocol's contracts (kinepy/backends/base.py), nothing more.

Writes serialise on one lock, as a database's meta-row lock does, so several stores on one
`FakeBackend(shared=True)` behave like several kinepy processes on one database. Tests steer it
through `hold_writes()` (a write waits until `release_writes()`), `outcomes` and `writes`, and sees a
follower parked in `wait_for_change` (`change_awaited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from kinepy.backends.base import (
    BackendStatus,
    Commit,
    Evaluate,
    LogRow,
    RangeRows,
    ReadSet,
    Snapshot,
    WriteSet,
)
from kinepy.types import Event, EventType, KeyRange, KeyValue, Lease, RangeQuery


@dataclass(slots=True)
class WriteCall:
    """One `write`: what it was asked to read and what it committed."""

    read_set: ReadSet
    committed: WriteSet | None


class FakeBackend:
    def __init__(self, *, shared: bool = False, max_key_bytes: int = 0) -> None:
        self.shared = shared
        self.max_key_bytes = max_key_bytes
        self.cluster_id = 0
        self.member_id = 0
        self.revision = 1
        self.compact_revision = -1
        self.log: list[LogRow] = []
        self.current: dict[bytes, KeyValue] = {}
        self.leases: dict[int, Lease] = {}
        self.writes: list[WriteCall] = []
        self.outcomes: list[BaseException | None] = []
        """What the next writes do, in order: raise the error, or (None) commit; then commit."""
        self.defragmented = 0
        self.started = False
        self.closed = False
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self.write_waiting = asyncio.Event()
        """Set while a write waits for `release_writes`."""
        self._changed = asyncio.Condition()
        self.change_awaited = asyncio.Event()
        """Set while a `wait_for_change` waits: the follower (of one store on the backend) is parked."""

    # -- test controls ---------------------------------------------------------------------------

    def hold_writes(self) -> None:
        self._open.clear()

    def release_writes(self) -> None:
        self._open.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds, checked after every write."""
        async with self._changed:
            await self._changed.wait_for(condition)

    # -- Backend ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        self.cluster_id, self.member_id = 11, 22

    async def aclose(self) -> None:
        self.closed = True

    async def revisions(self) -> tuple[int, int]:
        return self.revision, self.compact_revision

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the inner result when its task
        # is cancelled just as the inner wait ends (a commit woke it), so the cancellation is lost and the
        # follower's task never ends: a full-suite run hung so in Store.aclose (test_follower.py).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait), self._changed:
                self.change_awaited.set()
                try:
                    await self._changed.wait()
                finally:
                    self.change_awaited.clear()
        return []  # told nothing: the follower reads the revisions and the log

    async def read_range(self, query: RangeQuery) -> RangeRows:
        revision = query.revision
        if revision > self.revision or 0 < revision < self.compact_revision:
            return RangeRows(self.revision, self.compact_revision, [], 0)
        kvs = self._at(query.key_range, revision)
        total = len(kvs)
        if query.count_only:
            return RangeRows(self.revision, self.compact_revision, [], total)
        if query.limit > 0:
            kvs = kvs[: query.limit]
        if query.keys_only:
            kvs = [
                KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, b"", kv.lease) for kv in kvs
            ]
        return RangeRows(self.revision, self.compact_revision, kvs, total if query.count else len(kvs))

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        async with self._lock:
            if not self._open.is_set():
                self.write_waiting.set()
                await self._open.wait()
                self.write_waiting.clear()
            error = self.outcomes.pop(0) if self.outcomes else None
            if error is not None:
                self.writes.append(WriteCall(read_set, None))
                raise error
            write_set = evaluate(self._snapshot(read_set))
            self.writes.append(WriteCall(read_set, write_set))
            if write_set is not None:
                self._apply(write_set)
        async with self._changed:
            self._changed.notify_all()
        return write_set

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        events: list[Event] = []
        for row in self.log:
            if not after < row.revision <= upto or row.key not in key_range:
                continue
            prev = self._previous(row) if prev_kv else None
            if row.tombstone:
                events.append(Event(EventType.DELETE, KeyValue(row.key, 0, row.revision, 0, b"", 0), prev))
            else:
                kv = KeyValue(row.key, row.create_revision, row.revision, row.version, row.value, row.lease)
                events.append(Event(EventType.PUT, kv, prev))
            if limit and len(events) == limit:
                break
        return events

    async def load_leases(self) -> list[Lease]:
        return list(self.leases.values())

    async def get_lease(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        expired = sorted((lease for lease in self.leases.values() if lease.expires_at <= now), key=_deadline)
        return expired[:limit]

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        return sorted(key for key, kv in self.current.items() if kv.lease == lease_id)

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        async with self._lock:
            reached, rows = after, 0
            for revision in sorted({row.revision for row in self.log if after < row.revision <= upto}):
                in_revision = sum(1 for row in self.log if row.revision == revision)
                if rows and rows + in_revision > max_rows:
                    break
                rows += in_revision
                reached = revision
            else:
                reached = upto
            kept = [row for row in self.log if not self._superseded(row, compact_revision, reached)]
            deleted = len(self.log) - len(kept)
            self.log = kept
            return deleted, reached

    async def status(self) -> BackendStatus:
        size = sum(len(row.key) + len(row.value) + 64 for row in self.log)
        return BackendStatus(self.revision, self.compact_revision, size + 4096, size)

    async def defragment(self) -> None:
        self.defragmented += 1

    async def snapshot(self, path: str) -> None:
        with open(path, "wb") as f:  # noqa: ASYNC230 - a test's temp file
            for row in self.log:
                f.write(b"%d %d %s\n" % (row.revision, row.sub, row.key))

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        upto = self.revision if revision <= 0 else revision
        crc = 0
        for row in self.log:
            if row.revision <= upto:
                crc = zlib.crc32(b"%d/%d/%s/%s" % (row.revision, row.sub, row.key, row.value), crc)
        return crc, self.compact_revision

    # -- internals -------------------------------------------------------------------------------

    def _at(self, key_range: KeyRange, revision: int) -> list[KeyValue]:
        """The live keys of `key_range` at `revision` (<= 0: latest), in key order."""
        if revision <= 0 or revision == self.revision:
            return sorted((kv for key, kv in self.current.items() if key in key_range), key=_key)
        latest: dict[bytes, LogRow] = {}
        for row in self.log:
            if row.revision <= revision and row.key in key_range:
                latest[row.key] = row
        return sorted(
            (
                KeyValue(row.key, row.create_revision, row.revision, row.version, row.value, row.lease)
                for row in latest.values()
                if not row.tombstone
            ),
            key=_key,
        )

    def _snapshot(self, read_set: ReadSet) -> Snapshot:
        rows = {key: self.current[key] for key in read_set.keys if key in self.current}
        for key_range in read_set.ranges:
            rows.update((key, kv) for key, kv in self.current.items() if key in key_range)
        rows.update((key, kv) for key, kv in self.current.items() if kv.lease in read_set.lease_keys)
        leases = {i: self.leases[i] for i in read_set.leases if i in self.leases}
        historic = {(kr, rev): self._at(kr, rev) for kr, rev in read_set.historic}
        return Snapshot(self.revision, self.compact_revision, rows, leases, historic)

    def _apply(self, write_set: WriteSet) -> None:
        self.log.extend(write_set.log)
        for key, kv in write_set.current.items():
            if kv is None:
                self.current.pop(key, None)
            else:
                self.current[key] = kv
        for lease_id, lease in write_set.leases.items():
            if lease is None:
                self.leases.pop(lease_id, None)
            else:
                self.leases[lease_id] = lease
        self.revision = write_set.revision
        if write_set.compact_revision is not None:
            self.compact_revision = write_set.compact_revision

    def _previous(self, row: LogRow) -> KeyValue | None:
        prev: LogRow | None = None
        for other in self.log:
            if other.key == row.key and (other.revision, other.sub) < (row.revision, row.sub):
                prev = other
        if prev is None or prev.tombstone:
            return None
        return KeyValue(prev.key, prev.create_revision, prev.revision, prev.version, prev.value, prev.lease)

    def _superseded(self, row: LogRow, compact_revision: int, reached: int) -> bool:
        if row.revision > reached:
            return False
        if row.tombstone and row.revision < compact_revision:
            return True
        return any(
            other.key == row.key and row.revision < other.revision <= compact_revision for other in self.log
        )


def _key(kv: KeyValue) -> bytes:
    return kv.key


def _deadline(lease: Lease) -> float:
    return lease.expires_at
