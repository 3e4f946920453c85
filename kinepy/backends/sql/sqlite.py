"""SQLite backend: one writer thread and a few reader threads, each with its own connection.

Each backend call runs as *one* function on a database thread, so a Range or a whole write batch
costs one hop between the event loop and a thread, not one per statement. WAL lets readers run
while the writer commits; `synchronous=FULL` makes every acknowledged commit durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from kinepy.backends.base import BackendStatus, Commit, Evaluate, RangeRows, ReadSet, WriteSet
from kinepy.backends.changes import ChangePipes
from kinepy.backends.sql import sqlite_files
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.core import (
    Row,
    Steps,
    WriteRows,
    apply_requests,
    compact_steps,
    event_of,
    hash_rows,
    lease_of,
    meta_of,
    range_rows,
    range_statement,
    range_steps,
    run,
    write_steps,
)
from kinepy.backends.sql.threads import DatabaseThreads
from kinepy.errors import BackendError, BackendNoSpace, BackendUnavailable
from kinepy.types import Event, KeyRange, Lease, RangeQuery

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLite's own DDL: alike in shape to the other dialects' by design (kine too keeps a schema per driver).
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

# -- SQLite's own statements -------------------------------------------------------------------


def _at_revision_parts(
    key_range: KeyRange, revision: int, cols_log: str, cols_cur: str, limit: int = 0
) -> sql.Statement:
    """The keys of `key_range` as they were at `revision` (unordered); with `limit`, enough of them
    for the first `limit` in key order.

    Keys not changed since `revision` are read from kv_current (`unchanged_since`); for keys
    changed since, the newest history row at or below `revision` (unless it is a tombstone), found
    through the revision index: left to itself, SQLite scans the `(key, revision)` index over the
    whole range instead (15 ms for a 500-key page of 200k keys, 0.x ms this way). The cost follows
    the page plus the changes since `revision`, not the keys stored nor the history.
    """
    current, args = sql.unchanged_since(key_range, revision, cols_cur, limit, derived_table=True)
    cond_chg, p_chg = sql.range_condition(key_range, "c.key")
    stmt = (
        f"{current} UNION ALL "
        f"SELECT {cols_log} FROM kv_log l "
        "WHERE l.key IN (SELECT DISTINCT c.key FROM kv_log c INDEXED BY kv_log_revision "
        "WHERE c.revision > ? AND "
        f"{cond_chg}) "
        "AND l.revision = (SELECT max(m.revision) FROM kv_log m WHERE m.key = l.key AND m.revision <= ?) "
        "AND l.tombstone = 0"
    )
    return stmt, [*args, revision, *p_chg, revision]


def _count_at_revision(key_range: KeyRange, revision: int) -> sql.Statement:
    """How many keys `key_range` held at `revision`: the keys it holds now, corrected by each key
    changed since (found through the revision index) for whether it exists now and existed then.
    One index count of the range plus the changes since `revision`: as cheap as a count of the
    latest revision (6 ms for 100k of 200k keys, against 27 ms for counting the union of
    `_at_revision_parts`)."""
    cond_cur, p_cur = sql.range_condition(key_range, "key")
    cond_chg, p_chg = sql.range_condition(key_range, "c.key")
    stmt = (
        f"SELECT (SELECT count(*) FROM kv_current WHERE {cond_cur}) + "
        "(SELECT coalesce(sum(then_ - now_), 0) FROM (SELECT "
        "(SELECT count(*) FROM kv_current k WHERE k.key = ch.key) AS now_, "
        "coalesce((SELECT 1 - l.tombstone FROM kv_log l WHERE l.key = ch.key AND l.revision <= ? "
        "ORDER BY l.revision DESC LIMIT 1), 0) AS then_ "
        "FROM (SELECT DISTINCT c.key FROM kv_log c INDEXED BY kv_log_revision "
        f"WHERE c.revision > ? AND {cond_chg}) ch))"
    )
    return stmt, [*p_cur, revision, revision, *p_chg]


STATEMENTS = sql.Statements(
    # BEGIN IMMEDIATE has taken the database's write lock already.
    select_meta_for_write=sql.SELECT_META,
    at_revision_parts=_at_revision_parts,
    count_at_revision=_count_at_revision,
    compact_superseded=(
        "DELETE FROM kv_log WHERE rowid IN (SELECT o.rowid FROM kv_log n JOIN kv_log o "
        "ON o.key = n.key AND o.revision < n.revision WHERE n.revision > ? AND n.revision <= ?)"
    ),
)

_IN_CHUNK = 500
_FILE_CHECK_SECONDS = 1.0
_CACHE_KIB = 8192
WRITE_LOCK_SUFFIX = "-writer.lock"
"""Beside the database when workers share it: the file whose flock(2) orders their write transactions."""


def _meta(conn: sqlite3.Connection) -> tuple[int, int]:
    """(revision, compaction revision) from the meta row."""
    return meta_of(conn.execute(sql.SELECT_META).fetchone())


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after a failed statement without hiding its error: SQLite may have rolled back
    already (a COMMIT that failed with SQLITE_FULL does), and a failing ROLLBACK is only logged."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("ROLLBACK failed after a failed write")


@functools.lru_cache(maxsize=16)
def _insert_statement(table: sql.Table, upsert: bool) -> str:
    stmt = sql.insert_values(table)
    return stmt + sql.on_conflict_update(table) if upsert else stmt


class _Session:
    """A connection running the SQL core's requests; `executemany` for whole batches of rows."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def fetch(self, statement: str, args: Sequence[Any] = ()) -> Iterable[Row]:
        return self.conn.execute(statement, args)

    def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(statement, args).fetchone()
        return row

    def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]:
        rows: list[Row] = []
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i : i + _IN_CHUNK]
            rows += self.conn.execute(statement.replace("{in}", f"IN ({','.join('?' * len(chunk))})"), chunk)
        return rows

    def execute(self, statement: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(statement, args).rowcount

    def execute_in(self, statement: str, values: Sequence[Any], kind: str) -> int:
        return self.conn.executemany(
            statement.replace("{in}", "= ?"), [(value,) for value in values]
        ).rowcount

    def insert(self, table: sql.Table, rows: list[tuple[Any, ...]], upsert: bool) -> None:
        self.conn.executemany(_insert_statement(table, upsert), rows)

    def apply(self, rows: WriteRows) -> None:
        for method, args in apply_requests(rows):
            getattr(self, method)(*args)


class SQLiteBackend:
    """kinepy's storage model in one SQLite file (or in memory)."""

    def __init__(
        self,
        path: str,
        *,
        synchronous_full: bool = True,
        read_threads: int = 4,
        create_directory: bool = False,
        integrity_check: str = "quick",
        changes: ChangePipes | None = None,
    ) -> None:
        self.path = path
        self._create_directory = create_directory
        self._integrity_check = integrity_check
        self._files = sqlite_files.FileIdentity(path)
        self._lost = ""
        """Why writes are refused: the files were deleted or replaced under kinepy."""
        self._file_watch: asyncio.Task[None] | None = None
        self._memory = path == ":memory:" or path.startswith("file::memory:")
        if changes is not None and self._memory:
            raise BackendError("an in-memory SQLite database cannot be shared by several workers")
        self._changes = changes
        self.shared = changes is not None
        """Several workers write this file, each under SQLite's lock (`BEGIN IMMEDIATE`, the revision
        read from `meta` inside it), and follow each other's commits (`ChangePipes`)."""
        self._synchronous = "FULL" if synchronous_full else "NORMAL"
        self._write_lock: int | None = None
        """Shared by workers: the descriptor of `WRITE_LOCK_SUFFIX` (opened by the first write)."""
        self._writer = DatabaseThreads(1, "kinepy-sqlite-writer")
        self._readers = (
            self._writer if self._memory else DatabaseThreads(max(1, read_threads), "kinepy-sqlite-reader")
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._inline: _Session | None = None
        self.cluster_id = 0
        self.member_id = 0
        self.allow_incomplete_copy = False
        """Start on a database holding an incomplete copy (only the copy itself does: bulk.py)."""

    # -- threads and connections -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return self._session().conn

    def _session(self) -> _Session:
        """This thread's connection (the only one, in memory)."""
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            conn = None
            if self._memory:
                with self._lock:
                    conn = self._connections[0] if self._connections else None
            session = _Session(conn or self._open())
            self._local.session = session
        return session

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

    async def _run(self, threads: DatabaseThreads, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise BackendUnavailable("the SQLite backend is closed")
        try:
            return await threads.run(fn, *args)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> BackendError:
        """The backend error for a SQLite error, naming the file where that helps the operator."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        if code == sqlite3.SQLITE_FULL:
            return BackendNoSpace(f"disk full: cannot write SQLite database {self.path} ({exc})")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return BackendUnavailable(f"SQLite database is busy: {exc}")
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            # "file is not a database", "database disk image is malformed"
            return BackendError(f"SQLite database {self.path} is damaged or not a database: {exc}")
        return BackendError(f"SQLite error: {exc}")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._memory:
            sqlite_files.prepare(self.path, create_directory=self._create_directory)
        await self._run(self._writer, self._create_schema)
        if not self._memory:
            self._inline = _Session(self._open())
            self._files.remember()  # the WAL exists: _create_schema wrote
            self._file_watch = asyncio.create_task(self._watch_files(), name="kinepy-sqlite-files")
        log.info("SQLite database %s ready (synchronous=%s)", self.path, self._synchronous)

    def _create_schema(self) -> None:
        conn = self._connect()
        if not self._memory:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except (
                sqlite3.DatabaseError
            ) as exc:  # "file is not a database", "database disk image is malformed"
                raise BackendError(
                    f"SQLite database {self.path} is damaged or not a database: {exc}"
                ) from None
            if str(mode).lower() != "wal":
                raise BackendError(f"SQLite refused WAL mode (journal_mode={mode})")
            sqlite_files.check_integrity(conn, self.path, self._integrity_check)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            # A real write, so that a store kinepy cannot write is refused now, not at the first Put.
            conn.execute("UPDATE meta SET revision = revision WHERE id = 1")
            row = conn.execute(sql.SELECT_META_IDS).fetchone()
            if row is None:
                cluster_id = random.getrandbits(63) or 1
                member_id = random.getrandbits(63) or 1
                conn.execute(sql.INSERT_META, (sql.SCHEMA_VERSION, cluster_id, member_id))
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
        except sqlite3.Error as exc:
            _rollback(conn)
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
                raise BackendError(
                    f"SQLite database {self.path} is read-only ({exc}): kinepy serves only a store it "
                    "can write (check the modes and owner of the file, its -wal and -shm, and the mount)"
                ) from None
            raise
        except BaseException:
            _rollback(conn)
            raise
        self.cluster_id, self.member_id = cluster_id, member_id

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._changes is not None:
            self._changes.close()
        loop = asyncio.get_running_loop()
        if self._file_watch is not None:
            self._file_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._file_watch
            # Before SQLite closes (and checkpoints into files that may be gone): save what it holds.
            with contextlib.suppress(BackendUnavailable):
                await self._writer.run(self._check_files)
        threads = {self._writer, self._readers}
        await loop.run_in_executor(None, self._shutdown, threads)

    def _shutdown(self, threads: Iterable[DatabaseThreads]) -> None:
        for each in threads:
            each.shutdown()
        if self._write_lock is not None:
            os.close(self._write_lock)
            self._write_lock = None
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover - closing is best effort
                    log.exception("closing a SQLite connection failed")
            self._connections.clear()

    # -- reads -------------------------------------------------------------------------------

    async def read_range(self, query: RangeQuery) -> RangeRows:
        key_range = query.key_range
        if self._inline is not None and key_range.end == key_range.start + b"\x00":
            # A single key is a few index lookups: cheaper on the loop's own connection than the
            # hop to a reader thread and back (measured: docs/performance.md), in one statement
            # (one snapshot, no transaction around it).
            stmt, args = range_statement(STATEMENTS, query)
            try:
                return range_rows(query, self._inline.conn.execute(stmt, args).fetchall())
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return await self._run(self._readers, self._read, range_steps(STATEMENTS, query))

    def _read(self, steps: Steps[T]) -> T:
        return self._in_read_transaction(self._session(), steps)

    @staticmethod
    def _in_read_transaction(session: _Session, steps: Steps[T]) -> T:
        session.conn.execute("BEGIN")
        try:
            return run(steps, session)
        finally:
            session.conn.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------------

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        return await self._run(
            self._writer, self._write_and_announce, write_steps(STATEMENTS, read_set, evaluate)
        )

    def _write_and_announce(self, steps: Steps[WriteSet | None]) -> WriteSet | None:
        result = self._write(steps)
        if self._changes is not None and result is not None:
            # From the writer's thread, the moment the commit is durable: the other workers' watchers
            # need not wait for this worker's event loop to come back to it (p99 ≈ 2 ms of the
            # watch-latency benchmark with two workers, docs/performance.md).
            self._changes.announce(result)
        return result

    def _write(self, steps: Steps[T]) -> T:
        if self._lost:
            raise BackendUnavailable(self._lost)
        session = self._session()
        conn = session.conn
        if self.shared:
            # Workers queue for the write lock in the kernel, woken the moment it is free. Left to
            # SQLite's busy handler, a worker that finds the database locked sleeps 1, 2, 5, 10 … ms
            # and retries, while the other takes the lock again: fewer commits, and a p99 twice as
            # long (docs/architecture.md, Workers).
            if self._write_lock is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                self._write_lock = os.open(self.path + WRITE_LOCK_SUFFIX, flags, 0o600)
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = run(steps, session)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        finally:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)
        self._check_files()  # committed, but to files a restart will find? Only then acknowledged.
        return result

    def _check_files(self) -> None:
        """On the writer's thread: refuse writes from now on if state.db or its WAL is no longer the
        file SQLite opened, after saving what was committed (sqlite_files.save)."""
        if self._lost:
            raise BackendUnavailable(self._lost)
        lost = self._files.lost()
        if not lost:
            return
        saved = sqlite_files.save(self._connect(), self.path, lost)
        self._lost = (
            f"{' and '.join(lost)} while kinepy was running: writes are refused, since a restart would "
            f"not find them; {saved}"
        )
        log.error("%s", self._lost)
        raise BackendUnavailable(self._lost)

    async def _watch_files(self) -> None:
        """Look at the files every second too, so that an idle store's loss is seen (and saved) before
        a restart would lose it."""
        while not self._lost:
            await asyncio.sleep(_FILE_CHECK_SECONDS)
            if self._files.lost():
                with contextlib.suppress(BackendError):
                    await self._run(self._writer, self._check_files)

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        return await self._run(self._readers, self._read_events, key_range, after, upto, prev_kv, limit)

    def _read_events(
        self, key_range: KeyRange, after: int, upto: int, prev_kv: bool, limit: int
    ) -> list[Event]:
        conn = self._connect()
        stmt, args = sql.select_events(key_range, after, upto, prev_kv=prev_kv, limit=limit)
        return [event_of(row) for row in conn.execute(stmt, args)]

    async def load_leases(self) -> list[Lease]:
        return await self._run(self._readers, self._load_leases)

    def _load_leases(self) -> list[Lease]:
        return [lease_of(row) for row in self._connect().execute(sql.SELECT_LEASES)]

    async def get_lease(self, lease_id: int) -> Lease | None:
        return await self._run(self._readers, self._get_lease, lease_id)

    def _get_lease(self, lease_id: int) -> Lease | None:
        row = self._connect().execute(sql.SELECT_LEASE, (lease_id,)).fetchone()
        return None if row is None else lease_of(row)

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        return await self._run(self._readers, self._expired_leases, now, limit)

    def _expired_leases(self, now: float, limit: int) -> list[Lease]:
        return [lease_of(row) for row in self._connect().execute(sql.SELECT_EXPIRED_LEASES, (now, limit))]

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        return await self._run(self._readers, self._lease_keys, lease_id)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        return [bytes(row[0]) for row in self._connect().execute(sql.SELECT_LEASE_KEYS, (lease_id,))]

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        return await self._run(self._writer, self._compact_batch, compact_revision, after, upto, max_rows)

    def _compact_batch(self, compact_revision: int, after: int, upto: int, max_rows: int) -> tuple[int, int]:
        return self._write(compact_steps(STATEMENTS, compact_revision, after, upto, max_rows))

    max_key_bytes = 0  # SQLite indexes keys of any length

    async def revisions(self) -> tuple[int, int]:
        if self._inline is not None:
            # One row by its primary key, on the loop's own connection as a single-key Range is: the
            # follower asks twice for every commit another worker makes (before and after reading it),
            # and each hop to a reader thread and back is latency a watcher on this worker waits out.
            try:
                return _meta(self._inline.conn)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return await self._run(self._readers, self._revisions)

    def _revisions(self) -> tuple[int, int]:
        return _meta(self._connect())

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        if self._changes is None:
            await asyncio.sleep(max_wait)
            return []
        return await self._changes.wait(max_wait)

    # -- maintenance -------------------------------------------------------------------------

    async def status(self) -> BackendStatus:
        return await self._run(self._readers, self._status)

    def _status(self) -> BackendStatus:
        conn = self._connect()
        current, compact = _meta(conn)
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
            current, compact = _meta(conn)
            upto = current if revision <= 0 else revision
            return hash_rows(conn.execute(sql.SELECT_LOG_FOR_HASH, (upto,)), 0), compact
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
