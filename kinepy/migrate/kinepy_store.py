"""kinepy's own store, on any backend, as a copy's Source and Target."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kinepy.backends.base import Backend, LogRow
from kinepy.backends.sql.bulk import (
    StoreExport,
    StoreImport,
    StoreMeta,
    allow_incomplete_copy,
    open_import,
)
from kinepy.migrate.model import Counts, Header, TargetState, TargetStatus
from kinepy.types import Lease


class KinepySource:
    """A kinepy store read at one snapshot (a read-only SQLite file, or one read transaction)."""

    def __init__(self, export: StoreExport) -> None:
        self._export = export
        self.description = export.description

    async def open(self, *, current_only: bool) -> Header:
        meta, counts = await self._export.open(current_only=current_only)
        if meta.incomplete:
            raise_incomplete(self.description)
        compact = meta.revision if current_only else meta.compact_revision
        return Header(
            revision=meta.revision,
            compact_revision=compact,
            cluster_id=meta.cluster_id,
            member_id=meta.member_id,
            log_rows=counts.log_rows,
            current_rows=counts.current_rows,
        )

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        return self._export.log(batch_rows=batch_rows)

    async def leases(self) -> list[Lease]:
        return await self._export.leases()

    async def hash_kv(self, revision: int) -> int | None:
        """None: the rows `log` yields are this store's whole history at its snapshot revision, so the
        hash the engine computes over them *is* the store's HashKV there (kinepy's CRC, `hash_rows`);
        reading the history a second time in the same snapshot would only repeat it."""
        return None

    async def aclose(self) -> None:
        await self._export.aclose()


def raise_incomplete(description: str) -> None:
    from kinepy.errors import BackendError

    raise BackendError(
        f"{description} holds an incomplete copy, not a store: finish that copy first (run it again)"
    )


class KinepyTarget:
    """A kinepy store being written through its backend (whose connect path and schema it uses)."""

    def __init__(self, backend: Backend, description: str) -> None:
        allow_incomplete_copy(backend)
        self._backend = backend
        self.description = description
        self._import: StoreImport | None = None

    @property
    def _writer(self) -> StoreImport:
        assert self._import is not None, "open() first"
        return self._import

    async def open(self) -> TargetState:
        await self._backend.start()
        self._import = open_import(self._backend)
        meta = await self._writer.meta()
        counts = await self.counts()
        if meta.incomplete:
            header = Header(meta.revision, meta.compact_revision, meta.cluster_id, meta.member_id, 0, 0)
            position = await self._writer.last_log_position()
            return TargetState(TargetStatus.INCOMPLETE, meta.revision, counts, header, position)
        if meta.revision == 1 and counts == Counts(0, 0, 0):
            return TargetState(TargetStatus.EMPTY, meta.revision, counts)
        return TargetState(TargetStatus.HOLDS_DATA, meta.revision, counts)

    async def clear(self) -> None:
        await self._writer.clear()

    async def _meta(self, header: Header) -> StoreMeta:
        own = await self._writer.meta()
        return StoreMeta(
            header.revision,
            header.compact_revision,
            own.schema_version,
            header.cluster_id or own.cluster_id,
            header.member_id or own.member_id,
        )

    async def begin(self, header: Header) -> None:
        await self._writer.begin(await self._meta(header))

    async def write_log(self, rows: list[LogRow]) -> None:
        await self._writer.write_log(rows)

    async def finish(self, header: Header, leases: list[Lease]) -> None:
        await self._writer.finish(await self._meta(header), leases)

    async def counts(self) -> Counts:
        c = await self._writer.counts()
        return Counts(c.current_rows, c.log_rows, c.leases)

    async def hash_kv(self, revision: int) -> int:
        return await self._writer.hash_kv(revision)

    async def aclose(self) -> None:
        if self._import is not None:
            await self._import.aclose()
        else:
            await self._backend.aclose()
