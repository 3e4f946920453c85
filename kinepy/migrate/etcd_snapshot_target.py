"""An etcd snapshot file as a copy's Target: the way back to etcd that keeps every revision.

`kinepy migrate --from URL --to etcd-snapshot://FILE` writes what `etcdctl snapshot save` writes: a
bbolt database in etcd's MVCC layout (`etcd_snapshot.py` describes it; `bbolt_writer.py` writes the
pages) followed by its SHA-256. The history goes into the `key` bucket as it arrives, in revision
order, each row under its revision key with its `mvccpb.KeyValue`; the leases go into `lease` with the
time they have left; the compaction revision into `meta`. `etcdctl snapshot restore` (etcd 3.4;
`etcdutl snapshot restore` from 3.5) turns it into a member's data directory, and that etcd serves the
store at the same revisions: every key's create/mod revision and version, the history above the
compaction point, the store revision.

The file is written as `FILE.part` and renamed when complete, so an interrupted copy never leaves a
file that looks like a snapshot; a rerun starts again. Before the rename the file is read back with
the snapshot reader: its counts and kinepy's HashKV over its history are the copy's check.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import struct
from pathlib import Path

from kinepy.backends.base import LogRow
from kinepy.backends.sql.bulk import hash_rows
from kinepy.backends.sql.spool import ChangeSpool
from kinepy.errors import KinepyError
from kinepy.migrate.bbolt_writer import BoltWriter, BucketBuilder
from kinepy.migrate.etcd_snapshot import EtcdSnapshot
from kinepy.migrate.model import Counts, Header, TargetState, TargetStatus
from kinepy.proto.kv_pb2 import KeyValue as KeyValuePb
from kinepy.types import Lease

SCHEME = "etcd-snapshot://"
_REVISION = struct.Struct(">Q")


class SnapshotTargetError(KinepyError):
    """The snapshot file cannot be written."""


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's `key` bucket key: 8-byte big-endian main revision, `_`, 8-byte sub, `t` for a delete."""
    return _REVISION.pack(main) + b"_" + _REVISION.pack(sub) + (b"t" if tombstone else b"")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def lease_record(lease_id: int, ttl: int, remaining: int) -> bytes:
    """leasepb.Lease{ID, TTL, RemainingTTL}, protobuf-encoded (three varint fields)."""
    fields = ((1, lease_id), (2, ttl), (3, remaining))
    return b"".join(_varint(number << 3) + _varint(value) for number, value in fields if value)


def _row_value(row: LogRow) -> bytes:
    if row.tombstone:
        return KeyValuePb(key=row.key).SerializeToString()
    return KeyValuePb(
        key=row.key,
        create_revision=row.create_revision,
        mod_revision=row.revision,
        version=row.version,
        value=row.value,
        lease=row.lease,
    ).SerializeToString()


class EtcdSnapshotTarget:
    """An etcd snapshot file being written (see the module's docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.description = f"etcd snapshot {self.path}"
        self._writer: BoltWriter | None = None
        self._keys: BucketBuilder | None = None
        self._counts: Counts | None = None
        self._hash: int | None = None

    async def open(self) -> TargetState:
        if not self.path.parent.is_dir():
            raise SnapshotTargetError(f"target directory {self.path.parent} does not exist")
        if self.path.exists():
            return TargetState(TargetStatus.HOLDS_DATA, 0, Counts(0, 0, 0))
        return TargetState(TargetStatus.EMPTY, 1, Counts(0, 0, 0))

    async def clear(self) -> None:
        """Nothing to do before the copy: the old file is replaced by the rename at the end."""

    async def begin(self, header: Header) -> None:
        self._abandon()
        self._writer = BoltWriter(self.part)
        self._keys = self._writer.open_bucket(b"key")

    def _abandon(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        self.part.unlink(missing_ok=True)

    async def write_log(self, rows: list[LogRow]) -> None:
        keys = self._keys
        assert keys is not None, "begin() first"

        def write() -> None:
            for row in rows:
                keys.add(revision_key(row.revision, row.sub, row.tombstone), _row_value(row))

        await asyncio.to_thread(write)

    async def finish(self, header: Header, leases: list[Lease]) -> None:
        await asyncio.to_thread(self._finish, header, leases)

    def _finish(self, header: Header, leases: list[Lease]) -> None:
        writer, keys = self._writer, self._keys
        assert writer is not None and keys is not None, "begin() first"
        writer.close_bucket(b"key", keys)
        records = []
        for lease in leases:  # their whole TTL, as a kinepy start gives them (kinepy/store/leases.py)
            records.append((struct.pack(">q", lease.id), lease_record(lease.id, lease.ttl, lease.ttl)))
        writer.bucket(b"lease", sorted(records))  # keys are the ids, big-endian: bbolt's byte order
        meta = []
        if header.compact_revision > 0:
            compact = revision_key(header.compact_revision, 0)
            meta = [(b"finishedCompactRev", compact), (b"scheduledCompactRev", compact)]
        writer.bucket(b"meta", meta)
        writer.close()
        self._writer = None
        digest = hashlib.sha256()
        with self.part.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        with self.part.open("ab") as f:
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        self._check(header)
        os.replace(self.part, self.path)

    def _check(self, header: Header) -> None:
        """Read the file back as a snapshot: its revisions, counts and HashKV over its history."""
        with EtcdSnapshot(self.part) as snapshot:
            if (snapshot.revision, snapshot.compact_revision) != (header.revision, header.compact_revision):
                raise SnapshotTargetError(
                    f"{self.part} reads back at revision {snapshot.revision}, compacted at "
                    f"{snapshot.compact_revision}; expected {header.revision}, {header.compact_revision}"
                )
            crc = 0
            changes = ChangeSpool(str(self.path.parent))
            try:
                rows = snapshot.history()
                while batch := list(itertools.islice(rows, 5000)):
                    crc = hash_rows(batch, crc)
                    changes.add(batch)
                self._counts = Counts(changes.live_keys(), changes.rows, len(snapshot.lease_records()))
            finally:
                changes.close()
        self._hash = crc

    async def counts(self) -> Counts:
        return self._counts if self._counts is not None else Counts(0, 0, 0)

    async def hash_kv(self, revision: int) -> int | None:
        return self._hash

    async def aclose(self) -> None:
        if self._writer is not None:  # interrupted: no half-written file stays behind
            self._abandon()
