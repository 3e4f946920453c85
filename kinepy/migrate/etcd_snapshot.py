"""An etcd v3 snapshot (`etcdctl snapshot save` output, or a member's `snap/db`) read in Python.

The file is a bbolt database (`bbolt.py`), followed in a saved snapshot by the SHA-256 of the
database bytes: etcd appends it while streaming the snapshot, and `etcdctl snapshot restore` checks it
when `(size % 512) == 32`, as this module does. etcd's MVCC store keeps, in its buckets:

- `key`: one entry per change. The key is the revision: 8-byte big-endian main revision, `_`, 8-byte
  big-endian sub revision, and a trailing `t` for a delete (a tombstone). The value is an
  `mvccpb.KeyValue` (a tombstone's holds only the key). Entries are in revision order.
- `lease`: 8-byte big-endian lease id -> `leasepb.Lease` (ID, TTL, RemainingTTL).
- `meta`: `consistent_index`, `scheduledCompactRev` and `finishedCompactRev` (revision keys, as above).

This layout is the same in etcd 3.4, 3.5 and 3.6 (3.5 and 3.6 add meta entries such as `term`,
`confState` and `storageVersion`, which carry nothing a key-value copy needs). After a compaction at
R the `key` bucket still holds, for each key alive at R, its newest entry at or below R: the same rows
kinepy's `kv_log` keeps, so every entry maps to one `LogRow` as it is.

The store revision is etcd's: the highest main revision in `key`, or the compaction revision when a
compaction removed the newest entries (etcd's own restore does the same).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from kinepy.backends.base import LogRow
from kinepy.backends.sql.spool import ChangeSpool
from kinepy.errors import KinepyError
from kinepy.migrate.bbolt import BoltError, BoltFile, is_bbolt
from kinepy.migrate.model import Closing, Header
from kinepy.proto.kv_pb2 import KeyValue as KeyValuePb
from kinepy.types import Lease

log = logging.getLogger(__name__)

_SPOOL_BATCH = 5000
CHECKSUM_SIZE = 32  # sha256
_REVISION = struct.Struct(">Qc Q")
_REVISION_SIZE = 17
_HASH_CHUNK = 1 << 20


class SnapshotError(KinepyError):
    """The file is not an etcd snapshot, or is truncated or corrupt."""


def is_etcd_snapshot(path: str | Path) -> bool:
    """True when `path` is a file that opens like a bbolt database (by content, not by name)."""
    try:
        with Path(path).open("rb") as f:
            return is_bbolt(f.read(32))
    except OSError:
        return False


@dataclass(slots=True, frozen=True)
class LeaseRecord:
    """A lease as etcd persists it: its granted TTL and, when etcd checkpointed it, the time left."""

    id: int
    ttl: int
    remaining_ttl: int

    def to_lease(self, now: float) -> Lease:
        """The lease with a deadline counted from `now`, as etcd counts it after a restore: the
        checkpointed remaining TTL when there is one, else the whole TTL."""
        left = self.remaining_ttl if self.remaining_ttl > 0 else self.ttl
        return Lease(self.id, self.ttl, now + left)


def parse_revision(raw: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of a `key` bucket key."""
    if len(raw) not in (_REVISION_SIZE, _REVISION_SIZE + 1) or raw[8:9] != b"_":
        raise SnapshotError(f"corrupt: {raw.hex()} is not an etcd revision key")
    main, _sep, sub = _REVISION.unpack_from(raw)
    tombstone = len(raw) == _REVISION_SIZE + 1
    if tombstone and raw[-1:] != b"t":
        raise SnapshotError(f"corrupt: {raw.hex()} is not an etcd revision key")
    return main, sub, tombstone


def _varints(raw: bytes) -> dict[int, int]:
    """The varint fields of a protobuf message (leasepb.Lease has only those)."""
    fields: dict[int, int] = {}
    i = 0
    while i < len(raw):
        tag, i = _varint(raw, i)
        if tag & 7 != 0:
            raise SnapshotError("corrupt: a lease record has a non-varint field")
        value, i = _varint(raw, i)
        fields[tag >> 3] = value - (1 << 64) if value >= 1 << 63 else value
    return fields


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(raw) or shift > 63:
            raise SnapshotError("corrupt: a truncated varint in a lease record")
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


class EtcdSnapshot(Closing):
    """An etcd snapshot file, opened read-only; `revision`, `compact_revision`, `history()`,
    `leases()`. Opening verifies the trailing checksum (when the file has one) and the bbolt meta
    pages; walking the history checks every page it reads."""

    def __init__(self, path: str | Path, *, verify_checksum: bool = True) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise SnapshotError(f"{self.path}: cannot read: {exc.strerror}") from exc
        self.has_checksum = size % 512 == CHECKSUM_SIZE
        db_size = size - CHECKSUM_SIZE if self.has_checksum else size
        if not is_etcd_snapshot(self.path):
            raise SnapshotError(f"{self.path}: not an etcd snapshot (no bbolt header)")
        if self.has_checksum and verify_checksum:
            self._verify_checksum(db_size)
        try:
            self._db = BoltFile(self.path, size=db_size)
        except BoltError as exc:
            raise SnapshotError(str(exc)) from exc
        try:
            self.compact_revision, self.scheduled_compact_revision = self._compaction()
            self.revision = max(self._last_revision(), self.compact_revision, 1)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def _verify_checksum(self, db_size: int) -> None:
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            left = db_size
            while left:
                chunk = f.read(min(left, _HASH_CHUNK))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            stored = f.read(CHECKSUM_SIZE)
        if digest.digest() != stored:
            raise SnapshotError(
                f"{self.path}: sha256 checksum mismatch: the snapshot is corrupt or was cut short"
            )

    def _bucket(self, name: bytes, *, required: bool = True) -> Iterator[tuple[bytes, bytes]]:
        try:
            bucket = self._db.bucket(name)
            if bucket is None:
                if required:
                    raise SnapshotError(f"{self.path}: not an etcd v3 snapshot (no {name.decode()!r} bucket)")
                return
            yield from bucket.items()
        except BoltError as exc:
            raise SnapshotError(str(exc)) from exc

    def _compaction(self) -> tuple[int, int]:
        """(finished, scheduled) compaction revisions; -1 when never compacted."""
        found = {b"finishedCompactRev": -1, b"scheduledCompactRev": -1}
        for key, value in self._bucket(b"meta"):
            if key in found:
                found[key] = parse_revision(value)[0]
        finished, scheduled = found[b"finishedCompactRev"], found[b"scheduledCompactRev"]
        # A compaction scheduled but not finished is completed by etcd when it starts on the file; the
        # rows it would remove are still here, and no read below it is allowed either way.
        return max(finished, scheduled), scheduled

    def _last_revision(self) -> int:
        try:
            bucket = self._db.bucket(b"key")
            if bucket is None:
                raise SnapshotError(f"{self.path}: not an etcd v3 snapshot (no 'key' bucket)")
            last = None
            for last in bucket.keys():  # noqa: B007 (the last key is the highest revision)
                pass
        except BoltError as exc:
            raise SnapshotError(str(exc)) from exc
        return 0 if last is None else parse_revision(last)[0]

    def count(self) -> int:
        """The number of history rows (entries of the `key` bucket), cheaply."""
        bucket = self._db.bucket(b"key")
        return 0 if bucket is None else bucket.count()

    def history(self) -> Iterator[LogRow]:
        """Every change the snapshot holds, in (revision, sub) order."""
        parse = KeyValuePb.FromString  # a message each: upb keeps what a reused message parsed
        for raw_revision, raw_kv in self._bucket(b"key"):
            main, sub, tombstone = parse_revision(raw_revision)
            try:
                kv = parse(raw_kv)
            except Exception as exc:  # protobuf's DecodeError
                raise SnapshotError(f"{self.path}: corrupt key-value record at revision {main}") from exc
            if tombstone:
                yield LogRow(main, sub, kv.key, 0, 0, 0, b"", True)
            else:
                yield LogRow(main, sub, kv.key, kv.create_revision, kv.version, kv.lease, kv.value, False)

    def lease_records(self) -> list[LeaseRecord]:
        """Every lease, as persisted."""
        records = []
        for raw_id, raw in self._bucket(b"lease", required=False):
            fields = _varints(raw)
            lease_id = fields.get(1, struct.unpack(">q", raw_id)[0] if len(raw_id) == 8 else 0)
            records.append(LeaseRecord(lease_id, fields.get(2, 0), fields.get(3, 0)))
        return records

    def leases(self, now: float | None = None) -> list[Lease]:
        """Every lease with a deadline counted from `now` (default: the current time)."""
        start = time.time() if now is None else now
        return [record.to_lease(start) for record in self.lease_records()]


def _merge_keep(rows: Iterator[LogRow], keep: Iterator[tuple[int, int]]) -> Iterator[LogRow]:
    """The rows whose `(revision, sub)` is in `keep`; both in `(revision, sub)` order."""
    wanted = next(keep, None)
    for row in rows:
        if wanted is None:
            return
        if (row.revision, row.sub) == wanted:
            yield row
            wanted = next(keep, None)


class EtcdSnapshotSource:
    """An etcd snapshot file as a copy's `Source` (kinepy.migrate.model).

    `open` reads the whole file once before anything is copied (the checksum, then every entry of
    the `key` bucket, to count the live keys, and the leases), so a corrupt or truncated file is
    refused before the target is touched. Which key each entry touches goes to a temporary file
    (`ChangeSpool`), not to memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"etcd snapshot {self.path}"
        self._snapshot: EtcdSnapshot | None = None
        self._changes: ChangeSpool | None = None
        self._records: list[LeaseRecord] = []
        self._current_only = False

    async def open(self, *, current_only: bool) -> Header:
        self._current_only = current_only
        return await asyncio.to_thread(self._open, current_only)

    def _open(self, current_only: bool) -> Header:
        snapshot = self._snapshot = EtcdSnapshot(self.path)
        changes = self._changes = ChangeSpool()
        rows = snapshot.history()
        while batch := list(itertools.islice(rows, _SPOOL_BATCH)):
            changes.add(batch)
        self._records = snapshot.lease_records()
        live = changes.live_keys()
        log_rows = sum(1 for _ in changes.current(snapshot.revision)) if current_only else changes.rows
        compact = snapshot.revision if current_only else snapshot.compact_revision
        log.info(
            "%s: etcd store at revision %d, compacted at %d, %s checksum",
            self.path,
            snapshot.revision,
            snapshot.compact_revision,
            "sha256 verified" if snapshot.has_checksum else "no",
        )
        return Header(snapshot.revision, compact, 0, 0, log_rows=log_rows, current_rows=live)

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        snapshot, changes = self._snapshot, self._changes
        assert snapshot is not None and changes is not None, "open() first"
        rows = snapshot.history()
        if self._current_only:
            rows = _merge_keep(rows, changes.current(snapshot.revision))

        def batch() -> list[LogRow]:
            return list(itertools.islice(rows, batch_rows))

        while chunk := await asyncio.to_thread(batch):
            yield chunk

    async def leases(self) -> list[Lease]:
        now = time.time()
        return [record.to_lease(now) for record in self._records]

    async def hash_kv(self, revision: int) -> int | None:
        return None  # etcd's HashKV hashes bbolt's bytes, not comparable with kinepy's

    async def aclose(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        changes, self._changes = self._changes, None
        if changes is not None:
            changes.close()
        if snapshot is not None:
            snapshot.close()
