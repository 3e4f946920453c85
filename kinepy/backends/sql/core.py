"""The SQL core every dialect runs, written once: row decoders, a range read at a revision, the write
transaction (read set, evaluate, rows written), a compaction batch and the history hash.

The logic that issues several statements is written as *steps*: a generator that yields a `Request`
(one statement for a driver to run) and is sent back its result. SQLite runs steps on a database
thread over a blocking connection (`run`), PostgreSQL and MySQL on the event loop over an async
session (`run_async`): one piece of logic, with no event loop in SQLite's threads and no thread hop
per statement. Each driver runs a request the way its database does best (`executemany` on SQLite,
`unnest` arrays on PostgreSQL, multi-row `REPLACE` on MySQL).
"""

from __future__ import annotations

import abc
import struct
import zlib
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from kinepy.backends.base import Evaluate, LogRow, RangeRows, ReadSet, Snapshot, WriteSet
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.statements import Statements, Table
from kinepy.errors import BackendError
from kinepy.types import Event, EventType, KeyRange, KeyValue, Lease, RangeQuery

T = TypeVar("T")
Row = Sequence[Any]


# One statement for a driver: the name of the session method that runs it, and its arguments (a plain
# tuple: a Range of one key runs a few of them on the event loop, and a tuple costs least to build).
Request = tuple[str, tuple[Any, ...]]
Steps = Generator[Request, Any, T]


def fetch(statement: str, args: Sequence[Any] = ()) -> Request:
    """Every row of `statement`."""
    return "fetch", (statement, args)


def fetchone(statement: str, args: Sequence[Any] = ()) -> Request:
    """The first row of `statement`, or None."""
    return "fetchone", (statement, args)


def fetch_in(statement: str, values: Sequence[Any], kind: str) -> Request:
    """Rows of `statement`, whose `{in}` restricts a column to `values` (of SQL type `kind`)."""
    return "fetch_in", (statement, values, kind)


def execute(statement: str, args: Sequence[Any] = ()) -> Request:
    """Run `statement`; the number of rows it changed."""
    return "execute", (statement, args)


def execute_in(statement: str, values: Sequence[Any], kind: str) -> Request:
    """Like `fetch_in`, for a DELETE; the number of rows deleted."""
    return "execute_in", (statement, values, kind)


def insert(table: Table, rows: list[tuple[Any, ...]], *, upsert: bool) -> Request:
    """Insert `rows` set-based; with `upsert`, a row whose key exists replaces it."""
    return "insert", (table, rows, upsert)


class BlockingSession(Protocol):
    """A connection that runs requests and blocks (SQLite, on a database thread)."""

    def fetch(self, statement: str, args: Sequence[Any] = ()) -> Iterable[Row]: ...
    def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None: ...
    def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]: ...
    def execute(self, statement: str, args: Sequence[Any] = ()) -> int: ...
    def execute_in(self, statement: str, values: Sequence[Any], kind: str) -> int: ...
    def insert(self, table: Table, rows: list[tuple[Any, ...]], upsert: bool) -> None: ...
    def apply(self, rows: WriteRows) -> None: ...


class AsyncSession(abc.ABC):
    """A connection that runs requests on the event loop (PostgreSQL, MySQL), inside one transaction
    (or none), speaking `?`-style SQL."""

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
    async def insert(self, table: Table, rows: list[tuple[Any, ...]], upsert: bool) -> None:
        """Insert `rows` set-based; with `upsert`, a row whose key exists replaces it."""

    async def apply(self, rows: WriteRows) -> None:
        """Write `rows` (`apply_requests`, one statement at a time unless the dialect does better)."""
        for method, args in apply_requests(rows):
            await getattr(self, method)(*args)

    @abc.abstractmethod
    def stream(self, statement: str, args: Sequence[Any], *, batch: int = 1000) -> AsyncIterator[list[Row]]:
        """The rows of `statement` in batches, without holding them all (inside a transaction)."""


class _Driven(Generic[T]):
    """`steps` driven from outside: iterating gives each request, `reply` is what goes back for it,
    `result` is what the steps return once iteration ends (`run` and `run_async` share this)."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.reply: Any = None
        self.result: T = cast(T, None)

    def __iter__(self) -> Iterator[Request]:
        try:
            while True:
                yield self._steps.send(self.reply)
        except StopIteration as stop:
            self.result = stop.value


def run(steps: Steps[T], session: BlockingSession) -> T:
    """Run `steps` to the end on a blocking session; what they return."""
    driven = _Driven(steps)
    for method, args in driven:
        driven.reply = getattr(session, method)(*args)
    return driven.result


async def run_async(steps: Steps[T], session: AsyncSession) -> T:
    """Run `steps` to the end on an async session; what they return."""
    driven = _Driven(steps)
    for method, args in driven:
        driven.reply = await getattr(session, method)(*args)
    return driven.result


# -- decoders ------------------------------------------------------------------------------------


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


def lease_of(row: Row) -> Lease:
    """A `Lease` from `id, ttl, expires_at`."""
    return Lease(int(row[0]), int(row[1]), float(row[2]))


def meta_of(row: Row | None) -> tuple[int, int]:
    """`(revision, compact_revision)` from the meta row."""
    if row is None:
        raise BackendError("the meta row is missing: this database was not created by kinepy")
    return int(row[0]), int(row[1])


_HEAD = struct.Struct(">qqqqqB").pack


def hash_rows(rows: Iterable[Row], crc: int) -> int:
    """`crc` continued over `SELECT_LOG_FOR_HASH` rows."""
    for revision, sub, key, create, version, lease, value, tombstone in rows:
        head = _HEAD(revision, sub, create, version, lease, tombstone)
        crc = zlib.crc32(bytes(value), zlib.crc32(bytes(key), zlib.crc32(head, crc)))
    return crc


# -- reads ---------------------------------------------------------------------------------------


def range_steps(
    statements: Statements, query: RangeQuery, meta: tuple[int, int] | None = None
) -> Steps[RangeRows]:
    """`query` (see `RangeQuery`), within the caller's read transaction, whose `(revision,
    compact_revision)` is `meta` (None: read here first; one generator either way, as a Range of
    one key runs this on the event loop). A revision above the current one or below the compaction
    revision reads nothing."""
    key_range, revision, limit = query.key_range, query.revision, query.limit
    current, compact = meta_of((yield fetchone(sql.SELECT_META))) if meta is None else meta
    latest = revision <= 0 or revision >= current
    if revision > current or (revision > 0 and revision < compact):
        return RangeRows(current, compact, [], 0)
    if query.count_only:
        stmt, args = (
            sql.count_current(key_range) if latest else statements.count_at_revision(key_range, revision)
        )
        return RangeRows(current, compact, [], int((yield fetchone(stmt, args))[0]))
    if latest:
        stmt, args = sql.select_current(key_range, keys_only=query.keys_only, limit=limit)
    else:
        stmt, args = sql.select_at_revision(
            statements, key_range, revision, keys_only=query.keys_only, limit=limit
        )
    kvs = [kv_of(row) for row in (yield fetch(stmt, args))]
    if limit <= 0 or len(kvs) < limit or not query.count:
        return RangeRows(current, compact, kvs, len(kvs))
    stmt, args = sql.count_current(key_range) if latest else statements.count_at_revision(key_range, revision)
    return RangeRows(current, compact, kvs, int((yield fetchone(stmt, args))[0]))


def range_statement(statements: Statements, query: RangeQuery) -> tuple[str, list[object]]:
    """One statement for `query`, decoded by `range_rows`: `meta.revision, meta.compact_revision,
    key, create_revision, mod_revision, version, lease, value[, count]`, one row per key (one row of
    NULL columns when none), *unordered* (sorting a page in Python is cheaper than MariaDB's
    temporary table for an outer ORDER BY). With `count_only`: `meta.revision,
    meta.compact_revision, count`. One statement reads one snapshot: no transaction is needed. A
    single key is read without its limit and count (`_statement_limit`): two primary-key lookups.

    The count comes along when a limit may cut the rows short (and `count` asks for it). A read
    at a revision uses the history query even when that revision turns out to be the current one
    (the caller only learns the current revision from this very statement); a revision above the
    current one or below the compaction point reads rows that the caller then drops.

    (`count(*) OVER ()` on the page query instead of a second, narrow count was measured slower
    when few keys changed since the revision, the usual case: 118 ms against 58 ms for a 500-key
    page of 100k keys on PostgreSQL, as every value goes through the window aggregate.)
    """
    key_range, revision = query.key_range, query.revision
    limit = _statement_limit(query)
    meta = "SELECT m.revision, m.compact_revision"
    counted = _counted(query)
    if counted:
        if revision > 0:
            count_stmt, count_args = statements.count_at_revision(key_range, revision)
        else:
            count_stmt, count_args = sql.count_current(key_range)
        if query.count_only:
            return f"{meta}, ({count_stmt}) FROM meta m WHERE m.id = 1", list(count_args)
    if revision > 0:
        rows_stmt, args = sql.select_at_revision(
            statements, key_range, revision, keys_only=query.keys_only, limit=limit
        )
    else:
        rows_stmt, args = sql.select_current(key_range, keys_only=query.keys_only, limit=limit)
    select = f"{meta}, d.*"
    if counted:
        select += f", ({count_stmt})"
        args = [*count_args, *args]
    return f"{select} FROM meta m LEFT JOIN ({rows_stmt}) d ON 1 = 1 WHERE m.id = 1", args


def _one_key(key_range: KeyRange) -> bool:
    return key_range.end is not None and key_range.end == key_range.start + b"\x00"


def _statement_limit(query: RangeQuery) -> int:
    """The LIMIT of `range_statement`'s rows: none for a single key, which has at most one row (a
    LIMIT there made MariaDB copy the row into a temporary table on every Get of Kubernetes, whose
    client asks for one key with `limit=1`)."""
    return 0 if _one_key(query.key_range) else query.limit


def _counted(query: RangeQuery) -> bool:
    """Whether `range_statement` reads a count: for `count_only`, or when its limit may cut the rows
    short and the caller does not know the count."""
    return query.count_only or (query.count and _statement_limit(query) > 0)


def _by_key(kv: KeyValue) -> bytes:
    return kv.key


def range_rows(query: RangeQuery, rows: Sequence[Row]) -> RangeRows:
    """The result of `range_statement(query)` from its rows."""
    current, compact = meta_of(rows[0] if rows else None)
    revision = query.revision
    if revision > current or (revision > 0 and revision < compact):
        return RangeRows(current, compact, [], 0)
    if query.count_only:
        return RangeRows(current, compact, [], int(rows[0][2]))
    kvs = [kv_of(row[2:8]) for row in rows if row[2] is not None]
    kvs.sort(key=_by_key)
    if _counted(query) and query.limit <= len(kvs):
        return RangeRows(current, compact, kvs, int(rows[0][8]))
    return RangeRows(current, compact, kvs, len(kvs))


# -- writes --------------------------------------------------------------------------------------


def write_steps(statements: Statements, read_set: ReadSet, evaluate: Evaluate) -> Steps[WriteSet | None]:
    """Inside the caller's write transaction: read `read_set`, call `evaluate` on it, write what it
    returns (the caller commits)."""
    current, compact = meta_of((yield fetchone(statements.select_meta_for_write)))
    rows: dict[bytes, KeyValue] = {}
    if read_set.keys:
        for row in (yield fetch_in(sql.SELECT_CURRENT_IN_KEYS, list(read_set.keys), "bytea")):
            kv = kv_of(row)
            rows[kv.key] = kv
    for key_range in read_set.ranges:
        stmt, args = sql.select_current(key_range, keys_only=False, limit=0)
        for row in (yield fetch(stmt, args)):
            kv = kv_of(row)
            rows[kv.key] = kv
    leases: dict[int, Lease] = {}
    lease_ids = list(read_set.leases | read_set.lease_keys)
    if lease_ids:
        for row in (yield fetch_in(sql.SELECT_LEASES_IN, lease_ids, "bigint")):
            lease = lease_of(row)
            leases[lease.id] = lease
    if read_set.lease_keys:
        for row in (yield fetch_in(sql.SELECT_CURRENT_IN_LEASES, list(read_set.lease_keys), "bigint")):
            kv = kv_of(row)
            rows[kv.key] = kv
    historic: dict[tuple[KeyRange, int], list[KeyValue]] = {}
    for key_range, rev in read_set.historic:
        if compact <= rev <= current:
            read = yield from range_steps(statements, RangeQuery(key_range, rev), meta=(current, compact))
            historic[(key_range, rev)] = read.kvs
    write_set = evaluate(Snapshot(current, compact, rows, leases, historic))
    if write_set is not None:
        yield from apply_steps(write_set, compact)
    return write_set


def log_tuples(rows: Iterable[LogRow]) -> list[tuple[Any, ...]]:
    """History rows as the columns of `KV_LOG`."""
    return [
        (r.revision, r.sub, r.key, r.create_revision, r.version, r.lease, r.value, int(r.tombstone))
        for r in rows
    ]


@dataclass(slots=True)
class WriteRows:
    """A write set as the rows it writes, in the columns of their tables."""

    log: list[tuple[Any, ...]]
    upserts: list[tuple[Any, ...]]  # kv_current rows
    deletes: list[bytes]  # kv_current keys
    lease_upserts: list[tuple[Any, ...]]
    lease_deletes: list[int]
    meta: tuple[int, int]  # (revision, compact_revision)


def meta_after(write_set: WriteSet, compact: int) -> tuple[int, int]:
    """(revision, compaction revision) of the meta row once `write_set` is written; `compact` is the
    compaction revision it leaves unchanged (if it does)."""
    return write_set.revision, compact if write_set.compact_revision is None else write_set.compact_revision


def write_rows(write_set: WriteSet, compact: int) -> WriteRows:
    """`write_set`'s rows; `compact` is the compaction revision it leaves unchanged (if it does)."""
    upserts = []
    deletes = []
    for key, kv in write_set.current.items():
        if kv is None:
            deletes.append(key)
        else:
            upserts.append((kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value))
    return WriteRows(
        log_tuples(write_set.log),
        upserts,
        deletes,
        [(lease.id, lease.ttl, lease.expires_at) for lease in write_set.leases.values() if lease],
        [lease_id for lease_id, lease in write_set.leases.items() if lease is None],
        meta_after(write_set, compact),
    )


def apply_requests(rows: WriteRows) -> Iterator[Request]:
    """The statements that write `rows` one at a time: history rows, the current state of the keys
    and leases, the meta row (what a driver runs unless it writes them all in one statement)."""
    if rows.log:
        yield insert(sql.KV_LOG, rows.log, upsert=False)
    if rows.upserts:
        yield insert(sql.KV_CURRENT, rows.upserts, upsert=True)
    if rows.deletes:
        yield execute_in(sql.DELETE_CURRENT_IN, rows.deletes, "bytea")
    if rows.lease_upserts:
        yield insert(sql.LEASES, rows.lease_upserts, upsert=True)
    if rows.lease_deletes:
        yield execute_in(sql.DELETE_LEASES_IN, rows.lease_deletes, "bigint")
    yield execute(sql.UPDATE_META, rows.meta)


def apply_steps(write_set: WriteSet, compact: int) -> Steps[None]:
    """Write `write_set` (one `apply` request: the driver chooses how many statements)."""
    yield "apply", (write_rows(write_set, compact),)


def compact_steps(
    statements: Statements, compact_revision: int, after: int, upto: int, max_rows: int
) -> Steps[tuple[int, int]]:
    """Inside the caller's write transaction: delete the history that no read at or above
    `compact_revision` can see, driven by the rows in `(after, reached]`, where `reached <= upto`
    ends the window at about `max_rows` rows; returns (rows deleted, reached).

    The cost follows the changes in the window: every older row of a key written in it (it is
    superseded), and the window's tombstones below the compaction revision."""
    row = yield fetchone(sql.COMPACT_WINDOW_END, (after, upto, max_rows))
    upto = sql.compact_window_end(after, upto, None if row is None else int(row[0]))
    deleted = yield execute(statements.compact_superseded, (after, upto))
    deleted += yield execute(sql.COMPACT_TOMBSTONES, (after, upto, compact_revision))
    return deleted, upto
