"""MySQL and MariaDB backend on aiomysql: a connection pool, set-based statements, a row lock for ordering.

Keys are `VARBINARY(3064)` and values `LONGBLOB`: binary strings compare bytewise, with no padding and
no case folding, so `a`, `A` and `a ` are three keys whatever the server's collation. InnoDB limits an
index entry to 3072 bytes; `kv_log (key, revision)` needs 8 of them for the revision, hence the key
limit `MAX_KEY_BYTES` (kine allows 630 ASCII characters).

A write batch is one READ COMMITTED transaction (the connections' default) that starts with
`SELECT … FROM meta … FOR UPDATE` (or, from the write cache, with the guarded `UPDATE meta`:
`MySQLBackend.write`): writers of every process queue on that row lock, so revisions commit in
order, and READ COMMITTED reads after it see every earlier commit and take no gap locks (compaction
deletes history while writers insert). A read
of several statements runs in `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` at REPEATABLE
READ (asked for per transaction), so the revision it reports and the rows it returns agree; a read of
one statement (a Range) sees one snapshot at either level.

Every connection sets `sql_mode` to STRICT_ALL_TABLES (a too-long key is an error, never silently
truncated, and backslash escapes work as pymysql assumes). Upserts are `REPLACE`: MySQL 8.0.20+
deprecates `ON DUPLICATE KEY UPDATE … VALUES()` with a warning per statement, and aiomysql answers each
warning with a `SHOW WARNINGS` round trip; on a primary-key conflict, in a table with one unique key
and no triggers, InnoDB runs REPLACE as an in-place update. Rows go in multi-row `INSERT`/`REPLACE`
statements of up to a few MiB (below the server's `max_allowed_packet`). Parameters are rendered as
literals here (see `literal`), not by aiomysql. On a single MariaDB server, the statements of a commit
go as one compound statement (`compound`), answered by one OK packet; on MySQL, as one
multi-statement query, answered by one result per statement.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any, Unpack, cast

import aiomysql

from kinepy.backends.base import Commit, Evaluate, RangeRows, ReadSet, WriteSet
from kinepy.backends.sql import statements as sql
from kinepy.backends.sql.core import (
    AsyncSession,
    Row,
    WriteRows,
    apply_requests,
    meta_after,
    meta_of,
    run_async,
    write_rows,
    write_steps,
)
from kinepy.backends.sql.dialect import (
    ATTEMPT_TIMEOUT,
    IN_CHUNK,
    ServerBackend,
    ServerOptions,
    chunks,
    misconfigured,
    pyformat,
    quote_key,
    server_statements,
    unresolvable,
)
from kinepy.backends.sql.replication import (
    Replication,
    error_code,
    galera_writer,
    is_conflict,
    read_replication,
)
from kinepy.backends.sql.statements import Table
from kinepy.backends.sql.write_cache import Remembered, WriteCache
from kinepy.errors import BackendConflict, BackendError, BackendUnavailable, ConfigError
from kinepy.specs import MySQLSpec
from kinepy.types import KeyValue, RangeQuery

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 3064
_ROUTE_CHECK_INTERVAL = 5.0  # seconds between two looks at a Galera cluster's nodes
_POOL_RECYCLE = 3600  # seconds; below the server's default wait_timeout (8 h)
_SCHEMA_LOCK = "kinepy_schema"
_COMPACT_LOCK = "kinepy_compact"
_COMPACT_LOCK_WAIT = 30  # seconds
_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
_MAX_STATEMENT_BYTES = 8 * 1024 * 1024

# Error numbers after which a retry may succeed: cannot connect, server gone or shutting down, lost
# connection, too many connections, lock wait timeout, deadlock, interrupted, read-only (a replica
# after a failover), connection killed (MariaDB) or closed for inactivity (MySQL 8).
# A Galera node outside the primary component (1047: "WSREP has not yet prepared node for
# application use") and a Group Replication member that cannot commit (3100: an error in the
# before_commit hook, e.g. it left the group) are unavailable too.
_RETRYABLE = frozenset(
    {1040, 1047, 1053, 1205, 1213, 1290, 1317, 1792, 1927, 2002, 2003, 2006, 2013, 2055, 3024, 3100, 4031}
)
_TABLE_EXISTS = 1050
_DUPLICATE_ENTRY = 1062
_ACCESS_DENIED = frozenset({1044, 1045, 1698})
_UNKNOWN_DATABASE = 1049
_DATABASE_EXISTS = 1007

_SCHEMA = [
    (
        "meta",
        """CREATE TABLE meta (
            id INT NOT NULL PRIMARY KEY,
            revision BIGINT NOT NULL,
            compact_revision BIGINT NOT NULL,
            schema_version INT NOT NULL,
            cluster_id BIGINT NOT NULL,
            member_id BIGINT NOT NULL,
            CONSTRAINT meta_one_row CHECK (id = 1)
        ) ENGINE=InnoDB""",
    ),
    (
        "kv_log",
        f"""CREATE TABLE kv_log (
            revision BIGINT NOT NULL,
            sub INT NOT NULL,
            `key` VARBINARY({MAX_KEY_BYTES}) NOT NULL,
            create_revision BIGINT NOT NULL,
            version BIGINT NOT NULL,
            lease BIGINT NOT NULL,
            value LONGBLOB NOT NULL,
            tombstone TINYINT NOT NULL,
            PRIMARY KEY (revision, sub),
            INDEX kv_log_key_revision (`key`, revision)
        ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC""",
    ),
    (
        "kv_current",
        f"""CREATE TABLE kv_current (
            `key` VARBINARY({MAX_KEY_BYTES}) NOT NULL PRIMARY KEY,
            create_revision BIGINT NOT NULL,
            mod_revision BIGINT NOT NULL,
            version BIGINT NOT NULL,
            lease BIGINT NOT NULL,
            value LONGBLOB NOT NULL,
            INDEX kv_current_lease (lease)
        ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC""",
    ),
    (
        "leases",
        """CREATE TABLE leases (
            id BIGINT NOT NULL PRIMARY KEY,
            ttl BIGINT NOT NULL,
            expires_at DOUBLE NOT NULL,
            INDEX leases_expires_at (expires_at)
        ) ENGINE=InnoDB""",
    ),
]

_SIZES = (
    "SELECT COALESCE(SUM(data_length + index_length + data_free), 0), "
    "COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
    "WHERE table_schema = DATABASE() AND table_name IN ('meta', 'kv_log', 'kv_current', 'leases')"
)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` says the server is unreachable or busy right now, not that a statement is wrong."""
    if unresolvable(exc) or misconfigured(exc):
        return False
    if isinstance(exc, aiomysql.InterfaceError | OSError):
        return True
    return isinstance(exc, aiomysql.MySQLError) and error_code(exc) in _RETRYABLE


def _galera_writes(options: dict[str, str]) -> bool:
    """The endpoint option `galera_writer`: `auto` (the default: on Galera, write through the node
    every kinepy picks) or `local` (write through this endpoint; conflicting batches run again)."""
    opts = {k.lower().replace("-", "_"): v for k, v in options.items()}
    value = opts.get("galera_writer", "auto").lower()
    if value not in ("auto", "local"):
        raise ConfigError(f"unsupported MySQL option galera_writer={value!r}: expected auto or local")
    return value == "auto"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiomysql.MySQLError) and len(exc.args) >= 2:
        return f"error {exc.args[0]}: {exc.args[1]}"
    return str(exc) or type(exc).__name__


def _seconds(text: str) -> float:
    """A Go duration (`5s`, `500ms`, `1m30s`) or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ConfigError(f"bad MySQL timeout {text!r}: expected a duration such as 10s")
    return sum(float(amount) * units[unit] for amount, unit in parts)


def ssl_context(options: dict[str, str]) -> ssl.SSLContext | None:
    """TLS from go-sql-driver's `tls=true|skip-verify|preferred|false` and `ssl-ca`/`ssl-cert`/`ssl-key`
    (also spelt with `_`) query options; None for a plain connection."""
    opts = {k.lower().replace("_", "-"): v for k, v in options.items()}
    tls = opts.get("tls", "").lower()
    ca, cert, key = opts.get("ssl-ca"), opts.get("ssl-cert"), opts.get("ssl-key")
    if tls in ("", "false", "0") and not (ca or cert):
        return None
    if tls not in ("", "true", "1", "skip-verify", "preferred", "false", "0"):
        raise ConfigError(
            f"unsupported MySQL option tls={tls!r}: expected true, skip-verify, preferred or false"
        )
    context = ssl.create_default_context(cafile=ca)
    if tls in ("skip-verify", "preferred"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key)
    return context


def tls_required(options: dict[str, str]) -> bool:
    """Whether the options ask for TLS that must not fall back to plain text: `tls=true` or
    `skip-verify`, or TLS files without `tls=` (kine's --ca-file/--cert-file); not `tls=preferred`."""
    opts = {k.lower().replace("_", "-"): v for k, v in options.items()}
    tls = opts.get("tls", "").lower()
    return tls in ("true", "1", "skip-verify") or (
        tls == "" and bool(opts.get("ssl-ca") or opts.get("ssl-cert"))
    )


def literal(value: Any) -> str:
    """`value` as a MySQL literal. Bytes become hex literals (`X'6b6579'`), which MySQL reads as
    binary strings whatever the connection's character set or `NO_BACKSLASH_ESCAPES`.

    kinepy renders parameters itself rather than through aiomysql, whose bytes escaping is broken
    with PyMySQL >= 1.2.3 (aio-libs/aiomysql#1080: `'str' object is not callable`)."""
    kind = type(value)  # the two types of nearly every value first: a row of kv_log is 8 literals
    if kind is int:
        return str(value)
    if kind is bytes:
        return "X'" + bytes.hex(value) + "'"
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex() + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "_utf8mb4 X'" + value.encode().hex() + "'"
    if value is None:
        return "NULL"
    raise TypeError(f"cannot pass a {type(value).__name__} to MySQL")


def render(statement: str, args: Sequence[Any]) -> str:
    """`statement` (with `?` placeholders) with `args` filled in."""
    return pyformat(statement) % tuple(literal(arg) for arg in args)


SELECT_META_FOR_WRITE = sql.SELECT_META + " FOR UPDATE"
# Connections are READ COMMITTED by default (the pool's init command), so a write transaction starts with
# START TRANSACTION alone; a read transaction asks for REPEATABLE READ, whose consistent snapshot it needs.
_START_WRITE = ["START TRANSACTION"]
_START_READ = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
)
_ANY_CURRENT_IN_KEYS = "EXISTS (SELECT 1 FROM kv_current WHERE key {in})"


# A Get of one key at the latest revision (Kubernetes' read of an object): the meta row and the key's row
# in one row of two columns, the numbers packed into one string (`_got`). pymysql parses a field
# descriptor per column in Python: 8 columns (`range_statement`) cost about 30 µs of CPU more per Get.
_GET = (
    "SELECT CONCAT_WS(' ', m.revision, m.compact_revision, c.create_revision, c.mod_revision, c.version, "
    "c.lease), c.value FROM meta m LEFT JOIN kv_current c ON c.key = ? WHERE m.id = 1"
)
_GET_KEYS_ONLY = _GET.replace("c.value", "x''")


def _got(key: bytes, rows: list[Row]) -> RangeRows:
    """The read of `key` from the rows of `_GET`."""
    numbers = [int(number) for number in rows[0][0].split()] if rows else None
    current, compact = meta_of(numbers)
    if numbers is None or len(numbers) < 6:  # no row of `key` (CONCAT_WS skips its NULL columns)
        return RangeRows(current, compact, [], 0)
    _, _, create, mod, version, lease = numbers
    return RangeRows(current, compact, [KeyValue(key, create, mod, version, bytes(rows[0][1]), lease)], 1)


# Sent right after the guarded UPDATE of the meta row (`_MySession.apply_unmoved`): unless the guard
# changed the row, it inserts a second meta row, a duplicate key whatever the `sql_mode`, and the query
# ends there, before the rows and the COMMIT. The guard's count of changed rows, read in the server.
_STOP_UNLESS_GUARDED = (
    "INSERT INTO meta (id, revision, compact_revision, schema_version, cluster_id, member_id) "
    "SELECT 1, 0, 0, 0, 0, 0 FROM DUAL WHERE ROW_COUNT() <> 1"
)
# The same inside a compound statement (MariaDB): an error of its own (ER_SIGNAL_EXCEPTION), which no
# other statement of the block raises.
_SIGNAL_UNLESS_GUARDED = (
    "IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'kinepy: the meta row moved'; END IF"
)
_SIGNALLED = 1644


def compound(texts: list[str]) -> str:
    """`texts` as one MariaDB compound statement (`BEGIN NOT ATOMIC … END`, MariaDB 10.1+). The server
    answers it with one OK packet (or the error that stopped it), where a multi-statement query sends
    a result per statement, each read and parsed by the driver (often woken once per result): about
    100 µs of kinepy's CPU less per kube create, of six statements (`benchmarks.lean kube`). Only for
    statements without rows."""
    return "BEGIN NOT ATOMIC " + ";".join(texts) + "; END"


class _MySession(AsyncSession):
    __slots__ = (
        "_compound",
        "_conn",
        "_cur",
        "_key_rows",
        "_keys",
        "_max_statement",
        "_one_query",
        "_prefix",
        "committed",
    )

    def __init__(
        self, conn: Any, cur: Any, max_statement: int, *, one_query: bool = False, compound: bool = False
    ) -> None:
        self._conn = conn
        self._cur = cur
        self._max_statement = max_statement
        self._one_query = one_query  # statements may go together as one multi-statement query
        self._compound = compound  # writes of several statements go as one compound statement (MariaDB)
        self._prefix: list[str] = []  # statements sent with the next one (`defer`)
        self._keys: list[bytes] | None = None
        self._key_rows: list[Row] | None = None
        self.committed = False
        """`apply` committed the transaction (with its rows, in the same query)."""

    def defer(self, texts: list[str]) -> None:
        """Send `texts` (statements without a result, such as `START TRANSACTION`) together with the
        next statement instead of one round trip each."""
        self._prefix += texts

    def prefetch(self, keys: list[bytes]) -> None:
        """Read the current rows of `keys` together with the meta row that a write transaction reads
        first (`SELECT_META_FOR_WRITE`), in the same query."""
        self._keys = keys

    async def _query(self, text: str) -> int:
        """Run `text` (after any deferred statements, in one round trip); the rows it changed."""
        if not self._prefix:
            return int(await self._cur.execute(text))
        prefix, self._prefix = self._prefix, []
        await self._cur.execute(";".join([*prefix, text]))
        for _ in prefix:
            await self._cur.nextset()
        return int(self._cur.rowcount)

    async def fetch(self, statement: str, args: Sequence[Any] = ()) -> list[Row]:
        await self._query(render(statement, args))
        return list(await self._cur.fetchall())

    async def fetchone(self, statement: str, args: Sequence[Any] = ()) -> Row | None:
        keys, self._keys = self._keys, None
        if statement != SELECT_META_FOR_WRITE or not keys or not self._one_query:
            return await super().fetchone(statement, args)
        texts = self._in_texts(sql.SELECT_CURRENT_IN_KEYS, keys)
        await self._query(";".join([statement, *texts]))
        meta = list(await self._cur.fetchall())
        self._key_rows = []
        while await self._cur.nextset():
            self._key_rows += await self._cur.fetchall()
        return meta[0] if meta else None

    async def execute(self, statement: str, args: Sequence[Any] = ()) -> int:
        return await self._query(render(statement, args))

    @staticmethod
    def _in(statement: str, count: int) -> str:
        return statement.replace("{in}", f"IN ({','.join('?' * count)})")

    async def fetch_in(self, statement: str, values: Sequence[Any], kind: str) -> list[Row]:
        if statement == sql.SELECT_CURRENT_IN_KEYS and self._key_rows is not None:
            read, self._key_rows = self._key_rows, None  # read with the meta row
            return read
        rows: list[Row] = []
        for chunk in chunks(values, IN_CHUNK):
            rows.extend(await self.fetch(self._in(statement, len(chunk)), chunk))
        return rows

    async def execute_in(self, statement: str, values: Sequence[Any], kind: str) -> int:
        changed = 0
        for text in self._in_texts(statement, values):
            changed += await self._query(text)
        return changed

    async def insert(self, table: Table, rows: list[tuple[Any, ...]], upsert: bool) -> None:
        for text in self._insert_texts(table, rows, upsert):
            await self._query(text)

    async def apply(self, rows: WriteRows) -> None:
        """Every statement of `rows` and the COMMIT in one round trip (a multi-statement query),
        unless together they exceed the largest statement the server takes, or the server is a node
        of a cluster (Galera, Group Replication): there, one statement at a time, as before. (On
        Galera with every node written, batches sent as one query committed duplicate revisions
        after conflicts, in tests/integration/test_galera.py; why is not known yet.)"""
        texts = self._apply_texts(rows)
        if not self._one_query or _length(texts) > self._max_statement:
            for text in texts:
                await self._query(text)
            return
        await self.run_all([*texts, "COMMIT"])
        self.committed = True

    def _apply_texts(self, rows: WriteRows) -> list[str]:
        texts: list[str] = []
        for method, args in apply_requests(rows):
            if method == "insert":
                texts += self._insert_texts(*args)
            elif method == "execute_in":
                texts += self._in_texts(args[0], args[1])
            else:
                texts.append(render(*args))
        return texts

    async def apply_unmoved(self, rows: WriteRows, meta: tuple[int, int], absent: list[bytes]) -> bool | None:
        """Write `rows` and commit, in one round trip, only if the meta row is still at `meta`
        (revision, compaction revision) and none of `absent` has a current row; whether it wrote
        (None: too large for one query, not sent).
        `rows` must change the meta row (a new revision or compaction revision): the guard is an
        UPDATE of it, whose count of changed rows says whether it matched; when it did not, the next
        statement fails (`_STOP_UNLESS_GUARDED`), so the rows are not written, and the transaction,
        which holds a lock on the meta row's key from that failure, is rolled back at once."""
        guard = render(sql.UPDATE_META + " AND revision = ? AND compact_revision = ?", (*rows.meta, *meta))
        if absent:
            guard += " AND NOT " + render(self._in(_ANY_CURRENT_IN_KEYS, len(absent)), absent)
        # The guard is the meta row's UPDATE: of `apply_requests`' statements, all but that last one.
        rows_texts = self._apply_texts(rows)[:-1]
        if self._compound:
            texts = [*_START_WRITE, guard, _SIGNAL_UNLESS_GUARDED, *rows_texts, "COMMIT"]
            if _length(texts) > self._max_statement:
                return None
            try:
                await self._cur.execute(compound(texts))
            except aiomysql.MySQLError as exc:
                if error_code(exc) != _SIGNALLED:
                    raise
                await self._conn.rollback()
                return False
            return True
        texts = [*_START_WRITE, guard, _STOP_UNLESS_GUARDED, *rows_texts, "COMMIT"]
        if _length(texts) > self._max_statement:
            return None
        await self._cur.execute(";".join(texts))  # the first statement's result
        for _ in _START_WRITE:
            await self._cur.nextset()  # up to the guard's
        if int(self._cur.rowcount) != 1:
            try:
                await self._cur.nextset()
            except aiomysql.IntegrityError as exc:
                if error_code(exc) != _DUPLICATE_ENTRY:
                    raise
                await self._conn.rollback()
                return False
            raise BackendError("MySQL: a write whose guard did not match went on")  # never: a bug
        while await self._cur.nextset():
            pass
        return True

    async def run_all(self, texts: list[str]) -> None:
        """`texts` (statements without rows) as one multi-statement query (aiomysql always connects with
        CLIENT.MULTI_STATEMENTS), on MariaDB as one compound statement: one round trip; an error in any
        of them is raised."""
        if self._compound and len(texts) > 1:
            await self._query(compound(texts))
            return
        await self._query(";".join(texts))
        while await self._cur.nextset():
            pass

    def _in_texts(self, statement: str, values: Sequence[Any]) -> list[str]:
        return [render(self._in(statement, len(chunk)), chunk) for chunk in chunks(values, IN_CHUNK)]

    def _insert_texts(self, table: Table, rows: list[tuple[Any, ...]], upsert: bool) -> list[str]:
        """Multi-row INSERT (or REPLACE) statements, each at most `_max_statement` bytes."""
        head = _insert_head(table, upsert)
        texts: list[str] = []
        parts: list[str] = []
        size = len(head)
        for row in rows:
            values = "(" + ",".join([literal(value) for value in row]) + ")"
            if parts and size + len(values) + 1 > self._max_statement:
                texts.append(head + ",".join(parts))
                parts, size = [], len(head)
            parts.append(values)
            size += len(values) + 1
        if parts:
            texts.append(head + ",".join(parts))
        return texts

    async def stream(
        self, statement: str, args: Sequence[Any], *, batch: int = 1000
    ) -> AsyncIterator[list[Row]]:
        if self._prefix:  # the transaction starts before the rows are read, on its own cursor
            prefix, self._prefix = self._prefix, []
            await self.run_all(prefix)
        async with self._conn.cursor(aiomysql.SSCursor) as cursor:
            await cursor.execute(render(statement, args))
            while rows := await cursor.fetchmany(batch):
                yield list(rows)


@functools.cache
def _insert_head(table: Table, upsert: bool) -> str:
    verb = "REPLACE" if upsert else "INSERT"
    return quote_key(f"{verb} INTO {table.name} ({', '.join(table.columns)}) VALUES ")


def _length(texts: list[str]) -> int:
    """The length of `texts` sent as one query (with a compound statement's 22 more characters)."""
    return sum(len(text) + 1 for text in texts) + 22


_COM_QUIT = b"\x01\x00\x00\x00\x01"  # a packet of one byte, sequence 0: COM_QUIT


def _quit(conn: Any) -> None:
    """Close `conn`, saying so to the server first as aiomysql's `ensure_closed` does (the server counts
    no aborted connection), but without waiting: the transport sends the packet before it closes."""
    writer = conn._writer
    if writer is not None:
        with contextlib.suppress(RuntimeError, OSError):  # lost already: closing is all there is
            writer.write(_COM_QUIT)
    conn.close()


def _reusable(conn: Any) -> bool:
    """Open, no transaction left open, and nothing from the server unread: neither the end of the stream
    nor the error packet MySQL 8.0 sends before closing a connection idle too long (aiomysql's pool
    checks the same of each free connection)."""
    reader = conn._reader
    if reader is None or conn.get_transaction_status():  # closed, or in a transaction
        return False
    return not (reader.at_eof() or reader.exception() or getattr(reader, "eof_received", False))


class _Connections:
    """aiomysql's pool behind a free list: a connection given back in good order (open, no transaction
    left open) waits on `_idle`, with its cursor, and the next caller takes both again, last in first
    out, for a list pop and append. aiomysql's own acquire and release cost about 30 µs of CPU a
    session under cProfile, and a new cursor about 7 µs (a condition's lock, a scan of the free
    connections, a task to wake waiters, a future; docs/performance.md, session 9).

    The pool still opens every connection (the init command) and counts it towards its `maxsize`: an idle
    connection here stays acquired from it. A connection given back with an error (the caller's
    exception), closed, in a transaction or with the server's goodbye unread is closed and never handed
    out again (a caller waiting for the pool is woken to open another); one given back in good order
    while another caller waits for the pool goes to the pool, which hands it to that caller (so it never
    waits on connections idling here); on `close`, every idle one is closed. A connection idle here for
    `idle_timeout` seconds is closed, as aiomysql's `pool_recycle` closes its own (so that the server's
    `wait_timeout` never closes it first); the pool opens one again when a caller needs it."""

    __slots__ = ("_closing", "_idle", "_idle_timeout", "_trimming", "_waiting", "pool")

    def __init__(self, pool: aiomysql.Pool, idle_timeout: float) -> None:
        self.pool = pool
        self._idle: collections.deque[tuple[Any, Any, float]] = collections.deque()
        """Connections given back in good order, with their cursor and when (`time.monotonic`); the
        newest last."""
        self._idle_timeout = idle_timeout
        self._trimming: asyncio.TimerHandle | None = None
        self._waiting = 0  # callers waiting for `pool.acquire`
        self._closing = False

    async def take(self) -> tuple[Any, Any]:
        """A connection and a cursor on it."""
        idle = self._idle
        while idle:
            conn, cur, _ = idle.pop()
            if _reusable(conn):
                return conn, cur
            await self._discard(conn)  # lost while idle (a server restart)
        if self._closing:
            raise aiomysql.InterfaceError("the pool is closing")
        self._waiting += 1
        try:
            conn = await self.pool.acquire()
        finally:
            self._waiting -= 1
        return conn, await conn.cursor()

    async def give_back(self, conn: Any, cur: Any, failed: bool) -> None:
        if failed or not _reusable(conn):
            await self._discard(conn)
        elif self._waiting or self._closing:
            await self.pool.release(conn)  # to the caller waiting for it (closed if the pool is closing)
        else:
            self._idle.append((conn, cur, time.monotonic()))
            if self._trimming is None:
                self._trimming = asyncio.get_running_loop().call_later(self._idle_timeout, self._trim)

    async def _discard(self, conn: Any) -> None:
        """Close `conn` for good (the server rolls back what it left open)."""
        _quit(conn)
        self.pool.release(conn)  # a closed connection: the pool forgets it, and wakes nobody
        if self._waiting or self._closing:
            # A caller waiting for the pool opens one in its place; the pool's `wait_closed` counts it.
            await self.pool._wakeup()

    def _trim(self) -> None:
        """Close the connections idle for `idle_timeout` (the oldest first)."""
        self._trimming = None
        idle = self._idle
        expired = time.monotonic() - self._idle_timeout
        while idle and idle[0][2] <= expired:
            conn = idle.popleft()[0]
            _quit(conn)
            self.pool.release(conn)  # nobody waits for the pool while connections idle here
        if idle:
            wait = max(idle[0][2] - expired, 0.1)
            self._trimming = asyncio.get_running_loop().call_later(wait, self._trim)

    def close(self) -> None:
        """Close every idle connection and the pool: the connections in use close as they come back
        (`wait_closed`)."""
        self._closing = True
        if self._trimming is not None:
            self._trimming.cancel()
            self._trimming = None
        self.pool.close()
        while self._idle:
            conn = self._idle.pop()[0]
            _quit(conn)
            self.pool.release(conn)

    async def wait_closed(self) -> None:
        await self.pool.wait_closed()

    def terminate(self) -> None:
        """Close every connection, idle here, in use or in the pool."""
        self.close()
        self.pool.terminate()


class _Held:
    """A `_MySession` on a connection of `_Connections`, given back on leaving: what the driver raises
    leaves as a `BackendError` (`MySQLBackend._errors`). A class rather than a generator, since most
    sessions are these alone (`MySQLBackend._session("none")`; a generator context manager costs a
    few µs more)."""

    __slots__ = ("_backend", "_conn", "_connections", "_cur")

    def __init__(self, backend: MySQLBackend, connections: _Connections) -> None:
        self._backend = backend
        self._connections = connections

    async def __aenter__(self) -> _MySession:
        backend = self._backend
        try:
            conn, cur = await self._connections.take()
        except backend.driver_errors as exc:
            raise backend._error(backend._underlying(exc)) from exc
        self._conn, self._cur = conn, cur
        if conn not in backend._connections:
            backend._connections.add(conn)
            backend._epoch += 1  # perhaps another server (a failover): `_cache` may not hold there
        engine = backend.replication.engine
        one_query = not engine
        compound = one_query and backend._compound_writes
        return _MySession(conn, cur, backend._max_statement, one_query=one_query, compound=compound)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        backend = self._backend
        try:
            await self._connections.give_back(self._conn, self._cur, exc is not None)
        except backend.driver_errors as error:
            raise backend._error(backend._underlying(error)) from error
        if isinstance(exc, backend.driver_errors):
            raise backend._error(backend._underlying(exc)) from exc


class MySQLBackend(ServerBackend):
    """kinepy's storage model in a MySQL or MariaDB database (created when missing and permitted)."""

    name = "MySQL"
    max_key_bytes = MAX_KEY_BYTES
    driver_errors = (aiomysql.MySQLError, OSError)
    # MySQL cannot name the DELETE target in a subquery (error 1093): the table joins itself.
    statements = server_statements(
        "DELETE o FROM kv_log o JOIN kv_log n ON o.key = n.key AND o.revision < n.revision "
        "WHERE n.revision > ? AND n.revision <= ?"
    )

    def __init__(self, spec: MySQLSpec, **options: Unpack[ServerOptions]) -> None:
        super().__init__(spec, **options)
        self.spec = spec
        # A connection idle that long is closed (`_Connections`, and aiomysql's pool_recycle); never
        # beyond _POOL_RECYCLE, so that the server's wait_timeout does not close it first. MySQL has
        # no LISTEN/NOTIFY: the other workers hear of each commit only through `_changes`.
        idle = self._idle_timeout
        self._recycle = min(idle, _POOL_RECYCLE) if idle > 0 else _POOL_RECYCLE
        url_options = spec.options
        timeout = url_options.get("timeout")
        self._attempt_timeout = _seconds(timeout) if timeout else ATTEMPT_TIMEOUT
        self._ssl = ssl_context(url_options)
        self._pool: _Connections | None = None
        self._max_statement = 1024 * 1024
        self._compound_writes = False
        """Whether the server takes compound statements outside stored programs (MariaDB; `compound`)."""
        self.replication = Replication("")
        self._init_command = ""
        self._route_writes = _galera_writes(url_options)
        self._writes: _Connections | None = None
        """On Galera, the pool to the node every kinepy writes through (None: this endpoint's)."""
        self.writer = ""
        """That node's address ("" while writes go through this endpoint)."""
        self._route_checked = -math.inf
        self._route_lock = asyncio.Lock()
        self._told_no_addresses = False
        self._route_known = False
        self._writer_failed = False
        self._cache = WriteCache()
        self._epoch = 0  # connections opened: the cache holds only within one epoch
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- errors --------------------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        return is_retryable(exc)

    def _conflicted(self, exc: BaseException) -> bool:
        return is_conflict(exc)

    def _describe(self, exc: BaseException) -> str:
        return _describe(exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        spec = self.spec
        args: dict[str, Any] = {
            "user": spec.user,
            "password": spec.password or "",
            "connect_timeout": self._attempt_timeout,
            "autocommit": True,
            "charset": "utf8mb4",
            "ssl": self._ssl,
            "local_infile": False,
        }
        if spec.unix_socket is not None:
            args["unix_socket"] = spec.unix_socket
        else:
            args["host"] = spec.host
            args["port"] = spec.port
        return args

    async def _require_tls(self, conn: aiomysql.Connection) -> None:
        """PyMySQL goes on in plain text when the server offers no TLS, whatever the client asked
        for; go-sql-driver (kine) refuses. So does kinepy."""
        async with conn.cursor() as cur:
            await cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            rows = await cur.fetchall()
        if not rows or not rows[0][1]:
            raise BackendError(
                f"MySQL server at {self.spec.describe()} does not support TLS, which the endpoint's "
                "tls=/ssl-* options or --datastore-ca-file/--datastore-cert-file ask for"
            )

    async def _bootstrap(self) -> str:
        """Connect once (creating the database if missing); learn the server and how it names the
        session isolation variable; return the pool's init command."""
        database = self.spec.database
        try:
            conn = await aiomysql.connect(db=database, **self._connect_args())
        except aiomysql.OperationalError as exc:
            if error_code(exc) != _UNKNOWN_DATABASE:
                raise
            conn = await aiomysql.connect(**self._connect_args())
            try:
                async with conn.cursor() as cur:
                    await cur.execute(f"CREATE DATABASE {quote_identifier(database)}")
                log.info("created MySQL database %r", database)
            except aiomysql.MySQLError as create_exc:
                if error_code(create_exc) != _DATABASE_EXISTS:
                    if error_code(create_exc) in _ACCESS_DENIED:
                        raise self._cannot_create(database, _describe(create_exc)) from create_exc
                    raise
            finally:
                conn.close()
            conn = await aiomysql.connect(db=database, **self._connect_args())
        try:
            if tls_required(self.spec.options):
                await self._require_tls(conn)
            async with conn.cursor() as cur:
                await cur.execute("SELECT @@version, @@max_allowed_packet")
                version, max_packet = (await cur.fetchall())[0]
                try:
                    await cur.execute("SELECT @@transaction_isolation")
                    variable = "transaction_isolation"
                except aiomysql.OperationalError:
                    variable = "tx_isolation"  # MariaDB before 11.1
                replication = await self._detect_replication(cur)
        finally:
            conn.close()
        self.server_version = str(version)
        self._compound_writes = "mariadb" in self.server_version.lower()
        self._max_statement = max(64 * 1024, min(int(max_packet) - 64 * 1024, _MAX_STATEMENT_BYTES))
        self.replication = replication
        init = f"SET SESSION sql_mode = '{_SQL_MODE}', SESSION {variable} = 'READ-COMMITTED'"
        return f"{init}, {replication.session}" if replication.session else init

    async def _detect_replication(self, cur: Any) -> Replication:
        """Whether the server is a Galera node or a Group Replication member (logged)."""
        replication, read_only = await read_replication(cur)
        if replication.engine:
            log.info("MySQL server at %s is %s", self.spec.describe(), replication.summary)
        if replication.single_writer and read_only:
            log.warning(
                "MySQL server at %s is a secondary of a single-primary Group Replication group: it "
                "refuses writes; point kinepy at the primary (or a router that follows it)",
                self.spec.describe(),
            )
        return replication

    @property
    def _node_locks(self) -> bool:
        """Whether GET_LOCK excludes other kinepy processes: not on Galera, where it is local to
        the node (and refused by some versions); conflicting transactions are run again there."""
        return self.replication.engine != "galera"

    async def _create_pool(self, init_command: str, **connect_args: Any) -> _Connections:
        """The pool's connections behind a free list (`_Connections`); `connect_args` override
        `_connect_args()` (another node's address)."""
        pool = await aiomysql.create_pool(
            minsize=1,
            maxsize=self._pool_size,
            db=self.spec.database,
            init_command=init_command,
            pool_recycle=self._recycle,
            **(self._connect_args() | connect_args),
        )
        return _Connections(pool, self._recycle)

    async def _open(self) -> None:
        self._init_command = await self._bootstrap()
        self._pool = await self._create_pool(self._init_command)
        if self._routes_writes:
            await self._check_route()

    # -- Galera: every kinepy writes through one node --------------------------------------------

    @property
    def _routes_writes(self) -> bool:
        return self.replication.engine == "galera" and self._route_writes

    async def _check_route(self) -> None:
        """Every `_ROUTE_CHECK_INTERVAL` seconds, learn the cluster's nodes from this endpoint and
        write through the chosen one; at once, reconnecting, after a write through it failed (a node
        that cannot be reached then is skipped: writes go through this endpoint)."""
        if not self._writer_failed and time.monotonic() - self._route_checked < _ROUTE_CHECK_INTERVAL:
            return
        async with self._route_lock:
            force = self._writer_failed
            if not force and time.monotonic() - self._route_checked < _ROUTE_CHECK_INTERVAL:
                return
            self._route_checked = time.monotonic()
            self._writer_failed = False
            try:
                addresses = await self._galera_addresses()
            except BackendError as exc:
                log.warning("Galera: cannot read the cluster's nodes (%s); writes go on as before", exc)
                return
            writer = galera_writer(addresses)
            if writer is None and not self._told_no_addresses:
                self._told_no_addresses = True
                log.warning(
                    "Galera: the nodes report no client address (wsrep_incoming_addresses=%s): every kinepy "
                    "writes through its own node and runs conflicting batches again; set "
                    "wsrep_node_incoming_address=HOST:PORT on every node to write through one node",
                    addresses,
                )
            if writer == self._own_address():
                writer = None
            if writer == (self.writer or None) and not force and self._route_known:
                return
            self._route_known = True
            await self._write_through(writer)

    async def _galera_addresses(self) -> str:
        """The client addresses of the cluster's nodes, as this node knows them: its
        `wsrep_incoming_addresses` (which may lag behind a join for a long while) and, when kinepy's
        user may read it, the `mysql.wsrep_cluster_members` table (Galera 4), comma-separated."""
        async with self._session("none") as session:
            row = await session.fetchone("SHOW GLOBAL STATUS LIKE 'wsrep_incoming_addresses'")
            addresses = [str(row[1])] if row else []
            with contextlib.suppress(aiomysql.MySQLError):  # no such table, or no privilege on it
                members = await session.fetch("SELECT node_incoming_address FROM mysql.wsrep_cluster_members")
                addresses += [str(member[0]) for member in members]
        return ",".join(addresses)

    def _own_address(self) -> str:
        return f"{self.spec.host}:{self.spec.port}" if self.spec.unix_socket is None else ""

    async def _write_through(self, writer: str | None) -> None:
        """Send write transactions to node `writer` (None: to this endpoint)."""
        old, self._writes, self.writer = self._writes, None, ""
        if old is not None:
            old.close()  # its connections close as they come back
        if writer is not None:
            host, _, port = writer.rpartition(":")
            address = {"host": host.strip("[]"), "port": int(port), "unix_socket": None}
            try:
                self._writes = await self._create_pool(self._init_command, **address)
                self.writer = writer
            except (aiomysql.MySQLError, OSError) as exc:
                log.warning(
                    "Galera: cannot reach node %s (%s); writes go through %s and conflicts are retried",
                    writer,
                    self._scrub(_describe(exc)),
                    self.spec.describe(),
                )
                return
        log.info(
            "Galera: write batches go through %s, the node every kinepy of the cluster picks (the lowest "
            "address); reads stay on %s",
            self.writer or "this node",
            self.spec.describe(),
        )

    async def _create_schema(self) -> None:
        await self._retrying_conflicts("creating the schema", self._create_schema_once)

    async def _create_schema_once(self) -> None:
        async with self._session("none") as session:
            if self._node_locks:
                row = await session.fetchone("SELECT GET_LOCK(?, 60)", (_SCHEMA_LOCK,))
                if not row or row[0] != 1:
                    raise BackendUnavailable("MySQL: another kinepy held the schema lock for 60 s")
            try:
                existing = {
                    str(r[0]).lower()
                    for r in await session.fetch(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
                    )
                }
                for table, ddl in _SCHEMA:
                    if table not in existing:
                        await session.execute(ddl)
                await self._init_meta(session)
            except aiomysql.MySQLError as exc:
                # Without a cluster-wide lock (Galera), a kinepy on another node may create a table
                # or the meta row first: run again, finding them.
                if error_code(exc) in (_TABLE_EXISTS, _DUPLICATE_ENTRY):
                    raise BackendConflict(f"MySQL: {_describe(exc)}") from exc
                raise
            finally:
                if self._node_locks:
                    await session.execute("SELECT RELEASE_LOCK(?)", (_SCHEMA_LOCK,))

    async def aclose(self) -> None:
        if self._changes is not None:
            self._changes.close()
        writes, self._writes = self._writes, None
        if writes is not None:
            writes.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writes.wait_closed(), 10.0)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), 10.0)
        except TimeoutError:
            log.warning("closing the MySQL pool took too long; terminating its connections")
            pool.terminate()

    def _session(self, kind: str) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        pool = self._pool
        if kind == "none" and pool is not None:  # most sessions: no generator around `_Held`
            return _Held(self, pool)
        return self._transaction(kind)

    @contextlib.asynccontextmanager
    async def _transaction(self, kind: str) -> AsyncIterator[AsyncSession]:
        pool = self._pool
        if pool is None:
            raise BackendUnavailable("the MySQL backend is closed")
        if kind != "write" or not self._routes_writes:
            async with self._pool_session(pool, kind) as session:
                yield session
            return
        await self._check_route()
        writes = self._writes
        try:
            async with self._pool_session(writes or pool, kind) as session:
                yield session
        except BackendConflict:
            raise
        except BackendUnavailable:
            if writes is not None:
                self._writer_failed = True  # it may be gone: look again, and reconnect, before the next write
            raise

    @contextlib.asynccontextmanager
    async def _pool_session(self, pool: _Connections, kind: str) -> AsyncIterator[_MySession]:
        async with _Held(self, pool) as session:
            if kind == "none":
                yield session
                return
            conn, cur = session._conn, session._cur
            if kind == "write":
                if session._one_query:
                    session.defer(_START_WRITE)  # sent with the transaction's first statement
                else:
                    for text in _START_WRITE:
                        await cur.execute(text)
            else:
                await cur.execute(_START_READ)  # one round trip: the isolation, then the snapshot
                await cur.nextset()
            try:
                yield session
            except BaseException:
                # The connection is closed (`_Held`), which rolls back too; at once, for the locks.
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise
            if not session.committed:
                await conn.commit()

    # -- reads -----------------------------------------------------------------------------------

    async def read_range(self, query: RangeQuery) -> RangeRows:
        """A single key at the latest revision in two columns (`_GET`); any other read as every server
        database reads it."""
        key_range = query.key_range
        if query.revision > 0 or query.count_only or key_range.end != key_range.start + b"\0":
            return await super().read_range(query)
        async with self._session("none") as session:
            rows = await session.fetch(_GET_KEYS_ONLY if query.keys_only else _GET, (key_range.start,))
        return _got(key_range.start, rows)

    # -- writes ----------------------------------------------------------------------------------

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        """Told of a commit of another worker of this server (`ChangePipes`); other kinepy
        processes on the database are seen by polling, every `max_wait`."""
        if self._changes is None:
            await asyncio.sleep(max_wait)
            return []
        told = await self._changes.wait(max_wait)
        self._follow(told)
        return told

    def _follow(self, told: list[Commit]) -> None:
        """The write cache goes on past the other workers' commits told with their events (a told
        commit never compacts: the compaction revision stays), so that workers taking turns keep
        writing in one round trip instead of each batch finding the database moved and reading."""
        cache = self._cache
        for commit in told:
            version = cache.version
            if commit.events is None or not isinstance(version, tuple):
                continue
            compact = version[1]
            cache.follow((commit.after, compact), (commit.revision, compact), commit.revision, commit.events)

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        write_set = await self._write_batch(read_set, evaluate)
        if self._changes is not None and write_set is not None:
            self._changes.announce(write_set)
        return write_set

    async def _write_batch(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        """On a single server, one round trip in the steady state: a batch whose read set `_cache`
        answers (keys only) is evaluated on it and written, with its COMMIT, by one multi-statement
        query that writes only if the meta row is where this process's last commit left it and the
        keys the cache does not know are absent (`_MySession.apply_unmoved`). Otherwise two: the
        transaction's start, the meta row locked and the read set's keys in one query, then the rows
        and the COMMIT in another. On Galera and Group Replication, as every server database runs a
        batch, statement by statement."""
        if self.replication.engine:
            return await super().write(read_set, evaluate)
        capture = Remembered(self._checked(evaluate))
        cache, epoch = self._cache, self._epoch
        cached = cache.snapshot(read_set, epoch, leases=False)
        if cached is not None:
            snapshot, unknown = cached
            meta = (snapshot.revision, snapshot.compact_revision)
            write_set = capture(snapshot)
            if write_set is not None:
                rows = write_rows(write_set, snapshot.compact_revision)
                if rows.meta != meta:
                    async with self._session("none") as session:
                        wrote = await cast(_MySession, session).apply_unmoved(rows, meta, unknown)
                    if wrote:
                        cache.record(rows.meta, epoch, read_set, snapshot, write_set, chained=True)
                        return write_set
                    if wrote is not None:
                        cache.failed()
            # Nothing to write (a failed compare is answered from a read, never from memory), too
            # large for one query, or another write came between: the ordinary way.
        async with self._session("write") as session:
            cast(_MySession, session).prefetch(list(read_set.keys))
            write_set = await run_async(write_steps(self.statements, read_set, capture), session)
        if write_set is not None:
            # Read under the meta row's lock: still at the cache's version means nobody else wrote.
            read = capture.seen
            assert read is not None  # evaluated, as it returned a write set
            version = meta_after(write_set, read.compact_revision)
            chained = (read.revision, read.compact_revision) == cache.version
            cache.record(version, epoch, read_set, read, write_set, chained=chained)
        return write_set

    # -- maintenance ---------------------------------------------------------------------------

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        if not self._node_locks:  # two nodes deleting the same rows conflict; one runs again
            return await super().compact_batch(compact_revision, after, upto, max_rows)
        # GET_LOCK belongs to a connection, not a transaction: held on one of its own around the batch.
        async with self._session("none") as lock:
            row = await lock.fetchone("SELECT GET_LOCK(?, ?)", (_COMPACT_LOCK, _COMPACT_LOCK_WAIT))
            if not row or row[0] != 1:
                raise BackendUnavailable(
                    f"MySQL: another kinepy held the compaction lock for {_COMPACT_LOCK_WAIT} s"
                )
            try:
                return await super().compact_batch(compact_revision, after, upto, max_rows)
            finally:
                with contextlib.suppress(Exception):
                    await lock.execute("SELECT RELEASE_LOCK(?)", (_COMPACT_LOCK,))

    async def _sizes(self, session: AsyncSession) -> tuple[int, int]:
        row = await session.fetchone(_SIZES)
        if not row:
            return 0, 0
        return int(row[0]), int(row[1])

    async def _defragment(self) -> None:
        # InnoDB runs OPTIMIZE TABLE as an online rebuild (recreate + analyze).
        async with self._session("none") as session:
            await session.fetch("OPTIMIZE TABLE kv_log, kv_current, leases")
