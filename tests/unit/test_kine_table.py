"""Reading kine's table (kinepy/backends/sql/kine.py) from a SQLite file with kine v0.16.4's schema,
rows written as kine writes them: versions counted from the rows, bookkeeping skipped, current only.
(kine itself writes the source in tests/integration/test_migrate_from_kine.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from kinepy.backends.base import LogRow
from kinepy.backends.sql.kine import KineState, SQLiteKineExport, log_row
from kinepy.errors import BackendError

SCHEMA = """CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER,
    deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB,
    old_value BLOB)"""

# id, name, created, deleted, create_revision, prev_revision, lease, value
ROWS = [
    (1, "compact_rev_key", 1, 0, 0, 0, 0, b""),
    (2, "/a", 1, 0, 0, 0, 0, b"a1"),
    (3, "/b", 1, 0, 0, 0, 60, b"b1"),
    (4, "/a", 0, 0, 2, 2, 0, b"a2"),
    (5, "gap-5", 0, 1, 0, 0, 0, None),
    (6, "/b", 0, 1, 3, 3, 60, b"b1"),
    (7, "/b", 1, 0, 0, 6, 0, b"b2"),
    (8, "compact_rev_key_apiserver", 1, 0, 0, 0, 0, b"3|12"),
    (9, "/a", 0, 0, 2, 4, 0, b"a3"),
]


def make(path: Path, rows: Sequence[tuple[object, ...]], compact: int = 0) -> None:
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA)
        db.executemany("INSERT INTO kine VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)", rows)
        db.execute("UPDATE kine SET prev_revision = ? WHERE name = 'compact_rev_key'", (compact,))


def read(path: Path, *, current_only: bool = False) -> tuple[KineState, list[LogRow], list[int]]:
    async def run() -> tuple[KineState, list[LogRow], list[int]]:
        export = SQLiteKineExport(str(path))
        try:
            state = await export.open(current_only=current_only)
            rows = [row async for batch in export.log(batch_rows=2) for row in batch]
            return state, rows, await export.lease_ttls()
        finally:
            await export.aclose()

    return asyncio.run(run())


def test_history_as_kine_serves_it(tmp_path: Path) -> None:
    make(tmp_path / "db", ROWS)
    state, rows, leases = read(tmp_path / "db")
    assert state.revision == 9 and state.compact_revision == -1
    assert state.log_rows == len(rows) == 7 and state.current_rows == 3
    assert rows == [
        LogRow(2, 0, b"/a", 2, 1, 0, b"a1", False),
        LogRow(3, 0, b"/b", 3, 1, 60, b"b1", False),
        LogRow(4, 0, b"/a", 2, 2, 0, b"a2", False),
        LogRow(6, 0, b"/b", 0, 0, 0, b"", True),
        LogRow(7, 0, b"/b", 7, 1, 0, b"b2", False),  # a new life: version 1 again
        LogRow(8, 0, b"compact_rev_key", 8, 3, 0, b"12", False),  # the apiserver's, as kine serves it
        LogRow(9, 0, b"/a", 2, 3, 0, b"a3", False),
    ]
    assert leases == []  # /b's lease went with its first life


def test_current_only_and_compacted_history(tmp_path: Path) -> None:
    # kine compacted at 4: the rows superseded at or below 4 are gone (/a's first row).
    make(tmp_path / "db", [row for row in ROWS if row[0] != 2], compact=4)
    state, rows, _ = read(tmp_path / "db", current_only=True)
    assert state.compact_revision == 4
    assert [(r.revision, r.key, r.version) for r in rows] == [
        (7, b"/b", 1),
        (8, b"compact_rev_key", 3),
        (9, b"/a", 3),  # its creation compacted away: counted from 2 on its oldest row (a lower bound)
    ]


def test_unknown_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "db") as db:
        db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB)")
    with pytest.raises(BackendError, match=r"table kine has columns \(id, name, value\)"):
        read(tmp_path / "db")


def test_a_deleted_row_is_a_tombstone() -> None:
    assert log_row((5, b"/x", 0, 1, 2, 0, b"old", 4)) == LogRow(5, 0, b"/x", 0, 0, 0, b"", True)
