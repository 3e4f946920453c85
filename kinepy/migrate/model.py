"""What a copy moves, and the two interfaces every reader and writer of a store implements.

A store is, whatever holds it (kinepy's tables, kine's table, an etcd snapshot, a live etcd):

- a `Header`: the store revision, the compaction revision, the cluster's identity;
- its history: `LogRow`s in `(revision, sub)` order, each a put or a delete (tombstone) of one key
  with the key's `create_revision`, `version` and lease at that revision. The current state of the
  store (every live key's create/mod revision, version, lease and value) *is* the newest row of each
  key that is not a tombstone, so a `Target` derives it from the history and a `Source` does not
  send it separately;
- its leases, each with its TTL and its deadline (unix seconds).

With `current_only`, a Source sends the newest row of every live key (plus the deletions at the store
revision itself), as if the store were compacted at its revision: the Header then says so
(`compact_revision == revision`).

Writing a Source for a new format (a snapshot file, another database): implement `Source` (four
async methods) and teach `kinepy.migrate.endpoints.open_source` to recognise it. The copy engine
(`kinepy.migrate.copy`) does the rest: refusing a non-empty target, batches, progress, resuming an
interrupted copy, and the final check.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, Self

from kinepy.backends.base import LogRow
from kinepy.types import Lease

__all__ = ["Counts", "Header", "Lease", "LogRow", "Source", "Target", "TargetState", "TargetStatus"]


class Closing:
    """A resource that `with` closes: subclasses define `close()`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Header:
    """A store at the one revision a Source reads it at."""

    revision: int
    """The store revision: the target's revision after the copy, so clients keep their revisions."""
    compact_revision: int
    """The compaction revision (-1: never compacted); reads below it answer "compacted"."""
    cluster_id: int
    """The cluster id in response headers (0: let the target choose one)."""
    member_id: int
    """The member id in response headers (0: let the target choose one)."""
    log_rows: int
    """How many history rows `Source.log` will yield (for progress and the final count check)."""
    current_rows: int
    """How many live keys the store holds at `revision` (for the final count check)."""


@dataclass(frozen=True, slots=True)
class Counts:
    """What a copy is checked by: live keys, history rows, leases."""

    current_rows: int
    log_rows: int
    leases: int


class Source(Protocol):
    """A store read at one consistent revision. The copy engine calls `open` once, then `log` once
    (rows in `(revision, sub)` order, at or below the header's revision), then `leases`, then
    `hash_kv`, then `aclose` (always, also after an error). A Source never writes anything."""

    description: str
    """The source as shown to the user (no password)."""

    async def open(self, *, current_only: bool) -> Header:
        """Connect and pin the revision every later call reads at. Raise `KinepyError` with a
        message that says what is wrong (unreachable, not a store of this kind, corrupt)."""

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        """The history, in `(revision, sub)` order, in lists of about `batch_rows` rows."""

    async def leases(self) -> list[Lease]:
        """Every lease, with its TTL and its deadline in unix seconds."""

    async def hash_kv(self, revision: int) -> int | None:
        """The store's own HashKV at `revision` (kinepy's CRC over its history), or None when the
        source has no comparable hash. The engine compares it with the target's."""

    async def aclose(self) -> None:
        """Release every connection and file; idempotent."""


class TargetStatus(enum.Enum):
    EMPTY = "empty"
    """A fresh store: revision 1, no history, no leases."""
    HOLDS_DATA = "holds data"
    """A complete store with data in it: never overwritten unless the user says so."""
    INCOMPLETE = "incomplete copy"
    """An earlier copy that did not finish: it cannot be served; resumed or restarted."""


@dataclass(frozen=True, slots=True)
class TargetState:
    status: TargetStatus
    revision: int
    counts: Counts
    header: Header | None = None
    """For an incomplete copy: the header of the source it was copying (log_rows/current_rows 0)."""
    copied_upto: tuple[int, int] | None = None
    """For an incomplete copy: the last `(revision, sub)` already written."""


class Target(Protocol):
    """A kinepy store being written. Until `finish` commits, the target is marked as an incomplete
    copy: a kinepy server refuses to serve it, and `open` reports it as INCOMPLETE."""

    description: str

    async def open(self) -> TargetState:
        """Connect (creating the schema when there is none) and say what the target holds."""

    async def clear(self) -> None:
        """Delete every row (history, current state, leases) and mark the store fresh."""

    async def begin(self, header: Header) -> None:
        """Mark the target as an incomplete copy of `header`'s store (one transaction)."""

    async def write_log(self, rows: list[LogRow]) -> None:
        """Append history rows (in order, after every row written before) in one transaction."""

    async def finish(self, header: Header, leases: list[Lease]) -> None:
        """In one transaction: derive the current state from the history, write the leases and the
        header's revisions and identity, and mark the copy complete."""

    async def counts(self) -> Counts:
        """Live keys, history rows and leases now in the target."""

    async def hash_kv(self, revision: int) -> int | None:
        """kinepy's HashKV of the target at `revision`, or None for a target whose revisions are its
        own (a live etcd), which checks what it holds in `finish` instead."""

    async def aclose(self) -> None:
        """Release every connection; idempotent."""
