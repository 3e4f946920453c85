"""Physical compaction works in windows of about `max_rows` history rows, whole revisions: a txn of
many puts is one revision, and a window counted in revisions would hold a write back for as long as
thousands of rows take (2 s with 100-put txns before windows counted rows)."""

from __future__ import annotations

from pathlib import Path

from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.store.store import Store
from kinepy.types import KeyRange, PutRequest, RangeQuery, TxnRequest

KEYS = 50
TXNS = 20  # revisions 2..21, each one txn putting all KEYS keys


async def _loaded(tmp_path: Path) -> tuple[SQLiteBackend, Store]:
    backend = SQLiteBackend(str(tmp_path / "state.db"))
    await backend.start()
    store = Store(backend)
    await store.start()
    for round_ in range(TXNS):
        puts = [PutRequest(b"k/%03d" % i, b"v%d" % round_) for i in range(KEYS)]
        await store.txn(TxnRequest([], list(puts), []))
    return backend, store


async def _history_rows(backend: SQLiteBackend) -> int:
    events = await backend.read_events(KeyRange(b"", None), after=0, upto=TXNS + 1, prev_kv=False)
    return len(events)


async def test_a_window_ends_before_the_revision_that_would_take_it_past_max_rows(tmp_path: Path) -> None:
    backend, store = await _loaded(tmp_path)
    try:
        target = TXNS + 1
        # Rows 1-50 are revision 2, 51-100 revision 3, 101-150 revision 4: 120 rows end at 3.
        deleted, reached = await backend.compact_batch(target, 0, target, 120)
        assert (deleted, reached) == (KEYS, 3)  # revision 3 superseded revision 2's rows
        # A revision alone holding more than max_rows is taken whole.
        deleted, reached = await backend.compact_batch(target, reached, target, 10)
        assert (deleted, reached) == (KEYS, 4)
        # The upper bound holds whatever the row count.
        deleted, reached = await backend.compact_batch(target, reached, 6, 10_000)
        assert (deleted, reached) == (2 * KEYS, 6)
    finally:
        await store.aclose()
        await backend.aclose()


async def test_compaction_in_small_windows_leaves_what_one_big_window_leaves(tmp_path: Path) -> None:
    backend, store = await _loaded(tmp_path)
    try:
        target = TXNS + 1
        assert await _history_rows(backend) == KEYS * TXNS
        after, windows = 0, 0
        while after < target:
            _, after = await backend.compact_batch(target, after, target, 70)
            windows += 1
        assert windows == TXNS  # 70 rows: one 50-row revision per window
        # Only each key's newest row is left, and reads at the compaction revision see every key.
        events = await backend.read_events(KeyRange(b"", None), after=0, upto=target, prev_kv=False)
        assert [(e.kv.key, e.kv.mod_revision) for e in events] == [
            (b"k/%03d" % i, target) for i in range(KEYS)
        ]
        rows = await backend.read_range(RangeQuery(KeyRange(b"k/", b"k0"), revision=target))
        assert rows.count == KEYS and {kv.value for kv in rows.kvs} == {b"v%d" % (TXNS - 1)}
    finally:
        await store.aclose()
        await backend.aclose()
