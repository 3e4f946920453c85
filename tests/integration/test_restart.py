"""Restart: kinepy stopped with SIGTERM and started again on the same database is the same store.

Revisions, values, versions, create revisions, history at old revisions, the compaction point and the
cluster and member IDs in every header all survive; the next write continues the revision sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import conftest
import grpc
import pytest
from google.protobuf.message import Message

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy, pytest.mark.kinepy_backends]

RR = rpc_pb2.RangeRequest
COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")


def _call(endpoint: str, method: str, request: Message) -> Any:
    """The full response (header IDs included), or `(code, details)`."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            return getattr(rpc_pb2_grpc.KVStub(channel), method)(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def _put(endpoint: str, key: bytes, value: bytes) -> int:
    return int(_call(endpoint, "Put", rpc_pb2.PutRequest(key=key, value=value)).header.revision)


def test_restart_keeps_revisions_history_and_the_compaction_point(
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> None:
    server = make_kinepy_server()
    ep = server.endpoint
    for value in (b"a1", b"a2", b"a3"):
        _put(ep, b"a", value)  # revisions 2, 3, 4
    _put(ep, b"b", b"b1")  # 5
    _call(ep, "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"b"))  # 6
    _put(ep, b"b", b"b2")  # 7: created again
    ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=k)) for k in (b"c", b"d")]
    _call(ep, "Txn", rpc_pb2.TxnRequest(success=ops))  # 8
    compact_revision = 5
    _call(ep, "Compact", rpc_pb2.CompactionRequest(revision=compact_revision, physical=True))
    _put(ep, b"a", b"a4")  # 9
    current = 9

    reads: list[tuple[str, Message]] = [
        ("Range", RR(key=b"\0", range_end=b"\0")),
        ("Range", RR(key=b"\0", range_end=b"\0", count_only=True)),
        *(
            ("Range", RR(key=b"\0", range_end=b"\0", revision=rev))
            for rev in range(compact_revision, current + 1)
        ),
        ("Range", RR(key=b"a", revision=compact_revision)),
        ("Range", RR(key=b"b", revision=6)),  # deleted then
        ("Range", RR(key=b"\0", range_end=b"\0", revision=compact_revision - 1)),  # compacted
        ("Range", RR(key=b"a", revision=2)),  # compacted
        ("Range", RR(key=b"a", revision=current + 1)),  # future
        ("Compact", rpc_pb2.CompactionRequest(revision=compact_revision)),  # at the compaction point
        ("Compact", rpc_pb2.CompactionRequest(revision=compact_revision - 2)),  # below it
        ("Compact", rpc_pb2.CompactionRequest(revision=current + 1)),  # future
    ]
    before = [_call(ep, method, request) for method, request in reads]
    latest = before[0]
    assert latest.header.revision == current
    assert [(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value) for kv in latest.kvs] == [
        (b"a", 2, 9, 4, b"a4"),
        (b"b", 7, 7, 1, b"b2"),
        (b"c", 8, 8, 1, b"c"),
        (b"d", 8, 8, 1, b"d"),
    ]
    assert before[-6:-3] == [COMPACTED, COMPACTED, FUTURE]
    assert before[-3:-1] == [COMPACTED, COMPACTED] and before[-1] == FUTURE

    server.restart()

    after = [_call(ep, method, request) for method, request in reads]
    for (method, request), old, new in zip(reads, before, after, strict=True):
        assert new == old, f"{method} {request} changed across the restart:\nbefore: {old}\nafter: {new}"
    resp = _call(ep, "Put", rpc_pb2.PutRequest(key=b"a", value=b"a5", prev_kv=True))
    assert resp.header.revision == current + 1
    assert (resp.prev_kv.create_revision, resp.prev_kv.version, resp.prev_kv.value) == (2, 4, b"a4")
    assert _call(ep, "Compact", rpc_pb2.CompactionRequest(revision=current)).header.revision == current + 1
    assert _call(ep, "Range", RR(key=b"a", revision=current - 1)) == COMPACTED
