"""A temporary SQLite file that puts rows read in key order back into revision order.

A live etcd lists its keys in key order; a copy's history goes in `(revision, sub)` order. The rows
are spooled to disk, not held in memory, and read back ordered by revision, then key, each revision's
keys numbered 0, 1, ... as their `sub`. Used by one thread at a time; `close()` deletes the file.
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


class RowSpool:
    """Live keys (`LogRow`s without a meaningful `sub`), spooled in any order."""

    def __init__(self, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="kinepy-spool-", suffix=".db", dir=directory)
        os.close(fd)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(_CREATE)
        self.rows = 0

    def add(self, rows: Iterable[LogRow]) -> None:
        batch = [(r.revision, r.key, r.create_revision, r.version, r.lease, r.value) for r in rows]
        self._conn.execute("BEGIN")
        self._conn.executemany(_INSERT, batch)
        self._conn.execute("COMMIT")
        self.rows += len(batch)

    def in_revision_order(self) -> Iterator[LogRow]:
        """Every row, by revision then key; the keys of one revision get subs 0, 1, ..."""
        revision, sub = -1, 0
        for rev, key, create, version, lease, value in self._conn.execute(_SELECT):
            sub = sub + 1 if rev == revision else 0
            revision = rev
            yield LogRow(rev, sub, bytes(key), create, version, lease, bytes(value), False)

    def close(self) -> None:
        self._conn.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
