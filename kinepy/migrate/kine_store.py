"""kine's own table (k3s-io/kine v0.16.4, on SQLite, PostgreSQL or MySQL) as a copy's Source.

Given the endpoint kine was given, the copy keeps kine's revisions (its row ids), so Kubernetes
objects keep their `resourceVersion`s, and kine's compaction point. kine's lease ids are their TTLs
(kine's LeaseGrant returns the TTL as the id): each lease a live key holds becomes a kinepy lease of
that id and TTL, counted from the copy, as kine counts it from its own start. The SQL and what the
rows mean are in kinepy/backends/sql/kine.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from kinepy.backends.base import LogRow
from kinepy.backends.sql.bulk import open_export
from kinepy.backends.sql.dialect import ServerBackend
from kinepy.backends.sql.kine import KineExport, ServerKineExport, server_tables
from kinepy.migrate.kinepy_store import KinepySource
from kinepy.migrate.model import Header
from kinepy.specs import MySQLSpec, PostgresSpec
from kinepy.types import Lease

log = logging.getLogger(__name__)


class KineSource:
    """kine's table read at one snapshot (its current revision)."""

    def __init__(self, export: KineExport) -> None:
        self._export = export
        self.description = export.description

    async def open(self, *, current_only: bool) -> Header:
        state = await self._export.open(current_only=current_only)
        log.info(
            "%s: kine store at revision %d, compacted at %d",
            self.description,
            state.revision,
            state.compact_revision,
        )
        compact = state.revision if current_only else state.compact_revision
        return Header(state.revision, compact, 0, 0, log_rows=state.log_rows, current_rows=state.current_rows)

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        return self._export.log(batch_rows=batch_rows)

    async def leases(self) -> list[Lease]:
        now = time.time()
        return [Lease(ttl, ttl, now + ttl) for ttl in await self._export.lease_ttls()]

    async def hash_kv(self, revision: int) -> int | None:
        return None  # kine has no HashKV of its own

    async def aclose(self) -> None:
        await self._export.aclose()


class ServerSource:
    """A PostgreSQL or MySQL database holding either kinepy's store or kine's table: which one is
    decided on `open`, from the tables it holds (kinepy's `meta` and `kv_log` win)."""

    def __init__(self, spec: PostgresSpec | MySQLSpec, *, connect_timeout: float) -> None:
        self._spec = spec
        self._connect_timeout = connect_timeout
        self.description = str(spec)
        self._source: KinepySource | KineSource | None = None

    def _backend(self) -> ServerBackend:
        if isinstance(self._spec, PostgresSpec):
            from kinepy.backends.sql.postgres import PostgresBackend

            return PostgresBackend(self._spec, pool_size=2, connect_timeout=self._connect_timeout)
        from kinepy.backends.sql.mysql import MySQLBackend

        return MySQLBackend(self._spec, pool_size=2, connect_timeout=self._connect_timeout)

    async def open(self, *, current_only: bool) -> Header:
        probe = self._backend()
        try:
            tables = await server_tables(probe)
        finally:
            await probe.aclose()
        if {"meta", "kv_log"} <= tables or "kine" not in tables:
            self._source = KinepySource(open_export(self._spec, connect_timeout=self._connect_timeout))
        else:
            self._source = KineSource(ServerKineExport(self._backend(), str(self._spec)))
        self.description = self._source.description
        return await self._source.open(current_only=current_only)

    def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        assert self._source is not None, "open() first"
        return self._source.log(batch_rows=batch_rows)

    async def leases(self) -> list[Lease]:
        assert self._source is not None, "open() first"
        return await self._source.leases()

    async def hash_kv(self, revision: int) -> int | None:
        assert self._source is not None, "open() first"
        return await self._source.hash_kv(revision)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()
