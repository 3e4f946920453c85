"""kinepy's SQL as data, written once with `?` placeholders.

The constants and builders here run unchanged on every dialect, but for `on_conflict_update` (SQLite's and
PostgreSQL's upsert; MySQL writes `REPLACE`). What a dialect writes its own way is a
field of `Statements`, filled in by the driver's module, as kine keeps its SQL in named query fields per
driver: SQLite's forms (`INDEXED BY`, `rowid`) in sqlite.py, the server databases' in dialect.py,
postgres.py and mysql.py.

`{in}` in a statement stands for "IN this list of values": each driver expands it its own way
(`IN (?, ?, …)` chunks, `= ANY(?::bigint[])`, one row per value). Only table and column names are
spliced into statements; every value is a parameter. Server drivers convert the placeholders to their
own style (`$1`, `%s`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kinepy.types import KeyRange

SCHEMA_VERSION = 1
# meta.schema_version while `kinepy migrate` writes a copy into the database: it is set before the
# first history row and replaced by SCHEMA_VERSION in the copy's last transaction, so a server never
# serves a half-copied store (kinepy/backends/sql/bulk.py).
INCOMPLETE_COPY = -1


def incomplete_copy_error(database: str) -> str:
    return (
        f"{database} holds an incomplete copy (a `kinepy migrate` or `kinepy restore` was interrupted): "
        "run the same command again to finish it, or `kinepy migrate --replace` another store into it"
    )


KV_COLUMNS = "key, create_revision, mod_revision, version, lease, value"
KV_COLUMNS_KEYS_ONLY = "key, create_revision, mod_revision, version, lease, x''"
# The same columns of a kv_log row `l`, for the reads at an older revision.
LOG_KV_COLUMNS = "l.key, l.create_revision, l.revision, l.version, l.lease, l.value"
LOG_KV_COLUMNS_KEYS_ONLY = "l.key, l.create_revision, l.revision, l.version, l.lease, x''"
LEASE_COLUMNS = "id, ttl, expires_at"

SELECT_META = "SELECT revision, compact_revision FROM meta WHERE id = 1"
SELECT_META_IDS = "SELECT schema_version, cluster_id, member_id FROM meta WHERE id = 1"
INSERT_META = (
    "INSERT INTO meta (id, revision, compact_revision, schema_version, cluster_id, member_id) "
    "VALUES (1, 1, -1, ?, ?, ?)"
)
UPDATE_META = "UPDATE meta SET revision = ?, compact_revision = ? WHERE id = 1"

# The read set of a write transaction.
SELECT_CURRENT_IN_KEYS = f"SELECT {KV_COLUMNS} FROM kv_current WHERE key {{in}}"
# `lease <> 0` lets the planner use the partial index on kv_current(lease).
SELECT_CURRENT_IN_LEASES = f"SELECT {KV_COLUMNS} FROM kv_current WHERE lease {{in}} AND lease <> 0"
SELECT_LEASES_IN = f"SELECT {LEASE_COLUMNS} FROM leases WHERE id {{in}}"
DELETE_CURRENT_IN = "DELETE FROM kv_current WHERE key {in}"
DELETE_LEASES_IN = "DELETE FROM leases WHERE id {in}"

SELECT_LOG_FOR_HASH = (
    "SELECT revision, sub, key, create_revision, version, lease, value, tombstone FROM kv_log "
    "WHERE revision <= ? ORDER BY revision, sub"
)
SELECT_LEASES = f"SELECT {LEASE_COLUMNS} FROM leases"
SELECT_LEASE = f"SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?"
SELECT_EXPIRED_LEASES = (
    f"SELECT {LEASE_COLUMNS} FROM leases WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
)
SELECT_LEASE_KEYS = "SELECT key FROM kv_current WHERE lease = ? AND lease <> 0 ORDER BY key"

# The revision of the history row `offset` rows after `after` (at most `upto`): where a compaction
# window of `offset` rows ends.
COMPACT_WINDOW_END = (
    "SELECT revision FROM kv_log WHERE revision > ? AND revision <= ? ORDER BY revision, sub LIMIT 1 OFFSET ?"
)
# The window's tombstones below the compaction revision (one at it is kept, so a watch opened there
# still sees it; the next compaction re-reads that revision).
COMPACT_TOMBSTONES = (
    "DELETE FROM kv_log WHERE revision > ? AND revision <= ? AND tombstone = 1 AND revision < ?"
)


@dataclass(frozen=True, slots=True)
class Table:
    """A table rows are inserted into, set-based: its columns, their SQL types (for PostgreSQL's
    `unnest` arrays) and the primary key an upsert replaces on (empty: rows are only inserted)."""

    name: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    key: str


KV_LOG = Table(
    "kv_log",
    ("revision", "sub", "key", "create_revision", "version", "lease", "value", "tombstone"),
    ("bigint", "integer", "bytea", "bigint", "bigint", "bigint", "bytea", "smallint"),
    "",
)
KV_CURRENT = Table(
    "kv_current",
    ("key", "create_revision", "mod_revision", "version", "lease", "value"),
    ("bytea", "bigint", "bigint", "bigint", "bigint", "bytea"),
    "key",
)
LEASES = Table("leases", ("id", "ttl", "expires_at"), ("bigint", "bigint", "double precision"), "id")


def insert_values(table: Table) -> str:
    """One row into `table`, as `executemany` takes it."""
    marks = ", ".join("?" * len(table.columns))
    return f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})"


INSERT_LOG = insert_values(KV_LOG)


def on_conflict_update(table: Table) -> str:
    """The upsert clause of SQLite and PostgreSQL: on a conflict of the key, replace the other columns."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.columns if c != table.key)
    return f" ON CONFLICT ({table.key}) DO UPDATE SET {updates}"


Statement = tuple[str, list[object]]
AtRevisionParts = Callable[[KeyRange, int, str, str, int], Statement]
CountAtRevision = Callable[[KeyRange, int], Statement]


@dataclass(frozen=True, slots=True)
class Statements:
    """The statements a dialect writes its own way."""

    select_meta_for_write: str
    """The meta row, read first in a write transaction. On a server database it locks the row
    (`FOR UPDATE`), so writers of every process queue on it; SQLite's `BEGIN IMMEDIATE` did already."""

    at_revision_parts: AtRevisionParts
    """`(key_range, revision, log columns, current columns, limit)`: the keys of `key_range` as they
    were at `revision`, unordered; with `limit`, enough of them for the first `limit` in key order."""

    count_at_revision: CountAtRevision
    """How many keys `key_range` held at `revision`."""

    compact_superseded: str
    """Delete the kv_log rows superseded by a newer row of the same key written in `(?, ?]`."""


def range_condition(key_range: KeyRange, column: str = "key") -> tuple[str, list[bytes]]:
    """`column` restricted to `key_range`, as SQL and parameters."""
    start, end = key_range.start, key_range.end
    if end is not None and end == start + b"\x00":
        return f"{column} = ?", [start]
    if end is None:
        return f"{column} >= ?", [start]
    return f"{column} >= ? AND {column} < ?", [start, end]


def select_current(key_range: KeyRange, *, keys_only: bool, limit: int) -> Statement:
    """Rows of `kv_current` in `key_range`, in key order."""
    cond, params = range_condition(key_range)
    cols = KV_COLUMNS_KEYS_ONLY if keys_only else KV_COLUMNS
    sql = f"SELECT {cols} FROM kv_current WHERE {cond} ORDER BY key"
    args: list[object] = list(params)
    if limit > 0:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def count_current(key_range: KeyRange) -> Statement:
    cond, params = range_condition(key_range)
    return f"SELECT count(*) FROM kv_current WHERE {cond}", list(params)


def unchanged_since(
    key_range: KeyRange, revision: int, cols: str, limit: int, *, derived_table: bool
) -> Statement:
    """The first arm of a read at `revision`: the rows of `key_range` in kv_current not changed since.
    With `limit`, only the first `limit` in key order, an index range scan that stops early (no
    database here pushes an outer LIMIT into a UNION): SQLite takes that arm as a derived table,
    the server databases as a parenthesised query."""
    cond, params = range_condition(key_range)
    sql = f"SELECT {cols} FROM kv_current WHERE {cond} AND mod_revision <= ?"
    args: list[object] = [*params, revision]
    if limit > 0:
        sql = f"{sql} ORDER BY key LIMIT ?"
        sql = f"SELECT * FROM ({sql})" if derived_table else f"({sql})"
        args.append(limit)
    return sql, args


def select_at_revision(
    statements: Statements, key_range: KeyRange, revision: int, *, keys_only: bool, limit: int
) -> Statement:
    """Rows of `key_range` at `revision`, in key order (at most `limit`, 0: all)."""
    cols_cur = KV_COLUMNS_KEYS_ONLY if keys_only else KV_COLUMNS
    cols_log = LOG_KV_COLUMNS_KEYS_ONLY if keys_only else LOG_KV_COLUMNS
    inner, args = statements.at_revision_parts(key_range, revision, cols_log, cols_cur, limit)
    sql = f"SELECT * FROM ({inner}) AS r ORDER BY 1"
    if limit > 0:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def compact_window_end(after: int, upto: int, next_revision: int | None) -> int:
    """The last revision of a compaction window starting after `after`, given the revision of the
    first row beyond `max_rows` (None: the rows up to `upto` fit): the revisions before it, or that
    revision alone when it is the window's first."""
    if next_revision is None:
        return upto
    return next_revision - 1 if next_revision - 1 > after else next_revision


def select_events(key_range: KeyRange, after: int, upto: int, *, prev_kv: bool, limit: int = 0) -> Statement:
    """History rows of `key_range` in `(after, upto]`, each with the row it superseded (if wanted)."""
    cond, params = range_condition(key_range, "l.key")
    cols = "l.revision, l.sub, l.key, l.create_revision, l.version, l.lease, l.value, l.tombstone"
    tail = " LIMIT ?" if limit > 0 else ""
    args: list[object] = [after, upto, *params] + ([limit] if limit > 0 else [])
    if not prev_kv:
        return (
            f"SELECT {cols} FROM kv_log l WHERE l.revision > ? AND l.revision <= ? AND {cond} "
            f"ORDER BY l.revision, l.sub{tail}",
            args,
        )
    sql = (
        f"SELECT {cols}, p.revision, p.create_revision, p.version, p.lease, p.value, p.tombstone "
        "FROM kv_log l LEFT JOIN kv_log p ON p.key = l.key AND p.revision = "
        "(SELECT max(m.revision) FROM kv_log m WHERE m.key = l.key AND m.revision < l.revision) "
        f"WHERE l.revision > ? AND l.revision <= ? AND {cond} ORDER BY l.revision, l.sub{tail}"
    )
    return sql, args
