"""SQLite backend: one writer thread and a few reader threads, each with its own connection.

Each backend call runs as *one* function on a database thread, so a Range or a whole write batch
costs one hop between the event loop and a thread, not one per statement. WAL lets readers run
while the writer commits; `synchronous=FULL` makes every acknowledged commit durable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kinepy.backends.base import BackendStatus, Evaluate, RangeRows, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql import statements as sql
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.types import Event, EventType, KeyRange, KeyValue, Lease

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        compact_revision INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        cluster_id INTEGER NOT NULL,
        member_id INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS kv_log (
        revision INTEGER NOT NULL,
        sub INTEGER NOT NULL,
        key BLOB NOT NULL,
        create_revision INTEGER NOT NULL,
        version INTEGER NOT NULL,
        lease INTEGER NOT NULL,
        value BLOB NOT NULL,
        tombstone INTEGER NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS kv_log_revision ON kv_log (revision, sub)",
    "CREATE INDEX IF NOT EXISTS kv_log_key_revision ON kv_log (key, revision)",
    """CREATE TABLE IF NOT EXISTS kv_current (
        key BLOB NOT NULL PRIMARY KEY,
        create_revision INTEGER NOT NULL,
        mod_revision INTEGER NOT NULL,
        version INTEGER NOT NULL,
        lease INTEGER NOT NULL,
        value BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kv_current_lease ON kv_current (lease) WHERE lease != 0",
    """CREATE TABLE IF NOT EXISTS leases (
        id INTEGER PRIMARY KEY,
        ttl INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS leases_expires_at ON leases (expires_at)",
]

_UPSERT_CURRENT = (
    "INSERT INTO kv_current (key, create_revision, mod_revision, version, lease, value) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET create_revision = excluded.create_revision, "
    "mod_revision = excluded.mod_revision, version = excluded.version, lease = excluded.lease, "
    "value = excluded.value"
)

_UPSERT_LEASE = (
    "INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET ttl = excluded.ttl, expires_at = excluded.expires_at"
)

_IN_CHUNK = 500
_CACHE_KIB = 8192


def _kv(row: tuple[Any, ...]) -> KeyValue:
    return KeyValue(bytes(row[0]), row[1], row[2], row[3], bytes(row[5]), row[4])


def _event(row: tuple[Any, ...]) -> Event:
    revision, _sub, key, create_revision, version, lease, value, tombstone = row[:8]
    key = bytes(key)
    prev = None
    if len(row) > 8 and row[8] is not None and not row[13]:
        prev = KeyValue(key, row[9], row[8], row[10], bytes(row[12]), row[11])
    if tombstone:
        return Event(EventType.DELETE, KeyValue(key, 0, revision, 0, b"", 0), prev)
    return Event(EventType.PUT, KeyValue(key, create_revision, revision, version, bytes(value), lease), prev)


class SQLiteBackend:
    """kinepy's storage model in one SQLite file (or in memory)."""

    def __init__(
        self,
        path: str,
        *,
        synchronous_full: bool = True,
        read_threads: int = 4,
        create_directory: bool = False,
    ) -> None:
        self.path = path
        self._create_directory = create_directory
        self._memory = path == ":memory:" or path.startswith("file::memory:")
        self._synchronous = "FULL" if synchronous_full else "NORMAL"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kinepy-sqlite-writer")
        self._readers = (
            self._writer
            if self._memory
            else ThreadPoolExecutor(max(1, read_threads), thread_name_prefix="kinepy-sqlite-reader")
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._inline: sqlite3.Connection | None = None
        self.cluster_id = 0
        self.member_id = 0
        self.allow_incomplete_copy = False
        """Start on a database holding an incomplete copy (only the copy itself does: bulk.py)."""

    # -- threads and connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._memory:
                with self._lock:
                    conn = self._connections[0] if self._connections else None
            if conn is None:
                conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        # Page cache per connection, in KiB. Every reader has its own, so keep them modest: the OS
        # page cache is shared by all of them anyway (64 MiB each took RSS to 266 MiB with 100k
        # keys of 1 KiB stored; docs/performance.md).
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._lock:
            self._connections.append(conn)
        return conn

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise BackendUnavailable("the SQLite backend is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise BackendUnavailable(f"SQLite database is busy: {exc}") from exc
            raise BackendError(f"SQLite error: {exc}") from exc
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite error: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._memory:
            self._check_file()
        await self._run(self._writer, self._create_schema)
        if not self._memory:
            self._inline = self._open()
        log.info("SQLite database %s ready (synchronous=%s)", self.path, self._synchronous)

    def _check_file(self) -> None:
        """Make sure the database file can be opened, read and written (creating it if new), with an
        error naming the path and the OS's reason; sqlite3 would only say "unable to open database
        file". The directory is created only when the spec allows it (the default ./db)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            if not self._create_directory:
                what = "is not a directory" if os.path.exists(directory) else "does not exist"
                raise BackendError(
                    f"cannot open SQLite database {self.path}: directory {directory} {what} "
                    "(kinepy creates only the default ./db; create it, or check the path)"
                )
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create directory {directory}: {exc.strerror or exc}") from None
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise BackendError(f"cannot open SQLite database {self.path}: {exc.strerror or exc}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise BackendError(
                f"cannot open SQLite database {self.path}: directory {directory} is not writable "
                "(SQLite keeps its -wal and -shm files beside the database)"
            )

    def _create_schema(self) -> None:
        conn = self._connect()
        if not self._memory:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BackendError(f"SQLite refused WAL mode (journal_mode={mode})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            row = conn.execute(
                "SELECT schema_version, cluster_id, member_id FROM meta WHERE id = 1"
            ).fetchone()
            if row is None:
                cluster_id = random.getrandbits(63) or 1
                member_id = random.getrandbits(63) or 1
                conn.execute(
                    "INSERT INTO meta (id, revision, compact_revision, schema_version, cluster_id, "
                    "member_id) VALUES (1, 1, -1, ?, ?, ?)",
                    (sql.SCHEMA_VERSION, cluster_id, member_id),
                )
            else:
                version, cluster_id, member_id = row
                if version == sql.INCOMPLETE_COPY and not self.allow_incomplete_copy:
                    raise BackendError(sql.incomplete_copy_error(f"SQLite database {self.path}"))
                if version > sql.SCHEMA_VERSION:
                    raise BackendError(
                        f"database schema version {version} is newer than this kinepy supports "
                        f"({sql.SCHEMA_VERSION}); upgrade kinepy"
                    )
                # Migrations from older schema versions go here, one step per version.
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.cluster_id, self.member_id = cluster_id, member_id

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        pools = {self._writer, self._readers}
        await loop.run_in_executor(None, self._shutdown, pools)

    def _shutdown(self, pools: Iterable[ThreadPoolExecutor]) -> None:
        for pool in pools:
            pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    log.exception("closing a SQLite connection failed")
            self._connections.clear()

    # -- reads -------------------------------------------------------------------------------

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
        if self._inline is not None and key_range.end == key_range.start + b"\x00":
            # A single key is a few index lookups: cheaper on the loop's own connection than the
            # hop to a reader thread and back (measured: docs/performance.md).
            try:
                return self._read_range_on(
                    self._inline, key_range, revision, limit, keys_only, count_only, count
                )
            except sqlite3.Error as exc:
                raise BackendError(f"SQLite error: {exc}") from exc
        return await self._run(
            self._readers, self._read_range, key_range, revision, limit, keys_only, count_only, count
        )

    def _read_range(
        self,
        key_range: KeyRange,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        count: bool,
    ) -> RangeRows:
        return self._read_range_on(self._connect(), key_range, revision, limit, keys_only, count_only, count)

    def _read_range_on(
        self,
        conn: sqlite3.Connection,
        key_range: KeyRange,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        count: bool = True,
    ) -> RangeRows:
        conn.execute("BEGIN")
        try:
            current, compact = conn.execute(sql.SELECT_META).fetchone()
            rows = _range(conn, key_range, revision, current, compact, limit, keys_only, count_only, count)
            return RangeRows(current, compact, *rows)
        finally:
            conn.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------------

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        return await self._run(self._writer, self._write, read_set, evaluate)

    def _write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current, compact = conn.execute(sql.SELECT_META).fetchone()
            rows: dict[bytes, KeyValue] = {}
            keys = list(read_set.keys)
            for i in range(0, len(keys), _IN_CHUNK):
                chunk = keys[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {sql.KV_COLUMNS} FROM kv_current WHERE key IN ({marks})", chunk
                ):
                    kv = _kv(row)
                    rows[kv.key] = kv
            for key_range in read_set.ranges:
                stmt, args = sql.select_current(key_range, keys_only=False, limit=0)
                for row in conn.execute(stmt, args):
                    kv = _kv(row)
                    rows[kv.key] = kv
            lease_ids = list(read_set.leases | read_set.lease_keys)
            leases: dict[int, Lease] = {}
            for i in range(0, len(lease_ids), _IN_CHUNK):
                chunk_ids = lease_ids[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk_ids))
                for r in conn.execute(f"{sql.SELECT_LEASES} WHERE id IN ({marks})", chunk_ids):
                    leases[r[0]] = Lease(*r)
                if read_set.lease_keys:
                    query = f"SELECT {sql.KV_COLUMNS} FROM kv_current WHERE lease IN ({marks}) AND lease != 0"
                    for row in conn.execute(query, chunk_ids):
                        kv = _kv(row)
                        rows[kv.key] = kv
            historic: dict[tuple[KeyRange, int], list[KeyValue]] = {}
            for key_range, rev in read_set.historic:
                if compact <= rev <= current:
                    kvs, _ = _range(conn, key_range, rev, current, compact, 0, False, False)
                    historic[(key_range, rev)] = kvs
            write_set = evaluate(Snapshot(current, compact, rows, leases, historic))
            if write_set is not None:
                _apply(conn, write_set, compact)
            conn.execute("COMMIT")
            return write_set
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        return await self._run(self._readers, self._read_events, key_range, after, upto, prev_kv, limit)

    def _read_events(
        self, key_range: KeyRange, after: int, upto: int, prev_kv: bool, limit: int
    ) -> list[Event]:
        conn = self._connect()
        stmt, args = sql.select_events(key_range, after, upto, prev_kv=prev_kv, limit=limit)
        return [_event(row) for row in conn.execute(stmt, args)]

    async def load_leases(self) -> list[Lease]:
        return await self._run(self._readers, self._load_leases)

    def _load_leases(self) -> list[Lease]:
        return [Lease(*row) for row in self._connect().execute(sql.SELECT_LEASES)]

    async def get_lease(self, lease_id: int) -> Lease | None:
        return await self._run(self._readers, self._get_lease, lease_id)

    def _get_lease(self, lease_id: int) -> Lease | None:
        row = self._connect().execute(sql.SELECT_LEASE, (lease_id,)).fetchone()
        return None if row is None else Lease(*row)

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        return await self._run(self._readers, self._expired_leases, now, limit)

    def _expired_leases(self, now: float, limit: int) -> list[Lease]:
        return [Lease(*row) for row in self._connect().execute(sql.SELECT_EXPIRED_LEASES, (now, limit))]

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        return await self._run(self._readers, self._lease_keys, lease_id)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        return [bytes(row[0]) for row in self._connect().execute(sql.SELECT_LEASE_KEYS, (lease_id,))]

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        return await self._run(self._writer, self._compact_batch, compact_revision, after, upto, max_rows)

    def _compact_batch(self, compact_revision: int, after: int, upto: int, max_rows: int) -> tuple[int, int]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(sql.COMPACT_WINDOW_END, (after, upto, max_rows)).fetchone()
            upto = sql.compact_window_end(after, upto, None if row is None else row[0])
            deleted = 0
            for stmt, args in sql.compact_log(compact_revision, after, upto):
                deleted += conn.execute(stmt, args).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted, upto

    shared = False  # one process owns the file
    max_key_bytes = 0  # SQLite indexes keys of any length

    async def revisions(self) -> tuple[int, int]:
        return await self._run(self._readers, self._revisions)

    def _revisions(self) -> tuple[int, int]:
        current, compact = self._connect().execute(sql.SELECT_META).fetchone()
        return current, compact

    async def wait_for_change(self, max_wait: float) -> None:
        await asyncio.sleep(max_wait)

    # -- maintenance -------------------------------------------------------------------------

    async def status(self) -> BackendStatus:
        return await self._run(self._readers, self._status)

    def _status(self) -> BackendStatus:
        conn = self._connect()
        current, compact = conn.execute(sql.SELECT_META).fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return BackendStatus(current, compact, pages * page_size, (pages - free) * page_size)

    async def snapshot(self, path: str) -> None:
        await self._run(self._readers, self._snapshot, path)

    def _snapshot(self, path: str) -> None:
        target = sqlite3.connect(path)
        try:
            self._connect().backup(target)
        finally:
            target.close()

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        return await self._run(self._readers, self._hash_kv, revision)

    def _hash_kv(self, revision: int) -> tuple[int, int]:
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            current, compact = conn.execute(sql.SELECT_META).fetchone()
            upto = current if revision <= 0 else revision
            crc = 0
            rows = conn.execute(sql.SELECT_LOG_FOR_HASH, (upto,))
            for revision_, sub, key, create, version, lease, value, tombstone in rows:
                head = struct.pack(">qqqqqB", revision_, sub, create, version, lease, tombstone)
                crc = zlib.crc32(bytes(value), zlib.crc32(bytes(key), zlib.crc32(head, crc)))
            return crc, compact
        finally:
            conn.execute("COMMIT")

    async def defragment(self) -> None:
        await self._run(self._writer, self._vacuum)

    def _vacuum(self) -> None:
        conn = self._connect()
        started = time.monotonic()
        conn.execute("VACUUM")
        if not self._memory:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info("defragmented %s in %.3fs", self.path, time.monotonic() - started)


def _range(
    conn: sqlite3.Connection,
    key_range: KeyRange,
    revision: int,
    current: int,
    compact: int,
    limit: int,
    keys_only: bool,
    count_only: bool,
    count: bool = True,
) -> tuple[list[KeyValue], int]:
    """At most `limit` rows (0: all) of `key_range` at `revision` (<= 0: latest), in key order,
    and how many keys the range holds (with `count`; else the rows read); within the caller's
    read transaction."""
    latest = revision <= 0 or revision >= current
    if revision > current or (revision > 0 and revision < compact):
        return [], 0
    if count_only:
        stmt, args = sql.count_current(key_range) if latest else sql.count_at_revision(key_range, revision)
        return [], conn.execute(stmt, args).fetchone()[0]
    if latest:
        stmt, args = sql.select_current(key_range, keys_only=keys_only, limit=limit)
    else:
        stmt, args = sql.select_at_revision(key_range, revision, keys_only=keys_only, limit=limit)
    kvs = [_kv(row) for row in conn.execute(stmt, args)]
    if limit <= 0 or len(kvs) < limit or not count:
        return kvs, len(kvs)
    stmt, args = sql.count_current(key_range) if latest else sql.count_at_revision(key_range, revision)
    return kvs, conn.execute(stmt, args).fetchone()[0]


def _apply(conn: sqlite3.Connection, write_set: WriteSet, compact: int) -> None:
    if write_set.log:
        conn.executemany(
            sql.INSERT_LOG,
            [
                (r.revision, r.sub, r.key, r.create_revision, r.version, r.lease, r.value, int(r.tombstone))
                for r in write_set.log
            ],
        )
    upserts = []
    deletes = []
    for key, kv in write_set.current.items():
        if kv is None:
            deletes.append((key,))
        else:
            upserts.append((kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value))
    if upserts:
        conn.executemany(_UPSERT_CURRENT, upserts)
    if deletes:
        conn.executemany(sql.DELETE_CURRENT, deletes)
    lease_upserts = [(lease.id, lease.ttl, lease.expires_at) for lease in write_set.leases.values() if lease]
    if lease_upserts:
        conn.executemany(_UPSERT_LEASE, lease_upserts)
    lease_deletes = [(lease_id,) for lease_id, lease in write_set.leases.items() if lease is None]
    if lease_deletes:
        conn.executemany(sql.DELETE_LEASE, lease_deletes)
    new_compact = compact if write_set.compact_revision is None else write_set.compact_revision
    conn.execute(sql.UPDATE_META, (write_set.revision, new_compact))
