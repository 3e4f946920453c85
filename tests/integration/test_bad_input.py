"""Bad input: every request etcd refuses, kinepy refuses with the same gRPC code and the same text.

Each row of ``CASES`` is one raw gRPC request. It is sent to a real etcd and to kinepy; the two answers must
be equal, and the error must be the one the catalogue (``reference/etcd-v3-semantics.md`` §7, spelled out here
rather than taken from ``kinepy.errors``) gives for the condition. Rows with ``error=None`` are the limits'
other side (128 ops, nested then/else repeating a key, ...): both servers must accept them, with equal
responses. After each row kinepy must still serve a plain put and get.

Both servers are shared by the module and receive the same requests in the same order, so revisions stay
equal; every row uses keys under its own prefix.

etcd 3.4.23 predates the sort-option check (etcd 3.5 added ``checkRangeRequest``'s enum test): it serves
an unknown ``sort_order`` in key order and crashes (nil sorter, SIGSEGV) on an unknown ``sort_target``.
Those rows follow etcd 3.5+/3.6 and are not sent to etcd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import conftest
import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy, pytest.mark.kinepy_backends]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

# The catalogue (etcd's api/v3rpc/rpctypes/error.go).
EMPTY_KEY = (INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = (INVALID, "etcdserver: key not found")
VALUE_PROVIDED = (INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = (INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = (INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = (INVALID, "etcdserver: duplicate key given in txn request")
INVALID_SORT = (INVALID, "etcdserver: invalid sort option")
TOO_LARGE = (INVALID, "etcdserver: request is too large")
COMPACTED = (OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE = (OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

MAX_REQUEST_BYTES = 1536 * 1024  # etcd's and kinepy's default --max-request-bytes
GRPC_MAX_RECEIVE = MAX_REQUEST_BYTES + 512 * 1024
MIB = 1024 * 1024

Cmp = rpc_pb2.Compare
RR = rpc_pb2.RangeRequest
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Requests.


def op_range(key: bytes, range_end: bytes = b"", **fields: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=RR(key=key, range_end=range_end, **fields))


def op_put(key: bytes, value: bytes = b"", **fields: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **fields))


def op_delete(key: bytes, range_end: bytes = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end))


def op_txn(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_txn=txn(compare, success, failure))


def txn(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def missing(key: bytes) -> Cmp:
    """A compare that holds: `key` does not exist."""
    return Cmp(key=key, target=Cmp.VERSION, result=Cmp.EQUAL, version=0)


def put_request_of_size(key: bytes, size: int) -> rpc_pb2.PutRequest:
    """A PutRequest whose encoding is exactly `size` bytes."""
    request = rpc_pb2.PutRequest(key=key, value=b"v" * (size - len(key) - 8))
    request.value = b"v" * (len(request.value) + size - request.ByteSize())
    assert request.ByteSize() == size
    return request


@dataclass(frozen=True)
class Ctx:
    """What a row's request may depend on: its key prefix and the shared stores' revisions."""

    prefix: bytes
    revision: int  # current, equal on both servers
    compact_revision: int  # both servers were compacted here

    def k(self, name: str | bytes = b"") -> bytes:
        return self.prefix + (name.encode() if isinstance(name, str) else name)


def bind(value: T, request: Callable[[Ctx, T], Message]) -> Callable[[Ctx], Message]:
    """`request` with its second argument fixed to `value` (a loop variable, bound now)."""
    return lambda c: request(c, value)


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    request: Callable[[Ctx], Message]
    error: tuple[grpc.StatusCode, str] | None
    etcd: bool = True  # False: etcd 3.4 answers otherwise (see the module docstring); checked on kinepy only


def _cases() -> list[Case]:
    cases: list[Case] = []

    def case(id: str, method: str, request: Callable[[Ctx], Message], error: Any, **kw: Any) -> None:
        cases.append(Case(id, method, request, error, **kw))

    # Empty keys, nil ops.
    case("range-empty-key", "Range", lambda c: RR(), EMPTY_KEY)
    case("range-empty-key-with-range-end", "Range", lambda c: RR(range_end=b"\0"), EMPTY_KEY)
    case("put-empty-key", "Put", lambda c: rpc_pb2.PutRequest(value=b"v"), EMPTY_KEY)
    case("delete-empty-key", "DeleteRange", lambda c: rpc_pb2.DeleteRangeRequest(range_end=b"\0"), EMPTY_KEY)
    case("txn-compare-empty-key", "Txn", lambda c: txn([Cmp(target=Cmp.MOD)]), EMPTY_KEY)
    case("txn-put-empty-key", "Txn", lambda c: txn(success=[op_put(b"", b"v")]), EMPTY_KEY)
    case("txn-failure-range-empty-key", "Txn", lambda c: txn(failure=[op_range(b"")]), EMPTY_KEY)
    case(
        "txn-nested-delete-empty-key",
        "Txn",
        lambda c: txn(success=[op_txn(failure=[op_delete(b"")])]),
        EMPTY_KEY,
    )
    case(
        "txn-compare-checked-before-ops",
        "Txn",
        lambda c: txn([Cmp()], [rpc_pb2.RequestOp()]),
        EMPTY_KEY,
    )
    case("txn-nil-op-in-success", "Txn", lambda c: txn(success=[rpc_pb2.RequestOp()]), KEY_NOT_FOUND)
    case("txn-nil-op-in-failure", "Txn", lambda c: txn(failure=[rpc_pb2.RequestOp()]), KEY_NOT_FOUND)
    case(
        "txn-nil-op-in-nested-txn",
        "Txn",
        lambda c: txn(success=[op_range(c.k("a")), op_txn(success=[rpc_pb2.RequestOp()])]),
        KEY_NOT_FOUND,
    )

    # MaxTxnOps = 128 per list; a nested txn gets what the outer one leaves.
    for n, error in ((128, None), (129, TOO_MANY_OPS)):
        case(
            f"txn-{n}-compares",
            "Txn",
            bind(n, lambda c, n: txn([missing(c.k(f"c{i}")) for i in range(n)])),
            error,
        )
        case(
            f"txn-{n}-success-puts",
            "Txn",
            bind(n, lambda c, n: txn(success=[op_put(c.k(f"p{i}")) for i in range(n)])),
            error,
        )
        case(
            f"txn-{n}-failure-ranges",
            "Txn",
            bind(n, lambda c, n: txn(failure=[op_range(c.k(f"r{i}")) for i in range(n)])),
            error,
        )
    for n, error in ((27, None), (28, TOO_MANY_OPS)):  # 101 outer ops leave 27
        case(
            f"txn-101-ops-nesting-{n}",
            "Txn",
            bind(
                n,
                lambda c, n: txn(
                    success=[op_put(c.k(f"o{i}")) for i in range(100)]
                    + [op_txn(success=[op_put(c.k(f"n{i}")) for i in range(n)])]
                ),
            ),
            error,
        )

    # Duplicate keys in one branch.
    dup: list[tuple[str, Callable[[Ctx], list[rpc_pb2.RequestOp]], Any]] = [
        ("put-put", lambda c: [op_put(c.k("d")), op_put(c.k("d"))], DUPLICATE_KEY),
        (
            "delete-then-put-inside",
            lambda c: [op_delete(c.k("a"), c.k("z")), op_put(c.k("d"))],
            DUPLICATE_KEY,
        ),
        (
            "put-then-delete-over-it",
            lambda c: [op_put(c.k("d")), op_delete(c.k("a"), c.k("z"))],
            DUPLICATE_KEY,
        ),
        ("delete-key-then-put-it", lambda c: [op_delete(c.k("d")), op_put(c.k("d"))], DUPLICATE_KEY),
        (
            "put-and-nested-put",
            lambda c: [op_put(c.k("d")), op_txn(failure=[op_put(c.k("d"))])],
            DUPLICATE_KEY,
        ),
        (
            "nested-puts-in-two-txns",
            lambda c: [op_txn(success=[op_put(c.k("d"))]), op_txn(failure=[op_put(c.k("d"))])],
            DUPLICATE_KEY,
        ),
        (
            "delete-and-nested-put",
            lambda c: [op_delete(c.k("d")), op_txn(failure=[op_put(c.k("d"))])],
            DUPLICATE_KEY,
        ),
        (
            "put-and-nested-delete",
            lambda c: [op_put(c.k("d")), op_txn(success=[op_delete(c.k("d"))])],
            DUPLICATE_KEY,
        ),
        (
            "nested-then-else-repeat-ok",
            lambda c: [op_txn(success=[op_put(c.k("d"))], failure=[op_put(c.k("d"))])],
            None,
        ),
        (
            "overlapping-deletes-ok",
            lambda c: [op_delete(c.k("a"), c.k("z")), op_delete(c.k("b"), c.k("y"))],
            None,
        ),
        ("empty-delete-range-then-put-ok", lambda c: [op_delete(c.k("z"), c.k("a")), op_put(c.k("d"))], None),
        ("put-then-range-ok", lambda c: [op_put(c.k("d")), op_range(c.k("d"))], None),
    ]
    for name, ops, error in dup:
        case(f"txn-duplicate-{name}", "Txn", bind(ops, lambda c, ops: txn(success=ops(c))), error)
    # etcd's checkIntervals reads range_end "\0" literally: [key, "\0") is empty, so it covers no put.
    # The ops sit in the branch not taken (both branches are checked), so nothing is deleted.
    case(
        "txn-delete-to-end-then-put-ok",
        "Txn",
        lambda c: txn([missing(c.k("x"))], failure=[op_delete(c.k("d"), b"\0"), op_put(c.k("zz"))]),
        None,
    )
    case(
        "txn-then-and-else-repeat-ok",
        "Txn",
        lambda c: txn(success=[op_put(c.k("d"))], failure=[op_put(c.k("d"))]),
        None,
    )

    # Put options.
    case(
        "put-ignore-value-with-value",
        "Put",
        lambda c: rpc_pb2.PutRequest(key=c.k("a"), value=b"v", ignore_value=True),
        VALUE_PROVIDED,
    )
    case(
        "put-ignore-lease-with-lease",
        "Put",
        lambda c: rpc_pb2.PutRequest(key=c.k("a"), lease=7, ignore_lease=True),
        LEASE_PROVIDED,
    )
    case(
        "put-ignore-value-missing-key",
        "Put",
        lambda c: rpc_pb2.PutRequest(key=c.k("a"), ignore_value=True),
        KEY_NOT_FOUND,
    )
    case(
        "put-ignore-lease-missing-key",
        "Put",
        lambda c: rpc_pb2.PutRequest(key=c.k("a"), ignore_lease=True),
        KEY_NOT_FOUND,
    )
    case(
        "put-unknown-lease",
        "Put",
        lambda c: rpc_pb2.PutRequest(key=c.k("a"), lease=0x1234ABCD),
        LEASE_NOT_FOUND,
    )
    case(
        "txn-put-unknown-lease",
        "Txn",
        lambda c: txn(success=[op_put(c.k("a")), op_put(c.k("b"), lease=99)]),
        LEASE_NOT_FOUND,
    )
    case(
        "txn-put-ignore-value-missing-key",
        "Txn",
        lambda c: txn(success=[op_put(c.k("a"), ignore_value=True)]),
        KEY_NOT_FOUND,
    )
    case(
        "txn-put-ignore-value-with-value",
        "Txn",
        lambda c: txn(failure=[op_put(c.k("a"), b"v", ignore_value=True)]),
        VALUE_PROVIDED,
    )
    case(
        "txn-unchosen-branch-is-not-applied-ok",
        "Txn",
        lambda c: txn(
            [missing(c.k("a"))],
            [op_range(c.k("a"))],
            [op_put(c.k("a"), lease=99), op_put(c.k("b"), ignore_value=True)],
        ),
        None,
    )

    # Revisions.
    case("range-future-revision", "Range", lambda c: RR(key=c.k("a"), revision=c.revision + 1), FUTURE)
    case(
        "range-compacted-revision",
        "Range",
        lambda c: RR(key=c.k("a"), revision=c.compact_revision - 1),
        COMPACTED,
    )
    case(
        "range-at-compact-revision-ok", "Range", lambda c: RR(key=c.k("a"), revision=c.compact_revision), None
    )
    case(
        "txn-range-future-revision",
        "Txn",
        lambda c: txn(success=[op_put(c.k("a")), op_range(c.k("a"), revision=c.revision + 1)]),
        FUTURE,
    )
    case(
        "txn-range-compacted-revision",
        "Txn",
        lambda c: txn(success=[op_range(c.k("a"), revision=c.compact_revision - 1)]),
        COMPACTED,
    )
    # Revisions are checked on the branch taken only.
    case(
        "txn-compacted-range-in-branch-not-taken-ok",
        "Txn",
        lambda c: txn(
            failure=[
                op_range(c.k("a"), revision=c.compact_revision - 1),
                op_range(c.k("a"), revision=c.revision + 1),
            ]
        ),
        None,
    )
    case(
        "compact-at-compact-revision",
        "Compact",
        lambda c: rpc_pb2.CompactionRequest(revision=c.compact_revision),
        COMPACTED,
    )
    case(
        "compact-future-revision",
        "Compact",
        lambda c: rpc_pb2.CompactionRequest(revision=c.revision + 1),
        FUTURE,
    )

    # Sort enums (etcd 3.5+ rule; see the module docstring). 7 is no value of either enum.
    case(
        "range-sort-order-7",
        "Range",
        lambda c: RR(key=c.k("a"), sort_order=cast(RR.SortOrder, 7)),
        INVALID_SORT,
        etcd=False,
    )
    case(
        "range-sort-target-7",
        "Range",
        lambda c: RR(key=c.k("a"), sort_target=cast(RR.SortTarget, 7)),
        INVALID_SORT,
        etcd=False,
    )
    case(
        "txn-range-sort-order-negative",
        "Txn",
        lambda c: txn(success=[op_range(c.k("a"), sort_order=-1)]),
        INVALID_SORT,
        etcd=False,
    )

    # Size: etcd limits the raft entry (request + 14..18 bytes), gRPC the message (limit + 512 KiB).
    big = int(1.6 * MIB)
    case("put-1.6MiB", "Put", lambda c: rpc_pb2.PutRequest(key=c.k("big"), value=b"x" * big), TOO_LARGE)
    case("txn-1.6MiB", "Txn", lambda c: txn(success=[op_put(c.k("big"), b"x" * big)]), TOO_LARGE)
    case("delete-1.6MiB-key", "DeleteRange", lambda c: rpc_pb2.DeleteRangeRequest(key=b"k" * big), TOO_LARGE)
    case(
        "put-limit-minus-18-bytes-ok",
        "Put",
        lambda c: put_request_of_size(c.k("edge"), MAX_REQUEST_BYTES - 18),
        None,
    )
    case(
        "put-limit-minus-15-bytes",
        "Put",
        lambda c: put_request_of_size(c.k("edge"), MAX_REQUEST_BYTES - 15),
        TOO_LARGE,
    )
    return cases


CASES = _cases()


# --------------------------------------------------------------------------------------------------
# The harness.


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    details: str


def call(stub: rpc_pb2_grpc.KVStub, method: str, request: Message) -> Any:
    """One unary KV call: the response with member-specific header fields cleared, or a `Failure`."""
    try:
        response = getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as exc:
        return Failure(exc.code(), exc.details())
    response.header.cluster_id = response.header.member_id = response.header.raft_term = 0
    return response


def _abbrev(message: Any) -> str:
    text = (
        str(message) if isinstance(message, Failure) else text_format.MessageToString(message, as_utf8=False)
    )
    return text if len(text) < 1500 else text[:1500] + "…"


@dataclass
class Servers:
    etcd: rpc_pb2_grpc.KVStub
    kinepy: rpc_pb2_grpc.KVStub
    compact_revision: int

    def both(self, method: str, request: Message) -> Any:
        expected, actual = call(self.etcd, method, request), call(self.kinepy, method, request)
        assert actual == expected, f"{method}:\netcd: {_abbrev(expected)}\nkinepy: {_abbrev(actual)}"
        return expected

    def revision(self) -> int:
        return int(self.both("Range", RR(key=b"\xff\xfe")).header.revision)


@pytest.fixture(scope="module")
def servers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kinepy_backend: str,
    kinepy_databases: Any,
) -> Iterator[Servers]:
    """One etcd and one kinepy per module and backend (conftest's factories, at module scope), compacted
    once."""
    with (
        conftest.etcd_servers(request, tmp_path_factory) as make_etcd,
        conftest.kinepy_servers(request, tmp_path_factory, kinepy_backend, kinepy_databases) as make_kinepy,
    ):
        channels = [
            grpc.insecure_channel(make_etcd().endpoint),
            grpc.insecure_channel(make_kinepy().endpoint),
        ]
        etcd, kinepy = (rpc_pb2_grpc.KVStub(channel) for channel in channels)
        pair = Servers(etcd, kinepy, compact_revision=0)
        for value in (b"1", b"2", b"3"):
            pair.both("Put", rpc_pb2.PutRequest(key=b"/history", value=value))
        pair.compact_revision = pair.revision()  # 4
        pair.both("Compact", rpc_pb2.CompactionRequest(revision=pair.compact_revision, physical=True))
        pair.both("Put", rpc_pb2.PutRequest(key=b"/history", value=b"4"))
        yield pair
        for channel in channels:
            channel.close()


def _assert_still_serves(servers: Servers, prefix: bytes) -> None:
    key = prefix + b"after"
    servers.both("Put", rpc_pb2.PutRequest(key=key, value=b"fine"))
    resp = servers.kinepy.Range(RR(key=key), timeout=10)
    assert [(kv.key, kv.value) for kv in resp.kvs] == [(key, b"fine")]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_request_is_refused_like_etcd(servers: Servers, case: Case) -> None:
    ctx = Ctx(f"/{case.id}/".encode(), servers.revision(), servers.compact_revision)
    request = case.request(ctx)
    if case.etcd:
        outcome = servers.both(case.method, request)
    else:
        outcome = call(servers.kinepy, case.method, request)
    if case.error is None:
        assert not isinstance(outcome, Failure), outcome
    else:
        assert outcome == Failure(*case.error)
    _assert_still_serves(servers, ctx.prefix)


def test_request_over_the_grpc_limit_is_refused_by_the_transport(servers: Servers) -> None:
    """2.1 MiB is over gRPC's receive limit (max-request-bytes + 512 KiB): refused with grpc-go's text
    (kinepy/server/decoding.py)."""
    request = rpc_pb2.PutRequest(key=b"/transport/big", value=b"x" * int(2.1 * MIB))
    size = request.ByteSize()
    assert servers.both("Put", request) == Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"grpc: received message larger than max ({size} vs. {GRPC_MAX_RECEIVE})",
    )
    _assert_still_serves(servers, b"/transport/")


def test_binary_keys_round_trip_and_sort_bytewise(servers: Servers) -> None:
    prefix = b"/binary/"
    names = [
        b"\x00",
        b"\x00\x00",
        b"a",
        b"a\x00",
        b"a\x00b",
        b"a\xff",
        b"a\xff\xff",
        b"b",
        b"\x7f",
        b"\x80",
        b"\xff",
    ]
    for i, name in enumerate(names):
        servers.both("Put", rpc_pb2.PutRequest(key=prefix + name, value=name + bytes([i, 0, 255])))
    resp = servers.both("Range", RR(key=prefix, range_end=prefix[:-1] + b"0"))
    assert [kv.key for kv in resp.kvs] == sorted(prefix + name for name in names)
    assert all(
        kv.value == kv.key[len(prefix) :] + bytes([names.index(kv.key[len(prefix) :]), 0, 255])
        for kv in resp.kvs
    )
    for name in names:
        resp = servers.both("Range", RR(key=prefix + name))
        assert resp.kvs[0].key == prefix + name
    servers.both("Range", RR(key=prefix + b"a", range_end=prefix + b"b"))  # prefix "a"
    servers.both("Range", RR(key=prefix + b"a\xff", range_end=prefix + b"b"))  # prefix "a\xff"
    servers.both("Range", RR(key=prefix + b"\x00", range_end=prefix + b"\x01"))
    servers.both("Range", RR(key=prefix + b"\x80", range_end=prefix + b"\xff", sort_order=RR.DESCEND))
    servers.both(
        "DeleteRange",
        rpc_pb2.DeleteRangeRequest(key=prefix + b"a\x00", range_end=prefix + b"a\xff", prev_kv=True),
    )
    servers.both("Range", RR(key=prefix, range_end=prefix[:-1] + b"0", keys_only=True))
    servers.both("Range", RR(key=b"\xff"))  # the single key "\xff" (not a range)
