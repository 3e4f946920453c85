"""The narrow interface the store needs from a database.

A backend knows rows, revisions and ranges of bytes; it never knows what a Txn is. The store asks
for a *read set* (single keys, key ranges, leases), gets a `Snapshot`, evaluates etcd's rules in
memory, and hands back a `WriteSet` to be committed in the same database transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kinepy.types import Event, KeyRange, KeyValue, Lease, RangeQuery


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
    # Not written: what other processes following the database are told of the commit (`Commit`).
    base_revision: int = 0  # the revision the batch started from
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Commit:
    """A commit another process told of (`Backend.wait_for_change`): revisions `(after, revision]`
    with their events, in order. `events` None: told without them (too large, or a compaction
    among them), so the follower reads the log instead. `origin`: what the committing backend added
    about it (PostgreSQL: its connection's server pid and the meta row's `xmin` before and after)."""

    after: int
    revision: int
    events: list[Event] | None
    origin: tuple[int, ...] = ()


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
    """A database holding kv_log, kv_current, meta and leases.

    A backend stores rows and revisions; it knows no etcd rule. It never raises an etcd error
    (`EtcdError`): a read it cannot serve as asked returns what it can, with the revisions the
    caller needs to decide (see `read_range`, `read_events`). It raises `BackendUnavailable` when
    the database cannot be reached and `BackendError` for any other database failure.
    """

    @property
    def shared(self) -> bool:
        """True when other kinepy processes may write to the same database (PostgreSQL, MySQL)."""

    @property
    def max_key_bytes(self) -> int:
        """The longest key the database can index (0: no limit); the store refuses longer keys
        before they reach a batch."""

    @property
    def cluster_id(self) -> int:
        """The cluster ID persisted in the database (valid after `start`)."""

    @property
    def member_id(self) -> int:
        """The member ID persisted in the database (valid after `start`)."""

    async def start(self) -> None:
        """Connect, create or migrate the schema; a fresh database is at revision 1 with compaction
        revision -1."""

    async def aclose(self) -> None:
        """Release every connection; idempotent."""

    async def revisions(self) -> tuple[int, int]:
        """The current and the compaction revision, cheaply."""

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        """Return when another process may have committed, or after `max_wait` seconds at most: the
        commits other processes told of since the last call, in the order told (maybe none, when
        woken otherwise; the caller then reads `revisions`). Told commits are a hint that saves a
        read, never the only way to learn of one: a process may be told too late, or not at all."""

    async def read_range(self, query: RangeQuery) -> RangeRows:
        """Serve `query` (see `RangeQuery`).

        When its revision is above the current revision or below the compaction point, no rows
        are read: the caller sees both revisions in the result and decides.
        """

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        """In one transaction that serialises with every other writer (of any process): read
        `read_set` into a `Snapshot` at the current revision, call `evaluate` (pure, no I/O; it
        may be called again if the transaction is retried) on it, write what it returns (None:
        nothing), commit, and return it. On error nothing is committed and the error is raised."""

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        """Every change to `key_range` at revisions `(after, upto]` still in the log, in
        (revision, sub) order, with the previous version of each key when `prev_kv` (and it still
        exists); at most `limit` of them (0: all).

        History compacted away is simply absent: the caller checks the compaction revision
        (`revisions`) after the read to know whether the answer is whole."""

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
        a revision alone holding more is taken whole), so one batch stays short. A row superseded
        means: a version of a key with a newer version at or below `compact_revision`, or a
        tombstone below `compact_revision`; the latest version of each key at `compact_revision`
        is kept.

        Returns (rows deleted, reached)."""

    async def status(self) -> BackendStatus:
        """Revisions and database size (bytes allocated and bytes in use)."""

    async def defragment(self) -> None:
        """Give free space back to the file system."""

    async def snapshot(self, path: str) -> None:
        """Write a consistent copy of the whole database to `path`."""

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        """A CRC-32 over the history at or below `revision` (<= 0: latest), and the compaction
        revision at the time; equal for equal histories. The caller has checked `revision`
        against the current and the compaction revision."""
