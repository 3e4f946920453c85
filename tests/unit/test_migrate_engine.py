"""The copy engine's pure parts: resuming only the same store, progress lines, kinepy's hash."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kinepy.backends.base import LogRow, ReadSet, WriteSet
from kinepy.backends.sql.bulk import batches, hash_rows
from kinepy.backends.sql.sqlite import SQLiteBackend
from kinepy.migrate.copy import same_store
from kinepy.migrate.model import Header
from kinepy.migrate.progress import BarProgress, LogProgress, describe_rate, progress_for


def header(revision: int = 10, compact: int = 4, cluster: int = 7, member: int = 8) -> Header:
    return Header(revision, compact, cluster, member, 0, 0)


def test_a_resume_needs_the_same_revisions_and_identity() -> None:
    assert same_store(header(), header())
    assert same_store(header(cluster=0, member=0), header())  # a source without ids
    assert not same_store(header(revision=11), header())
    assert not same_store(header(compact=5), header())
    assert not same_store(header(cluster=9), header())


def test_rate_and_time_left() -> None:
    assert describe_rate(0, 100, 0.0) == "0/100 rows (0%)"
    assert describe_rate(50, 100, 5.0) == "50/100 rows (50%), 10 rows/s, 5 s left"
    assert describe_rate(100, 100, 5.0) == "100/100 rows (100%), 20 rows/s"


def test_log_progress_writes_a_line_at_start_and_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kinepy.migrate")
    progress = LogProgress(every=3600)
    progress.start("copying history", 10)
    progress.advance(4)
    progress.advance(6)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "copying history: 10 rows"
    assert lines[-1].startswith("copying history: 10/10 rows (100%)")
    assert len(lines) == 2


def test_a_terminal_gets_a_bar_and_a_pipe_gets_log_lines(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as pipe:
        assert isinstance(progress_for(pipe), LogProgress)
        assert not isinstance(progress_for(pipe, bar=True), LogProgress)


def test_hash_rows_is_the_backends_hash_kv(tmp_path: Path) -> None:
    rows = [
        LogRow(2, 0, b"a", 2, 1, 0, b"1", False),
        LogRow(3, 0, b"b", 3, 1, 5, b"2", False),
        LogRow(3, 1, b"a", 0, 0, 0, b"", True),
    ]

    async def backend_hash() -> int:
        backend = SQLiteBackend(str(tmp_path / "h.db"))
        await backend.start()
        try:
            await backend.write(ReadSet(), lambda _: WriteSet(revision=3, log=rows))
            crc, _ = await backend.hash_kv(3)
            return crc
        finally:
            await backend.aclose()

    assert hash_rows(rows) == asyncio.run(backend_hash())
    assert hash_rows(rows[1:], hash_rows(rows[:1])) == hash_rows(rows)


def test_the_bar_shows_rows_rate_and_time_left_even_without_a_terminal_size() -> None:
    out = io.StringIO()  # like a pty that reports 0x0: tqdm alone would draw nothing
    bar = BarProgress(out)
    bar.start("copying history", 400)
    bar.advance(100)
    bar.advance(300)
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("copying history: 100%|")
    assert "400/400" in last and "rows/s" in last


def test_batches_are_bounded_by_rows_and_by_bytes() -> None:
    async def chunks() -> AsyncIterator[list[LogRow]]:
        for start in range(0, 1000, 200):
            yield [
                LogRow(r, 0, b"k", r, 1, 0, b"v" * (1 << 20 if r >= 900 else 10), False)
                for r in range(start, start + 200)
            ]

    async def collect() -> list[list[LogRow]]:
        return [batch async for batch in batches(chunks(), 300, max_bytes=4 << 20)]

    got = asyncio.run(collect())
    assert [r.revision for batch in got for r in batch] == list(range(1000))
    assert [len(b) for b in got[:3]] == [300, 300, 300]
    assert all(len(b) == 4 for b in got[3:-1])  # 1 MiB values: four to a 4 MiB batch


def test_the_backend_internals_bulk_copies_use_still_exist() -> None:
    """backends/sql/bulk.py connects to an existing database through the server backends' own connect
    path, creating nothing (kinepy migrate's sources, etcdctl snapshot save): a rename there must
    show up here, in the unit tests, not only in the integration tests."""
    from kinepy.backends.sql import mysql, postgres, replication
    from kinepy.specs import MySQLSpec, PostgresSpec

    pg = postgres.PostgresBackend(PostgresSpec())
    my = mysql.MySQLBackend(MySQLSpec())
    for backend in (pg, my):
        for name in ("_session", "_errors", "_pool", "_connect_timeout", "spec", "allow_incomplete_copy"):
            assert hasattr(backend, name), f"{type(backend).__name__}.{name}"
    assert callable(pg._create_pool)
    assert callable(my._bootstrap) and callable(my._create_pool) and callable(my._connect_args)
    assert isinstance(mysql._UNKNOWN_DATABASE, int) and callable(replication.error_code)
