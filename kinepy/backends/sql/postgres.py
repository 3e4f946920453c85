"""PostgreSQL backend on asyncpg: a connection pool, set-based statements, row locks for ordering.

Keys and values are `bytea`, so `ORDER BY key` and range conditions are bytewise whatever the
database's collation. A write batch locks the meta row before it writes any other row (most often
in one statement that writes only if nothing changed since what it was evaluated on; else in a READ
COMMITTED transaction that starts with `SELECT … FOR UPDATE`: `PostgresBackend.write`): writers
from any number of processes queue on that lock, so revisions commit in order. Reads run in a
REPEATABLE READ READ ONLY transaction, so the revision they report and the rows they return agree.

Other kinepy processes on the same database learn about commits from a trigger on the meta row
that NOTIFYs `kinepy_commit`; `wait_for_change` LISTENs on a connection of its own and registers it in
`kinepy_listeners`, and the trigger notifies only when a process other than the committing one is
registered (one kinepy alone on its database pays no NOTIFY; the workers of one server register as one
process). The workers of one
`kinepy --workers N` also tell each other of each commit with its events (`ChangePipes`), so that they
neither read back a commit told (its NOTIFY is passed over) nor lose their write caches to it.

asyncpg prepares each statement once per connection and reuses it. Bulk writes send whole columns as
arrays (`INSERT … SELECT * FROM unnest($1::bigint[], …)`): one statement, one round trip, one plan,
whatever the batch size.

Keys are limited to `MAX_KEY_BYTES`: a btree index entry must fit in a third of an 8 KiB page
(2704 bytes, measured: 2684 random bytes plus the revision in `kv_log (key, revision)`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Unpack, cast
from urllib.parse import urlencode

import asyncpg

from kinepy.backends.base import Commit, Evaluate, ReadSet, WriteSet
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.core import AsyncSession, Row, WriteRows, run_async, write_rows, write_steps
from kinepy.backends.sql.dialect import (
    ATTEMPT_TIMEOUT,
    BATCH_BYTES,
    ServerBackend,
    ServerOptions,
    byte_batches,
    misconfigured,
    numbered,
    server_statements,
    unresolvable,
)
from kinepy.backends.sql.statements import Table, on_conflict_update
from kinepy.backends.sql.write_cache import Remembered, WriteCache
from kinepy.errors import BackendError, BackendUnavailable
from kinepy.specs import PostgresSpec, bracket_host

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 2684
_CLOSE_TIMEOUT = 10.0
_SCHEMA_LOCK = 0x6B696E6570790001  # pg_advisory_xact_lock key: "kinepy" + 1
_COMPACT_LOCK = 0x6B696E6570790002  # the same, for physical compaction batches
_MAINTENANCE_DATABASES = ("postgres", "template1")
NOTIFY_CHANNEL = "kinepy_commit"
_INSTANCE_SETTING = "kinepy.instance"
"""A session setting of every pooled connection: the kinepy process it belongs to (`kinepy_listeners`)."""

# SQLSTATE classes and codes after which a retry may succeed: connection exceptions, insufficient
# resources, operator intervention (shutdown, cancel), transaction rollback (serialisation failure,
# deadlock), lock not available, read-only transaction (a standby after a failover).
_RETRYABLE_CLASSES = ("08", "53", "57", "40")
_RETRYABLE_CODES = ("55P03", "25006")

# Each dialect writes its own DDL (column types, key and index syntax), alike by design: kine too keeps
# one schema per driver.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision BIGINT NOT NULL,
        compact_revision BIGINT NOT NULL,
        schema_version INTEGER NOT NULL,
        cluster_id BIGINT NOT NULL,
        member_id BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS kv_log (
        revision BIGINT NOT NULL,
        sub INTEGER NOT NULL,
        key BYTEA NOT NULL,
        create_revision BIGINT NOT NULL,
        version BIGINT NOT NULL,
        lease BIGINT NOT NULL,
        value BYTEA NOT NULL,
        tombstone SMALLINT NOT NULL,
        CONSTRAINT kv_log_revision PRIMARY KEY (revision, sub)
    )""",
    "CREATE INDEX IF NOT EXISTS kv_log_key_revision ON kv_log (key, revision)",
    """CREATE TABLE IF NOT EXISTS kv_current (
        key BYTEA NOT NULL PRIMARY KEY,
        create_revision BIGINT NOT NULL,
        mod_revision BIGINT NOT NULL,
        version BIGINT NOT NULL,
        lease BIGINT NOT NULL,
        value BYTEA NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kv_current_lease ON kv_current (lease) WHERE lease <> 0",
    """CREATE TABLE IF NOT EXISTS leases (
        id BIGINT PRIMARY KEY,
        ttl BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS leases_expires_at ON leases (expires_at)",
    # The kinepy processes that LISTEN: a row per listening connection (`_register_listener`).
    """CREATE TABLE IF NOT EXISTS kinepy_listeners (
        pid INTEGER PRIMARY KEY,
        instance TEXT NOT NULL
    )""",
    # Every commit updates the meta row; the trigger tells the other kinepy processes (LISTEN) at
    # commit time, with no extra round trip for the writer, when there are any: a NOTIFY that only the
    # committing process's own listener would receive (and drop) costs PostgreSQL 50-90 µs a commit.
    # The trigger's query takes its snapshot after the UPDATE holds the meta row's lock
    # (`_register_listener` says why that is enough). A connection that did not say its instance
    # (`_INSTANCE_SETTING`) notifies whenever anybody listens.
    f"""CREATE OR REPLACE FUNCTION kinepy_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT FROM kinepy_listeners
                   WHERE instance IS DISTINCT FROM current_setting('{_INSTANCE_SETTING}', true)) THEN
            PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.revision::text);
        END IF;
        RETURN NULL;
    END $$""",
]
_NOTIFY_TRIGGER_EXISTS = (
    "SELECT 1 FROM pg_trigger WHERE tgname = 'meta_notify' AND tgrelid = 'meta'::regclass"
)
_CREATE_NOTIFY_TRIGGER = (
    "CREATE TRIGGER meta_notify AFTER UPDATE ON meta FOR EACH ROW EXECUTE FUNCTION kinepy_notify_commit()"
)

# The listener's registration (`_register_listener`) and its end.
_SET_INSTANCE = f"SELECT set_config('{_INSTANCE_SETTING}', $1, false)"
_DROP_GONE_LISTENERS = (
    "DELETE FROM kinepy_listeners l WHERE NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = l.pid)"
)
_LOCK_META_SHARED = "SELECT FROM meta WHERE id = 1 FOR SHARE"
_REGISTER_LISTENER = (
    "INSERT INTO kinepy_listeners (pid, instance) VALUES (pg_backend_pid(), $1) "
    "ON CONFLICT (pid) DO UPDATE SET instance = EXCLUDED.instance"
)
_UNREGISTER_LISTENER = "DELETE FROM kinepy_listeners WHERE pid = pg_backend_pid()"

_SIZES = (
    "SELECT pg_total_relation_size('kv_log') + pg_total_relation_size('kv_current') "
    "+ pg_total_relation_size('leases') + pg_total_relation_size('meta')"
)


# What a failover keeps: commits wait for a synchronous standby only when both say so.
_REPLICATION_SETTINGS = (
    "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')"
)
_COMMITS_WAIT_FOR_STANDBY = ("on", "remote_write", "remote_apply")


def _log_replication(standby_names: str, synchronous_commit: str) -> None:
    """Say at start what a promoted standby will hold (docs/databases.md, PostgreSQL failover)."""
    if standby_names and synchronous_commit in _COMMITS_WAIT_FOR_STANDBY:
        log.info(
            "PostgreSQL commits wait for a synchronous standby (synchronous_standby_names=%r, "
            "synchronous_commit=%s): a promoted synchronous standby holds every acknowledged write",
            standby_names,
            synchronous_commit,
        )
        return
    log.warning(
        "PostgreSQL commits do not wait for a standby (synchronous_standby_names=%r, synchronous_commit=%s): "
        "a standby promoted after the primary dies may lack the last acknowledged writes; kinepy then "
        "skips their revisions and cancels every watch as compacted",
        standby_names,
        synchronous_commit,
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rowcount(status: str) -> int:
    """Rows affected, from a command status such as `DELETE 3` or `INSERT 0 5`."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class NoPrimaryError(ConnectionError):
    """None of a multi-host endpoint's hosts is a writable primary right now (a failover under way)."""


def addresses(spec: PostgresSpec, hosts: str | None, ports: str | None) -> list[tuple[str, int | None]]:
    """The (host, port) pairs to try: the endpoint's, or libpq's `?host=h1,h2&port=p1,p2` lists
    (one port for every host, or one each)."""
    if hosts is None and ports is None:
        return list(spec.hosts)
    names = hosts.split(",") if hosts is not None else [host for host, _ in spec.hosts]
    numbers: list[int | None] = [int(p) if p else None for p in ports.split(",")] if ports else [spec.port]
    if len(numbers) == 1:
        numbers *= len(names)
    if len(numbers) != len(names):
        raise BackendError(f"PostgreSQL: {len(names)} hosts but {len(numbers)} ports")
    return list(zip(names, numbers, strict=True))


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return "not a writable primary (a standby?)"
    return str(exc) or type(exc).__name__


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` says the server is unreachable or busy right now, not that a statement is wrong."""
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return True  # a standby, or a primary in read-only mode: a failover may be under way
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith(_RETRYABLE_CLASSES) or state in _RETRYABLE_CODES
    if isinstance(exc, asyncpg.exceptions.DataError) or unresolvable(exc) or misconfigured(exc):
        return False
    return isinstance(exc, OSError | asyncpg.InterfaceError)


def underlying(exc: BaseException) -> BaseException:
    """The error that counts. When the server drops a connection mid-statement (a shutdown), asyncpg's
    pool fails to reset it on release with an InternalClientError ("cannot switch to state 15;
    another operation (2) is in progress") raised over the real error: report that one instead."""
    while isinstance(exc, asyncpg.exceptions.InternalClientError) and exc.__context__ is not None:
        exc = exc.__context__
    return exc


def _array(kind: str, *, opaque: bool = False) -> str:
    """An array parameter of element type `kind`. `opaque`: read through a scalar subquery, so that
    the planner sees no values even when it plans for the ones given (`_apply_statement`); the
    cast keeps `= ANY(…)` from reading it as `= ANY (subquery)`."""
    return f"(SELECT ?::{kind}[])::{kind}[]" if opaque else f"?::{kind}[]"


def _rows_cte(table: Table, upsert: bool, where: str = "", *, opaque: bool = False) -> str:
    """Whole columns as arrays: one statement, one round trip, one plan, whatever the batch size."""
    arrays = ", ".join(_array(kind, opaque=opaque) for kind in table.kinds)
    statement = f"INSERT INTO {table.name} ({', '.join(table.columns)}) SELECT * FROM unnest({arrays}){where}"
    return statement + on_conflict_update(table) if upsert else statement


@functools.lru_cache(maxsize=16)
def _insert_statement(table: Table, upsert: bool) -> str:
    return numbered(_rows_cte(table, upsert))


def _columns(table: Table, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """`rows` as one array per column of `table` (empty arrays for no rows)."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in table.columns]


_UNMOVED_LOCK = (
    "m AS (SELECT id FROM meta WHERE id = 1 AND xmin = ?::xid "
    f"AND (SELECT key FROM kv_current WHERE key = ANY({_array('bytea', opaque=True)}) ORDER BY key LIMIT 1) "
    "IS NULL FOR UPDATE)"
)
"""The meta row, locked, if still at the `xmin` given and none of the keys given has a current row."""


def _apply_statement(*, unmoved: bool) -> str:
    """A whole write set in one statement, one round trip: data-modifying CTEs all run, to
    completion, on one snapshot; a key is either upserted or deleted, never both; empty arrays write
    nothing. It returns the meta row's new `xmin`. With `unmoved`, the statement first locks the
    meta row, and writes only if the row's `xmin` is still the one its first parameter gives (no
    write committed since it was read: every write updates the meta row) and none of the keys its
    second parameter lists has a current row; else it changes no row and returns none.

    Passing the xmin guard means that no write committed between the commit that left the row at
    that `xmin` and this statement's lock, so the statement's snapshot (taken at its start, after
    that commit) holds exactly that state, and the absence check reads it.

    The absence check is a first key in key order, not `NOT EXISTS`: asyncpg prepares the statement
    once per connection and PostgreSQL soon settles on a generic plan, made from what the tables
    held then. On a new database (kv_current never analysed yet) an EXISTS of `key = ANY(…)` is
    planned as a sequential scan that expects a match early, and that plan stays while the table
    grows (until autovacuum analyses it): every write then scanned all of kv_current. A first key
    in key order is read from the primary key's index whatever the table holds
    (tests/integration/test_pg_plans.py)."""
    keys, ids = _array("bytea", opaque=True), _array("bigint", opaque=True)
    lock = _UNMOVED_LOCK + ", " if unmoved else ""
    guard = " WHERE EXISTS (SELECT FROM m)" if unmoved else ""
    both = " AND EXISTS (SELECT FROM m)" if unmoved else ""
    return numbered(
        f"WITH {lock}log AS ({_rows_cte(sql.KV_LOG, False, guard, opaque=True)}), "
        f"cur AS ({_rows_cte(sql.KV_CURRENT, True, guard, opaque=True)}), "
        f"gone AS (DELETE FROM kv_current WHERE key = ANY({keys}){both}), "
        f"lease AS ({_rows_cte(sql.LEASES, True, guard, opaque=True)}), "
        f"lease_gone AS (DELETE FROM leases WHERE id = ANY({ids}){both}) "
        f"{sql.UPDATE_META}{both} RETURNING xmin"
    )


_APPLY = _apply_statement(unmoved=False)
_APPLY_UNMOVED = _apply_statement(unmoved=True)


def _one_key_statement(*, put: bool) -> str:
    """`_APPLY_UNMOVED` for the commonest write set, one key's one change: the same lock and guard,
    the history row in scalar parameters (`_one_key_args`) rather than in arrays, and the key's current
    row made from it (a put) or deleted (a delete). asyncpg spends about 1 µs of CPU on each array
    parameter (`_APPLY_UNMOVED` has 19) and PostgreSQL unnests none here; a put's value goes once.
    Measured (benchmarks.lean kube, medians of alternations): 20-40 µs less of kinepy's CPU and 30-55 µs
    less of PostgreSQL's per create, and per deletion and get."""
    log = ", ".join(f"${n}::{kind}" for n, kind in enumerate(sql.KV_LOG.kinds, start=3))
    written = (
        f"cur AS (INSERT INTO kv_current ({', '.join(sql.KV_CURRENT.columns)}) "
        "SELECT $5::bytea, $6::bigint, $3::bigint, $7::bigint, $8::bigint, $9::bytea "
        "WHERE EXISTS (SELECT FROM m)"
        f"{on_conflict_update(sql.KV_CURRENT)})"
        if put
        else "gone AS (DELETE FROM kv_current WHERE key = $5::bytea AND EXISTS (SELECT FROM m))"
    )
    return (
        f"WITH {numbered(_UNMOVED_LOCK)}, log AS (INSERT INTO kv_log ({', '.join(sql.KV_LOG.columns)}) "
        f"SELECT {log} WHERE EXISTS (SELECT FROM m)), {written} "
        "UPDATE meta SET revision = $11, compact_revision = $12 WHERE id = 1 AND EXISTS (SELECT FROM m) "
        "RETURNING xmin"
    )


_PUT_ONE_UNMOVED = _one_key_statement(put=True)
_DELETE_ONE_UNMOVED = _one_key_statement(put=False)
# The meta row as a write without a transaction reads it, with the xmin `_APPLY_UNMOVED` checks,
# and the current rows of the read set's keys in the same statement (one snapshot, one round trip).
_SELECT_META_XMIN = "SELECT revision, compact_revision, xmin FROM meta WHERE id = 1"
_SELECT_META_XMIN_KEYS = numbered(
    "SELECT m.revision, m.compact_revision, m.xmin, c.key, c.create_revision, c.mod_revision, c.version, "
    "c.lease, c.value FROM meta m LEFT JOIN kv_current c ON c.key = ANY(?::bytea[]) WHERE m.id = 1"
)


def _one_key_args(rows: WriteRows) -> tuple[str, list[Any]] | None:
    """The statement (`_one_key_statement`) and its parameters after the first two that write `rows`
    when they are one key's one change, its current row the one its history row makes (a put) or
    none (a delete), and no lease; else None (`_APPLY_UNMOVED` writes them)."""
    if len(rows.log) != 1 or rows.lease_upserts or rows.lease_deletes:
        return None
    log = rows.log[0]
    revision, _, key, create_revision, version, lease, value, tombstone = log
    if len(value) > BATCH_BYTES:
        return None
    if tombstone:
        if rows.upserts or rows.deletes != [key]:
            return None
        statement = _DELETE_ONE_UNMOVED
    elif rows.deletes or rows.upserts != [(key, create_revision, revision, version, lease, value)]:
        return None
    else:
        statement = _PUT_ONE_UNMOVED
    return statement, [*log, *rows.meta]


def _unmoved_write(rows: WriteRows) -> tuple[str, list[Any] | None]:
    """The statement that writes `rows` if nothing moved, and its parameters after the first two (None:
    too large for one statement): one key's one change in scalars, anything else in arrays."""
    return _one_key_args(rows) or (_APPLY_UNMOVED, _apply_args(rows))


def _apply_args(rows: WriteRows) -> list[Any] | None:
    """`_APPLY`'s parameters for `rows`; None when they are too large for one statement."""
    if len(byte_batches([*rows.log, *rows.upserts, *rows.lease_upserts])) > 1:
        return None
    return [
        *_columns(sql.KV_LOG, rows.log),
        *_columns(sql.KV_CURRENT, rows.upserts),
        rows.deletes,
        *_columns(sql.LEASES, rows.lease_upserts),
        rows.lease_deletes,
        *rows.meta,
    ]


class _PgSession(AsyncSession):
    __slots__ = ("_conn", "xmin")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.xmin: int | None = None
        """The meta row's `xmin` after `apply` wrote it in one statement (None: not known)."""

    @property
    def pid(self) -> int:
        """The server process of the connection (while it is held)."""
        return self._conn.get_server_pid()  # type: ignore[no-any-return]

    async def fetch(self, statement: str, args: Sequence[Any] = ()) -> list[Row]:
        return await self._conn.fetch(numbered(statement), *args)  # type: ignore[no-any-return]

    async def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None:
        return await self._conn.fetchrow(numbered(statement), *args)  # type: ignore[no-any-return]

    async def execute(self, statement: str, args: Sequence[Any] = ()) -> int:
        return _rowcount(await self._conn.execute(numbered(statement), *args))

    async def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]:
        return await self.fetch(statement.replace("{in}", f"= ANY(?::{kind}[])"), (list(values),))

    async def execute_in(self, statement: str, values: Sequence[Any], kind: str) -> int:
        return await self.execute(statement.replace("{in}", f"= ANY(?::{kind}[])"), (list(values),))

    async def insert(self, table: Table, rows: list[tuple[Any, ...]], upsert: bool) -> None:
        text = _insert_statement(table, upsert)
        for batch in byte_batches(rows, BATCH_BYTES):
            await self._conn.execute(text, *(list(column) for column in zip(*batch, strict=True)))

    async def apply(self, rows: WriteRows) -> None:
        args = _apply_args(rows)
        if args is None:
            await super().apply(rows)  # statement by statement, each under the size limit
        else:
            self.xmin = await self._conn.fetchval(_APPLY, *args)

    async def stream(
        self, statement: str, args: Sequence[Any], *, batch: int = 1000
    ) -> AsyncIterator[list[Row]]:
        cursor = await self._conn.cursor(numbered(statement), *args)
        while rows := await cursor.fetch(batch):
            yield rows


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own (which rolls back an open
    transaction). kinepy changes no session state (no SET but `_INSTANCE_SETTING`'s when the connection
    opens, which must stay; no LISTEN on pooled connections, advisory locks only per transaction,
    cursors only inside one), so asyncpg's default reset query (`RESET ALL` among others) would cost one
    more round trip per call and lose the instance."""


def _reusable(conn: asyncpg.Connection) -> bool:
    """Open with no transaction left open. Not a connection lost while acquired: asyncpg gives its
    holder back to the pool at once and its proxy raises InterfaceError from then on."""
    try:
        return not conn.is_closed() and not conn.is_in_transaction()
    except asyncpg.InterfaceError:
        return False


def _terminate(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # lost already: nothing left to terminate
        conn.terminate()


class _Connections:
    """asyncpg's pool behind a free list: a connection given back in good order (open, no transaction
    left open) waits on `_idle` and the next caller takes it again, last in first out, for a deque pop
    and append. asyncpg's own acquire and release cost about 20 µs of CPU each call (a proxy, a future,
    a shielded task, a timer armed and cancelled; docs/performance.md, session 9).

    The pool still opens every connection (`init`: the instance setting) and counts it towards its
    `max_size`: an idle connection here stays acquired from it. Everything else goes back through the
    pool's own release, which rolls back what was left open and terminates a connection it cannot
    reset: a connection given back with an error (the caller's exception), closed or in a transaction,
    one given back while another caller waits for the pool (so it never waits on connections idling
    here), and every idle one on `close`. A connection idle here for `idle_timeout` seconds (0: never)
    is terminated, as asyncpg terminates its own idle ones, but for the last open one (its `min_size`).
    What the free list does not keep from the pool: recycling a connection after 50,000 queries
    (asyncpg's `max_queries`, which kinepy never set)."""

    __slots__ = ("_closing", "_idle", "_idle_timeout", "_trimming", "_waiting", "pool")

    def __init__(self, pool: asyncpg.Pool, idle_timeout: float) -> None:
        self.pool = pool
        self._idle: collections.deque[tuple[asyncpg.Connection, float]] = collections.deque()
        """Connections given back in good order, with when (`time.monotonic`); the newest last."""
        self._idle_timeout = idle_timeout
        self._trimming: asyncio.TimerHandle | None = None
        self._waiting = 0  # callers waiting for `pool.acquire`
        self._closing = False

    def acquire(self) -> _Lease:
        """A connection for `async with`, given back on leaving (as `asyncpg.Pool.acquire`)."""
        return _Lease(self)

    async def take(self) -> asyncpg.Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()[0]
            if _reusable(conn):
                return conn
            await self.pool.release(conn)  # lost while idle: the pool took it back already
        if self._closing:
            raise asyncpg.InterfaceError("pool is closing")
        self._waiting += 1
        try:
            return await self.pool.acquire()
        finally:
            self._waiting -= 1

    async def give_back(self, conn: asyncpg.Connection, failed: bool) -> None:
        if failed or self._waiting or self._closing or not _reusable(conn):
            await self.pool.release(conn)
            return
        self._idle.append((conn, time.monotonic()))
        if self._trimming is None and self._idle_timeout > 0:
            self._trimming = asyncio.get_running_loop().call_later(self._idle_timeout, self._trim)

    def _trim(self) -> None:
        """Terminate the connections idle for `idle_timeout` (the oldest first), but for the last open."""
        self._trimming = None
        idle, pool = self._idle, self.pool
        expired = time.monotonic() - self._idle_timeout
        while idle and idle[0][1] <= expired and pool.get_size() > 1:
            _terminate(idle.popleft()[0])
        if idle:
            wait = max(idle[0][1] - expired, 0.1) if pool.get_size() > 1 else self._idle_timeout
            self._trimming = asyncio.get_running_loop().call_later(wait, self._trim)

    def _drain(self) -> list[asyncpg.Connection]:
        self._closing = True
        if self._trimming is not None:
            self._trimming.cancel()
            self._trimming = None
        idle = [conn for conn, _ in self._idle]
        self._idle.clear()
        return idle

    async def close(self) -> None:
        """Give every idle connection back, then close the pool (which waits for those in use)."""
        for conn in self._drain():
            try:
                await self.pool.release(conn)
            except Exception:  # it could not be reset
                _terminate(conn)
        await self.pool.close()

    def terminate(self) -> None:
        """Terminate every connection, idle here, in use or in the pool."""
        self._drain()
        self.pool.terminate()


class _Lease:
    """`_Connections.acquire()`: the connection on entering, given back on leaving."""

    __slots__ = ("_conn", "_connections")

    def __init__(self, connections: _Connections) -> None:
        self._connections = connections

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._connections.take()
        return self._conn

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        await self._connections.give_back(self._conn, kind is not None)


class _UnlockedSession(_PgSession):
    """A write outside a transaction: the meta row and the read set's keys in one statement in
    autocommit (the rest of the read set after it), then every row in one statement that writes only
    if no other write committed since the meta row was read (`_APPLY_UNMOVED`); `moved` tells when
    it did not."""

    __slots__ = ("_key_rows", "_keys", "moved", "read_xmin")

    def __init__(self, conn: asyncpg.Connection, keys: list[bytes]) -> None:
        super().__init__(conn)
        self._keys = keys
        self._key_rows: list[Row] | None = None
        self.read_xmin: int | None = None
        self.moved = False

    async def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None:
        if statement != _SELECT_META_XMIN:
            return await super().fetchone(statement, args)
        rows: list[Row] = await self._conn.fetch(_SELECT_META_XMIN_KEYS, self._keys)
        if not rows:
            return None
        self._key_rows = [tuple(row)[3:] for row in rows if row[3] is not None]
        self.read_xmin = int(rows[0][2])
        return rows[0]

    async def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]:
        if statement == sql.SELECT_CURRENT_IN_KEYS and self._key_rows is not None:
            rows, self._key_rows = self._key_rows, None  # read with the meta row
            return rows
        return await super().fetch_in(statement, values, kind)

    async def apply(self, rows: WriteRows) -> None:
        statement, args = _unmoved_write(rows)
        if args is None or self.read_xmin is None:
            self.moved = True  # too large for one statement: the locked transaction writes it
            return
        self.xmin = await self._conn.fetchval(statement, self.read_xmin, [], *args)
        self.moved = self.xmin is None


class _Held:
    """`PostgresBackend._connection()`: a class rather than a generator, since every statement runs
    in one (a generator context manager costs a few µs more)."""

    __slots__ = ("_backend", "_conn", "_connections")

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend

    async def __aenter__(self) -> asyncpg.Connection:
        backend = self._backend
        connections = backend._pool
        if connections is None:
            raise BackendUnavailable("the PostgreSQL backend is closed")
        try:
            self._conn = await connections.take()
        except backend.driver_errors as exc:
            raise backend._error(backend._underlying(exc)) from exc
        self._connections = connections
        return self._conn

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        backend, conn = self._backend, self._conn
        lost = isinstance(exc, asyncpg.exceptions.InternalClientError)
        if lost:
            # A connection the server dropped (a shutdown) can stay open but stuck mid-protocol
            # ("cannot switch to state 15; another operation (2) is in progress"): the pool would
            # hand it out again and again. Close it; the pool opens a new one.
            conn.terminate()
        try:
            await self._connections.give_back(conn, exc is not None)
        except backend.driver_errors as error:
            raise backend._error(backend._underlying(error)) from error
        if lost:
            raise BackendUnavailable(backend._scrub(f"PostgreSQL: connection lost: {exc}")) from exc
        if isinstance(exc, backend.driver_errors):
            raise backend._error(backend._underlying(exc)) from exc


class _Autocommit:
    """`PostgresBackend._session("none")`: a `_PgSession` on a `_Held` connection."""

    __slots__ = ("_held",)

    def __init__(self, held: _Held) -> None:
        self._held = held

    async def __aenter__(self) -> AsyncSession:
        return _PgSession(await self._held.__aenter__())

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        await self._held.__aexit__(kind, exc, tb)


class PostgresBackend(ServerBackend):
    """kinepy's storage model in a PostgreSQL database (created when missing and permitted)."""

    name = "PostgreSQL"
    statements = server_statements(
        "DELETE FROM kv_log o USING kv_log n WHERE o.key = n.key AND o.revision < n.revision "
        "AND n.revision > ? AND n.revision <= ?"
    )
    max_key_bytes = MAX_KEY_BYTES
    driver_errors = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        OSError,
    )

    def __init__(
        self, spec: PostgresSpec, *, synchronous_commit: bool = True, **options: Unpack[ServerOptions]
    ) -> None:
        super().__init__(spec, **options)
        self.spec = spec
        self._sibling_pids: set[int] = set()
        """Server processes of the other workers' pools (learnt from what they tell): their commits come
        through `_changes`, so their NOTIFYs are passed over."""
        url_options = dict(spec.options)
        self._addresses = addresses(spec, url_options.pop("host", None), url_options.pop("port", None))
        self._current = 0  # the address that last accepted: tried first
        # Several hosts: only ever the primary (endpoint.py refuses a target that may pick a standby).
        several = len(self._addresses) > 1
        self._target = url_options.pop("target_session_attrs", "read-write" if several else None)
        self._attempt_timeout = float(url_options.pop("connect_timeout", ATTEMPT_TIMEOUT) or ATTEMPT_TIMEOUT)
        settings = {"application_name": url_options.pop("application_name", "kinepy")}
        if not synchronous_commit:
            settings["synchronous_commit"] = "off"
        self._server_settings = settings
        # asyncpg reads sslmode, sslrootcert, sslcert, sslkey, sslcrl, sslpassword, …
        # from a DSN query, as libpq does; anything else becomes a server setting (search_path, …).
        self._dsn = "postgresql://" + (("?" + urlencode(url_options)) if url_options else "")
        self._pool: _Connections | None = None
        self._listener: Any = None  # asyncpg.Connection LISTENing on NOTIFY_CHANNEL, opened on first wait
        self._changed = asyncio.Event()
        self._listen_failed = False
        self._own_pids: set[int] = set()  # server processes of our pool: their NOTIFYs are our commits
        # This process in `kinepy_listeners` (`_INSTANCE_SETTING`); the workers of one server are one.
        self._instance = self._changes.group if self._changes is not None else secrets.token_hex(8)
        self._cache = WriteCache()
        self._epoch = 0  # connections opened: the cache holds only within one epoch

    # -- errors --------------------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        return is_retryable(exc)

    def _underlying(self, exc: BaseException) -> BaseException:
        return underlying(exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect_args(self, database: str) -> dict[str, Any]:
        return {
            "dsn": self._dsn,
            "user": self.spec.user,
            "password": self.spec.password,
            "database": database,
            "timeout": self._attempt_timeout,
            "server_settings": self._server_settings,
            "target_session_attrs": self._target,
        }

    async def _connect(self, database: str) -> Any:
        return await self._connect_to_primary(**self._connect_args(database))

    async def _connect_to_primary(self, dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        """A connection to the first of the endpoint's hosts that accepts one and is what
        `target_session_attrs` asks for (with several hosts: the primary, not a standby). The host
        that last did is tried first, then the others in the order written, each with its own
        timeout (asyncpg's own host list shares one timeout: a host that drops packets would use
        it all up)."""
        count = len(self._addresses)
        order = [(self._current + i) % count for i in range(count)]
        failures: list[tuple[int, BaseException]] = []
        for index in order:
            host, port = self._addresses[index]
            try:
                conn = await asyncpg.connect(dsn, host=host, port=port, **kwargs)
            except self.driver_errors as exc:
                failures.append((index, exc))
                continue
            if index != self._current:
                log.warning("PostgreSQL: now connecting to %s", self._address_text(index))
                self._current = index
            return conn
        if count == 1 or all(not is_retryable(exc) for _, exc in failures):
            raise failures[0][1]
        reasons = "; ".join(f"{self._address_text(i)}: {_why(exc)}" for i, exc in failures)
        raise NoPrimaryError(f"no host is a writable primary ({reasons})") from None

    def _address_text(self, index: int) -> str:
        host, port = self._addresses[index]
        return bracket_host(host) + (f":{port}" if port is not None else "")

    async def _create_pool(self) -> _Connections:
        pool = await asyncpg.create_pool(
            **self._connect_args(self.spec.database),
            connect=self._connect_to_primary,
            min_size=1,
            max_size=self._pool_size,
            max_inactive_connection_lifetime=self._idle_timeout,
            init=self._init_connection,
            reset=_keep_session,
        )
        return _Connections(pool, self._idle_timeout)

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await conn.execute(_SET_INSTANCE, self._instance)  # commits that only we listen for notify nobody
        self._own_pids.add(conn.get_server_pid())
        self._epoch += 1  # perhaps another server (a failover): what `_cache` holds may not be there

    async def _create_database(self) -> None:
        """CREATE DATABASE through a maintenance database, as kine does; a concurrent creator is fine."""
        database = self.spec.database
        last: BaseException | None = None
        for maintenance in _MAINTENANCE_DATABASES:
            try:
                conn = await self._connect(maintenance)
            except asyncpg.InvalidCatalogNameError as exc:
                last = exc
                continue
            try:
                await conn.execute(f"CREATE DATABASE {quote_identifier(database)}")
                log.info("created PostgreSQL database %r", database)
            except asyncpg.DuplicateDatabaseError:
                pass
            except asyncpg.InsufficientPrivilegeError as exc:
                raise self._cannot_create(database, str(exc)) from exc
            finally:
                await conn.close()
            return
        raise BackendError(f"PostgreSQL database {database!r} does not exist") from last

    async def _open(self) -> None:
        try:
            self._pool = await self._create_pool()
        except asyncpg.InvalidCatalogNameError:
            await self._create_database()
            self._pool = await self._create_pool()

    async def _create_schema(self) -> None:
        async with self._session("write") as session:
            await session.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                await session.execute(statement)
            if await session.fetchone(_NOTIFY_TRIGGER_EXISTS) is None:
                await session.execute(_CREATE_NOTIFY_TRIGGER)
            await self._init_meta(session)
            version = await session.fetchone("SHOW server_version")
            replication = await session.fetchone(_REPLICATION_SETTINGS)
        self.server_version = str(version[0]) if version else ""
        if len(self._addresses) > 1 and replication is not None:
            _log_replication(str(replication[0]), str(replication[1]))

    # -- other processes' commits ----------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid in self._own_pids or pid in self._sibling_pids:
            return  # this process's commit, or another worker's, told through `_changes` (or, lost, polled)
        self._cache.invalidate()  # stale: the next batch reads instead of failing its guard
        if self._changes is not None:
            self._changes.look()
        else:
            self._changed.set()

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        """Return when another process committed (NOTIFY from the meta trigger), another worker told of
        a commit (`ChangePipes`), or after `max_wait` s; a NOTIFY carries no events: the caller reads
        them."""
        listener = self._listener
        if listener is None or listener.is_closed():
            self._listener = listener = None
            try:
                listener = await self._connect(self.spec.database)
                await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
                await self._register_listener(listener)
            except self.driver_errors as exc:
                if listener is not None:  # listening, but the others were not told: try again
                    listener.terminate()
                if not self._listen_failed:  # once per outage, not every `max_wait`
                    self._listen_failed = True
                    log.warning("%s; following other processes by polling", self._error(exc, "LISTEN failed"))
                if self._changes is None:
                    await asyncio.sleep(max_wait)
                    return []
            else:
                if self._listen_failed:
                    self._listen_failed = False
                    log.info("PostgreSQL LISTEN works again")
                self._listener = listener
                return []  # notifications may have been missed meanwhile: let the caller look now
        if self._changes is not None:  # the other workers still tell of theirs while LISTEN fails
            told = await self._changes.wait(max_wait)
            self._follow(told)
            return told
        try:
            async with asyncio.timeout(max_wait):
                await self._changed.wait()
        except TimeoutError:
            pass
        self._changed.clear()
        return []

    async def _register_listener(self, listener: asyncpg.Connection) -> None:
        """Tell the other kinepy processes that this one LISTENs (after LISTEN took effect), so that
        their commits NOTIFY it; drop the rows of listeners whose connections are gone.

        No commit is missed: a writer holds the meta row's lock from its UPDATE to its COMMIT, and the
        registration takes a share lock on it. A writer that locked the row first commits before the
        registration does, so the caller, which reads the database's revision after this returns
        (the follower looks whenever a wait returns), sees it. A writer that locks it after waits for
        the registration's commit, and the trigger's query, which takes its snapshot after the lock,
        sees the new row and notifies."""
        await listener.execute(_DROP_GONE_LISTENERS)
        async with listener.transaction(isolation="read_committed"):
            await listener.execute(_LOCK_META_SHARED)
            await listener.execute(_REGISTER_LISTENER, self._instance)

    def _follow(self, told: list[Commit]) -> None:
        """Learn the other workers' connections, and move the write cache on past their commits told
        with their events (from the meta row's `xmin` it is as of), so that workers taking turns keep
        writing in one round trip. A commit it cannot follow and has not seen leaves it stale: it is
        dropped, as for a NOTIFY, and the next batch reads instead of failing its guard first."""
        cache = self._cache
        for commit in told:
            origin = commit.origin
            if origin:
                self._sibling_pids.add(origin[0])
            if commit.events is None:
                cache.invalidate()  # a compaction, a lease's renewal, a large batch, another process's
                continue
            followable = len(origin) == 3 and origin[2] != 0  # the meta row's xmin after it is known
            if followable and cache.follow(origin[1], origin[2], commit.revision, commit.events):
                continue
            if commit.revision > cache.revision:
                cache.invalidate()

    async def aclose(self) -> None:
        if self._changes is not None:
            self._changes.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.execute(_UNREGISTER_LISTENER), _CLOSE_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), _CLOSE_TIMEOUT)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            log.warning("closing the PostgreSQL pool took too long or failed; terminating its connections")
            pool.terminate()

    def _session(self, kind: str) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        if kind == "none":  # most reads: no generator around the connection's context manager
            return _Autocommit(_Held(self))
        return self._transaction(kind)

    @contextlib.asynccontextmanager
    async def _transaction(self, kind: str) -> AsyncIterator[AsyncSession]:
        async with self._connection() as conn:
            isolation = "repeatable_read" if kind == "read" else "read_committed"
            async with conn.transaction(isolation=isolation, readonly=kind == "read"):
                yield _PgSession(conn)

    def _connection(self) -> _Held:
        """A connection for `async with`, given back on leaving; what the driver raises leaves as a
        `BackendError` (`_errors`)."""
        return _Held(self)

    # -- writes ----------------------------------------------------------------------------------

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        write_set, origin = await self._write_batch(read_set, evaluate)
        if self._changes is not None and write_set is not None:
            if write_set.leases:  # not told (events only): a cache that follows would hold them wrong
                origin = (origin[0], 0, 0)
            self._changes.announce(write_set, origin)
        return write_set

    async def _write_batch(
        self, read_set: ReadSet, evaluate: Evaluate
    ) -> tuple[WriteSet | None, tuple[int, int, int]]:
        """And what the other workers are told of it (`Commit.origin`): the server pid of the connection
        that wrote it and the meta row's `xmin` before and after it (0: not known).

        One round trip in the steady state: a batch whose read set `_cache` answers is evaluated
        on it and written by one statement that writes only if nothing changed since. Otherwise two:
        the meta row and the read set read in autocommit, then every row in one statement that locks
        the meta row and writes only if no write committed since it was read (`_UnlockedSession`).
        Otherwise (another process wrote meanwhile, or the batch is too large for one statement) the
        batch runs again as every server database runs it: in a transaction that locks the meta row
        first. Every commit records what it read and wrote in `_cache`."""
        capture = Remembered(self._checked(evaluate))
        cache, epoch, version = self._cache, self._epoch, self._cache.version
        cached = cache.snapshot(read_set, epoch, leases=True)
        if cached is not None:
            snapshot, unknown = cached
            write_set = capture(snapshot)
            if write_set is not None:
                rows = write_rows(write_set, snapshot.compact_revision)
                statement, args = _unmoved_write(rows)
                if args is not None:
                    async with self._connection() as conn:
                        xmin = await conn.fetchval(statement, version, unknown, *args)
                        pid = conn.get_server_pid()
                    if xmin is not None:
                        cache.record(xmin, epoch, read_set, snapshot, write_set, chained=True)
                        return write_set, (pid, cast(int, version), int(xmin))
                    cache.failed()
            # Nothing to write (a failed compare is answered from a read, never from memory), too
            # large for one statement, or another write came between: the ordinary way.
        async with self._connection() as conn:
            unlocked = _UnlockedSession(conn, list(read_set.keys))
            write_set = await run_async(write_steps(_UNLOCKED_STATEMENTS, read_set, capture), unlocked)
            pid = conn.get_server_pid()
        read = capture.seen
        if not unlocked.moved:
            if write_set is not None and read is not None:
                chained = unlocked.read_xmin == cache.version
                cache.record(unlocked.xmin, epoch, read_set, read, write_set, chained=chained)
            return write_set, (pid, unlocked.read_xmin or 0, unlocked.xmin or 0)
        async with self._session("write") as session:
            write_set = await run_async(write_steps(self.statements, read_set, capture), session)
            pid = cast(_PgSession, session).pid
        read = capture.seen
        xmin = cast(_PgSession, session).xmin
        if write_set is not None and read is not None:
            cache.record(xmin, epoch, read_set, read, write_set, chained=False)
        # What the meta row was before is not known: the other workers' caches cannot follow this one.
        return write_set, (pid, 0, 0)

    # -- maintenance ---------------------------------------------------------------------------

    async def _lock_compaction(self, session: AsyncSession) -> None:
        await session.execute("SELECT pg_advisory_xact_lock(?)", (_COMPACT_LOCK,))

    async def _sizes(self, session: AsyncSession) -> tuple[int, int]:
        row = await session.fetchone(_SIZES)
        size = int(row[0]) if row and row[0] is not None else 0
        return size, size

    async def _defragment(self) -> None:
        # VACUUM FULL would rewrite the tables under an exclusive lock; plain VACUUM marks dead rows
        # reusable and gives trailing empty pages back to the file system without blocking writers.
        async with self._session("none") as session:
            await session.execute("VACUUM (ANALYZE) kv_log, kv_current, leases, meta")


_UNLOCKED_STATEMENTS = dataclasses.replace(
    PostgresBackend.statements, select_meta_for_write=_SELECT_META_XMIN
)
