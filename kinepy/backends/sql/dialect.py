"""What PostgreSQL and MySQL/MariaDB share: statement conversion, their statements, the backend.

`statements.py` writes SQL once, with `?` placeholders. A server database needs three rewrites, each
done once per distinct statement text (cached), never per call:

- placeholders: `$1, $2, …` for asyncpg, `%s` for aiomysql (whose own `%` must then be doubled);
- `x''` (an empty BLOB in SQLite and MySQL) is a *bit string* in PostgreSQL: it becomes `''::bytea`;
- `key` is a reserved word in MySQL: it becomes `` `key` ``.

`ServerBackend` runs the SQL core (core.py: the write transaction, compaction, hashing) and the
Range of one round trip; a subclass supplies connections, transactions and a `AsyncSession` that talks
its driver, including the set-based statements each database does best (`= ANY($1)` arrays and
`unnest` on PostgreSQL, `IN (…)` lists and multi-row `INSERT`/`REPLACE` on MySQL).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypedDict, TypeVar

from kinepy.backends.base import BackendStatus, Commit, Evaluate, RangeRows, ReadSet, Snapshot, WriteSet
from kinepy.backends.changes import ChangePipes
from kinepy.backends.sql import core
from kinepy.backends.sql import statements as sql
from kinepy.errors import BackendConflict, BackendError, BackendUnavailable
from kinepy.types import Event, KeyRange, Lease, RangeQuery

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_POOL_SIZE = 10
DEFAULT_CONNECT_TIMEOUT = 30.0  # seconds to keep retrying an unreachable server at start
ATTEMPT_TIMEOUT = 10.0  # seconds for one connection attempt

# A transaction that a multi-primary database rolled back for a conflict (`BackendConflict`) runs
# again up to CONFLICT_ATTEMPTS times in all, after a pause drawn uniformly from [0, min(cap, first *
# 2**retry)] (full jitter: nodes that collided do not collide again in step).
CONFLICT_ATTEMPTS = 10
CONFLICT_FIRST_PAUSE = 0.002  # seconds
CONFLICT_PAUSE_CAP = 0.1  # seconds

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


def _at_revision_parts(
    key_range: KeyRange, revision: int, cols_log: str, cols_cur: str, limit: int = 0
) -> sql.Statement:
    """The keys of `key_range` as they were at `revision` (unordered); with `limit`, enough of them
    for the first `limit` in key order.

    Keys not changed since `revision` come from kv_current (`unchanged_since`; without its limit,
    MariaDB would copy the whole range into a temporary table). For the keys changed
    since (found by the primary key, `revision > R`), first the newest revision at or below R (one
    backward step in the `(key, revision)` index), then that one row by both columns; a tombstone
    means the key was absent. SQLite's form (sqlite.py) filters every history row of a changed key
    with a correlated subquery, and MariaDB plans its `IN (…)` as a scan of the whole log: the cost
    must follow the page and the changes since R, not the history.
    """
    current, args = sql.unchanged_since(key_range, revision, cols_cur, limit, derived_table=False)
    cond_chg, p_chg = sql.range_condition(key_range, "c.key")
    stmt = (
        f"{current} UNION ALL "
        f"(SELECT {cols_log} FROM (SELECT ch.key, "
        "(SELECT max(m.revision) FROM kv_log m WHERE m.key = ch.key AND m.revision <= ?) AS revision "
        f"FROM (SELECT DISTINCT c.key FROM kv_log c WHERE c.revision > ? AND {cond_chg}) ch) k "
        "JOIN kv_log l ON l.key = k.key AND l.revision = k.revision WHERE l.tombstone = 0)"
    )
    return stmt, [*args, revision, revision, *p_chg]


def _count_at_revision(key_range: KeyRange, revision: int) -> sql.Statement:
    inner, args = _at_revision_parts(key_range, revision, "l.key", "key")
    return f"SELECT count(*) FROM ({inner}) AS r", args


def server_statements(compact_superseded: str) -> sql.Statements:
    """The statements of PostgreSQL and MySQL, which differ only in how they delete superseded history."""
    return sql.Statements(
        select_meta_for_write=sql.SELECT_META + " FOR UPDATE",
        at_revision_parts=_at_revision_parts,
        count_at_revision=_count_at_revision,
        compact_superseded=compact_superseded,
    )


class ServerSpec(Protocol):
    """What the backend itself needs of a server database's endpoint."""

    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    def describe(self) -> str:
        """The endpoint, password shown as ***."""


class ServerOptions(TypedDict, total=False):
    """What a PostgreSQL or MySQL backend is opened with besides its spec (`ServerBackend.__init__`;
    `backends/factory.py` maps the settings onto it once for both)."""

    pool_size: int
    connect_timeout: float
    idle_timeout: float
    changes: ChangePipes | None


class ServerBackend(abc.ABC):
    """The storage model (kv_log, kv_current, meta, leases) on a database server.

    Subclasses provide `_session(kind)`: an async context manager yielding an `AsyncSession` in a
    transaction of the given kind: "read" (a consistent snapshot, read only), "write" (read
    committed; `write` locks the meta row first, so writers serialise across processes and every
    statement after the lock sees every earlier commit) or "none" (autocommit).
    """

    name = "SQL"
    statements: sql.Statements
    shared = True
    """Other kinepy processes may write to the same database."""
    max_key_bytes = 0
    """Longest key the key indexes accept; longer keys are refused before any statement runs."""

    schema_version: int = 0
    allow_incomplete_copy = False
    """Start on a database holding an incomplete copy (only the copy itself does: bulk.py)."""
    driver_errors: tuple[type[BaseException], ...] = (OSError,)
    """What the driver raises: turned into `BackendUnavailable` (worth a retry) or `BackendError`."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = 0.0,
        changes: ChangePipes | None = None,
    ) -> None:
        self._password = spec.password
        self._user = spec.user
        self._endpoint = spec.describe()
        self._pool_size = max(2, pool_size)
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        """How long a pooled connection may stay idle; 0: the driver's default."""
        self._changes = changes
        """The other workers of `kinepy --workers N`, told of each commit with its events."""
        self._log = logging.getLogger(type(self).__module__)
        self.server_version = ""
        self.cluster_id = 0
        self.member_id = 0
        self.conflicts = 0
        """Transactions rolled back for a conflict with another node's commit (and run again)."""

    @abc.abstractmethod
    def _session(self, kind: str) -> AbstractAsyncContextManager[core.AsyncSession]: ...

    # -- errors: passwords never in an error or a log line ---------------------------------------

    def _scrub(self, text: str) -> str:
        password = self._password
        return text.replace(password, "***") if password else text

    @abc.abstractmethod
    def _retryable(self, exc: BaseException) -> bool:
        """Whether `exc` says the server is unreachable or busy right now, not that a statement is wrong."""

    def _describe(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    def _underlying(self, exc: BaseException) -> BaseException:
        """The error to report when the driver raised `exc`."""
        return exc

    def _conflicted(self, exc: BaseException) -> bool:
        """Whether `exc` says a multi-primary database rolled the transaction back because of a
        conflicting commit on another node (none on a single server)."""
        return False

    def _error(self, exc: BaseException, what: str = "") -> BackendError:
        prefix = f"{self.name} {what}".rstrip()
        message = self._scrub(f"{prefix}: {self._describe(exc)}")
        if self._conflicted(exc):
            return BackendConflict(message)
        return BackendUnavailable(message) if self._retryable(exc) else BackendError(message)

    async def _retrying_conflicts(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, again while it raises `BackendConflict` (each time a whole transaction that
        did not commit), at most `CONFLICT_ATTEMPTS` times in all with jittered exponential pauses;
        then that `BackendConflict`."""
        for retry in range(CONFLICT_ATTEMPTS):
            try:
                return await attempt()
            except BackendConflict as exc:
                self.conflicts += 1
                if retry == CONFLICT_ATTEMPTS - 1:
                    self._log.warning("%s conflicted %d times in a row; giving up: %s", what, retry + 1, exc)
                    raise
                pause = random.uniform(0.0, min(CONFLICT_PAUSE_CAP, CONFLICT_FIRST_PAUSE * 2**retry))
                self._log.debug("%s conflicted (%s); retry %d in %.3fs", what, exc, retry + 1, pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _errors(self, what: str = "") -> Iterator[None]:
        try:
            yield
        except self.driver_errors as exc:
            raise self._error(self._underlying(exc), what) from exc

    def _cannot_create(self, database: str, reason: str) -> BackendError:
        return BackendError(
            self._scrub(
                f"{self.name} database {database!r} does not exist and user {self._user!r} "
                f"may not create it: {reason}"
            )
        )

    # -- lifecycle -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect the pool, creating the database when it is missing (and permitted)."""

    @abc.abstractmethod
    async def _create_schema(self) -> None:
        """Create or check the tables and the meta row (`_init_meta`), under a lock of the database."""

    async def connect_retrying(
        self, connect: Callable[[], Awaitable[None]], retry_for: float | None = None
    ) -> None:
        """Run `connect`, again every second while the server is unreachable, for `retry_for`
        seconds (default: the connect timeout); its errors as `_errors` reports them."""
        deadline = time.monotonic() + (self._connect_timeout if retry_for is None else retry_for)
        while True:
            try:
                with self._errors(f"at {self._endpoint}"):
                    await connect()
                return
            except BackendUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                self._log.warning("%s; retrying", exc)
                await asyncio.sleep(1.0)

    async def start(self) -> None:
        """Connect, retrying while the server is unreachable (`connect_timeout` s); create the schema."""
        await self.connect_retrying(self._open)
        try:
            await self._create_schema()
        except BaseException:
            await self.aclose()
            raise
        self._log.info(
            "%s database %s ready (server %s, schema version %d)",
            self.name,
            self._endpoint,
            self.server_version or "?",
            self.schema_version,
        )

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release every connection; idempotent."""

    # -- schema --------------------------------------------------------------------------------

    async def _init_meta(self, session: core.AsyncSession) -> None:
        """Create the meta row, or check the schema version of an existing one (in the schema lock)."""
        row = await session.fetchone(sql.SELECT_META_IDS)
        if row is None:
            cluster_id = random.getrandbits(63) or 1
            member_id = random.getrandbits(63) or 1
            await session.execute(sql.INSERT_META, (sql.SCHEMA_VERSION, cluster_id, member_id))
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
            return core.meta_of(await session.fetchone(sql.SELECT_META))

    async def wait_for_change(self, max_wait: float) -> list[Commit]:
        """Polling: sleep `max_wait` (PostgreSQL overrides this with LISTEN/NOTIFY)."""
        await asyncio.sleep(max_wait)
        return []

    async def read_range(self, query: RangeQuery) -> RangeRows:
        """One statement, one round trip: the meta row joined to the rows (and the count), so the
        revisions and the rows come from one snapshot without a transaction around them."""
        stmt, args = core.range_statement(self.statements, query)
        async with self._session("none") as session:
            rows = await session.fetch(stmt, args)
        return core.range_rows(query, rows)

    async def read_events(
        self, key_range: KeyRange, *, after: int, upto: int, prev_kv: bool, limit: int = 0
    ) -> list[Event]:
        stmt, args = sql.select_events(key_range, after, upto, prev_kv=prev_kv, limit=limit)
        async with self._session("none") as session:
            return [core.event_of(row) for row in await session.fetch(stmt, args)]

    async def load_leases(self) -> list[Lease]:
        async with self._session("none") as session:
            return [core.lease_of(row) for row in await session.fetch(sql.SELECT_LEASES)]

    async def get_lease(self, lease_id: int) -> Lease | None:
        async with self._session("none") as session:
            row = await session.fetchone(sql.SELECT_LEASE, (lease_id,))
        return None if row is None else core.lease_of(row)

    async def expired_leases(self, now: float, limit: int) -> list[Lease]:
        async with self._session("none") as session:
            rows = await session.fetch(sql.SELECT_EXPIRED_LEASES, (now, limit))
        return [core.lease_of(row) for row in rows]

    async def lease_keys(self, lease_id: int) -> list[bytes]:
        async with self._session("none") as session:
            return [bytes(row[0]) for row in await session.fetch(sql.SELECT_LEASE_KEYS, (lease_id,))]

    # -- writes --------------------------------------------------------------------------------

    def _checked(self, evaluate: Evaluate) -> Evaluate:
        """`evaluate`, refusing a key the indexes cannot hold (`_check_keys`)."""

        def checked(snapshot: Snapshot) -> WriteSet | None:
            write_set = evaluate(snapshot)
            if write_set is not None:
                self._check_keys([key for key, kv in write_set.current.items() if kv is not None])
            return write_set

        return checked

    async def write(self, read_set: ReadSet, evaluate: Evaluate) -> WriteSet | None:
        checked = self._checked(evaluate)

        async def attempt() -> WriteSet | None:
            async with self._session("write") as session:
                return await core.run_async(core.write_steps(self.statements, read_set, checked), session)

        # Nothing of a batch is answered before it commits: a batch that conflicted runs again whole,
        # `evaluate` against the new snapshot.
        return await self._retrying_conflicts("a write batch", attempt)

    def _check_keys(self, keys: list[bytes]) -> None:
        """Refuse (before any row is written; the transaction rolls back) a key the indexes cannot hold."""
        limit = self.max_key_bytes
        if limit and keys:
            longest = max(len(key) for key in keys)
            if longest > limit:
                raise BackendError(
                    f"a key of {longest} bytes is longer than the {self.name} backend's limit of {limit}"
                )

    # -- compaction and maintenance ------------------------------------------------------------

    async def _lock_compaction(self, session: core.AsyncSession) -> None:
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
        async def attempt() -> tuple[int, int]:
            async with self._session("write") as session:
                await self._lock_compaction(session)
                steps = core.compact_steps(self.statements, compact_revision, after, upto, max_rows)
                return await core.run_async(steps, session)

        return await self._retrying_conflicts("a compaction batch", attempt)

    async def hash_kv(self, revision: int) -> tuple[int, int]:
        async with self._session("read") as session:
            current, compact = core.meta_of(await session.fetchone(sql.SELECT_META))
            upto = current if revision <= 0 else revision
            crc = 0
            async for rows in session.stream(sql.SELECT_LOG_FOR_HASH, (upto,)):
                crc = core.hash_rows(rows, crc)
            return crc, compact

    @abc.abstractmethod
    async def _sizes(self, session: core.AsyncSession) -> tuple[int, int]:
        """(size on disk, size in use) of kinepy's tables, in bytes."""

    async def status(self) -> BackendStatus:
        async with self._session("none") as session:
            current, compact = core.meta_of(await session.fetchone(sql.SELECT_META))
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
