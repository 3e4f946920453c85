"""`KVStore`: etcd's KV service over a backend, protobuf-free."""

from __future__ import annotations

import logging
from typing import cast

from kinepy.backends.base import Backend
from kinepy.store import mvcc
from kinepy.store.compactor import Compactor
from kinepy.store.keys import key_range
from kinepy.store.writer import Publish, Writer
from kinepy.types import (
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

log = logging.getLogger(__name__)


class KVStore:
    """Reads go straight to the backend; writes go through the group-commit writer."""

    def __init__(
        self,
        backend: Backend,
        *,
        publish: Publish | None = None,
        max_txn_ops: int = 128,
        write_batch_max: int = 1000,
        compact_batch_revisions: int = 1000,
    ) -> None:
        self.backend = backend
        self.max_txn_ops = max_txn_ops
        self.writer = Writer(backend, publish=publish or (lambda rev, events: None), batch_max=write_batch_max)
        self.compactor = Compactor(backend, batch_revisions=compact_batch_revisions)

    def start(self) -> None:
        self.writer.start()
        self.compactor.start()

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.compactor.aclose()

    async def range(self, req: RangeRequest) -> RangeResponse:
        mvcc.validate_range(req)
        fetch = mvcc.range_fetch_limit(req)
        rows = await self.backend.read_range(
            key_range(req.key, req.range_end),
            revision=req.revision,
            limit=fetch,
            keys_only=req.keys_only and req.sort_target != SortTarget.VALUE,
            count_only=req.count_only,
        )
        mvcc.check_read_revision(req.revision, rows.revision, rows.compact_revision)
        return mvcc.finish_range(req, rows.kvs, rows.count, rows.revision)

    async def put(self, req: PutRequest) -> PutResponse:
        mvcc.validate_put(req)
        return cast(PutResponse, await self.writer.submit(req))

    async def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        mvcc.validate_delete_range(req)
        return cast(DeleteRangeResponse, await self.writer.submit(req))

    async def txn(self, req: TxnRequest) -> TxnResponse:
        mvcc.validate_txn(req, self.max_txn_ops)
        return cast(TxnResponse, await self.writer.submit(req))

    async def compact(self, revision: int, *, physical: bool = False) -> int:
        """Compact history up to `revision`; returns the header revision."""
        resp = cast(mvcc.CompactResponse, await self.writer.submit(mvcc.CompactRequest(revision, physical)))
        self.compactor.request(revision)
        if physical:
            await self.compactor.wait(revision)
        return resp.revision
