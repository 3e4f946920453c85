"""Copies SQLite's write-ahead log back into the database file off the write path.

SQLite checkpoints automatically inside the commit that takes the WAL past `wal_autocheckpoint`
pages: that commit copies the WAL's pages into the database file and fsyncs it, and every write
queued behind it waits. Compacting 300k history rows under a sequential writer, such commits took
up to 330 ms, and checkpoints were more than half of the compaction's time. Here one thread with
its own connection runs a PASSIVE checkpoint shortly after commits instead. A passive checkpoint
takes neither the write lock nor waits for readers: it copies what no reader still needs and leaves
the rest for its next round. The writer keeps SQLite's automatic checkpoint as a backstop at
`BACKSTOP_PAGES`, so the WAL stays bounded even if this thread falls behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

BACKSTOP_PAGES = 10_000
"""`wal_autocheckpoint` of every connection: about 40 MiB of WAL with 4 KiB pages."""


class Checkpointer:
    """One thread running `PRAGMA wal_checkpoint(PASSIVE)` at most every `interval` seconds, and only
    after `note_commit()` said something was written since its last round."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, interval: float = 0.1) -> None:
        self._connect = connect
        self._interval = interval
        self._written = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kinepy-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def note_commit(self) -> None:
        """A write transaction committed: its pages are in the WAL."""
        self._written.set()

    def stop(self) -> None:
        """End the thread (after its current round); the connection is the opener's to close."""
        self._stopping.set()
        self._written.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = self._connect()
        while True:
            self._written.wait()
            # A short pause gathers the commits of a busy moment into one round.
            if self._stopping.wait(self._interval):
                return
            self._written.clear()
            started = time.perf_counter()
            try:
                _busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("SQLite checkpoint failed, retrying after the next commit: %s", exc)
                continue
            self.rounds += 1
            log.debug(
                "SQLite checkpoint: %d of %d WAL pages copied in %.1f ms",
                copied,
                wal_pages,
                1e3 * (time.perf_counter() - started),
            )
