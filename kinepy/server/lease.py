"""The etcdserverpb.Lease service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from kinepy.errors import BackendError, EtcdError, StoppedError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.status import abort, etcd_errors, status_code
from kinepy.store.store import Store

log = logging.getLogger(__name__)


class LeaseServicer(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, store: Store, headers: convert.Headers) -> None:
        self._store = store
        self._headers = headers

    def _revision(self) -> int:
        return self._store.revision()

    @etcd_errors
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        revision, lease = await self._store.lease_grant(request.ID, request.TTL)
        return rpc_pb2.LeaseGrantResponse(header=self._headers(revision), ID=lease.id, TTL=lease.ttl)

    @etcd_errors
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        revision = await self._store.lease_revoke(request.ID)
        return rpc_pb2.LeaseRevokeResponse(header=self._headers(revision))

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        # Each request is awaited next to the shutdown signal: at shutdown the stream ends at once,
        # UNAVAILABLE, as etcd's does, instead of holding the server for its whole grace period.
        requests = aiter(request_iterator)
        stopping = asyncio.ensure_future(self._store.streams_ended.wait())
        next_request: asyncio.Future[rpc_pb2.LeaseKeepAliveRequest] | None = None
        try:
            while True:
                next_request = asyncio.ensure_future(anext(requests))
                await asyncio.wait((next_request, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not next_request.done():
                    next_request.cancel()
                    await context.abort(status_code(StoppedError.code), StoppedError.message)
                try:
                    request = next_request.result()
                except StopAsyncIteration:
                    return
                try:
                    ttl = await self._store.lease_keep_alive(request.ID)
                except (EtcdError, BackendError) as exc:
                    # As etcd ends the stream with its error; UNAVAILABLE (a database outage) is one
                    # etcd's clients retry, where an unexpected exception's UNKNOWN stops them.
                    await abort(context, exc, "LeaseKeepAlive")
                yield rpc_pb2.LeaseKeepAliveResponse(
                    header=self._headers(self._revision()), ID=request.ID, TTL=ttl
                )
        finally:
            stopping.cancel()
            if next_request is not None:
                if not next_request.done():
                    next_request.cancel()
                elif not next_request.cancelled():
                    # The client ended the stream as the call ended (clientv3's KeepAliveOnce): its
                    # StopAsyncIteration is read here, not logged by asyncio as never retrieved.
                    next_request.exception()

    @etcd_errors
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        found = await self._store.lease_time_to_live(request.ID, keys=request.keys)
        header = self._headers(self._revision())
        if found is None:
            return rpc_pb2.LeaseTimeToLiveResponse(header=header, ID=request.ID, TTL=-1)
        lease, remaining, keys = found
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=header, ID=lease.id, TTL=remaining, grantedTTL=lease.ttl, keys=keys
        )

    @etcd_errors
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        return rpc_pb2.LeaseLeasesResponse(
            header=self._headers(self._revision()),
            leases=[rpc_pb2.LeaseStatus(ID=lease_id) for lease_id in await self._store.lease_leases()],
        )
