"""kinepy/server/wire.py: requests refused as etcd 3.4 (gogo-protobuf) refuses them, with its texts.

The expected texts are etcd's answers to the same bytes (tests/integration/test_protobuf_edges.py sends
them to a real etcd too).
"""

from __future__ import annotations

import pytest

from kinepy.proto import rpc_pb2
from kinepy.server.wire import MAX_DEPTH, Malformed, decoder

RANGE = decoder(rpc_pb2.RangeRequest)

REFUSED = {
    b"\x18": "unexpected EOF",
    b"\x08": "proto: wrong wireType = 0 for field Key",
    b"\x0a\x05ab": "unexpected EOF",
    b"\x1a\x01a": "proto: wrong wireType = 2 for field Limit",
    b"\x2a\x00": "proto: wrong wireType = 2 for field SortOrder",
    b"\x0b": "proto: wrong wireType = 3 for field Key",
    b"\x00\x01": "proto: RangeRequest: illegal tag 0 (wire type 0)",
    b"\x0c": "proto: RangeRequest: wiretype end group for non-group",
    b"\xf8\xff\xff\xff\x7f\x01": "proto: RangeRequest: illegal tag -1 (wire type 34359738360)",
    b"\xa3\x06": "unexpected EOF",
    b"\xa2\x06\x05": "unexpected EOF",
    b"\xa6\x06": "proto: illegal wireType 6",
    b"\x7f": "proto: illegal wireType 7",
    b"\x18" + b"\xff" * 10 + b"\x01": "proto: integer overflow",
    b"\x0a" + b"\xff" * 9 + b"\x01": "proto: negative length found during unmarshaling",
}


@pytest.mark.parametrize("data", REFUSED, ids=[data.hex() for data in REFUSED])
def test_refused_with_gogo_text(data: bytes) -> None:
    assert RANGE(data) == Malformed(REFUSED[data])


def test_unknown_fields_and_groups_are_skipped() -> None:
    assert RANGE(b"\x0a\x01k\xa0\x06\x01\xa3\x06\xa4\x06") == rpc_pb2.RangeRequest(key=b"k")


def test_wrong_wire_type_in_a_compaction_is_an_error_not_compact_0() -> None:
    decode = decoder(rpc_pb2.CompactionRequest)
    assert decode(b"\x0a\x01a") == Malformed("proto: wrong wireType = 2 for field Revision")


def test_nested_message_error() -> None:
    assert decoder(rpc_pb2.TxnRequest)(b"\x12\x04\x0a\x02\x08\x01") == Malformed(
        "proto: wrong wireType = 0 for field Key"
    )


def test_packed_and_unpacked_repeated_enums_are_both_read() -> None:
    decode = decoder(rpc_pb2.WatchCreateRequest)
    assert list(decode(b"\x2a\x02\x00\x01").filters) == [0, 1]  # type: ignore[union-attr]
    assert list(decode(b"\x28\x01\x28\x00").filters) == [1, 0]  # type: ignore[union-attr]


def _nested(depth: int) -> bytes:
    txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k"))])
    data = txn.SerializeToString()
    for _ in range(depth):
        data = _ld(0x12, _ld(0x22, data))  # TxnRequest.success[0].request_txn
    return data


def _ld(tag: int, payload: bytes) -> bytes:
    n, prefix = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        prefix += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([tag]) + prefix + payload


def test_nested_txns_past_upbs_limit_are_read() -> None:
    decode = decoder(rpc_pb2.TxnRequest)
    message = decode(_nested(127))
    assert isinstance(message, rpc_pb2.TxnRequest)
    depth = 0
    while message.success[0].WhichOneof("request") == "request_txn":
        message, depth = message.success[0].request_txn, depth + 1
    assert depth == 127


def test_nesting_is_bounded() -> None:
    assert decoder(rpc_pb2.TxnRequest)(_nested(MAX_DEPTH)) == Malformed("exceeded maximum recursion depth")
