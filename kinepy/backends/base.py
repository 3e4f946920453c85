"""The narrow interface the store needs from a database.

A backend knows rows, revisions and ranges of bytes; it never knows what a Txn is. The store asks
for a *read set* (single keys, key ranges, leases), gets a `Snapshot`, evaluates etcd's rules in
memory, and hands back a `WriteSet` to be committed in the same database transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kinepy.types import Event, KeyRange, KeyValue, Lease


@dataclass(slots=True)
class ReadSet:
    """What one batch of writes needs to read before it decides anything."""

    keys: set[bytes] = field(default_factory=set)
    ranges: list[KeyRange] = field(default_factory=list)
    leases: set[int] = field(default_factory=set)
    # Leases whose attached keys (their current rows) are needed, to revoke them.
    lease_keys: set[int] = field(default_factory=set)
    # Ranges read at an older revision inside a txn: (range, revision).
    historic: list[tuple[KeyRange, int]] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """The database as one write transaction sees it, limited to a read set."""

    revision: int
    compact_revision: int
    rows: dict[bytes, KeyValue]
    leases: dict[int, Lease]
    historic: dict[tuple[KeyRange, int], list[KeyValue]]


@dataclass(slots=True, frozen=True)
class LogRow:
    """One row of history: a put (`tombstone=False`) or a delete of `key` at `(revision, sub)`."""

    revision: int
    sub: int
    key: bytes
    create_revision: int
    version: int
    lease: int
    value: bytes
    tombstone: bool


@dataclass(slots=True)
class WriteSet:
    """What a batch commits: history rows, the final current state of each touched key, and meta."""

    revision: int
    log: list[LogRow] = field(default_factory=list)
    # Final state per touched key: a KeyValue to upsert, or None to delete.
    current: dict[bytes, KeyValue | None] = field(default_factory=dict)
    compact_revision: int | None = None
    # Final state per touched lease: a Lease to insert or update, or None to delete.
    leases: dict[int, Lease | None] = field(default_factory=dict)


@dataclass(slots=True)
class RangeRows:
    """A read of `[start, end)` at `revision` (0 = latest), in key order."""

    revision: int  # the store's current revision when read
    compact_revision: int
    kvs: list[KeyValue]
    count: int


@dataclass(slots=True, frozen=True)
class BackendStatus:
    revision: int
    compact_revision: int
    db_size: int
    db_size_in_use: int


Evaluate = Callable[[Snapshot], WriteSet | None]


class Backend(Protocol):
    """A database holding kv_log, kv_current, meta and leases."""

    shared: bool
    """True when other kinepy processes may write to the same database (PostgreSQL, MySQL)."""

    async def revisions(self) -> tuple[int, int]:
        """The current and the compaction revision, cheaply."""

    async def wait_for_change(self, max_wait: float) -> None:
        """Return when another process may have committed, or after `max_wait` seconds."""

    async def start(self) -> None:
        """Connect, create or migrate the schema."""

    async def aclose(self) -> None:
        """Release every connection; idempotent."""

    async def read_range(
        self,
        key_range: KeyRange,
        *,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        count: bool = True,
    ) -> RangeRows:
        """Read at most `limit` rows (0: all) of `key_range` at `revision` (<= 0: latest) and
        count the keys in the range (unless `count` is False: the caller knows it, and the
        result's count is then just the number of rows read).

        When `revision` is above the current revision or below the compaction point, no rows
        are read: the caller sees both revisions in the result and decides.
        """

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        """In one transaction that serialises with every other writer: read `read_set`,
        call `evaluate` (pure, no I/O) on it, write what it returns, commit."""

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        """Every change to `key_range` at revisions `(after, upto]`, in (revision, sub) order,
        with the previous version of each key when `prev_kv` (and it still exists); at most
        `limit` of them (0: all)."""

    async def load_leases(self) -> list[Lease]:
        """Every lease, with its persisted deadline."""

    async def get_lease(self, lease_id: int) -> Lease | None:
        """One lease, or None."""

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        """Up to `limit` leases whose deadline is at or before `now`, earliest first."""

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, in key order."""

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        """Delete history superseded at `compact_revision` among revisions `(after, reached]`,
        where `reached <= upto` ends the window at about `max_rows` history rows (whole revisions;
        a revision alone holding more is taken whole), so one batch stays short.

        Returns (rows deleted, reached)."""

    async def status(self) -> BackendStatus:
        """Revisions and database size."""

    async def defragment(self) -> None:
        """Give free space back to the file system."""

    async def snapshot(self, path: str) -> None:
        """Write a consistent copy of the whole database to `path`."""

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        """A CRC-32 over the history at or below `revision` (<= 0: latest), and the compaction
        revision at the time; equal for equal histories."""
