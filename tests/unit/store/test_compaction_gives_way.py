"""Physical compaction gives way to writes: after a window during which a write was submitted, the next
window waits at least as long as that window took, and the write commits in between. Back to back, a
sequential writer got one put per window while a large history was compacted (28-32 puts/s at 1M rows)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.store.store import Store, StoreSettings
from kinepy.types import PutRequest, TxnRequest

KEYS = 20
TXNS = 6  # revisions 2..7, each one txn putting every key: 5 superseded rows per key
WINDOW_SECONDS = 0.05  # every window is made at least this long


class SlowWindows(SQLiteBackend):
    """The real SQLite backend, each compaction window holding the writer thread a while (as a large
    window does); records when windows ran."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.windows: list[tuple[float, float]] = []  # (start, end) of each finished window
        self.started = 0  # windows begun

    def _compact_batch(self, compact_revision: int, after: int, upto: int, max_rows: int) -> tuple[int, int]:
        started = time.monotonic()
        self.started += 1
        result = super()._compact_batch(compact_revision, after, upto, max_rows)
        time.sleep(WINDOW_SECONDS)  # on the writer thread: writes queue behind the window
        self.windows.append((started, time.monotonic()))
        return result


async def test_the_window_after_a_write_waits_as_long_as_the_last_took(tmp_path: Path) -> None:
    backend = SlowWindows(str(tmp_path / "state.db"))
    await backend.start()
    store = Store(backend, StoreSettings(compact_batch_rows=KEYS))  # one revision per window
    await store.start()
    try:
        for round_ in range(TXNS):
            puts = [PutRequest(b"k/%03d" % i, b"v%d" % round_) for i in range(KEYS)]
            await store.txn(TxnRequest([], list(puts), []))
        compaction = asyncio.create_task(store.compact(TXNS + 1, physical=True))
        while backend.started < 2:  # the second window is running on the writer thread
            assert not compaction.done()
            await asyncio.sleep(0.001)
        submitted_at = time.monotonic()
        put = await store.put(PutRequest(b"w", b"submitted during a window"))
        committed_at = time.monotonic()
        await compaction
        assert len(backend.windows) >= 3
        # The window the put was submitted during, and the next one.
        during = next(i for i, (_, end) in enumerate(backend.windows) if end >= submitted_at)
        start, end = backend.windows[during]
        assert start <= submitted_at and during + 1 < len(backend.windows)
        next_start = backend.windows[during + 1][0]
        assert committed_at <= next_start  # the write went between the two windows
        assert next_start - end >= (end - start) * 0.99  # and the next window waited as long as that one took
        assert put.revision == TXNS + 2
    finally:
        await store.aclose()
        await backend.aclose()
