"""Malformed protobuf: kinepy refuses what etcd refuses, with etcd's codes and texts (issue 15, finding 7).

Raw bytes go to a real etcd and to kinepy (SQLite); the answers must be equal. etcd decodes with
gogo-protobuf's generated code and answers through grpc-go; kinepy/server/wire.py and decoding.py follow both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2
from kinepy.testing.databases import SharedDatabaseServers

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy]

MIB = 1 << 20
GRPC_MAX_RECEIVE = 2 * MIB  # --max-request-bytes 1.5 MiB + 512 KiB, both servers' default


def _raw(data: bytes) -> bytes:
    return data


def _length_delimited(tag: int, payload: bytes) -> bytes:
    n, prefix = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        prefix += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([tag]) + prefix + payload


def nested_txn(depth: int) -> bytes:
    """A Txn whose success op is a Txn, `depth` times, around one put."""
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/nested", value=str(depth).encode()))
    data = rpc_pb2.TxnRequest(success=[put]).SerializeToString()
    for _ in range(depth):
        data = _length_delimited(
            0x12, _length_delimited(0x22, data)
        )  # TxnRequest.success: RequestOp.request_txn
    return data


# (method, request bytes): every way the wire format can be wrong, in top-level and nested messages.
UNARY_CASES = {
    "truncated varint": ("/etcdserverpb.KV/Range", b"\x18"),
    "truncated bytes": ("/etcdserverpb.KV/Range", b"\x0a\x05ab"),
    "wrong wire type for bytes": ("/etcdserverpb.KV/Range", b"\x08\x01"),
    "wrong wire type for int64": ("/etcdserverpb.KV/Range", b"\x1a\x01a"),
    "wrong wire type for enum": ("/etcdserverpb.KV/Range", b"\x2a\x00"),
    "start group for bytes": ("/etcdserverpb.KV/Range", b"\x0b"),
    "tag 0": ("/etcdserverpb.KV/Range", b"\x00\x01"),
    "end group": ("/etcdserverpb.KV/Range", b"\x0c"),
    "negative tag": ("/etcdserverpb.KV/Range", b"\xf8\xff\xff\xff\x7f\x01"),
    "unknown field": ("/etcdserverpb.KV/Range", b"\xa0\x06\x01"),
    "unknown group": ("/etcdserverpb.KV/Range", b"\xa3\x06\xa4\x06"),
    "unterminated unknown group": ("/etcdserverpb.KV/Range", b"\xa3\x06"),
    "truncated unknown bytes": ("/etcdserverpb.KV/Range", b"\xa2\x06\x05"),
    "wire type 6": ("/etcdserverpb.KV/Range", b"\xa6\x06"),
    "wire type 7": ("/etcdserverpb.KV/Range", b"\x7f"),
    "varint overflow": ("/etcdserverpb.KV/Range", b"\x18" + b"\xff" * 10 + b"\x01"),
    "negative length": ("/etcdserverpb.KV/Range", b"\x0a" + b"\xff" * 9 + b"\x01"),
    "bool of 2": ("/etcdserverpb.KV/Range", b"\x0a\x01k\x40\x02"),
    "compaction revision as bytes": ("/etcdserverpb.KV/Compact", b"\x0a\x01a"),
    "compaction physical as bytes": ("/etcdserverpb.KV/Compact", b"\x08\x02\x12\x01a"),
    "nested wrong wire type": ("/etcdserverpb.KV/Txn", b"\x12\x04\x0a\x02\x08\x01"),
    "nested truncated": ("/etcdserverpb.KV/Txn", b"\x12\x05\x0a\x02\x08"),
    "lease grant truncated": ("/etcdserverpb.Lease/LeaseGrant", b"\x08"),
    "status with a truncated unknown field": ("/etcdserverpb.Maintenance/Status", b"\x08"),
    "nested txn 50 deep": ("/etcdserverpb.KV/Txn", nested_txn(50)),
    "nested txn 127 deep": ("/etcdserverpb.KV/Txn", nested_txn(127)),
    "nested txn 128 deep": ("/etcdserverpb.KV/Txn", nested_txn(128)),
    "request over the limit": ("/etcdserverpb.KV/Put", b"\x0a\x01a\x12\x80\x80\xc0\x01" + b"x" * 3 * MIB),
}


def unary(channel: grpc.Channel, method: str, data: bytes) -> tuple[str, str]:
    call = channel.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)
    try:
        call(data, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


async def stream(endpoint: str, method: str, messages: list[bytes]) -> tuple[str, str]:
    """Send `messages` on a new stream; how it ended (responses before the end are not compared)."""
    async with grpc.aio.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.stream_stream(method, request_serializer=_raw, response_deserializer=_raw)(timeout=10)
        for message in messages:
            await call.write(message)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


@pytest.fixture(scope="module")
def channels(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kinepy_databases: SharedDatabaseServers,
) -> Iterator[tuple[conftest.EtcdServer, conftest.KinepyServer]]:
    with (
        conftest.etcd_servers(request, tmp_path_factory) as make_etcd,
        conftest.kinepy_servers(request, tmp_path_factory, "sqlite", kinepy_databases) as make_kinepy,
    ):
        yield make_etcd(), make_kinepy()


@pytest.mark.parametrize("case", UNARY_CASES)
def test_malformed_request_is_answered_as_etcd_answers(
    channels: tuple[conftest.EtcdServer, conftest.KinepyServer], case: str
) -> None:
    method, data = UNARY_CASES[case]
    options = [("grpc.max_send_message_length", -1)]
    answers = []
    for server in channels:
        with grpc.insecure_channel(server.endpoint, options=options) as channel:
            answers.append(unary(channel, method, data))
    etcd, kinepy = answers
    assert kinepy == etcd


WATCH_CREATE = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/w")).SerializeToString()
STREAM_CASES = {
    "watch: garbage first": ("/etcdserverpb.Watch/Watch", [b"\x0a\x02\x08\x01"]),
    "watch: garbage after a create": ("/etcdserverpb.Watch/Watch", [WATCH_CREATE, b"\x0a\x02\x08\x01"]),
    "watch: over the limit": (
        "/etcdserverpb.Watch/Watch",
        [b"\x0a\x04\xa2\x06\x80\x80\xc0\x01" + b"x" * 3 * MIB],
    ),
    "keepalive: truncated": ("/etcdserverpb.Lease/LeaseKeepAlive", [b"\x08"]),
    "keepalive: garbage after one": ("/etcdserverpb.Lease/LeaseKeepAlive", [b"\x08\x05", b"\x0a\x01"]),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_malformed_message_ends_the_stream_as_etcd_ends_it(
    channels: tuple[conftest.EtcdServer, conftest.KinepyServer], case: str
) -> None:
    method, messages = STREAM_CASES[case]
    reference, server = channels
    for _ in range(3):
        # etcd 3.4.23 now and then leaves a watch stream open after a malformed message (1 in ~300
        # streams here, not even the created response sent: its recvLoop/sendLoop race); that is not
        # the answer to compare with, so ask it again.
        etcd = asyncio.run(stream(reference.endpoint, method, messages))
        if etcd[0] != "DEADLINE_EXCEEDED":
            break
    kinepy = asyncio.run(stream(server.endpoint, method, messages))
    assert etcd[0] not in ("OK", "DEADLINE_EXCEEDED")  # the stream was ended, not left open
    assert kinepy == etcd


def test_malformed_compaction_does_not_compact(
    channels: tuple[conftest.EtcdServer, conftest.KinepyServer],
) -> None:
    """upb read a CompactionRequest whose revision had the wrong wire type as Compact(0)."""
    _, kinepy = channels
    with grpc.insecure_channel(kinepy.endpoint) as channel:
        put = rpc_pb2.PutRequest(key=b"/compact/k", value=b"1").SerializeToString()
        unary(channel, "/etcdserverpb.KV/Put", put)
        assert unary(channel, "/etcdserverpb.KV/Compact", b"\x0a\x01a")[0] == "INTERNAL"
        old = rpc_pb2.RangeRequest(key=b"/compact/k", revision=1).SerializeToString()
        assert unary(channel, "/etcdserverpb.KV/Range", old) == ("OK", "")
