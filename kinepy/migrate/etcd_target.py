"""A live etcd as a copy's Target: the way back from kinepy to etcd (`--to http://HOST:PORT`).

**What is lost.** etcd gives every write its own next revision and offers no way to set one, so
only the *current state* goes across: every live key with its value and lease, and the leases with
the time they have left. Each key's `create_revision` and `mod_revision` become etcd's, its
`version` starts again at 1, the store revision is etcd's, and no history (older versions, the
compaction point) is copied. Clients that keep revisions (kube-apiserver's resourceVersions,
watches) must start over: restart them against the etcd, and they relist.

The copy goes in Txns of at most 100 puts and about 1 MiB (under etcd's default `--max-txn-ops`
128 and `--max-request-bytes` 1.5 MiB). Keys on a lease are held back, spooled to a temporary file,
until the leases are granted (with their own ids) at the end. While the copy runs a marker key,
`MARKER`, says so; `open` reports a target holding it as an incomplete copy, and the rerun writes
every key again (puts overwrite). `finish` reads every key back and compares it with what was
written before it removes the marker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

import grpc

from kinepy.backends.base import LogRow
from kinepy.backends.sql.spool import RowSpool
from kinepy.errors import KinepyError
from kinepy.migrate.etcd_live import TIMEOUT, etcd_channel
from kinepy.migrate.model import Counts, Header, TargetState, TargetStatus
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.types import Lease

log = logging.getLogger(__name__)

MARKER = b"\xff\xffkinepy-migrate/incomplete-copy"
TXN_OPS = 100
TXN_BYTES = 1 << 20
PAGE = 1000


class EtcdTargetError(KinepyError):
    """The target etcd refused a write, or holds something else than what was written."""


def _digest(key: bytes, value: bytes, lease: int) -> int:
    """One key's share of an order-free digest of a store's current state."""
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(lease.to_bytes(8, "big", signed=True))))


class EtcdTarget:
    """A live etcd receiving the current state of a store (see the module's docstring)."""

    current_state_only = True
    """The copy engine sends only the current state (as with `--current-only`)."""

    def __init__(self, endpoint: str, *, timeout: float = TIMEOUT) -> None:
        self._channel, shown = etcd_channel(endpoint, EtcdTargetError)
        self.endpoint = endpoint
        self.description = f"etcd {shown}"
        self._timeout = timeout
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._lease = rpc_pb2_grpc.LeaseStub(self._channel)
        self._spool: RowSpool | None = None
        self._digest = 0
        self._keys = 0
        self._rows = 0
        self._leases_granted = 0

    async def _call(self, method: Callable[..., Any], request: object) -> Any:
        def call() -> Any:
            try:
                return method(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                raise EtcdTargetError(f"{self.description}: {code.name}: {details}") from exc

        return await asyncio.to_thread(call)

    async def _count(self) -> tuple[int, int]:
        """(keys without the marker, store revision)."""
        reply = await self._call(
            self._kv.Range, rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
        )
        marker = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=MARKER, count_only=True))
        return int(reply.count - marker.count), int(reply.header.revision)

    async def _lease_count(self) -> int:
        reply = await self._call(self._lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest())
        return len(reply.leases)

    async def open(self) -> TargetState:
        keys, revision = await self._count()
        counts = Counts(keys, 0, await self._lease_count())
        marker = await self._call(self._kv.Range, rpc_pb2.RangeRequest(key=MARKER))
        if marker.kvs:
            fields = json.loads(marker.kvs[0].value)
            header = Header(fields["revision"], fields["compact_revision"], 0, 0, 0, 0)
            return TargetState(TargetStatus.INCOMPLETE, revision, counts, header, None)
        if counts == Counts(0, 0, 0):
            return TargetState(TargetStatus.EMPTY, revision, counts)
        return TargetState(TargetStatus.HOLDS_DATA, revision, counts)

    async def clear(self) -> None:
        await self._call(self._kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=b"\0", range_end=b"\0"))
        reply = await self._call(self._lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest())
        for lease in reply.leases:
            await self._call(self._lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=lease.ID))

    async def begin(self, header: Header) -> None:
        log.warning(
            "copying the current state into %s: keys get etcd's own revisions (the source is at "
            "revision %d), versions start again at 1, and no history is copied; restart clients "
            "against etcd so that they relist",
            self.description,
            header.revision,
        )
        value = json.dumps({"revision": header.revision, "compact_revision": header.compact_revision})
        await self._call(self._kv.Put, rpc_pb2.PutRequest(key=MARKER, value=value.encode()))
        if self._spool is None:
            self._spool = await asyncio.to_thread(RowSpool)
        self._digest = self._keys = self._rows = 0

    async def _put_all(self, rows: list[LogRow]) -> None:
        ops: list[rpc_pb2.RequestOp] = []
        size = 0
        for row in rows:
            self._digest ^= _digest(row.key, row.value, row.lease)
            self._keys += 1
            ops.append(
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(key=row.key, value=row.value, lease=row.lease)
                )
            )
            size += len(row.key) + len(row.value) + 32
            if len(ops) >= TXN_OPS or size >= TXN_BYTES:
                await self._call(self._kv.Txn, rpc_pb2.TxnRequest(success=ops))
                ops, size = [], 0
        if ops:
            await self._call(self._kv.Txn, rpc_pb2.TxnRequest(success=ops))

    async def write_log(self, rows: list[LogRow]) -> None:
        spool = self._spool
        assert spool is not None, "begin() first"
        self._rows += len(rows)
        live = [row for row in rows if not row.tombstone]  # a delete at the copied revision: absent
        leased = [row for row in live if row.lease]
        if leased:
            await asyncio.to_thread(spool.add, leased)
        await self._put_all([row for row in live if not row.lease])

    async def finish(self, header: Header, leases: list[Lease]) -> None:
        spool = self._spool
        assert spool is not None, "begin() first"
        granted = set()
        for lease in leases:
            # Its whole TTL, as a kinepy start gives it (a deadline held in memory by a kinepy alone
            # on its database is not in the source) and as etcd's restore does.
            await self._call(self._lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(ID=lease.id, TTL=lease.ttl))
            granted.add(lease.id)
        self._leases_granted = len(granted)
        rows = spool.in_revision_order()
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(rows, PAGE))):
            await self._put_all([row for row in batch if row.lease in granted])
        await self._verify_against_written()
        await self._call(self._kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=MARKER))

    async def _verify_against_written(self) -> None:
        """Read every key back: same keys, values and leases as the rows written."""
        expected_digest, expected_keys = self._digest, self._keys
        digest = keys = 0
        start = b"\0"
        while True:
            reply = await self._call(
                self._kv.Range, rpc_pb2.RangeRequest(key=start, range_end=b"\0", limit=PAGE)
            )
            for kv in reply.kvs:
                if kv.key != MARKER:
                    digest ^= _digest(kv.key, kv.value, kv.lease)
                    keys += 1
            if not reply.more or not reply.kvs:
                break
            start = reply.kvs[-1].key + b"\0"
        if (digest, keys) != (expected_digest, expected_keys):
            raise EtcdTargetError(
                f"{self.description} holds {keys} keys that do not match the {expected_keys} written: "
                "is another client writing to it? the copy stays marked incomplete"
            )

    async def counts(self) -> Counts:
        keys, _revision = await self._count()
        # etcd keeps no history of the copy: the rows counted are those received.
        return Counts(keys, self._rows, await self._lease_count())

    async def hash_kv(self, revision: int) -> int | None:
        return None  # revisions are etcd's own: finish() compared every key instead

    async def aclose(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
        self._channel.close()
