"""The etcdserverpb.Maintenance and etcdserverpb.Cluster services."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator

import grpc

from kinepy.config import DEFAULT_EMULATED_ETCD_VERSION
from kinepy.errors import AuthNotEnabledError, KinepyError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.status import etcd_errors, unimplemented_by_default
from kinepy.store.store import Store

_SNAPSHOT_CHUNK = 64 * 1024


@unimplemented_by_default(
    "Maintenance",
    {"Hash": "a test-only call; use HashKV", "MoveLeader": "kinepy is a single member"},
)
class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(
        self, store: Store, headers: convert.Headers, *, version: str = DEFAULT_EMULATED_ETCD_VERSION
    ) -> None:
        self._store = store
        self._headers = headers
        self._version = version

    @etcd_errors
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        status = await self._store.status()
        return rpc_pb2.StatusResponse(
            header=self._headers(status.revision),
            version=self._version,
            dbSize=status.db_size,
            dbSizeInUse=status.db_size_in_use,
            leader=self._headers.member_id,
            raftIndex=status.revision,
            raftTerm=self._headers.raft_term,
            raftAppliedIndex=status.revision,
            storageVersion="3.6.0",
            errors=[alarm.text() for alarm in self._store.active_alarms()],
        )

    @etcd_errors
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        alarms = self._store.alarm(request.action, request.memberID, request.alarm)
        return rpc_pb2.AlarmResponse(
            header=self._headers(self._store.revision()),
            alarms=[rpc_pb2.AlarmMember(memberID=a.member_id, alarm=a.alarm) for a in alarms],  # type: ignore[arg-type]
        )

    @etcd_errors
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        revision = await self._store.defragment()
        return rpc_pb2.DefragmentResponse(header=self._headers(revision))

    @etcd_errors
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        hashed = await self._store.hash_kv(request.revision)
        return rpc_pb2.HashKVResponse(
            header=self._headers(hashed.revision),
            hash=hashed.hash,
            compact_revision=hashed.compact_revision,
            hash_revision=hashed.hash_revision,
        )

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """A consistent copy of the database file, then its SHA-256, as etcd streams it."""
        with tempfile.TemporaryDirectory(prefix="kinepy-snapshot-") as tmp:
            path = os.path.join(tmp, "snapshot.db")
            try:
                revision = await self._store.snapshot(path)
            except KinepyError as exc:
                # Not UNAVAILABLE: etcdctl retries that for ever (issue 13). This says why, at once.
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"kinepy: snapshot failed: {exc}; `kinepy backup` writes the same file",
                )
            size = os.path.getsize(path)  # noqa: ASYNC240 - a stat of a local temp file
            header = self._headers(revision)
            digest = hashlib.sha256()
            sent = 0
            with open(path, "rb") as f:  # noqa: ASYNC230 - local temp file, 64 KiB reads
                while chunk := f.read(_SNAPSHOT_CHUNK):
                    digest.update(chunk)
                    sent += len(chunk)
                    yield rpc_pb2.SnapshotResponse(
                        header=header, remaining_bytes=size - sent + digest.digest_size, blob=chunk
                    )
            yield rpc_pb2.SnapshotResponse(
                header=header, remaining_bytes=0, blob=digest.digest(), version="3.6.0"
            )


@unimplemented_by_default("Cluster", {"MemberAdd": "run more kinepy processes on one database instead"})
class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, store: Store, headers: convert.Headers, *, name: str, client_urls: list[str]) -> None:
        self._store = store
        self._headers = headers
        self._name = name
        self._client_urls = client_urls

    @etcd_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        status = await self._store.status()
        member = rpc_pb2.Member(
            ID=self._headers.member_id,
            name=self._name,
            peerURLs=[],
            clientURLs=self._client_urls,
            isLearner=False,
        )
        return rpc_pb2.MemberListResponse(header=self._headers(status.revision), members=[member])


@unimplemented_by_default("Auth")
class AuthServicer(rpc_pb2_grpc.AuthServicer):
    """Authentication is not enabled: clients that try it get etcd's own answer."""

    def __init__(self, store: Store, headers: convert.Headers) -> None:
        self._store = store
        self._headers = headers

    @etcd_errors
    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthenticateResponse:
        raise AuthNotEnabledError()

    @etcd_errors
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(header=self._headers(self._store.revision()), enabled=False)
