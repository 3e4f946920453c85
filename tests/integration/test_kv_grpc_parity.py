"""KV parity over raw gRPC: the same requests, sent to a real etcd and to kinepy, must get the same answers.

This covers what etcdctl cannot express (nested txns, sort targets, revision filters, compare operands, ...).
Every request goes through ``Pair.send``, which sends it to etcd, then to kinepy, and compares:

- responses as protobuf messages, after clearing ``cluster_id``, ``member_id`` and ``raft_term`` of the
  top-level header only (txn sub-responses carry a header with only ``revision``, and that is compared);
- errors as ``(grpc code, details)``.

``send`` returns etcd's answer, and each test asserts a few facts about it, so a broken harness cannot pass
by comparing two empty answers.

Servers: tests that only need their own keys share one etcd and one kinepy per module (``shared``: every key
lives under a per-test prefix). Both stores get exactly the same requests in the same order, so they stay in
lockstep and even revisions compare equal; should an earlier failure leave them apart, ``shared`` first puts
a filler key on the one behind. Tests that count revisions from 1, compact, or read the whole keyspace get a
fresh pair (``fresh``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import conftest
import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy, pytest.mark.kinepy_backends]

Cmp = rpc_pb2.Compare
RR = rpc_pb2.RangeRequest
_RESYNC_KEY = b"\xff\xfe/resync"  # outside every test prefix


# --------------------------------------------------------------------------------------------------
# The harness.


@dataclass(frozen=True)
class Failure:
    """A failed call, as the client sees it."""

    code: grpc.StatusCode
    details: str


Outcome = Message | Failure


def call(stub: rpc_pb2_grpc.KVStub, method: str, request: Message) -> Outcome:
    """One unary KV call; the response with the member-specific header fields cleared, or the failure."""
    try:
        response = getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as exc:
        return Failure(exc.code(), exc.details())
    header = response.header
    header.cluster_id = header.member_id = header.raft_term = 0
    assert isinstance(response, Message)
    return response


def show(outcome: Outcome) -> str:
    if isinstance(outcome, Failure):
        return f"{outcome.code.name}: {outcome.details}"
    return f"{type(outcome).__name__} {{\n{text_format.MessageToString(outcome, as_utf8=False)}}}"


class Pair:
    """A real etcd and a kinepy, driven in lockstep."""

    def __init__(self, etcd_endpoint: str, kinepy_endpoint: str, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self._channels = [grpc.insecure_channel(etcd_endpoint), grpc.insecure_channel(kinepy_endpoint)]
        self.etcd, self.kinepy = (rpc_pb2_grpc.KVStub(channel) for channel in self._channels)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def k(self, name: bytes | str) -> bytes:
        """A key under this test's prefix."""
        return self.prefix + (name.encode() if isinstance(name, str) else name)

    def send(self, method: str, request: Message) -> Any:
        """Send `request` to etcd, then to kinepy; fail unless both answer the same; etcd's answer."""
        expected = call(self.etcd, method, request)
        actual = call(self.kinepy, method, request)
        if actual != expected:
            text = text_format.MessageToString(request, as_utf8=False)
            if len(text) > 2000:
                text = text[:2000] + "…"
            pytest.fail(
                f"{method} answered differently.\nrequest:\n{text}\netcd:\n{show(expected)}\n"
                f"kinepy:\n{show(actual)}",
                pytrace=False,
            )
        return expected

    # Shorthands for the four KV calls.
    def range(self, key: bytes, range_end: bytes = b"", **fields: Any) -> Any:
        return self.send("Range", RR(key=key, range_end=range_end, **fields))

    def put(self, key: bytes, value: bytes = b"", **fields: Any) -> Any:
        return self.send("Put", rpc_pb2.PutRequest(key=key, value=value, **fields))

    def delete(self, key: bytes, range_end: bytes = b"", **fields: Any) -> Any:
        return self.send("DeleteRange", rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **fields))

    def txn(
        self,
        compare: Sequence[Cmp] = (),
        success: Sequence[rpc_pb2.RequestOp] = (),
        failure: Sequence[rpc_pb2.RequestOp] = (),
    ) -> Any:
        return self.send("Txn", txn_request(compare, success, failure))

    def compact(self, revision: int, physical: bool = False) -> Any:
        return self.send("Compact", rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    def resync(self) -> None:
        """Bring the store that is behind up to the other's revision with filler puts."""
        probe = RR(key=_RESYNC_KEY)
        while True:
            etcd_rev = self.etcd.Range(probe).header.revision
            kinepy_rev = self.kinepy.Range(probe).header.revision
            if etcd_rev == kinepy_rev:
                return
            behind = self.etcd if etcd_rev < kinepy_rev else self.kinepy
            behind.Put(rpc_pb2.PutRequest(key=_RESYNC_KEY))


def txn_request(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def op_range(key: bytes, range_end: bytes = b"", **fields: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=RR(key=key, range_end=range_end, **fields))


def op_put(key: bytes, value: bytes = b"", **fields: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **fields))


def op_delete(key: bytes, range_end: bytes = b"", **fields: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(
        request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **fields)
    )


def op_txn(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_txn=txn_request(compare, success, failure))


def cmp(key: bytes, target: int, result: int, range_end: bytes = b"", **operand: Any) -> Cmp:
    # By name: the constructor takes an enum's name or member, and the tests loop over plain numbers.
    target_name, result_name = Cmp.CompareTarget.Name(target), Cmp.CompareResult.Name(result)
    return Cmp(key=key, target=target_name, result=result_name, range_end=range_end, **operand)


@pytest.fixture(scope="module")
def module_servers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kinepy_backend: str,
    kinepy_databases: Any,
) -> Iterator[tuple[str, str]]:
    """One etcd and one kinepy per module and backend, started by conftest's (function-scoped) factories."""
    with (
        conftest.etcd_servers(request, tmp_path_factory) as make_etcd,
        conftest.kinepy_servers(request, tmp_path_factory, kinepy_backend, kinepy_databases) as make_kinepy,
    ):
        yield make_etcd().endpoint, make_kinepy().endpoint


@pytest.fixture
def shared(module_servers: tuple[str, str], request: pytest.FixtureRequest) -> Iterator[Pair]:
    """The module's pair, in lockstep, with keys under ``/<test name>/``."""
    pair = Pair(*module_servers, prefix=f"/{request.node.name}/".encode())
    pair.resync()
    yield pair
    pair.close()


@pytest.fixture
def fresh(
    make_etcd_server: Callable[[], conftest.EtcdServer],
    make_kinepy_server: Callable[..., conftest.KinepyServer],
) -> Iterator[Pair]:
    """A new etcd and a new kinepy: revision 1, no keys, never compacted."""
    pair = Pair(make_etcd_server().endpoint, make_kinepy_server().endpoint)
    yield pair
    pair.close()


# --------------------------------------------------------------------------------------------------
# Revisions.


def test_fresh_store_starts_at_revision_1_and_each_write_bumps_once(fresh: Pair) -> None:
    assert fresh.range(b"a").header.revision == 1
    assert fresh.put(b"a", b"1").header.revision == 2
    resp = fresh.txn(success=[op_put(b"b"), op_put(b"c"), op_delete(b"a")])
    assert resp.header.revision == 3
    assert [r.response_put.header.revision for r in resp.responses[:2]] == [3, 3]
    assert fresh.delete(b"a").header.revision == 3  # nothing deleted: no bump
    resp = fresh.range(b"\0", b"\0")
    assert [(kv.key, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs] == [
        (b"b", 3, 3, 1),
        (b"c", 3, 3, 1),
    ]


def test_read_only_txn_does_not_bump_the_revision(shared: Pair) -> None:
    rev = shared.put(shared.k("a"), b"1").header.revision
    resp = shared.txn(
        [cmp(shared.k("a"), Cmp.VALUE, Cmp.EQUAL, value=b"1")],
        [op_range(shared.k("a")), op_range(shared.k(""), shared.k("\xff"))],
        [op_put(shared.k("never"))],
    )
    assert resp.succeeded and resp.header.revision == rev
    resp = shared.txn([cmp(shared.k("a"), Cmp.VALUE, Cmp.EQUAL, value=b"2")], [op_put(shared.k("never"))])
    assert not resp.succeeded and resp.header.revision == rev  # failed compare, empty else branch


def test_txn_whose_only_write_deletes_nothing_does_not_bump_the_revision(shared: Pair) -> None:
    rev = shared.put(shared.k("a"), b"1").header.revision
    resp = shared.txn(success=[op_delete(shared.k("missing"), prev_kv=True), op_range(shared.k("a"))])
    assert resp.header.revision == rev
    assert resp.responses[0].response_delete_range.header.revision == rev
    resp = shared.txn(success=[op_txn(success=[op_delete(shared.k("m"), shared.k("n"))])])
    assert resp.header.revision == rev


# --------------------------------------------------------------------------------------------------
# Txn structure.


def test_nested_txns_decide_every_compare_before_the_outer_writes(shared: Pair) -> None:
    k = shared.k
    base = shared.put(k("flag"), b"old").header.revision
    # The outer txn overwrites "flag" first; the nested compares still see "old" (compareToPath).
    level3 = op_txn(
        [cmp(k("flag"), Cmp.MOD, Cmp.EQUAL, mod_revision=base)],
        [op_put(k("deep"), b"then3"), op_range(k("deep"))],
        [op_put(k("deep"), b"else3")],
    )
    level2 = op_txn(
        [cmp(k("flag"), Cmp.VALUE, Cmp.EQUAL, value=b"new")],  # false: decided before the outer put
        [op_put(k("mid"), b"then2"), op_put(k("deep"), b"then2")],
        [op_put(k("mid"), b"else2"), level3, op_range(k(""), k("\xff"))],
    )
    resp = shared.txn(
        [cmp(k("flag"), Cmp.VALUE, Cmp.EQUAL, value=b"old")],
        [op_put(k("flag"), b"new"), level2, op_range(k("flag"))],
        [op_put(k("flag"), b"lost")],
    )
    assert resp.succeeded and resp.header.revision == base + 1
    nested = resp.responses[1].response_txn
    assert not nested.succeeded
    assert nested.responses[1].response_txn.succeeded
    assert nested.responses[1].response_txn.responses[1].response_range.kvs[0].value == b"then3"
    shared.range(k(""), k("\xff"))
    # The same shape again, now that "flag" is "new": other branches, other repeats of a key.
    resp = shared.txn(
        [cmp(k("flag"), Cmp.VALUE, Cmp.EQUAL, value=b"old")],
        [op_put(k("flag"), b"new"), level2],
        [level2, op_put(k("flag"), b"newer"), op_range(k("flag"))],
    )
    assert not resp.succeeded and resp.responses[0].response_txn.succeeded
    shared.range(k(""), k("\xff"))


def test_txn_reads_see_earlier_writes_of_the_same_txn(shared: Pair) -> None:
    k = shared.k
    shared.put(k("x"), b"0")
    shared.put(k("d"), b"doomed")
    resp = shared.txn(
        success=[
            op_range(k("x")),
            op_put(k("x"), b"1", prev_kv=True),
            op_range(k("x")),
            op_put(k("y"), b"2"),
            op_range(k(""), k("\xff"), count_only=True),
            op_delete(k("d"), prev_kv=True),
            op_range(k("d")),
            op_txn(success=[op_range(k("y")), op_put(k("w"), b"3")]),
            op_range(k("w")),
            op_range(k(""), k("\xff")),
        ]
    )
    rev = resp.header.revision
    assert resp.responses[0].response_range.header.revision == rev - 1  # before the first write
    assert resp.responses[2].response_range.kvs[0].mod_revision == rev
    assert resp.responses[6].response_range.count == 0
    assert resp.responses[8].response_range.kvs[0].value == b"3"


def test_txn_range_at_an_older_revision_after_a_write_in_the_same_txn(shared: Pair) -> None:
    k = shared.k
    first = shared.put(k("x"), b"1").header.revision
    second = shared.put(k("x"), b"2").header.revision
    resp = shared.txn(
        success=[
            op_put(k("x"), b"3"),
            op_range(k("x"), revision=first),
            op_range(k("x"), revision=second),
            op_range(k(""), k("\xff"), revision=first - 1),
            op_put(k("new"), b"n"),
            op_range(k("new"), revision=second),
            op_range(k("x")),
        ]
    )
    assert resp.header.revision == second + 1
    assert resp.responses[1].response_range.kvs[0].value == b"1"
    assert resp.responses[2].response_range.kvs[0].value == b"2"
    assert resp.responses[6].response_range.kvs[0].value == b"3"
    # Revisions are checked against the store before the txn applies: the revision the txn itself
    # writes is still a future one, and the whole txn fails.
    current = resp.header.revision
    resp = shared.txn(
        success=[op_range(k("x"), revision=current), op_range(k(""), k("\xff"), revision=current)]
    )
    assert resp.responses[0].response_range.kvs[0].value == b"3"
    resp = shared.txn(success=[op_put(k("z")), op_range(k("x"), revision=current + 1)])
    assert resp == Failure(
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
    )
    resp = shared.txn(success=[op_put(k("z")), op_range(k("x"), revision=current)])
    assert resp.header.revision == current + 1


# --------------------------------------------------------------------------------------------------
# Range: sort, limit, filters, options.

# Six keys whose version, create_revision, mod_revision and value all differ, each in a different key order,
# so every sort target gives one order with no ties.
_SORT_KEYS = ["a", "b", "c", "d", "e", "f"]
_CREATE_ORDER = ["c", "a", "f", "b", "e", "d"]
_FINAL_ORDER = ["e", "a", "d", "b", "f", "c"]  # mod_revision order
_VALUES = {"a": b"5", "b": b"3", "c": b"9", "d": b"1", "e": b"7", "f": b"2"}


@pytest.fixture
def sort_data(shared: Pair) -> Pair:
    k = shared.k
    for name in _CREATE_ORDER:
        shared.put(k(name), b"x")
    for version, name in enumerate(_SORT_KEYS):  # "a" gets 2 versions, ..., "f" 7
        for _ in range(version):
            shared.put(k(name), b"y")
    for name in _FINAL_ORDER:
        shared.put(k(name), _VALUES[name])
    return shared


@pytest.mark.parametrize("order", list(RR.SortOrder.values()), ids=list(RR.SortOrder.keys()))
@pytest.mark.parametrize("target", list(RR.SortTarget.values()), ids=list(RR.SortTarget.keys()))
def test_range_sorts_by_every_target_and_order(sort_data: Pair, target: int, order: int) -> None:
    k = sort_data.k
    resp = None
    for limit, extra in itertools.product((0, 2, 6, 7), ({}, {"keys_only": True})):
        resp = sort_data.range(k(""), k("\xff"), sort_target=target, sort_order=order, limit=limit, **extra)
        sort_data.range(k("b"), k("e"), sort_target=target, sort_order=order, limit=limit, **extra)
    assert resp is not None and resp.count == 6 and len(resp.kvs) == 6


def test_sort_target_without_order_sorts_only_the_first_limit_plus_one_keys(sort_data: Pair) -> None:
    """etcd reads limit+1 keys in key order (sort_order NONE keeps the limit), then sorts them ascending."""
    k = sort_data.k
    resp = sort_data.range(k(""), k("\xff"), sort_target=RR.VALUE, limit=2)
    # Keys a, b, c have values 5, 3, 9: sorted by value -> b, a; a real sort of all six would give d, f.
    assert [kv.key for kv in resp.kvs] == [k("b"), k("a")] and resp.more and resp.count == 6
    resp = sort_data.range(k(""), k("\xff"), sort_target=RR.VALUE, sort_order=RR.ASCEND, limit=2)
    assert [kv.key for kv in resp.kvs] == [k("d"), k("f")]
    for target in (RR.VERSION, RR.CREATE, RR.MOD):
        for limit in (1, 3, 5):
            sort_data.range(k(""), k("\xff"), sort_target=target, limit=limit)


@pytest.mark.parametrize(
    "filters",
    [
        {"min_mod_revision": 1},
        {"max_mod_revision": 1},
        {"min_create_revision": 1},
        {"max_create_revision": 1},
        {"min_mod_revision": 1, "max_mod_revision": 1},
        {"min_create_revision": 1, "max_create_revision": 1, "min_mod_revision": 1},
    ],
    ids=lambda f: "+".join(f),
)
def test_revision_filters_are_inclusive_and_apply_before_limit(
    sort_data: Pair, filters: dict[str, int]
) -> None:
    k = sort_data.k
    kvs = sort_data.range(k(""), k("\xff")).kvs
    mods = sorted(kv.mod_revision for kv in kvs)
    creates = sorted(kv.create_revision for kv in kvs)
    for pick in (0, 2, 5):  # bounds that fall exactly on a key's revision (inclusive) and in between
        bounds = {
            name: (creates if "create" in name else mods)[pick]
            + (1 if name.startswith("min") and pick == 5 else 0)
            for name in filters
        }
        for limit, sort in itertools.product((0, 1, 2, 10), ({}, {"sort_order": RR.DESCEND})):
            resp = sort_data.range(k(""), k("\xff"), limit=limit, **bounds, **sort)
            assert resp.count == 6  # count ignores the filters


def test_count_and_more_with_limit_keys_only_and_count_only(sort_data: Pair) -> None:
    k = sort_data.k
    for limit in (0, 1, 5, 6, 7):
        resp = sort_data.range(k(""), k("\xff"), limit=limit)
        assert resp.count == 6 and resp.more == (0 < limit < 6)
        sort_data.range(k(""), k("\xff"), limit=limit, keys_only=True)
        resp = sort_data.range(k(""), k("\xff"), limit=limit, count_only=True)
        assert resp.count == 6 and not resp.kvs and not resp.more
        sort_data.range(k(""), k("\xff"), limit=limit, count_only=True, keys_only=True)
        sort_data.range(k("c"), k("e"), limit=limit, count_only=True)
    resp = sort_data.range(k("a"), keys_only=True)
    assert resp.kvs[0].value == b"" and resp.kvs[0].version == 2


def test_range_end_nul_reads_every_key_from_key_on(fresh: Pair) -> None:
    for key in (b"a", b"b", b"b\x00", b"c", b"\xff", b"\xff\xff"):
        fresh.put(key, key)
    resp = fresh.range(b"b", b"\0")
    assert [kv.key for kv in resp.kvs] == [b"b", b"b\x00", b"c", b"\xff", b"\xff\xff"]
    fresh.range(b"b", b"\0", limit=2)
    fresh.range(b"\xff", b"\0", count_only=True)
    fresh.range(b"\xff\xff\xff", b"\0")
    fresh.delete(b"c", b"\0", prev_kv=True)
    fresh.range(b"a", b"\0")


def test_nul_key_with_nul_range_end_is_the_whole_keyspace(fresh: Pair) -> None:
    for key in (b"\x00", b"\x00\x00", b"a", b"\xff"):
        fresh.put(key, b"v")
    resp = fresh.range(b"\0", b"\0")
    assert resp.count == 4
    fresh.range(b"\0", b"\0", limit=1)
    fresh.range(b"\0")  # the single key "\0"
    fresh.range(b"\0", b"\0", sort_order=RR.DESCEND)
    resp = fresh.delete(b"\0", b"\0")
    assert resp.deleted == 4
    fresh.range(b"\0", b"\0")


def test_prefix_ranges_ending_in_ff_bytes(shared: Pair) -> None:
    k = shared.k
    for name in (b"a", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\xff", b"b", b"b\x00"):
        shared.put(k(name), name)
    resp = shared.range(k(b"a\xff"), k(b"b"))  # prefix "a\xff": range_end drops the 0xff and bumps "a"
    assert len(resp.kvs) == 4
    shared.range(k(b"a\xff\xff"), k(b"b"))
    shared.range(k(b"a"), k(b"a\xff"))
    shared.range(k(b"a\xff"), k(b"a\xff\xff"))
    shared.delete(k(b"a\xff\xff"), k(b"b"), prev_kv=True)
    shared.range(k(b""), k(b"\xff"))


def test_range_end_at_or_before_key_is_empty(shared: Pair) -> None:
    k = shared.k
    for name in ("a", "b", "c"):
        shared.put(k(name))
    resp = shared.range(k("c"), k("a"))
    assert not resp.kvs and resp.count == 0
    shared.range(k("b"), k("b"))
    shared.range(k("b"), k("a"), count_only=True)
    assert shared.delete(k("c"), k("a")).deleted == 0
    shared.txn(success=[op_range(k("c"), k("a")), op_delete(k("b"), k("b"))])


def test_read_at_the_compact_revision_is_allowed(fresh: Pair) -> None:
    for value in (b"1", b"2", b"3"):
        fresh.put(b"k", value)
    fresh.delete(b"k")
    fresh.put(b"k", b"4")  # revision 6
    assert fresh.compact(4).header.revision == 6
    resp = fresh.range(b"k", revision=4)
    assert resp.kvs[0].value == b"3" and resp.header.revision == 6
    fresh.range(b"k", revision=5)
    fresh.range(b"\0", b"\0", revision=4, count_only=True)
    fresh.txn(success=[op_range(b"k", revision=4), op_range(b"k", revision=6)])
    assert isinstance(fresh.range(b"k", revision=3), Failure)
    assert isinstance(fresh.txn(success=[op_range(b"k", revision=3)]), Failure)


# --------------------------------------------------------------------------------------------------
# Compares.

_OPERANDS: dict[int, tuple[str, list[Any]]] = {
    Cmp.VERSION: ("version", [0, 1, 2, 3]),
    Cmp.CREATE: ("create_revision", [0, "create", "create+1"]),
    Cmp.MOD: ("mod_revision", [0, "mod-1", "mod", "mod+1"]),
    Cmp.VALUE: ("value", [b"", b"m", b"n", b"o", b"zz"]),
    Cmp.LEASE: ("lease", [0, 1, -1]),
}


@pytest.mark.parametrize("target", list(Cmp.CompareTarget.values()), ids=list(Cmp.CompareTarget.keys()))
def test_compare_every_target_with_every_result(shared: Pair, target: int) -> None:
    k = shared.k
    shared.put(k("a"), b"m")
    head = shared.put(k("a"), b"n").header.revision
    shared.put(k("b"), b"zz")
    field, operands = _OPERANDS[target]
    revisions = {"create": head - 1, "create+1": head, "mod-1": head - 1, "mod": head, "mod+1": head + 1}
    outcomes = set()
    for result, operand in itertools.product(Cmp.CompareResult.values(), operands):
        value = revisions.get(operand, operand) if isinstance(operand, str) else operand
        for key, range_end in [
            (k("a"), b""),  # one key
            (k(""), k("\xff")),  # both keys: must hold for each
            (k("missing"), b""),  # a missing key compares as zeros (VALUE: always false)
            (k("m"), k("n")),  # an empty range behaves as a missing key
        ]:
            resp = shared.txn(
                [cmp(key, target, result, range_end, **{field: value})],
                [op_range(k("a"))],
                [op_range(k("b"))],
            )
            outcomes.add(resp.succeeded)
    assert outcomes == {True, False}


def test_value_compare_on_a_missing_key_is_always_false(shared: Pair) -> None:
    k = shared.k
    for result in Cmp.CompareResult.values():
        for value in (b"", b"x"):
            resp = shared.txn([cmp(k("missing"), Cmp.VALUE, result, value=value)])
            assert not resp.succeeded
    assert shared.txn([cmp(k("missing"), Cmp.MOD, Cmp.EQUAL, mod_revision=0)]).succeeded


@pytest.mark.parametrize("target", list(Cmp.CompareTarget.values()), ids=list(Cmp.CompareTarget.keys()))
def test_compare_whose_operand_field_does_not_match_its_target(shared: Pair, target: int) -> None:
    k = shared.k
    shared.put(k("a"), b"n")
    rev = shared.put(k("a"), b"n").header.revision
    for field, value in [
        ("version", 2),
        ("create_revision", rev - 1),
        ("mod_revision", rev),
        ("value", b"n"),
        ("lease", 0),
        (None, None),  # no operand at all
    ]:
        operand = {field: value} if field else {}
        for result in Cmp.CompareResult.values():
            for key in (k("a"), k("missing")):
                shared.txn([cmp(key, target, result, **operand)], [op_range(k("a"))])


def test_compare_over_a_range_must_hold_for_every_key(shared: Pair) -> None:
    k = shared.k
    shared.put(k("p/1"), b"v")
    shared.put(k("p/2"), b"v")
    shared.put(k("p/2"), b"w")
    for result, version in itertools.product(Cmp.CompareResult.values(), (0, 1, 2, 3)):
        shared.txn([cmp(k("p/"), Cmp.VERSION, result, k("p0"), version=version)])
    assert shared.txn([cmp(k("p/"), Cmp.VALUE, Cmp.EQUAL, k("p0"), value=b"v")]).succeeded is False
    assert shared.txn([cmp(k("p/"), Cmp.VALUE, Cmp.GREATER, k("p0"), value=b"u")]).succeeded is True
    shared.txn([cmp(k("p/"), Cmp.MOD, Cmp.LESS, b"\0", mod_revision=1 << 40)])
    shared.txn(
        [
            cmp(k("p/1"), Cmp.VALUE, Cmp.EQUAL, value=b"v"),
            cmp(k("p/"), Cmp.CREATE, Cmp.GREATER, k("p0"), create_revision=0),
        ],
        [op_put(k("p/3"))],
        [op_put(k("p/4"))],
    )


# --------------------------------------------------------------------------------------------------
# Put and DeleteRange options.


def test_put_prev_kv_ignore_value_and_ignore_lease(shared: Pair) -> None:
    k = shared.k
    assert not shared.put(k("a"), b"1", prev_kv=True).HasField("prev_kv")
    assert shared.put(k("a"), b"2", prev_kv=True).prev_kv.value == b"1"
    resp = shared.put(k("a"), ignore_value=True, prev_kv=True)
    assert resp.prev_kv.value == b"2"
    assert shared.range(k("a")).kvs[0].value == b"2"
    shared.put(k("a"), b"3", ignore_lease=True, prev_kv=True)
    shared.put(k("a"), ignore_value=True, ignore_lease=True)
    shared.txn(success=[op_put(k("a"), ignore_value=True, prev_kv=True), op_range(k("a"))])
    shared.range(k("a"))


def test_delete_range_returns_every_deleted_pair_with_prev_kv(shared: Pair) -> None:
    k = shared.k
    for name in ("a", "b", "c"):
        shared.put(k(name), name.encode())
    assert shared.delete(k("a"), prev_kv=True).prev_kvs[0].value == b"a"
    resp = shared.delete(k(""), k("\xff"), prev_kv=True)
    assert resp.deleted == 2 and len(resp.prev_kvs) == 2
    shared.delete(k(""), k("\xff"), prev_kv=True)
    shared.put(k("a"))
    shared.txn(success=[op_delete(k("a"), prev_kv=True), op_delete(k(""), k("\xff"), prev_kv=True)])


# --------------------------------------------------------------------------------------------------
# Compact.


def test_compact_rules(fresh: Pair) -> None:
    assert fresh.compact(0).header.revision == 1  # a fresh store's compact revision is -1
    assert isinstance(fresh.compact(0), Failure)  # ... and now 0
    fresh.compact(1)
    for i in range(4):
        fresh.put(b"k", str(i).encode())  # revisions 2..5
    assert fresh.compact(6).code == grpc.StatusCode.OUT_OF_RANGE  # future
    fresh.compact(3)
    fresh.compact(3)  # == previous
    fresh.compact(2)  # < previous
    fresh.compact(-1)
    fresh.range(b"k", revision=2)
    fresh.compact(5, physical=True)  # == current
    fresh.range(b"k", revision=4)
    fresh.range(b"k", revision=5)
    fresh.compact(5, physical=True)
    fresh.put(b"k", b"after")
    fresh.compact(6, physical=True)
    fresh.range(b"k", revision=6)
