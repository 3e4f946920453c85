"""The SQLite backend copies its WAL into the database file from a thread of its own, not inside
commits: a commit that checkpoints holds every write queued behind it (up to 330 ms while compacting
a large history, see kinepy/backends/sql/checkpointer.py)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from kinepy.backends.sql.checkpointer import BACKSTOP_PAGES
from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.store.kv import KVStore
from kinepy.types import PutRequest

DEADLINE = 10.0  # seconds for the checkpoint thread to act; it runs 0.1 s after a commit


def _in_database_file(path: Path, scratch: Path, key: bytes) -> bool:
    """Whether `key` is in the database file alone, without its WAL (a copy opened on its own)."""
    shutil.copyfile(path, scratch)
    conn = sqlite3.connect(scratch)
    try:
        return conn.execute("SELECT count(*) FROM kv_current WHERE key = ?", (key,)).fetchone()[0] == 1
    except sqlite3.OperationalError:  # not even the schema is in the file yet
        return False
    finally:
        conn.close()


async def test_commits_reach_the_database_file_without_the_writer_checkpointing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = SQLiteBackend(str(path))
    await backend.start()
    store = KVStore(backend)
    await store.start()
    try:
        await store.put(PutRequest(b"k", b"v"))
        assert not _in_database_file(path, tmp_path / "copy.db", b"k")  # only in the WAL so far
        deadline = time.monotonic() + DEADLINE
        while not _in_database_file(path, tmp_path / "copy.db", b"k"):
            assert time.monotonic() < deadline, "the checkpoint thread never copied the commit"
            await asyncio.sleep(0.05)
        # The writer's own automatic checkpoint is only a backstop, far above SQLite's 1000 pages.
        assert backend._connect().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    finally:
        await store.aclose()
        await backend.aclose()
    assert not [t for t in threading.enumerate() if t.name == "kinepy-sqlite-checkpoint"]


async def test_an_in_memory_database_has_no_checkpoint_thread() -> None:
    backend = SQLiteBackend(":memory:")
    await backend.start()
    try:
        assert not [t for t in threading.enumerate() if t.name == "kinepy-sqlite-checkpoint"]
    finally:
        await backend.aclose()
