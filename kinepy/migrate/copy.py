"""The copy engine: one Source into one Target, resumable, checked at the end.

1. The source is opened first (an unreachable or wrong source fails before the target is touched)
   and pins the revision it is read at; then the target says what it holds. A target holding data
   is refused unless `replace`; an incomplete copy of the same store (same revisions and identity)
   is resumed; an incomplete copy of anything else is cleared and restarted.
2. The target is marked as an incomplete copy, and the history goes across in batches of
   `batch_rows`, each in its own transaction (memory holds one or two batches). A resumed copy
   reads the source from the start, skipping what the target already has, so the check below
   covers every row.
3. One last transaction derives the current state, writes the leases and the revisions and marks
   the copy complete: a target never looks complete before it is.
4. The check: the rows, keys and leases counted on both sides, and HashKV at the copied revision
   on the target equal to the hash of the rows read from the source (and to the source's own
   HashKV where it has one). A target that fails the check is marked incomplete again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kinepy.backends.base import LogRow
from kinepy.backends.sql.bulk import hash_rows
from kinepy.errors import KinepyError
from kinepy.migrate.model import Counts, Header, Source, Target, TargetStatus
from kinepy.migrate.progress import LogProgress, Progress

log = logging.getLogger("kinepy.migrate")

DEFAULT_BATCH_ROWS = 5000


class CopyError(KinepyError):
    """A copy that cannot start (a refused target) or whose check failed."""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    current_only: bool = False
    """Copy only the current state: the target is compacted at the source's revision."""
    replace: bool = False
    """Overwrite a target that holds data."""
    batch_rows: int = DEFAULT_BATCH_ROWS


@dataclass(slots=True)
class CopyReport:
    source: str
    target: str
    header: Header | None = None
    resumed_after: tuple[int, int] | None = None
    rows_written: int = 0
    counts: Counts | None = None
    source_hash: int | None = None
    target_hash: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        header, counts = self.header, self.counts
        assert header is not None and counts is not None
        hashes = (
            f"HashKV {self.target_hash} at revision {header.revision} on both sides"
            if self.target_hash is not None
            else "every key read back equal; revisions, versions and history not kept (the target "
            "gives every key revisions of its own)"
        )
        return (
            f"copied {self.source} to {self.target} in {self.seconds:.1f} s: revision {header.revision}, "
            f"compacted at {header.compact_revision}, {counts.current_rows} keys, {counts.log_rows} history "
            f"rows, {counts.leases} leases; checked: counts equal, {hashes}"
        )


def same_store(a: Header, b: Header) -> bool:
    """Whether two headers describe the same store at the same revision (what a resume needs)."""
    ids_match = (not a.cluster_id or not b.cluster_id or a.cluster_id == b.cluster_id) and (
        not a.member_id or not b.member_id or a.member_id == b.member_id
    )
    return a.revision == b.revision and a.compact_revision == b.compact_revision and ids_match


async def _prefetched(rows: AsyncIterator[list[LogRow]], depth: int = 2) -> AsyncIterator[list[LogRow]]:
    """`rows`, read ahead by up to `depth` batches, so reading the source overlaps writing the target."""
    queue: asyncio.Queue[list[LogRow] | BaseException | None] = asyncio.Queue(depth)

    async def read() -> None:
        try:
            async for batch in rows:
                await queue.put(batch)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    reader = asyncio.create_task(read(), name="kinepy-migrate-read")
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass


async def copy_store(
    source: Source, target: Target, options: CopyOptions, progress: Progress | None = None
) -> CopyReport:
    """Copy `source` into `target` (see the module's docstring); both are closed at the end."""
    progress = progress or LogProgress()
    report = CopyReport(source.description, target.description)
    started = time.monotonic()
    try:
        header = report.header = await source.open(current_only=options.current_only)
        log.info(
            "source %s: revision %d, compacted at %d, %d keys, %d history rows",
            source.description,
            header.revision,
            header.compact_revision,
            header.current_rows,
            header.log_rows,
        )
        state = await target.open()
        resume_after: tuple[int, int] | None = None
        if state.status is TargetStatus.HOLDS_DATA:
            if not options.replace:
                c = state.counts
                raise CopyError(
                    f"target {target.description} already holds a store (revision {state.revision}, "
                    f"{c.current_rows} keys, {c.log_rows} history rows, {c.leases} leases): refusing to "
                    "overwrite it; pass --replace to replace it"
                )
            log.warning("replacing the store in %s (revision %d)", target.description, state.revision)
            await target.clear()
        elif state.status is TargetStatus.INCOMPLETE:
            assert state.header is not None
            if same_store(state.header, header):
                resume_after = state.copied_upto
                log.info(
                    "resuming the interrupted copy into %s after revision %s",
                    target.description,
                    resume_after[0] if resume_after else "-",
                )
            else:
                log.warning(
                    "%s holds an interrupted copy of another store (revision %d): starting over",
                    target.description,
                    state.header.revision,
                )
                await target.clear()
        report.resumed_after = resume_after
        await target.begin(header)

        crc = 0
        read = 0
        progress.start("copying history", header.log_rows)
        try:
            async for rows in _prefetched(source.log(batch_rows=options.batch_rows)):
                crc = hash_rows(rows, crc)
                read += len(rows)
                if resume_after is not None:
                    rows = [r for r in rows if (r.revision, r.sub) > resume_after]
                if rows:
                    await target.write_log(rows)
                    report.rows_written += len(rows)
                progress.advance(len(rows) if rows else 0)
        finally:
            progress.close()
        if read != header.log_rows:
            raise CopyError(
                f"the source yielded {read} history rows where it counted {header.log_rows}: "
                "nothing was marked complete; run the copy again"
            )
        leases = await source.leases()
        log.info("writing the current state, %d leases and the revisions", len(leases))
        await target.finish(header, leases)
        await _check(source, target, header, crc, len(leases), report)
        report.seconds = time.monotonic() - started
        log.info("%s", report.summary())
        return report
    finally:
        try:
            await source.aclose()
        finally:
            await target.aclose()


async def _check(
    source: Source, target: Target, header: Header, crc: int, leases: int, report: CopyReport
) -> None:
    log.info("checking the copy: counts and HashKV at revision %d", header.revision)
    counts = report.counts = await target.counts()
    expected = Counts(header.current_rows, header.log_rows, leases)
    problems = []
    if counts != expected:
        problems.append(f"the target holds {counts}, the source {expected}")
    # Both sides at once: each is a scan of a whole history.
    target_hash, source_hash = await asyncio.gather(
        target.hash_kv(header.revision), source.hash_kv(header.revision)
    )
    report.target_hash, report.source_hash = target_hash, source_hash
    if target_hash is None:  # a target with revisions of its own (etcd) checked its keys itself
        pass
    elif target_hash != crc:
        problems.append(f"HashKV at {header.revision}: target {target_hash}, rows read from the source {crc}")
    if source_hash is not None and target_hash is not None and source_hash != target_hash:
        problems.append(f"HashKV at {header.revision}: source {source_hash}, target {target_hash}")
    if problems:
        await target.begin(header)  # never leave a copy that failed its check looking complete
        raise CopyError("the copy does not match its source: " + "; ".join(problems))
