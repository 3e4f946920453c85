"""Bulk copy of a whole kinepy store: export at one consistent snapshot, import in batches.

`open_export(spec)` reads a store *without creating or changing anything* (a SQLite file opened
read-only, a server database that must already hold kinepy's tables), inside one read transaction,
so the meta row, the history, the leases and the hash all describe the same revision.

`open_import(backend)` writes into a started backend: the history in batches, one transaction each,
then, in one last transaction, the current state (derived from the history in SQL), the leases and
the meta row. Until that last transaction `meta.schema_version` is `INCOMPLETE_COPY`, which every
backend refuses to serve, and which a rerun recognises to resume the copy.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kinepy.backends.base import Backend, LogRow
from kinepy.backends.sql import core
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.core import AsyncSession, Row
from kinepy.backends.sql.dialect import ServerBackend
from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.backends.sql.threads import DatabaseThreads
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.specs import BackendSpec, MySQLSpec, PostgresSpec, SQLiteSpec
from kinepy.types import Lease

T = TypeVar("T")

INCOMPLETE_COPY = sql.INCOMPLETE_COPY

SELECT_META_ROW = (
    "SELECT revision, compact_revision, schema_version, cluster_id, member_id FROM meta WHERE id = 1"
)
_LOG_COLS = "l.revision, l.sub, l.key, l.create_revision, l.version, l.lease, l.value, l.tombstone"
# The newest row of each live key, and the deletions at the store revision itself: what a compaction
# at the store revision would keep.
_CURRENT_ONLY = (
    "(EXISTS (SELECT 1 FROM kv_current c WHERE c.key = l.key AND c.mod_revision = l.revision) "
    "OR (l.revision = ? AND l.tombstone = 1))"
)
SELECT_LOG = f"SELECT {_LOG_COLS} FROM kv_log l WHERE l.revision <= ? ORDER BY l.revision, l.sub"
SELECT_LOG_CURRENT_ONLY = (
    f"SELECT {_LOG_COLS} FROM kv_log l WHERE l.revision <= ? AND {_CURRENT_ONLY} ORDER BY l.revision, l.sub"
)
COUNT_LOG = "SELECT count(*) FROM kv_log l WHERE l.revision <= ?"
COUNT_LOG_CURRENT_ONLY = f"SELECT count(*) FROM kv_log l WHERE l.revision <= ? AND {_CURRENT_ONLY}"
COUNT_CURRENT = "SELECT count(*) FROM kv_current"
COUNT_ALL_LOG = "SELECT count(*) FROM kv_log"
COUNT_LEASES = "SELECT count(*) FROM leases"
LAST_LOG_POSITION = "SELECT revision, sub FROM kv_log ORDER BY revision DESC, sub DESC LIMIT 1"
BEGIN_COPY = (
    "UPDATE meta SET revision = ?, compact_revision = ?, schema_version = ?, cluster_id = ?, member_id = ? "
    "WHERE id = 1"
)
# The current state is the newest history row of each key, unless that row is a deletion.
DERIVE_CURRENT = (
    "INSERT INTO kv_current (key, create_revision, mod_revision, version, lease, value) "
    "SELECT l.key, l.create_revision, l.revision, l.version, l.lease, l.value FROM kv_log l "
    "WHERE l.tombstone = 0 AND NOT EXISTS "
    "(SELECT 1 FROM kv_log n WHERE n.key = l.key AND n.revision > l.revision)"
)
INSERT_LEASE = "INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?)"
_KINEPY_TABLES = ("meta", "kv_log", "kv_current", "leases")
FETCH_ROWS = 200  # rows per fetch from a source: the most a batch overshoots BATCH_BYTES by
BATCH_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreMeta:
    """kinepy's meta row."""

    revision: int
    compact_revision: int
    schema_version: int
    cluster_id: int
    member_id: int

    @property
    def incomplete(self) -> bool:
        return self.schema_version == INCOMPLETE_COPY


@dataclass(frozen=True, slots=True)
class StoreCounts:
    current_rows: int
    log_rows: int
    leases: int


def hash_rows(rows: Iterable[LogRow], crc: int = 0) -> int:
    """kinepy's HashKV (`Backend.hash_kv`) continued over `rows`, given in `(revision, sub)` order."""
    return core.hash_rows(core.log_tuples(rows), crc)


async def batches(
    rows: AsyncIterator[list[LogRow]], max_rows: int, max_bytes: int = BATCH_BYTES
) -> AsyncIterator[list[LogRow]]:
    """`rows` regrouped into lists of at most `max_rows` rows and about `max_bytes` bytes of keys and
    values, so that a batch of large values (etcd allows 1.5 MiB each) stays small in memory."""
    batch: list[LogRow] = []
    size = 0
    async for chunk in rows:
        for row in chunk:
            batch.append(row)
            size += len(row.key) + len(row.value) + 64
            if len(batch) >= max_rows or size >= max_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _log_row(row: Sequence[Any]) -> LogRow:
    revision, sub, key, create, version, lease, value, tombstone = row
    return LogRow(
        int(revision),
        int(sub),
        bytes(key),
        int(create),
        int(version),
        int(lease),
        bytes(value),
        bool(tombstone),
    )


def _meta_of(row: Sequence[Any] | None, where: str) -> StoreMeta:
    if row is None:
        raise BackendError(f"{where} has no meta row: it is not a kinepy store")
    return StoreMeta(*(int(v) for v in row))


# -- export ----------------------------------------------------------------------------------------


class StoreExport(abc.ABC):
    """A kinepy store read at one snapshot, changing nothing. `open` first, `aclose` always."""

    description: str
    _revision = 0  # the snapshot's, set by `open`
    _current_only = False

    @abc.abstractmethod
    async def open(self, *, current_only: bool) -> tuple[StoreMeta, StoreCounts]:
        """Pin the snapshot; its meta row and counts (history rows as `log` will yield them)."""

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        """The history at or below the snapshot's revision in `(revision, sub)` order (with
        `current_only`, the newest row of each live key and the deletions at the revision)."""
        if self._current_only:
            rows = self._stream(SELECT_LOG_CURRENT_ONLY, (self._revision, self._revision), FETCH_ROWS)
        else:
            rows = self._stream(SELECT_LOG, (self._revision,), FETCH_ROWS)
        return batches(rows, batch_rows)

    @abc.abstractmethod
    async def leases(self) -> list[Lease]: ...

    @abc.abstractmethod
    def _stream(self, statement: str, args: Sequence[Any], batch: int) -> AsyncIterator[list[LogRow]]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


def read_only_uri(path: str) -> str:
    """The URI that opens the SQLite file `path` read-only."""
    return "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"


class SQLiteThread:
    """A SQLite connection of its own on a thread of its own, as the SQLite exports (kinepy's and
    kine's) and the SQLite import use one. `kind` names the file in errors ("SQLite database")."""

    def __init__(self, path: str, *, kind: str, thread_name: str) -> None:
        self.path = path
        self._kind = kind
        self._thread = DatabaseThreads(1, thread_name)
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._thread.run(fn, *args)
        except sqlite3.Error as exc:
            raise BackendError(f"{self._kind} {self.path}: {exc}") from exc

    def _open_read_only(self) -> sqlite3.Connection:
        """Open the file read-only (on the thread); `BackendError` if there is none."""
        if not os.path.isfile(self.path):
            raise BackendError(f"{self._kind} {self.path} does not exist")
        conn = self._conn = sqlite3.connect(
            read_only_uri(self.path), uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._thread.shutdown(wait=False)


class _SQLiteExport(SQLiteThread, StoreExport):
    """A SQLite file opened read-only, on a thread of its own, in one read transaction."""

    def __init__(self, path: str) -> None:
        super().__init__(path, kind="SQLite database", thread_name="kinepy-export")
        self.description = f"sqlite://{path}"

    async def open(self, *, current_only: bool) -> tuple[StoreMeta, StoreCounts]:
        self._current_only = current_only
        return await self._run(self._open, current_only)

    def _open(self, current_only: bool) -> tuple[StoreMeta, StoreCounts]:
        conn = self._open_read_only()
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"{self.path} is not a SQLite database ({exc})") from exc
        missing = [t for t in _KINEPY_TABLES if t not in tables]
        if missing:
            raise BackendError(
                f"SQLite database {self.path} is not a kinepy store (no table {', '.join(missing)})"
            )
        conn.execute("BEGIN")
        meta = _meta_of(conn.execute(SELECT_META_ROW).fetchone(), f"SQLite database {self.path}")
        self._revision = meta.revision
        log_count = (
            conn.execute(COUNT_LOG_CURRENT_ONLY, (meta.revision, meta.revision))
            if current_only
            else conn.execute(COUNT_LOG, (meta.revision,))
        ).fetchone()[0]
        counts = StoreCounts(
            conn.execute(COUNT_CURRENT).fetchone()[0], log_count, conn.execute(COUNT_LEASES).fetchone()[0]
        )
        return meta, counts

    async def _stream(self, statement: str, args: Sequence[Any], batch: int) -> AsyncIterator[list[LogRow]]:
        # The cursor never leaves the export's thread: a cursor reset or freed on another thread
        # while its connection works is SQLite API misuse.
        conn = self._conn
        assert conn is not None, "open() first"
        cursors: list[sqlite3.Cursor] = []

        def fetch() -> list[LogRow]:
            if not cursors:
                cursors.append(conn.execute(statement, args))
            return [_log_row(row) for row in cursors[0].fetchmany(batch)]

        def close() -> None:
            while cursors:
                cursors.pop().close()

        try:
            while rows := await self._run(fetch):
                yield rows
        finally:
            await self._run(close)

    async def leases(self) -> list[Lease]:
        conn = self._conn
        assert conn is not None, "open() first"
        return await self._run(lambda: [Lease(*row) for row in conn.execute(sql.SELECT_LEASES)])


class ServerSnapshot:
    """A PostgreSQL or MySQL database read in one REPEATABLE READ READ ONLY transaction, as the
    server exports (kinepy's and kine's) read one. Driver errors raised while the session is open
    do not pass through its context manager: its reads translate them."""

    def __init__(self, backend: ServerBackend, *, connected: bool = False) -> None:
        self._backend: Any = backend  # a PostgresBackend or MySQLBackend
        self._connected = connected  # a started backend: use its pool, leave it open at the end
        self._stack = contextlib.AsyncExitStack()
        self._session: AsyncSession | None = None

    async def _begin(self) -> AsyncSession:
        """Connect (unless connected) and open the read transaction every later read is in."""
        if not self._connected:
            await connect_existing(self._backend)
        session: AsyncSession = await self._stack.enter_async_context(self._backend._session("read"))
        self._session = session
        return session

    async def _fetch(self, statement: str, args: Sequence[Any] = ()) -> list[Row]:
        session = self._session
        assert session is not None, "open() first"
        with self._backend._errors():
            return await session.fetch(statement, args)

    async def _batches(self, statement: str, args: Sequence[Any], batch: int) -> AsyncIterator[list[Row]]:
        session = self._session
        assert session is not None, "open() first"
        with self._backend._errors():
            async for rows in session.stream(statement, args, batch=batch):
                yield rows

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            if not self._connected:
                await self._backend.aclose()


class _ServerExport(ServerSnapshot, StoreExport):
    """A PostgreSQL or MySQL database kinepy created, in one REPEATABLE READ READ ONLY transaction."""

    def __init__(self, backend: ServerBackend, description: str, *, connected: bool = False) -> None:
        super().__init__(backend, connected=connected)
        self.description = description

    async def open(self, *, current_only: bool) -> tuple[StoreMeta, StoreCounts]:
        self._current_only = current_only
        session = await self._begin()
        with self._backend._errors():
            meta = _meta_of(await session.fetchone(SELECT_META_ROW), self.description)
            self._revision = meta.revision
            if current_only:
                log_count = await session.fetchone(COUNT_LOG_CURRENT_ONLY, (meta.revision, meta.revision))
            else:
                log_count = await session.fetchone(COUNT_LOG, (meta.revision,))
            current = await session.fetchone(COUNT_CURRENT)
            leases = await session.fetchone(COUNT_LEASES)
        assert log_count is not None and current is not None and leases is not None
        return meta, StoreCounts(int(current[0]), int(log_count[0]), int(leases[0]))

    async def _stream(self, statement: str, args: Sequence[Any], batch: int) -> AsyncIterator[list[LogRow]]:
        async for rows in self._batches(statement, args, batch):
            yield [_log_row(row) for row in rows]

    async def leases(self) -> list[Lease]:
        return [Lease(int(r[0]), int(r[1]), float(r[2])) for r in await self._fetch(sql.SELECT_LEASES)]


async def connect_existing(backend: ServerBackend, retry_for: float | None = None) -> None:
    """Connect `backend` to a database that must exist already, creating nothing; retry an
    unreachable server for `retry_for` seconds (default: the backend's connect timeout)."""
    from kinepy.backends.sql.mysql import MySQLBackend
    from kinepy.backends.sql.postgres import PostgresBackend

    async def connect() -> None:
        if isinstance(backend, PostgresBackend):
            await _connect_postgres(backend)
        elif isinstance(backend, MySQLBackend):
            await _connect_mysql(backend)
        else:  # pragma: no cover - only two server backends
            raise BackendError(f"cannot export from {backend.name}")

    await backend.connect_retrying(connect, retry_for)


async def _connect_postgres(backend: Any) -> None:
    import asyncpg

    try:
        backend._pool = await backend._create_pool()
    except asyncpg.InvalidCatalogNameError as exc:
        raise BackendError(f"PostgreSQL database {backend.spec.database!r} does not exist") from exc


async def _connect_mysql(backend: Any) -> None:
    import aiomysql

    from kinepy.backends.sql.mysql import _UNKNOWN_DATABASE
    from kinepy.backends.sql.replication import error_code

    try:
        probe = await aiomysql.connect(db=backend.spec.database, **backend._connect_args())
    except aiomysql.OperationalError as exc:
        if error_code(exc) == _UNKNOWN_DATABASE:
            raise BackendError(f"MySQL database {backend.spec.database!r} does not exist") from exc
        raise
    probe.close()
    init_command = await backend._bootstrap()
    backend._pool = await backend._create_pool(init_command)


def open_export(spec: BackendSpec, *, connect_timeout: float = 10.0) -> StoreExport:
    """A reader of the kinepy store at `spec` (nothing is connected before `open`)."""
    if isinstance(spec, SQLiteSpec):
        if spec.path == ":memory:" or spec.path.startswith("file::memory:"):
            raise BackendError("an in-memory SQLite database cannot be copied from another process")
        return _SQLiteExport(spec.path)
    if isinstance(spec, PostgresSpec):
        from kinepy.backends.sql.postgres import PostgresBackend

        return _ServerExport(PostgresBackend(spec, pool_size=2, connect_timeout=connect_timeout), str(spec))
    if isinstance(spec, MySQLSpec):
        from kinepy.backends.sql.mysql import MySQLBackend

        return _ServerExport(MySQLBackend(spec, pool_size=2, connect_timeout=connect_timeout), str(spec))
    raise BackendError(f"{spec} is not a kinepy store")


# -- import ----------------------------------------------------------------------------------------


class StoreImport(abc.ABC):
    """Writes a copy into a started backend (see the module's docstring)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @abc.abstractmethod
    async def meta(self) -> StoreMeta: ...

    @abc.abstractmethod
    async def counts(self) -> StoreCounts: ...

    @abc.abstractmethod
    async def last_log_position(self) -> tuple[int, int] | None:
        """The `(revision, sub)` of the newest history row, or None when there is none."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Delete every row and reset the meta row to a fresh store's (revision 1, never compacted)."""

    @abc.abstractmethod
    async def begin(self, meta: StoreMeta) -> None:
        """Write `meta` with `schema_version = INCOMPLETE_COPY`."""

    @abc.abstractmethod
    async def write_log(self, rows: list[LogRow]) -> None: ...

    @abc.abstractmethod
    async def finish(self, meta: StoreMeta, leases: list[Lease]) -> None:
        """Derive kv_current, write `leases` and `meta` (schema version current) in one transaction."""

    async def hash_kv(self, revision: int) -> int:
        crc, _ = await self.backend.hash_kv(revision)
        return crc

    async def aclose(self) -> None:
        await self.backend.aclose()


class _SQLiteImport(SQLiteThread, StoreImport):
    """Writes through a connection of its own (the backend's schema, WAL mode and file), on one thread."""

    def __init__(self, backend: SQLiteBackend) -> None:
        StoreImport.__init__(self, backend)
        SQLiteThread.__init__(self, backend.path, kind="SQLite database", thread_name="kinepy-import")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            # Batches need not reach the disk one by one: `finish` commits with synchronous=FULL,
            # which makes every earlier commit durable too (WAL keeps the file sound either way).
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA cache_size = -65536")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def meta(self) -> StoreMeta:
        return await self._run(
            lambda: _meta_of(self._connection().execute(SELECT_META_ROW).fetchone(), self.path)
        )

    async def counts(self) -> StoreCounts:
        def counts() -> StoreCounts:
            conn = self._connection()
            return StoreCounts(
                *(conn.execute(stmt).fetchone()[0] for stmt in (COUNT_CURRENT, COUNT_ALL_LOG, COUNT_LEASES))
            )

        return await self._run(counts)

    async def last_log_position(self) -> tuple[int, int] | None:
        row = await self._run(lambda: self._connection().execute(LAST_LOG_POSITION).fetchone())
        return None if row is None else (int(row[0]), int(row[1]))

    async def clear(self) -> None:
        def clear(conn: sqlite3.Connection) -> None:
            for table in ("kv_log", "kv_current", "leases"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute(
                "UPDATE meta SET revision = 1, compact_revision = -1, schema_version = ? WHERE id = 1",
                (sql.SCHEMA_VERSION,),
            )

        await self._run(self._transaction, clear)

    async def begin(self, meta: StoreMeta) -> None:
        args = (meta.revision, meta.compact_revision, INCOMPLETE_COPY, meta.cluster_id, meta.member_id)

        def begin(conn: sqlite3.Connection) -> None:
            conn.execute(BEGIN_COPY, args)

        await self._run(self._transaction, begin)

    async def write_log(self, rows: list[LogRow]) -> None:
        tuples = core.log_tuples(rows)

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(sql.INSERT_LOG, tuples)  # no cursor may leave this thread

        await self._run(self._transaction, write)

    async def finish(self, meta: StoreMeta, leases: list[Lease]) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM kv_current")
            conn.execute(DERIVE_CURRENT)
            conn.execute("DELETE FROM leases")
            conn.executemany(INSERT_LEASE, [(lease.id, lease.ttl, lease.expires_at) for lease in leases])
            conn.execute(
                BEGIN_COPY,
                (meta.revision, meta.compact_revision, sql.SCHEMA_VERSION, meta.cluster_id, meta.member_id),
            )

        def pragma(statement: str) -> None:
            self._connection().execute(statement).fetchall()

        await self._run(pragma, "PRAGMA synchronous = FULL")
        await self._run(self._transaction, finish)
        await self._run(pragma, "PRAGMA wal_checkpoint(TRUNCATE)")

    async def aclose(self) -> None:
        await SQLiteThread.aclose(self)
        await StoreImport.aclose(self)  # the backend


class _ServerImport(StoreImport):
    """Writes through the backend's own sessions: set-based inserts (`unnest` arrays on PostgreSQL,
    multi-row INSERT on MySQL), one transaction per batch."""

    def __init__(self, backend: ServerBackend) -> None:
        super().__init__(cast(Backend, backend))
        self._server = backend

    def _session(self, kind: str) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._server._session(kind)

    async def meta(self) -> StoreMeta:
        async with self._session("none") as session:
            return _meta_of(await session.fetchone(SELECT_META_ROW), self._server.name)

    async def counts(self) -> StoreCounts:
        values = []
        async with self._session("read") as session:
            for stmt in (COUNT_CURRENT, COUNT_ALL_LOG, COUNT_LEASES):
                row = await session.fetchone(stmt)
                values.append(int(row[0]) if row else 0)
        return StoreCounts(*values)

    async def last_log_position(self) -> tuple[int, int] | None:
        async with self._session("none") as session:
            row = await session.fetchone(LAST_LOG_POSITION)
        return None if row is None else (int(row[0]), int(row[1]))

    async def clear(self) -> None:
        async with self._session("write") as session:
            for table in ("kv_log", "kv_current", "leases"):
                await session.execute(f"DELETE FROM {table}")
            await session.execute(
                "UPDATE meta SET revision = 1, compact_revision = -1, schema_version = ? WHERE id = 1",
                (sql.SCHEMA_VERSION,),
            )

    async def begin(self, meta: StoreMeta) -> None:
        args = (meta.revision, meta.compact_revision, INCOMPLETE_COPY, meta.cluster_id, meta.member_id)
        async with self._session("write") as session:
            await session.execute(BEGIN_COPY, args)

    async def write_log(self, rows: list[LogRow]) -> None:
        async with self._session("write") as session:
            await session.insert(sql.KV_LOG, core.log_tuples(rows), False)

    async def finish(self, meta: StoreMeta, leases: list[Lease]) -> None:
        async with self._session("write") as session:
            await session.execute("DELETE FROM kv_current")
            await session.execute(DERIVE_CURRENT)
            await session.execute("DELETE FROM leases")
            if leases:
                await session.insert(
                    sql.LEASES, [(lease.id, lease.ttl, lease.expires_at) for lease in leases], False
                )
            await session.execute(
                BEGIN_COPY,
                (meta.revision, meta.compact_revision, sql.SCHEMA_VERSION, meta.cluster_id, meta.member_id),
            )


class _PostgresImport(_ServerImport):
    """History through binary COPY: 56k rows/s where `unnest` arrays gave 27k (docs/performance.md)."""

    async def write_log(self, rows: list[LogRow]) -> None:
        backend: Any = self._server
        pool = backend._pool
        if pool is None:
            raise BackendUnavailable("the PostgreSQL backend is closed")
        with backend._errors():
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(
                    "kv_log", records=core.log_tuples(rows), columns=sql.KV_LOG.columns
                )


def open_import(backend: Backend) -> StoreImport:
    """A writer of copies into `backend`, which must have been created with `allow_incomplete_copy`
    set and started (see `prepare_import`)."""
    if isinstance(backend, SQLiteBackend):
        return _SQLiteImport(backend)
    if isinstance(backend, ServerBackend):
        from kinepy.backends.sql.postgres import PostgresBackend

        return _PostgresImport(backend) if isinstance(backend, PostgresBackend) else _ServerImport(backend)
    raise BackendError(f"cannot copy into {type(backend).__name__}")


def allow_incomplete_copy(backend: Backend) -> None:
    """Let `backend.start()` open a database that holds an incomplete copy (to resume it)."""
    if isinstance(backend, SQLiteBackend | ServerBackend):
        backend.allow_incomplete_copy = True


async def snapshot_to_sqlite(backend: ServerBackend, path: str, *, batch_rows: int = 5000) -> None:
    """Write the store of the started server `backend` at one revision into a new SQLite file at
    `path`: the same file `kinepy backup` writes (etcd's Maintenance.Snapshot on PostgreSQL/MySQL)."""
    export = _ServerExport(backend, backend.name, connected=True)
    target = SQLiteBackend(path, read_threads=1)
    target.allow_incomplete_copy = True
    writer = _SQLiteImport(target)
    try:
        meta, _ = await export.open(current_only=False)
        await target.start()
        await writer.begin(meta)
        async for rows in export.log(batch_rows=batch_rows):
            await writer.write_log(rows)
        await writer.finish(meta, await export.leases())
    finally:
        try:
            await export.aclose()
        finally:
            await writer.aclose()
