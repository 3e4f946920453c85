"""Temporary SQLite files that keep what a copy would otherwise hold in memory, one key at a time.

`RowSpool`: a live etcd lists its keys in key order; a copy's history goes in `(revision, sub)` order.
The rows are spooled to disk and read back ordered by revision, then key, each revision's keys numbered
0, 1, ... as their `sub`.

`ChangeSpool`: which key each change of a history touches, to count the live keys at the end and to
pick the changes a copy of the current state keeps.

Each is used by one thread at a time; `close()` deletes its file.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator

from kinepy.backends.base import LogRow

_CREATE = (
    "CREATE TABLE spool (revision INTEGER NOT NULL, key BLOB NOT NULL, create_revision INTEGER NOT NULL, "
    "version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (revision, key)) "
    "WITHOUT ROWID"
)
_INSERT = "INSERT INTO spool VALUES (?, ?, ?, ?, ?, ?)"
_SELECT = "SELECT revision, key, create_revision, version, lease, value FROM spool ORDER BY revision, key"


class _Spool:
    """A temporary SQLite file holding one table, created by `create`; `close()` deletes it."""

    def __init__(self, prefix: str, create: str, directory: str | None) -> None:
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".db", dir=directory)
        os.close(fd)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(create)
        self.rows = 0

    def _insert(self, statement: str, batch: list[tuple[object, ...]]) -> None:
        self._conn.execute("BEGIN")
        self._conn.executemany(statement, batch)
        self._conn.execute("COMMIT")
        self.rows += len(batch)

    def close(self) -> None:
        self._conn.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class RowSpool(_Spool):
    """Live keys (`LogRow`s without a meaningful `sub`), spooled in any order."""

    def __init__(self, directory: str | None = None) -> None:
        super().__init__("kinepy-spool-", _CREATE, directory)

    def add(self, rows: Iterable[LogRow]) -> None:
        self._insert(
            _INSERT, [(r.revision, r.key, r.create_revision, r.version, r.lease, r.value) for r in rows]
        )

    def in_revision_order(self) -> Iterator[LogRow]:
        """Every row, by revision then key; the keys of one revision get subs 0, 1, ..."""
        revision, sub = -1, 0
        for rev, key, create, version, lease, value in self._conn.execute(_SELECT):
            sub = sub + 1 if rev == revision else 0
            revision = rev
            yield LogRow(rev, sub, bytes(key), create, version, lease, bytes(value), False)


_CREATE_CHANGES = (
    "CREATE TABLE changes (position INTEGER PRIMARY KEY, key BLOB NOT NULL, revision INTEGER NOT NULL, "
    "sub INTEGER NOT NULL, tombstone INTEGER NOT NULL)"
)
_INSERT_CHANGE = "INSERT INTO changes (key, revision, sub, tombstone) VALUES (?, ?, ?, ?)"
_NEWEST = "SELECT MAX(position) AS position FROM changes GROUP BY key"
_COUNT_LIVE = f"SELECT COUNT(*) FROM changes c JOIN ({_NEWEST}) n USING (position) WHERE c.tombstone = 0"
_CURRENT = (
    f"SELECT c.revision, c.sub FROM changes c JOIN ({_NEWEST}) n USING (position) "
    "WHERE c.tombstone = 0 OR c.revision = ? ORDER BY c.position"
)


class ChangeSpool(_Spool):
    """The keys of a history given in `(revision, sub)` order, spooled to a temporary SQLite file, to
    tell without holding every key in memory how many keys are live at the end, and which changes a
    copy of the current state keeps (the newest of each live key, and the deletions at the store
    revision itself). `close()` deletes the file."""

    def __init__(self, directory: str | None = None) -> None:
        super().__init__("kinepy-changes-", _CREATE_CHANGES, directory)

    def add(self, rows: Iterable[LogRow]) -> None:
        """Rows in `(revision, sub)` order, after every row added before."""
        self._insert(_INSERT_CHANGE, [(r.key, r.revision, r.sub, int(r.tombstone)) for r in rows])

    def live_keys(self) -> int:
        """Keys whose newest change is not a delete."""
        return int(self._conn.execute(_COUNT_LIVE).fetchone()[0])

    def current(self, revision: int) -> Iterator[tuple[int, int]]:
        """`(revision, sub)` of the changes a copy of the current state at `revision` keeps, in order."""
        for rev, sub in self._conn.execute(_CURRENT, (revision,)):
            yield int(rev), int(sub)
