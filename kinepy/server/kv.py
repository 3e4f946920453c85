"""The etcdserverpb.KV service."""

from __future__ import annotations

import grpc

from kinepy.errors import RequestTooLargeError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.status import etcd_errors
from kinepy.store.store import Store

# etcd limits the raft entry it proposes, not the request: an InternalRaftRequest holding the request
# (1 tag byte and its length) next to a RequestHeader{ID} (2 tag bytes, 1 length byte, 1 tag byte and
# the ID's varint). Request IDs start with the member ID's low 16 bits, so their varint takes 8 to 10
# bytes depending on the member; kinepy counts 10, the most any etcd member counts.
_RAFT_HEADER_BYTES = 14


def _raft_request_size(request_bytes: int) -> int:
    """The size of the raft entry etcd would propose for a request of `request_bytes` bytes."""
    length_bytes = max(1, (request_bytes.bit_length() + 6) // 7)
    return _RAFT_HEADER_BYTES + 1 + length_bytes + request_bytes


class KVServicer(rpc_pb2_grpc.KVServicer):
    def __init__(self, store: Store, headers: convert.Headers, *, max_request_bytes: int) -> None:
        self._store = store
        self._headers = headers
        self._max_request_bytes = max_request_bytes

    def _check_size(
        self, request: rpc_pb2.PutRequest | rpc_pb2.DeleteRangeRequest | rpc_pb2.TxnRequest
    ) -> None:
        if _raft_request_size(request.ByteSize()) > self._max_request_bytes:
            raise RequestTooLargeError()

    @etcd_errors
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        resp = await self._store.range(convert.range_request(request))
        return convert.range_response(resp, self._headers(resp.revision))

    @etcd_errors
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        self._check_size(request)
        resp = await self._store.put(convert.put_request(request))
        return convert.put_response(resp, self._headers(resp.revision))

    @etcd_errors
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        self._check_size(request)
        resp = await self._store.delete_range(convert.delete_range_request(request))
        return convert.delete_range_response(resp, self._headers(resp.revision))

    @etcd_errors
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        self._check_size(request)
        resp = await self._store.txn(convert.txn_request(request))
        return convert.txn_response(resp, self._headers(resp.revision))

    @etcd_errors
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        revision = await self._store.compact(request.revision, physical=request.physical)
        return rpc_pb2.CompactionResponse(header=self._headers(revision))
