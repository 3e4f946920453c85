"""The physical compactor on the in-memory backend: what `wait` promises, and a target that moves
while a compaction runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fake_backend import FakeBackend

from kinepy.store.compactor import Compactor
from kinepy.store.writer import Writer
from kinepy.types import Event, PutRequest


class GatedCompaction(FakeBackend):
    """Each compaction window waits for `open` (set unless a test clears it)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()
        self.windows: list[tuple[int, int]] = []  # (compact_revision, upto) of each window begun
        self.in_window = asyncio.Event()

    async def compact_batch(
        self, compact_revision: int, after: int, upto: int, max_rows: int
    ) -> tuple[int, int]:
        self.windows.append((compact_revision, upto))
        self.in_window.set()
        await self.open.wait()
        return await super().compact_batch(compact_revision, after, upto, max_rows)


@pytest.fixture
async def backend() -> AsyncIterator[GatedCompaction]:
    """Key k put at revisions 2..9: every row below a compaction revision is superseded."""
    backend = GatedCompaction()

    async def nobody(revision: int, events: list[Event]) -> None:
        pass

    writer = Writer(backend, committed=nobody)
    writer.start()
    for i in range(8):
        await writer.submit(PutRequest(b"k", b"%d" % i))
    await writer.aclose()
    yield backend


def _history(backend: FakeBackend) -> list[int]:
    return [row.revision for row in backend.log]


async def test_waiting_for_a_revision_compacts_up_to_it_and_reports_each_compaction(
    backend: GatedCompaction,
) -> None:
    reports: list[tuple[float, int]] = []
    compactor = Compactor(backend, on_compact=lambda seconds, rows: reports.append((seconds, rows)))
    compactor.start()
    try:
        compactor.request(5)
        compactor.request(3)  # behind the target: changes nothing
        async with asyncio.timeout(5):
            await compactor.wait(5)
        assert _history(backend) == [5, 6, 7, 8, 9]
        assert [rows for _, rows in reports] == [3]
        async with asyncio.timeout(5):
            await compactor.wait(7)  # never requested: `wait` asks for it
        assert _history(backend) == [7, 8, 9] and [rows for _, rows in reports] == [3, 2]
        assert backend.windows == [(5, 5), (7, 7)]
    finally:
        await compactor.aclose()


async def test_a_target_moved_during_a_compaction_is_compacted_next(backend: GatedCompaction) -> None:
    compactor = Compactor(backend)
    compactor.start()
    try:
        backend.open.clear()
        compactor.request(5)
        async with asyncio.timeout(5):
            await backend.in_window.wait()
        compactor.request(8)
        backend.open.set()
        async with asyncio.timeout(5):
            await compactor.wait(8)
        assert _history(backend) == [8, 9]
        assert [upto for _, upto in backend.windows] == [5, 8]
    finally:
        await compactor.aclose()
