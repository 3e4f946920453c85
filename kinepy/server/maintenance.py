"""The etcdserverpb.Maintenance and etcdserverpb.Cluster services."""

from __future__ import annotations

import grpc

from kinepy import __version__
from kinepy.errors import NotSupportedError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.status import etcd_errors
from kinepy.store.kv import KVStore

# kube-apiserver turns on RequestWatchProgress only for etcd >= 3.5.13 (it parses this as semver).
EMULATED_ETCD_VERSION = "3.6.6"


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, store: KVStore, headers: convert.Headers) -> None:
        self._store = store
        self._headers = headers

    @etcd_errors
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        status = await self._store.backend.status()
        return rpc_pb2.StatusResponse(
            header=self._headers(status.revision),
            version=EMULATED_ETCD_VERSION,
            dbSize=status.db_size,
            dbSizeInUse=status.db_size_in_use,
            leader=self._headers.member_id,
            raftIndex=status.revision,
            raftTerm=self._headers.raft_term,
            raftAppliedIndex=status.revision,
            storageVersion="3.6.0",
        )

    @etcd_errors
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        status = await self._store.backend.status()
        return rpc_pb2.AlarmResponse(header=self._headers(status.revision))

    @etcd_errors
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        raise NotSupportedError(f"kinepy {__version__}: MoveLeader is not supported: there is one member")


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, store: KVStore, headers: convert.Headers, *, name: str, client_urls: list[str]) -> None:
        self._store = store
        self._headers = headers
        self._name = name
        self._client_urls = client_urls

    @etcd_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        status = await self._store.backend.status()
        member = rpc_pb2.Member(
            ID=self._headers.member_id, name=self._name, peerURLs=[], clientURLs=self._client_urls, isLearner=False
        )
        return rpc_pb2.MemberListResponse(header=self._headers(status.revision), members=[member])
