"""What a server backend knows of its database as of its own last commit: enough to evaluate the next
write batch without reading, and to send it in one round trip that writes only if nothing changed
since (docs/architecture.md, "Several processes on one database").

The cache holds the `kv_current` and `leases` rows this process read or wrote under an unbroken chain
of its own commits, each as of the `version` its last commit left the meta row at (PostgreSQL: the
row's `xmin`; MySQL: its revision and compaction revision). A batch whose read set it answers is
evaluated on it; the dialect then writes only if the meta row is still at `version` (no other write
committed since: every write updates the meta row) and the keys the cache did not know are absent. When
that guard fails (`failed`), the dialect runs the batch the ordinary way: it reads, and if it finds
that nobody else wrote since this process's last commit, a key taken to be absent was there, the
cache goes on and stops taking unknown keys to be absent for a while (`GUESS_PAUSE` batches); else
another process wrote, and the cache starts a new chain from that batch and stands back
(`contended`) until a batch that reads finds that nobody else wrote since, as a guard that fails
costs a round trip. Another process's commit told with its events (MySQL's workers: `follow`) moves the
cache on past it when it starts at the cache's version. Entries are dropped oldest first beyond a
bound; dropping one never costs correctness. Keys known to be absent are kept apart from the rows,
under a bound of their own, so that deletions never push rows out: Kubernetes deletes a namespace's
objects in the order they were created, and each deletion's absence, filed among the rows, evicted the
next object to be deleted.
"""

from __future__ import annotations

from collections.abc import Hashable

from kinepy.backends.base import Evaluate, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql.core import meta_after
from kinepy.types import Event, EventType, KeyValue, Lease

MAX_KEYS = 10_000
MAX_VALUE_BYTES = 16 * 1024 * 1024
GUESS_PAUSE = 64


class WriteCache:
    """Rows as of `version`, for `snapshot`; `record` after each commit of this process."""

    __slots__ = (
        "_absent",
        "_batches",
        "_bytes",
        "_compact",
        "_guess_from",
        "_leases",
        "_max_keys",
        "_revision",
        "_rows",
        "contended",
        "epoch",
        "version",
    )

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.version: Hashable | None = None
        """The meta row's version the rows are as of (None: the cache knows nothing)."""
        self.epoch = 0
        """The connection epoch it was built in: a new connection (a failover, a restore) drops it."""
        self.contended = False
        """Another process wrote since this one's last commit: batches read until one finds otherwise."""
        self._revision = 0
        self._compact = 0
        self._rows: dict[bytes, KeyValue] = {}  # oldest first
        self._absent: dict[bytes, None] = {}  # keys with no current row, oldest first
        self._leases: dict[int, Lease | None] = {}
        self._bytes = 0
        self._max_keys = max_keys
        self._batches = 0  # batches asked for (`snapshot`)
        self._guess_from = 0  # the first batch that may take unknown keys to be absent again

    @property
    def revision(self) -> int:
        """The store's revision the rows are as of (while `version` is not None)."""
        return self._revision

    def clear(self) -> None:
        """Forget every row (the version stays: `record` compares a batch's read with it)."""
        self._rows.clear()
        self._absent.clear()
        self._leases.clear()
        self._bytes = 0

    def invalidate(self) -> None:
        """Forget everything: another process wrote. The next batch reads and starts a new chain."""
        self.clear()
        self.version = None

    def failed(self) -> None:
        """A write evaluated on the cache found the database elsewhere: stand back until a batch reads
        (`record` then tells a write of another process from a key taken to be absent that was not)."""
        self.contended = True

    def follow(self, before: Hashable, after: Hashable, revision: int, events: list[Event]) -> bool:
        """Another process's commit, told with its `events`, that moved the meta row from `before` to
        `after` (revision `revision`): if the cache is as of `before`, it goes on as of `after`, holding
        the rows the events leave, and stops standing back (nobody else wrote). Whether it followed; a
        commit it cannot follow (told too late, or out of order) leaves it for the next batch's check
        to find the database elsewhere, as before."""
        if self.version is None or self.version != before:
            return False
        for event in events:
            kv = event.kv
            self._put(kv.key, kv if event.type is EventType.PUT else None)
        self._revision = revision
        self.version = after
        self.contended = False
        self._bound()
        return True

    def snapshot(self, read_set: ReadSet, epoch: int, *, leases: bool) -> tuple[Snapshot, list[bytes]] | None:
        """`read_set` as of `version`, and the keys it takes to be absent without knowing (the
        write must check them); None when the cache cannot answer it (ranges, a lease's keys,
        history, a lease it does not hold or, without `leases`, any lease)."""
        self._batches += 1
        if (
            self.version is None
            or self.contended
            or epoch != self.epoch
            or read_set.ranges
            or read_set.lease_keys
            or read_set.historic
            or (read_set.leases and not leases)
        ):
            return None
        found: dict[int, Lease] = {}
        for lease_id in read_set.leases:
            if lease_id not in self._leases:
                return None
            lease = self._leases[lease_id]
            if lease is not None:
                found[lease_id] = lease
        rows: dict[bytes, KeyValue] = {}
        unknown: list[bytes] = []
        cached, absent = self._rows, self._absent
        for key in read_set.keys:
            kv = cached.get(key)
            if kv is not None:
                rows[key] = kv
            elif key not in absent:
                unknown.append(key)
        if unknown and self._batches < self._guess_from:
            return None
        return Snapshot(self._revision, self._compact, rows, found, {}), unknown

    def record(
        self,
        version: Hashable | None,
        epoch: int,
        read_set: ReadSet,
        snapshot: Snapshot,
        write_set: WriteSet,
        *,
        chained: bool,
    ) -> None:
        """`write_set`, evaluated on `snapshot` (of `read_set`), committed with nothing committed
        between the snapshot and it, leaving the meta row at `version` (None: unknown, which empties
        the cache). `chained`: the snapshot was as of the cache's own `version`, so nobody else wrote
        since this process's last commit (else what the cache held is stale and goes, and the
        cache stands back: `contended`, unless it knew nothing)."""
        known = self.version is not None and epoch == self.epoch
        chained = chained and known
        if chained and self.contended:  # nobody else wrote: a key taken to be absent was there
            self._guess_from = self._batches + GUESS_PAUSE
        if not chained or version is None:
            self.clear()
        self.contended = known and not chained
        self.version, self.epoch = version, epoch
        if version is None:
            return
        self._revision, self._compact = meta_after(write_set, snapshot.compact_revision)
        for kv in snapshot.rows.values():
            self._put(kv.key, kv)
        for key in read_set.keys:
            if key not in snapshot.rows:
                self._put(key, None)
        for lease_id in read_set.leases:
            self._leases[lease_id] = snapshot.leases.get(lease_id)
        for key, row in write_set.current.items():
            self._put(key, row)
        self._leases.update(write_set.leases)
        while len(self._leases) > self._max_keys:
            del self._leases[next(iter(self._leases))]
        self._bound()

    def _bound(self) -> None:
        """Drop the oldest entries beyond the bounds."""
        rows, absent = self._rows, self._absent
        while len(rows) > self._max_keys or self._bytes > MAX_VALUE_BYTES:
            self._forget(next(iter(rows)))
        while len(absent) > self._max_keys:
            del absent[next(iter(absent))]

    def _put(self, key: bytes, kv: KeyValue | None) -> None:
        """`kv` as the current row of `key` (None: it has none), last in its order of age."""
        if key in self._rows:
            self._forget(key)
        self._absent.pop(key, None)
        if kv is None:
            self._absent[key] = None
        else:
            self._rows[key] = kv
            self._bytes += len(kv.value)

    def _forget(self, key: bytes) -> None:
        self._bytes -= len(self._rows.pop(key).value)


class Remembered:
    """`evaluate`, remembering the snapshot it was last called on (`seen`), to `record` it."""

    __slots__ = ("_evaluate", "seen")

    def __init__(self, evaluate: Evaluate) -> None:
        self._evaluate = evaluate
        self.seen: Snapshot | None = None

    def __call__(self, snapshot: Snapshot) -> WriteSet | None:
        self.seen = snapshot
        return self._evaluate(snapshot)
