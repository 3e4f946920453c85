"""Reading kine's own table (k3s-io/kine v0.16.4) on SQLite, PostgreSQL or MySQL, changing nothing.

kine keeps one table, `kine`: one row per change, `id` is the revision (an autoincrement),
`name` the key, `created`/`deleted` flag a create or a delete, `create_revision` and
`prev_revision` (the row this one supersedes), `lease` (kine's lease ids *are* their TTL in
seconds), `value`, `old_value`. Its schema (pkg/drivers/{sqlite,pgsql,mysql}) is checked column by
column; another schema is refused with the columns found.

Two kinds of rows are kine's bookkeeping, not keys, and are not read:

- `compact_rev_key`: one row whose `prev_revision` is the compaction revision (updated in place);
- gap fills (`Fill` in pkg/drivers/generic/generic.go): a deleted row named `gap-<id>` with no
  previous revision, inserted where an autoincrement id was skipped.

kine stores no versions (it answers 0); a key's version is counted here from its rows, from the
creation that opened its current life. For a key whose creation was compacted away, the count starts
at 2 on its oldest remaining row (a creation and at least this change): a lower bound, as kine kept
nothing more. The apiserver's `compact_rev_key` is stored by kine as `compact_rev_key_apiserver`
with the version in its value (`VERSION|VALUE`); it is read back as kine serves it.

The store revision is kine's (`MAX(id)`), so every revision stays what clients saw.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from kinepy.backends.base import LogRow
from kinepy.backends.sql.bulk import ServerSnapshot, SQLiteThread, connect_existing, read_only_uri
from kinepy.backends.sql.dialect import ServerBackend
from kinepy.errors import BackendError

KINE_VERSION = "v0.16.4"
KINE_COLUMNS = (
    "id",
    "name",
    "created",
    "deleted",
    "create_revision",
    "prev_revision",
    "lease",
    "value",
    "old_value",
)
COMPACT_REV_KEY = b"compact_rev_key"
APISERVER_COMPACT_KEY = b"compact_rev_key_apiserver"

# A row that is a key's change: not the compaction bookkeeping row, not a gap fill.
_DATA = "name <> 'compact_rev_key' AND NOT (deleted <> 0 AND prev_revision = 0 AND name LIKE 'gap-%')"
# The newest data row of each key at or below a revision.
_NEWEST = f"SELECT MAX(id) AS id FROM kine WHERE id <= ? AND {_DATA} GROUP BY name"

SELECT_REVISIONS = (
    "SELECT (SELECT MAX(id) FROM kine), (SELECT MAX(prev_revision) FROM kine WHERE name = 'compact_rev_key')"
)
_VERSIONED = (
    "SELECT id, name, created, deleted, create_revision, lease, value, "
    "ROW_NUMBER() OVER (PARTITION BY name, generation ORDER BY id) "
    "+ CASE WHEN generation = 0 THEN 1 ELSE 0 END AS version FROM "
    "(SELECT id, name, created, deleted, create_revision, lease, value, "
    "SUM(created) OVER (PARTITION BY name ORDER BY id ROWS UNBOUNDED PRECEDING) AS generation "
    f"FROM kine WHERE id <= ? AND {_DATA}) g"
)
SELECT_LOG = f"SELECT * FROM ({_VERSIONED}) v ORDER BY id"
COUNT_LOG = f"SELECT COUNT(*) FROM kine WHERE id <= ? AND {_DATA}"
# Current only: the newest row of each live key, and a delete at the store revision itself.
SELECT_LOG_CURRENT_ONLY = (
    f"SELECT v.* FROM ({_VERSIONED}) v JOIN ({_NEWEST}) n ON n.id = v.id "
    "WHERE v.deleted = 0 OR v.id = ? ORDER BY v.id"
)
COUNT_LOG_CURRENT_ONLY = (
    f"SELECT COUNT(*) FROM kine k JOIN ({_NEWEST}) n ON n.id = k.id WHERE k.deleted = 0 OR k.id = ?"
)
COUNT_CURRENT = f"SELECT COUNT(*) FROM kine k JOIN ({_NEWEST}) n ON n.id = k.id WHERE k.deleted = 0"
SELECT_LEASES = (
    f"SELECT DISTINCT k.lease FROM kine k JOIN ({_NEWEST}) n ON n.id = k.id "
    "WHERE k.deleted = 0 AND k.lease > 0 ORDER BY k.lease"
)


@dataclass(frozen=True, slots=True)
class KineState:
    """kine's table at the revision it is read at."""

    revision: int
    compact_revision: int  # -1: never compacted
    log_rows: int
    current_rows: int


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


def _decode_version(value: bytes) -> tuple[int, bytes]:
    """kine's DecodeVersion (pkg/server/compact.go): `VERSION|VALUE`, or a bare version."""
    version, sep, rest = value.partition(b"|")
    try:
        number = int(version)
    except ValueError:
        number = 0
    return (number, rest) if sep else (number, b"0")


def log_row(row: Sequence[Any]) -> LogRow:
    """A kine row (`SELECT_LOG`'s columns) as kinepy history, as kine serves it."""
    revision, name, created, deleted, create_revision, lease, value, version = row
    key = _bytes(name)
    if deleted:
        return LogRow(int(revision), 0, key, 0, 0, 0, b"", True)
    data = _bytes(value)
    version = int(version)
    if key == APISERVER_COMPACT_KEY:
        key = COMPACT_REV_KEY
        version, data = _decode_version(data)
    created_at = int(revision) if created else int(create_revision or 0)
    return LogRow(int(revision), 0, key, created_at, version, int(lease or 0), data, False)


def check_columns(columns: Sequence[str], where: str) -> None:
    """Refuse a `kine` table whose columns are not kine v0.16.4's."""
    found = sorted(c.lower() for c in columns)
    if found != sorted(KINE_COLUMNS):
        raise BackendError(
            f"{where}: table kine has columns ({', '.join(found)}), not kine {KINE_VERSION}'s "
            f"({', '.join(KINE_COLUMNS)}): an unknown kine schema, not read"
        )


class KineExport:
    """kine's table read at one snapshot. `open` first, `aclose` always."""

    description: str
    _revision = 0  # the snapshot's, set by `open`
    _current_only = False

    async def open(self, *, current_only: bool) -> KineState:
        raise NotImplementedError

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        raise NotImplementedError

    async def lease_ttls(self) -> list[int]:
        """The distinct leases (= TTLs) of the live keys."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def sqlite_tables(path: str) -> set[str]:
    """The tables of a SQLite file, opened read-only (empty when it is not a SQLite database)."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error:
        return set()
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return set()
    finally:
        conn.close()


class SQLiteKineExport(SQLiteThread, KineExport):
    """kine's SQLite file, opened read-only on a thread of its own, in one read transaction."""

    def __init__(self, path: str) -> None:
        super().__init__(path, kind="kine's SQLite database", thread_name="kinepy-kine-export")
        self.description = f"kine's sqlite://{path}"

    async def open(self, *, current_only: bool) -> KineState:
        self._current_only = current_only
        return await self._run(self._open, current_only)

    def _open(self, current_only: bool) -> KineState:
        conn = self._open_read_only()
        conn.text_factory = bytes
        columns = [row[1].decode() for row in conn.execute("PRAGMA table_info(kine)")]
        if not columns:
            raise BackendError(f"SQLite database {self.path} has no kine table")
        check_columns(columns, f"SQLite database {self.path}")
        conn.execute("BEGIN")
        revision, compact = conn.execute(SELECT_REVISIONS).fetchone()
        self._revision = revision = int(revision or 1)
        if current_only:
            log_rows = conn.execute(COUNT_LOG_CURRENT_ONLY, (revision, revision)).fetchone()[0]
        else:
            log_rows = conn.execute(COUNT_LOG, (revision,)).fetchone()[0]
        current = conn.execute(COUNT_CURRENT, (revision,)).fetchone()[0]
        return KineState(revision, int(compact) if compact else -1, int(log_rows), int(current))

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        conn = self._conn
        assert conn is not None, "open() first"
        if self._current_only:
            cursor = await self._run(conn.execute, SELECT_LOG_CURRENT_ONLY, (self._revision,) * 3)
        else:
            cursor = await self._run(conn.execute, SELECT_LOG, (self._revision,))
        try:
            while rows := await self._run(cursor.fetchmany, batch_rows):
                yield [log_row(row) for row in rows]
        finally:
            cursor.close()

    async def lease_ttls(self) -> list[int]:
        conn = self._conn
        assert conn is not None, "open() first"
        rows = await self._run(lambda: conn.execute(SELECT_LEASES, (self._revision,)).fetchall())
        return [int(row[0]) for row in rows]


# PostgreSQL and MySQL: which tables the database holds, and the columns of `kine`.
_TABLES = {
    "postgres": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}
_COLUMNS = {
    "postgres": (
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'kine'"
    ),
    "mysql": (
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = 'kine'"
    ),
}


def _dialect(backend: Any) -> str:
    from kinepy.backends.sql.postgres import PostgresBackend

    return "postgres" if isinstance(backend, PostgresBackend) else "mysql"


async def server_tables(backend: ServerBackend) -> set[str]:
    """The tables of the database `backend` names (which must exist), read in a session of its own;
    `backend` is connected by `connect_existing` first."""
    await connect_existing(backend)
    b: Any = backend
    async with b._session("read") as session:
        with b._errors():
            rows = await session.fetch(_TABLES[_dialect(backend)])
    return {str(row[0]) for row in rows}


class ServerKineExport(ServerSnapshot, KineExport):
    """kine's table in a PostgreSQL or MySQL database, in one REPEATABLE READ READ ONLY transaction."""

    def __init__(self, backend: ServerBackend, description: str) -> None:
        super().__init__(backend)
        self.description = f"kine's {description}"

    async def open(self, *, current_only: bool) -> KineState:
        self._current_only = current_only
        session = await self._begin()
        with self._backend._errors():
            columns = [str(row[0]) for row in await session.fetch(_COLUMNS[_dialect(self._backend)])]
            if not columns:
                raise BackendError(f"{self.description} has no kine table")
            check_columns(columns, self.description)
            revisions = await session.fetchone(SELECT_REVISIONS)
            assert revisions is not None
            revision, compact = revisions
            self._revision = revision = int(revision or 1)
            if current_only:
                log_rows = await session.fetchone(COUNT_LOG_CURRENT_ONLY, (revision, revision))
            else:
                log_rows = await session.fetchone(COUNT_LOG, (revision,))
            current = await session.fetchone(COUNT_CURRENT, (revision,))
        assert log_rows is not None and current is not None
        return KineState(revision, int(compact) if compact else -1, int(log_rows[0]), int(current[0]))

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        args: tuple[int, ...]
        if self._current_only:
            statement, args = SELECT_LOG_CURRENT_ONLY, (self._revision,) * 3
        else:
            statement, args = SELECT_LOG, (self._revision,)
        async for rows in self._batches(statement, args, batch_rows):
            yield [log_row(row) for row in rows]

    async def lease_ttls(self) -> list[int]:
        return [int(row[0]) for row in await self._fetch(SELECT_LEASES, (self._revision,))]
