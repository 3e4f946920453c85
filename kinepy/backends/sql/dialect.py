"""What PostgreSQL and MySQL/MariaDB share: statement conversion and the storage logic above a session.

`statements.py` writes SQL once, with `?` placeholders, for SQLite. A server database needs three
rewrites, each done once per distinct statement text (cached), never per call:

- placeholders: `$1, $2, …` for asyncpg, `%s` for aiomysql (whose own `%` must then be doubled);
- `x''` (an empty BLOB in SQLite and MySQL) is a *bit string* in PostgreSQL: it becomes `''::bytea`;
- `key` is a reserved word in MySQL: it becomes `` `key` ``.

`ServerBackend` holds the logic both server backends run (reads at a revision, the write transaction,
compaction, hashing); a subclass supplies connections, transactions and a `Session` that talks its
driver, including the set-based statements each database does best (`= ANY($1)` arrays and
`unnest` on PostgreSQL, `IN (…)` lists and multi-row `INSERT`/`REPLACE` on MySQL).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import random
import re
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from kinepy.backends.base import BackendStatus, Evaluate, RangeRows, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql import statements as sql
from kinepy.errors import BackendError, CompactedError
from kinepy.types import Event, EventType, KeyRange, KeyValue, Lease

log = logging.getLogger(__name__)

Row = Sequence[Any]

# Statements of our own (the shared ones live in statements.py, which SQLite uses unchanged).
SELECT_META_FOR_UPDATE = sql.SELECT_META + " FOR UPDATE"
SELECT_META_IDS = "SELECT schema_version, cluster_id, member_id FROM meta WHERE id = 1"
INSERT_META = (
    "INSERT INTO meta (id, revision, compact_revision, schema_version, cluster_id, member_id) "
    "VALUES (1, 1, -1, ?, ?, ?)"
)
LEASE_COLUMNS = "id, ttl, expires_at"
SELECT_LEASE = "SELECT id, ttl, expires_at FROM leases WHERE id = ?"
SELECT_EXPIRED_LEASES = (
    "SELECT id, ttl, expires_at FROM leases WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
)
LOG_COLUMNS = ("revision", "sub", "key", "create_revision", "version", "lease", "value", "tombstone")
CURRENT_COLUMNS = ("key", "create_revision", "mod_revision", "version", "lease", "value")
LEASE_TABLE_COLUMNS = ("id", "ttl", "expires_at")
TABLES = ("meta", "kv_log", "kv_current", "leases")

# Compaction: kv_log rows superseded by a newer row of the same key written in (after, upto]. SQLite
# deletes by rowid; MySQL cannot name the DELETE target in a subquery (error 1093), so each server
# dialect joins the table to itself instead.
COMPACT_SUPERSEDED_POSTGRES = (
    "DELETE FROM kv_log o USING kv_log n WHERE o.key = n.key AND o.revision < n.revision "
    "AND n.revision > ? AND n.revision <= ?"
)
COMPACT_SUPERSEDED_MYSQL = (
    "DELETE o FROM kv_log o JOIN kv_log n ON o.key = n.key AND o.revision < n.revision "
    "WHERE n.revision > ? AND n.revision <= ?"
)
COMPACT_TOMBSTONES = (
    "DELETE FROM kv_log WHERE revision > ? AND revision <= ? AND tombstone = 1 AND revision < ?"
)

# Rows per IN (…) list or per unnest() array statement, and bytes of values per statement.
IN_CHUNK = 500
BATCH_BYTES = 32 * 1024 * 1024

_PLACEHOLDER = re.compile(r"\?")
_EMPTY_BLOB = re.compile(r"\bx''")
_KEY_IDENTIFIER = re.compile(r"(?<![\w`])key(?![\w`])")


@functools.lru_cache(maxsize=4096)
def numbered(statement: str) -> str:
    """`statement` for asyncpg: `?` → `$1, $2, …`, `x''` → `''::bytea`."""
    counter = iter(range(1, 10_000))
    text = _EMPTY_BLOB.sub("''::bytea", statement)
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", text)


def quote_key(statement: str) -> str:
    """`statement` for MySQL: the column `key` (a reserved word there) → `` `key` ``."""
    return _KEY_IDENTIFIER.sub("`key`", statement)


@functools.lru_cache(maxsize=4096)
def pyformat(statement: str) -> str:
    """`statement` for MySQL's `%`-formatting: `%` → `%%`, `?` → `%s`, `key` → `` `key` ``."""
    return quote_key(statement.replace("%", "%%").replace("?", "%s"))


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def byte_batches(rows: list[tuple[Any, ...]], limit: int = BATCH_BYTES) -> list[list[tuple[Any, ...]]]:
    """`rows` split so that no statement carries much more than `limit` bytes (a few 1.5 MiB values
    are fine; a thousand of them must not become one 1.5 GiB statement)."""
    batches: list[list[tuple[Any, ...]]] = []
    current: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        weight = 64 + sum(len(v) for v in row if isinstance(v, bytes))
        if current and size + weight > limit:
            batches.append(current)
            current, size = [], 0
        current.append(row)
        size += weight
    if current:
        batches.append(current)
    return batches


def unresolvable(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the host name does not exist: a configuration error,
    not worth retrying (a temporary resolver failure, EAI_AGAIN, is retried)."""
    while exc is not None:
        if isinstance(exc, socket.gaierror):
            return exc.errno != socket.EAI_AGAIN
        exc = exc.__cause__
    return False


def misconfigured(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) says the connection settings are wrong, which waiting cannot
    change: TLS refused by the server or failing (an untrusted certificate, a host name it does not
    match), a TLS file that cannot be read, an option the driver rejects."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError | ValueError):
            return True
        if isinstance(exc, OSError) and exc.filename is not None:
            return True  # a file named in the settings (sslrootcert, ssl-ca, ...), not the network
        if "rejected SSL upgrade" in str(exc):
            return True  # asyncpg: sslmode asks for TLS, the server does not offer it
        exc = exc.__cause__
    return False


def kv_of(row: Row) -> KeyValue:
    """A `KeyValue` from `key, create_revision, mod_revision, version, lease, value`."""
    return KeyValue(bytes(row[0]), row[1], row[2], row[3], bytes(row[5]), row[4])


def event_of(row: Row) -> Event:
    """An `Event` from a `select_events` row (with the previous row's columns when asked)."""
    revision, _sub, key, create_revision, version, lease, value, tombstone = tuple(row[:8])
    key = bytes(key)
    prev = None
    if len(row) > 8 and row[8] is not None and not row[13]:
        prev = KeyValue(key, row[9], row[8], row[10], bytes(row[12]), row[11])
    if tombstone:
        return Event(EventType.DELETE, KeyValue(key, 0, revision, 0, b"", 0), prev)
    return Event(EventType.PUT, KeyValue(key, create_revision, revision, version, bytes(value), lease), prev)


def _by_key(kv: KeyValue) -> bytes:
    return kv.key


def lease_of(row: Row) -> Lease:
    return Lease(int(row[0]), int(row[1]), float(row[2]))


def _at_revision_parts(
    key_range: KeyRange, revision: int, cols_log: str, cols_cur: str, *, limit: int = 0
) -> tuple[str, list[object]]:
    """The keys of `key_range` as they were at `revision` (unordered); with `limit`, enough of them
    for the first `limit` in key order.

    Keys not changed since `revision` come from kv_current: with a limit, only the first `limit` in
    key order (an index range scan that stops early; neither database pushes an outer LIMIT into a
    UNION, and MariaDB would copy the whole range into a temporary table). For the keys changed
    since (found by the primary key, `revision > R`), first the newest revision at or below R (one
    backward step in the `(key, revision)` index), then that one row by both columns; a tombstone
    means the key was absent. statements.py's SQLite form filters every history row of a changed key
    with a correlated subquery, and MariaDB plans its `IN (…)` as a scan of the whole log: the cost
    must follow the page and the changes since R, not the history.
    """
    cond_cur, p_cur = sql.range_condition(key_range, "key")
    cond_chg, p_chg = sql.range_condition(key_range, "c.key")
    current = f"SELECT {cols_cur} FROM kv_current WHERE {cond_cur} AND mod_revision <= ?"
    args: list[object] = [*p_cur, revision]
    if limit > 0:
        current = f"({current} ORDER BY key LIMIT ?)"
        args.append(limit)
    stmt = (
        f"{current} UNION ALL "
        f"(SELECT {cols_log} FROM (SELECT ch.key, "
        "(SELECT max(m.revision) FROM kv_log m WHERE m.key = ch.key AND m.revision <= ?) AS revision "
        f"FROM (SELECT DISTINCT c.key FROM kv_log c WHERE c.revision > ? AND {cond_chg}) ch) k "
        "JOIN kv_log l ON l.key = k.key AND l.revision = k.revision WHERE l.tombstone = 0)"
    )
    return stmt, [*args, revision, revision, *p_chg]


_LOG_COLS = "l.key, l.create_revision, l.revision, l.version, l.lease, l.value"
_LOG_COLS_KEYS_ONLY = "l.key, l.create_revision, l.revision, l.version, l.lease, x''"


def select_at_revision(
    key_range: KeyRange, revision: int, *, keys_only: bool, limit: int
) -> tuple[str, list[object]]:
    """Rows of `key_range` at `revision`, in key order (at most `limit`, 0: all)."""
    cols_cur = sql.KV_COLUMNS_KEYS_ONLY if keys_only else sql.KV_COLUMNS
    cols_log = _LOG_COLS_KEYS_ONLY if keys_only else _LOG_COLS
    inner, args = _at_revision_parts(key_range, revision, cols_log, cols_cur, limit=limit)
    stmt = f"SELECT * FROM ({inner}) AS r ORDER BY 1"
    if limit > 0:
        stmt += " LIMIT ?"
        args.append(limit)
    return stmt, args


def count_at_revision(key_range: KeyRange, revision: int) -> tuple[str, list[object]]:
    inner, args = _at_revision_parts(key_range, revision, "l.key", "key")
    return f"SELECT count(*) FROM ({inner}) AS r", args


def range_statement(
    key_range: KeyRange,
    revision: int,
    *,
    limit: int,
    keys_only: bool,
    count_only: bool,
    count: bool = True,
) -> tuple[str, list[object]]:
    """`meta.revision, meta.compact_revision, key, create_revision, mod_revision, version, lease,
    value[, count]` for a Range: one row per key (one row of NULL columns when none), *unordered*
    (sorting a page in Python is cheaper than MariaDB's temporary table for an outer ORDER BY).
    With `count_only`: `meta.revision, meta.compact_revision, count`.

    The count comes along when a limit may cut the rows short (and `count` asks for it). A read
    at a revision uses the history query even when that revision turns out to be the current one
    (the caller only learns the current revision from this very statement); a revision above the
    current one or below the compaction point reads rows that the caller then drops.

    (`count(*) OVER ()` on the page query instead of a second, narrow count was measured slower
    when few keys changed since the revision, the usual case: 118 ms against 58 ms for a 500-key
    page of 100k keys on PostgreSQL, as every value goes through the window aggregate.)
    """
    meta = "SELECT m.revision, m.compact_revision"
    if revision > 0:
        count_stmt, count_args = count_at_revision(key_range, revision)
    else:
        count_stmt, count_args = sql.count_current(key_range)
    if count_only:
        return f"{meta}, ({count_stmt}) FROM meta m WHERE m.id = 1", list(count_args)
    if revision > 0:
        rows_stmt, args = select_at_revision(key_range, revision, keys_only=keys_only, limit=limit)
    else:
        rows_stmt, args = sql.select_current(key_range, keys_only=keys_only, limit=limit)
    select = f"{meta}, d.*"
    if limit > 0 and count:
        select += f", ({count_stmt})"
        args = [*count_args, *args]
    return f"{select} FROM meta m LEFT JOIN ({rows_stmt}) d ON 1 = 1 WHERE m.id = 1", args


class Session(abc.ABC):
    """One connection inside one transaction (or none), speaking `?`-style SQL."""

    @abc.abstractmethod
    async def fetch(self, statement: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row of `statement`."""

    async def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetch(statement, args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def execute(self, statement: str, args: Sequence[Any] = ()) -> int:
        """Run `statement`; the number of rows it changed."""

    @abc.abstractmethod
    async def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]:
        """Rows of `statement`, whose `{in}` restricts a column to `values` (of SQL type `kind`:
        `bytea` or `bigint`), in as few statements as the dialect allows."""

    @abc.abstractmethod
    async def execute_in(self, statement: str, values: Sequence[Any], kind: str) -> int:
        """Like `fetch_in`, for a DELETE; the number of rows deleted."""

    @abc.abstractmethod
    async def insert(
        self,
        table: str,
        columns: Sequence[str],
        kinds: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        upsert: str,
    ) -> None:
        """Insert `rows` set-based; on a conflict of the primary key `upsert` (if not empty),
        replace the other columns."""

    @abc.abstractmethod
    def stream(self, statement: str, args: Sequence[Any], *, batch: int = 1000) -> AsyncIterator[list[Row]]:
        """The rows of `statement` in batches, without holding them all (inside a transaction)."""


class ServerBackend(abc.ABC):
    """The storage model (kv_log, kv_current, meta, leases) on a database server.

    Subclasses provide `_session(kind)`: an async context manager yielding a `Session` in a
    transaction of the given kind: "read" (a consistent snapshot, read only), "write" (read
    committed; `write` locks the meta row first, so writers serialise across processes and every
    statement after the lock sees every earlier commit) or "none" (autocommit).
    """

    name = "SQL"
    shared = True
    """Other kinepy processes may write to the same database."""
    max_key_bytes = 0
    """Longest key the key indexes accept; longer keys are refused before any statement runs."""

    cluster_id: int
    member_id: int
    schema_version: int = 0
    allow_incomplete_copy = False
    """Start on a database holding an incomplete copy (only the copy itself does: bulk.py)."""

    @abc.abstractmethod
    def _session(self, kind: str) -> AbstractAsyncContextManager[Session]: ...

    # -- schema --------------------------------------------------------------------------------

    async def _init_meta(self, session: Session) -> None:
        """Create the meta row, or check the schema version of an existing one (in the schema lock)."""
        row = await session.fetchone(SELECT_META_IDS)
        if row is None:
            cluster_id = random.getrandbits(63) or 1
            member_id = random.getrandbits(63) or 1
            await session.execute(INSERT_META, (sql.SCHEMA_VERSION, cluster_id, member_id))
            version = sql.SCHEMA_VERSION
        else:
            version, cluster_id, member_id = (int(v) for v in row)
            if version == sql.INCOMPLETE_COPY and not self.allow_incomplete_copy:
                raise BackendError(sql.incomplete_copy_error(f"{self.name} database"))
            if version > sql.SCHEMA_VERSION:
                raise BackendError(
                    f"database schema version {version} is newer than this kinepy supports "
                    f"({sql.SCHEMA_VERSION}); upgrade kinepy"
                )
            # Migrations from older schema versions go here, one step per version.
        self.cluster_id, self.member_id, self.schema_version = cluster_id, member_id, version

    # -- reads ---------------------------------------------------------------------------------

    async def revisions(self) -> tuple[int, int]:
        async with self._session("none") as session:
            return await self._meta(session, sql.SELECT_META)

    async def wait_for_change(self, max_wait: float) -> None:
        """Polling: sleep `max_wait` (PostgreSQL overrides this with LISTEN/NOTIFY)."""
        await asyncio.sleep(max_wait)

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
        """One statement, one round trip: the meta row joined to the rows (and the count), so the
        revisions and the rows come from one snapshot without a transaction around them."""
        stmt, args = range_statement(
            key_range, revision, limit=limit, keys_only=keys_only, count_only=count_only, count=count
        )
        async with self._session("none") as session:
            rows = await session.fetch(stmt, args)
        if not rows:
            raise BackendError("the meta row is missing: this database was not created by kinepy")
        current, compact = int(rows[0][0]), int(rows[0][1])
        if revision > current or (revision > 0 and revision < compact):
            return RangeRows(current, compact, [], 0)
        if count_only:
            return RangeRows(current, compact, [], int(rows[0][2]))
        kvs = [kv_of(row[2:8]) for row in rows if row[2] is not None]
        kvs.sort(key=_by_key)
        if count and limit > 0 and len(kvs) >= limit:
            return RangeRows(current, compact, kvs, int(rows[0][8]))
        return RangeRows(current, compact, kvs, len(kvs))

    @staticmethod
    async def _meta(session: Session, statement: str) -> tuple[int, int]:
        row = await session.fetchone(statement)
        if row is None:
            raise BackendError("the meta row is missing: this database was not created by kinepy")
        return int(row[0]), int(row[1])

    @staticmethod
    async def _range(
        session: Session,
        key_range: KeyRange,
        revision: int,
        current: int,
        compact: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
    ) -> tuple[list[KeyValue], int]:
        """At most `limit` rows (0: all) of `key_range` at `revision` (<= 0: latest), in key order,
        and how many keys the range holds; within the caller's read transaction."""
        latest = revision <= 0 or revision >= current
        if revision > current or (revision > 0 and revision < compact):
            return [], 0
        if count_only:
            stmt, args = sql.count_current(key_range) if latest else count_at_revision(key_range, revision)
            row = await session.fetchone(stmt, args)
            return [], int(row[0]) if row else 0
        if latest:
            stmt, args = sql.select_current(key_range, keys_only=keys_only, limit=limit)
        else:
            stmt, args = select_at_revision(key_range, revision, keys_only=keys_only, limit=limit)
        kvs = [kv_of(row) for row in await session.fetch(stmt, args)]
        if limit <= 0 or len(kvs) < limit:
            return kvs, len(kvs)
        stmt, args = sql.count_current(key_range) if latest else count_at_revision(key_range, revision)
        row = await session.fetchone(stmt, args)
        return kvs, int(row[0]) if row else 0

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        """The events of `(after, upto]`; `CompactedError` if revision `after + 1` is compacted.

        Another process may compact the shared database, and delete the history physically, before
        this one's follower learns of it: the events read would then silently lack the deleted rows.
        So the compaction revision is read *after* the events. Physical deletion starts only once
        the logical compaction has committed, so if the meta row still allows `after + 1` after the
        read, nothing the read needed was deleted before it.
        """
        stmt, args = sql.select_events(key_range, after, upto, prev_kv=prev_kv)
        if limit > 0:
            stmt, args = f"{stmt} LIMIT ?", [*args, limit]
        async with self._session("none") as session:
            events = [event_of(row) for row in await session.fetch(stmt, args)]
            _, compact = await self._meta(session, sql.SELECT_META)
        if after + 1 < compact:
            raise CompactedError()
        return events

    async def load_leases(self) -> list[Lease]:
        async with self._session("none") as session:
            return [lease_of(row) for row in await session.fetch(sql.SELECT_LEASES)]

    async def get_lease(self, lease_id: int) -> Lease | None:
        async with self._session("none") as session:
            row = await session.fetchone(SELECT_LEASE, (lease_id,))
        return None if row is None else lease_of(row)

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        async with self._session("none") as session:
            return [lease_of(row) for row in await session.fetch(SELECT_EXPIRED_LEASES, (now, limit))]

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        async with self._session("none") as session:
            return [bytes(row[0]) for row in await session.fetch(sql.SELECT_LEASE_KEYS, (lease_id,))]

    # -- writes --------------------------------------------------------------------------------

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        async with self._session("write") as session:
            current, compact = await self._meta(session, SELECT_META_FOR_UPDATE)
            rows: dict[bytes, KeyValue] = {}
            if read_set.keys:
                stmt = f"SELECT {sql.KV_COLUMNS} FROM kv_current WHERE key {{in}}"
                for row in await session.fetch_in(stmt, list(read_set.keys), "bytea"):
                    kv = kv_of(row)
                    rows[kv.key] = kv
            for key_range in read_set.ranges:
                stmt, args = sql.select_current(key_range, keys_only=False, limit=0)
                for row in await session.fetch(stmt, args):
                    kv = kv_of(row)
                    rows[kv.key] = kv
            leases: dict[int, Lease] = {}
            lease_ids = list(read_set.leases | read_set.lease_keys)
            if lease_ids:
                stmt = f"SELECT {LEASE_COLUMNS} FROM leases WHERE id {{in}}"
                for row in await session.fetch_in(stmt, lease_ids, "bigint"):
                    lease = lease_of(row)
                    leases[lease.id] = lease
            if read_set.lease_keys:
                stmt = f"SELECT {sql.KV_COLUMNS} FROM kv_current WHERE lease {{in}} AND lease <> 0"
                for row in await session.fetch_in(stmt, list(read_set.lease_keys), "bigint"):
                    kv = kv_of(row)
                    rows[kv.key] = kv
            historic: dict[tuple[KeyRange, int], list[KeyValue]] = {}
            for key_range, rev in read_set.historic:
                if compact <= rev <= current:
                    kvs, _ = await self._range(session, key_range, rev, current, compact, 0, False, False)
                    historic[(key_range, rev)] = kvs
            write_set = evaluate(Snapshot(current, compact, rows, leases, historic))
            if write_set is not None:
                self._check_keys([key for key, kv in write_set.current.items() if kv is not None])
                await self._apply(session, write_set, compact)
            return write_set

    def _check_keys(self, keys: list[bytes]) -> None:
        """Refuse (before any row is written; the transaction rolls back) a key the indexes cannot hold."""
        limit = self.max_key_bytes
        if limit and keys:
            longest = max(len(key) for key in keys)
            if longest > limit:
                raise BackendError(
                    f"a key of {longest} bytes is longer than the {self.name} backend's limit of {limit}"
                )

    @staticmethod
    async def _apply(session: Session, write_set: WriteSet, compact: int) -> None:
        if write_set.log:
            await session.insert(
                "kv_log",
                LOG_COLUMNS,
                ("bigint", "integer", "bytea", "bigint", "bigint", "bigint", "bytea", "smallint"),
                [
                    (
                        r.revision,
                        r.sub,
                        r.key,
                        r.create_revision,
                        r.version,
                        r.lease,
                        r.value,
                        int(r.tombstone),
                    )
                    for r in write_set.log
                ],
                upsert="",
            )
        upserts = []
        deletes = []
        for key, kv in write_set.current.items():
            if kv is None:
                deletes.append(key)
            else:
                upserts.append((kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value))
        if upserts:
            await session.insert(
                "kv_current",
                CURRENT_COLUMNS,
                ("bytea", "bigint", "bigint", "bigint", "bigint", "bytea"),
                upserts,
                upsert="key",
            )
        if deletes:
            await session.execute_in("DELETE FROM kv_current WHERE key {in}", deletes, "bytea")
        lease_upserts = [
            (lease.id, lease.ttl, lease.expires_at) for lease in write_set.leases.values() if lease
        ]
        if lease_upserts:
            await session.insert(
                "leases",
                LEASE_TABLE_COLUMNS,
                ("bigint", "bigint", "double precision"),
                lease_upserts,
                upsert="id",
            )
        lease_deletes = [lease_id for lease_id, lease in write_set.leases.items() if lease is None]
        if lease_deletes:
            await session.execute_in("DELETE FROM leases WHERE id {in}", lease_deletes, "bigint")
        new_compact = compact if write_set.compact_revision is None else write_set.compact_revision
        await session.execute(sql.UPDATE_META, (write_set.revision, new_compact))

    # -- compaction and maintenance ------------------------------------------------------------

    compact_superseded = COMPACT_SUPERSEDED_POSTGRES

    async def _lock_compaction(self, session: Session) -> None:
        """Hold the database-wide compaction lock until `session`'s transaction ends (MySQL, whose
        lock belongs to a connection, takes it around `compact_batch` instead)."""
        return None

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        # No meta lock: the rows deleted are history at or below the compaction revision, which
        # no writer touches; writers only add rows above the current revision. Batches of several
        # processes (a restart's catch-up while another compacts) take turns on a lock of their own
        # instead of deleting the same rows at once.
        async with self._session("write") as session:
            await self._lock_compaction(session)
            row = await session.fetchone(sql.COMPACT_WINDOW_END, (after, upto, max_rows))
            upto = sql.compact_window_end(after, upto, None if row is None else int(row[0]))
            deleted = await session.execute(self.compact_superseded, (after, upto))
            deleted += await session.execute(COMPACT_TOMBSTONES, (after, upto, compact_revision))
            return deleted, upto

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        async with self._session("read") as session:
            current, compact = await self._meta(session, sql.SELECT_META)
            upto = current if revision <= 0 else revision
            crc = 0
            pack = struct.Struct(">qqqqqB").pack
            async for rows in session.stream(sql.SELECT_LOG_FOR_HASH, (upto,)):
                for revision_, sub, key, create, version, lease, value, tombstone in rows:
                    head = pack(revision_, sub, create, version, lease, tombstone)
                    crc = zlib.crc32(bytes(value), zlib.crc32(bytes(key), zlib.crc32(head, crc)))
            return crc, compact

    @abc.abstractmethod
    async def _sizes(self, session: Session) -> tuple[int, int]:
        """(size on disk, size in use) of kinepy's tables, in bytes."""

    async def status(self) -> BackendStatus:
        async with self._session("none") as session:
            current, compact = await self._meta(session, sql.SELECT_META)
            size, in_use = await self._sizes(session)
        return BackendStatus(current, compact, size, in_use)

    async def snapshot(self, path: str) -> None:
        """A SQLite file holding the store at one revision (what `kinepy backup` writes)."""
        from kinepy.backends.sql.bulk import snapshot_to_sqlite  # it builds on this module

        await snapshot_to_sqlite(self, path)

    @abc.abstractmethod
    async def _defragment(self) -> None: ...

    async def defragment(self) -> None:
        started = time.monotonic()
        await self._defragment()
        log.info("defragmented the %s tables in %.3fs", self.name, time.monotonic() - started)
