"""`kinepy.store.txn` on its own: etcd's rules against hand-made snapshots, no server, no database."""

from __future__ import annotations

from typing import TypedDict

import pytest

from kinepy import errors
from kinepy.backends.base import ReadSet, Snapshot
from kinepy.store import txn
from kinepy.store.keys import key_range
from kinepy.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    EventType,
    KeyRange,
    KeyValue,
    Lease,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

MAX_OPS = 128


def kv(key: bytes, create: int, mod: int, version: int, value: bytes = b"", lease: int = 0) -> KeyValue:
    return KeyValue(key, create, mod, version, value, lease)


def snapshot(
    *kvs: KeyValue,
    revision: int = 10,
    compact_revision: int = -1,
    leases: tuple[int, ...] = (),
    historic: dict[tuple[KeyRange, int], list[KeyValue]] | None = None,
) -> Snapshot:
    return Snapshot(
        revision,
        compact_revision,
        {k.key: k for k in kvs},
        {i: Lease(i, 60, 1e12) for i in leases},
        historic or {},
    )


def state(*kvs: KeyValue, **kw: object) -> txn.BatchState:
    return txn.BatchState.of(snapshot(*kvs, **kw))  # type: ignore[arg-type]


def cmp(
    key: bytes, target: CompareTarget, result: CompareResult, operand: int | bytes, end: bytes = b""
) -> Compare:
    return Compare(result, target, key, end, operand)


# --------------------------------------------------------------------------------------------------
# validate_txn


@pytest.mark.parametrize(
    "txn_request",
    [
        TxnRequest(
            compare=[cmp(b"k%d" % i, CompareTarget.VERSION, CompareResult.EQUAL, 0) for i in range(129)]
        ),
        TxnRequest(success=[PutRequest(b"k%d" % i) for i in range(129)]),
        TxnRequest(failure=[RangeRequest(b"k%d" % i) for i in range(129)]),
        TxnRequest(
            success=[PutRequest(b"o%d" % i) for i in range(100)]
            + [TxnRequest(success=[PutRequest(b"n%d" % i) for i in range(28)])]
        ),
    ],
    ids=["129-compares", "129-success", "129-failure", "nested-over-the-remaining-27"],
)
def test_more_than_max_txn_ops_is_refused(txn_request: TxnRequest) -> None:
    with pytest.raises(errors.TooManyOpsError):
        txn.validate_txn(txn_request, MAX_OPS)


@pytest.mark.parametrize(
    "txn_request",
    [
        TxnRequest(
            compare=[cmp(b"k%d" % i, CompareTarget.VERSION, CompareResult.EQUAL, 0) for i in range(128)]
        ),
        TxnRequest(success=[PutRequest(b"k%d" % i) for i in range(128)], failure=[RangeRequest(b"r")] * 128),
        TxnRequest(
            success=[PutRequest(b"o%d" % i) for i in range(100)]
            + [TxnRequest(success=[PutRequest(b"n%d" % i) for i in range(27)])]
        ),
    ],
    ids=["128-compares", "128-each-branch", "nested-within-the-remaining-27"],
)
def test_up_to_max_txn_ops_is_accepted(txn_request: TxnRequest) -> None:
    txn.validate_txn(txn_request, MAX_OPS)


@pytest.mark.parametrize(
    ("txn_request", "error"),
    [
        (
            TxnRequest(compare=[cmp(b"", CompareTarget.MOD, CompareResult.EQUAL, 0)]),
            errors.KeyNotProvidedError,
        ),
        (TxnRequest(success=[PutRequest(b"")]), errors.KeyNotProvidedError),
        (TxnRequest(failure=[TxnRequest(success=[DeleteRangeRequest(b"")])]), errors.KeyNotProvidedError),
        (TxnRequest(success=[None]), errors.KeyNotFoundError),
        (TxnRequest(success=[TxnRequest(failure=[None])]), errors.KeyNotFoundError),
        (TxnRequest(success=[PutRequest(b"k", b"v", ignore_value=True)]), errors.ValueProvidedError),
        (TxnRequest(success=[PutRequest(b"k", lease=1, ignore_lease=True)]), errors.LeaseProvidedError),
        (TxnRequest(success=[RangeRequest(b"k", sort_target=7)]), errors.InvalidSortOptionError),
    ],
    ids=[
        "compare-empty-key",
        "put-empty-key",
        "nested-delete-empty-key",
        "nil-op",
        "nested-nil-op",
        "ignore-value-with-value",
        "ignore-lease-with-lease",
        "bad-sort-target",
    ],
)
def test_invalid_txn_ops_are_refused(txn_request: TxnRequest, error: type[errors.EtcdError]) -> None:
    with pytest.raises(error):
        txn.validate_txn(txn_request, MAX_OPS)


def D(key: bytes, end: bytes = b"") -> DeleteRangeRequest:
    return DeleteRangeRequest(key, end)


def P(key: bytes) -> PutRequest:
    return PutRequest(key)


def T(success: list[object] = (), failure: list[object] = ()) -> TxnRequest:  # type: ignore[assignment]
    return TxnRequest([], list(success), list(failure))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ops",
    [
        [P(b"d"), P(b"d")],
        [D(b"a", b"z"), P(b"d")],
        [P(b"d"), D(b"a", b"z")],
        [D(b"d"), P(b"d")],
        [P(b"d"), T([P(b"d")])],
        [T([P(b"d")]), T(failure=[P(b"d")])],
        [D(b"d"), T(failure=[P(b"d")])],
        [P(b"d"), T([D(b"d")])],
        [T([T([P(b"d")])]), P(b"d")],
        [T([P(b"d")]), T([P(b"d")])],
        [D(b"a", b"z"), T([P(b"d")])],
    ],
    ids=[
        "put-put",
        "delete-range-then-put",
        "put-then-delete-range",
        "delete-key-then-put",
        "put-and-nested-put",
        "two-nested-txns",
        "delete-and-nested-put",
        "put-and-nested-delete",
        "two-levels-deep",
        "two-nested-then-branches",
        "delete-range-and-nested-then-put",
    ],
)
def test_a_key_put_twice_or_put_and_deleted_in_one_branch_is_a_duplicate(ops: list[object]) -> None:
    with pytest.raises(errors.DuplicateKeyError):
        txn.validate_txn(T(ops), MAX_OPS)
    with pytest.raises(errors.DuplicateKeyError):
        txn.validate_txn(T(failure=ops), MAX_OPS)


@pytest.mark.parametrize(
    "ops",
    [
        [T([P(b"d")], [P(b"d")])],
        [D(b"a", b"z"), D(b"b", b"y")],
        [D(b"d", b"\x00"), P(b"zz")],  # etcd reads a "\0" end literally: an empty interval
        [D(b"z", b"a"), P(b"d")],
        [P(b"d"), RangeRequest(b"d")],
        [T([P(b"a")], [P(b"b")]), P(b"c")],
    ],
    ids=[
        "nested-then-else",
        "overlapping-deletes",
        "delete-to-end",
        "empty-delete",
        "put-and-range",
        "disjoint",
    ],
)
def test_keys_that_cannot_both_be_written_are_not_duplicates(ops: list[object]) -> None:
    txn.validate_txn(T(ops, ops), MAX_OPS)  # the then and else branches may repeat each other too


def test_check_intervals_reports_the_branch_puts_and_deletes() -> None:
    puts, deletes = txn._check_intervals([P(b"a"), D(b"m", b"n"), D(b"x"), T([P(b"b")], [P(b"c")])])
    assert puts == {b"a", b"b", b"c"}
    assert deletes == [(b"m", b"n"), (b"x", b"x\x00")]


# --------------------------------------------------------------------------------------------------
# Ranges.

# Keys whose version, create, mod and value orders all differ from the key order and from each other.
ROWS = [
    kv(b"a", 3, 24, 4, b"5"),
    kv(b"b", 5, 26, 2, b"3"),
    kv(b"c", 2, 28, 6, b"9"),
    kv(b"d", 7, 25, 3, b"1"),
    kv(b"e", 6, 23, 5, b"7"),
]


def keys(resp: RangeResponse) -> list[bytes]:
    return [k.key for k in resp.kvs]


@pytest.mark.parametrize(
    ("target", "ascending"),
    [
        (SortTarget.KEY, b"abcde"),
        (SortTarget.VERSION, b"bdaec"),
        (SortTarget.CREATE, b"cabed"),
        (SortTarget.MOD, b"eadbc"),
        (SortTarget.VALUE, b"dbaec"),
    ],
)
def test_finish_range_sorts_by_each_target(target: SortTarget, ascending: bytes) -> None:
    expected = [bytes([c]) for c in ascending]
    for order, want in ((SortOrder.ASCEND, expected), (SortOrder.DESCEND, expected[::-1])):
        resp = txn.finish_range(RangeRequest(b"a", b"z", sort_order=order, sort_target=target), ROWS, 5, 30)
        assert keys(resp) == want
    none = txn.finish_range(RangeRequest(b"a", b"z", sort_target=target), ROWS, 5, 30)
    assert keys(none) == expected  # a target without an order sorts ascending


def test_sort_target_without_order_keeps_the_limit_plus_one_fetch() -> None:
    req = RangeRequest(b"a", b"z", limit=2, sort_target=SortTarget.VALUE)
    fetch = txn.range_fetch_limit(req)
    assert fetch == 3
    resp = txn.finish_range(req, ROWS[:fetch], 5, 30)
    assert keys(resp) == [b"b", b"a"] and resp.more and resp.count == 5
    assert txn.range_fetch_limit(RangeRequest(b"a", b"z", limit=2, sort_order=SortOrder.ASCEND)) == 0


class RevisionFilters(TypedDict, total=False):
    min_mod_revision: int
    max_mod_revision: int
    min_create_revision: int
    max_create_revision: int


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"min_mod_revision": 25}, b"bcd"),
        ({"max_mod_revision": 25}, b"ade"),
        ({"min_create_revision": 5}, b"bde"),
        ({"max_create_revision": 3}, b"ac"),
        ({"min_mod_revision": 24, "max_mod_revision": 26, "min_create_revision": 4}, b"bd"),
    ],
)
def test_revision_filters_are_inclusive_and_leave_count_alone(
    filters: RevisionFilters, expected: bytes
) -> None:
    assert txn.range_fetch_limit(RangeRequest(b"a", b"z", limit=1, **filters)) == 0
    resp = txn.finish_range(RangeRequest(b"a", b"z", **filters), ROWS, 5, 30)
    assert keys(resp) == [bytes([c]) for c in expected] and resp.count == 5
    limited = txn.finish_range(RangeRequest(b"a", b"z", limit=1, **filters), ROWS, 5, 30)
    assert keys(limited) == [expected[:1]] and limited.more == (len(expected) > 1)


def test_limit_more_keys_only_and_count_only() -> None:
    resp = txn.finish_range(RangeRequest(b"a", b"z", limit=2, keys_only=True), ROWS[:3], 5, 30)
    assert resp.more and resp.count == 5 and resp.revision == 30
    assert resp.kvs == [kv(b"a", 3, 24, 4), kv(b"b", 5, 26, 2)]
    assert not txn.finish_range(RangeRequest(b"a", b"z", limit=5), ROWS, 5, 30).more
    counted = txn.finish_range(RangeRequest(b"a", b"z", limit=1, count_only=True), [], 5, 30)
    assert (counted.kvs, counted.more, counted.count) == ([], False, 5)


def test_read_revision_may_equal_the_compact_revision() -> None:
    txn.check_read_revision(5, current=10, compact=5)
    txn.check_read_revision(0, current=10, compact=5)
    txn.check_read_revision(10, current=10, compact=5)
    with pytest.raises(errors.CompactedError):
        txn.check_read_revision(4, current=10, compact=5)
    with pytest.raises(errors.FutureRevisionError):
        txn.check_read_revision(11, current=10, compact=5)


def test_invalid_sort_enums_are_refused() -> None:
    for req in (
        RangeRequest(b"a", sort_order=3),
        RangeRequest(b"a", sort_target=5),
        RangeRequest(b"a", sort_order=-1),
    ):
        with pytest.raises(errors.InvalidSortOptionError):
            txn.validate_range(req)


# --------------------------------------------------------------------------------------------------
# apply


def test_put_creates_then_versions_a_key_and_returns_prev_kv() -> None:
    st = state(revision=10)
    first = txn.apply(st, PutRequest(b"k", b"1", prev_kv=True))
    assert first == PutResponse(11, None)
    second = txn.apply(st, PutRequest(b"k", b"2", prev_kv=True))
    assert second == PutResponse(12, kv(b"k", 11, 11, 1, b"1"))
    assert st.get(b"k") == kv(b"k", 11, 12, 2, b"2")
    assert [(e.type, e.kv.mod_revision) for e in st.events] == [(EventType.PUT, 11), (EventType.PUT, 12)]
    ws = st.write_set()
    assert ws is not None and ws.revision == 12 and ws.current == {b"k": kv(b"k", 11, 12, 2, b"2")}


def test_put_ignore_value_and_ignore_lease_keep_the_stored_ones() -> None:
    st = state(kv(b"k", 2, 5, 3, b"old", lease=7), leases=(7,))
    txn.apply(st, PutRequest(b"k", ignore_value=True, ignore_lease=True))
    assert st.get(b"k") == kv(b"k", 2, 11, 4, b"old", lease=7)
    txn.apply(st, PutRequest(b"k", b"new", ignore_lease=True))
    assert st.get(b"k") == kv(b"k", 2, 12, 5, b"new", lease=7)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (PutRequest(b"missing", ignore_value=True), errors.KeyNotFoundError),
        (PutRequest(b"missing", ignore_lease=True), errors.KeyNotFoundError),
        (PutRequest(b"k", lease=99), errors.LeaseNotFoundError),
        (TxnRequest(success=[PutRequest(b"a"), PutRequest(b"b", lease=99)]), errors.LeaseNotFoundError),
        (
            TxnRequest(success=[DeleteRangeRequest(b"k"), PutRequest(b"missing", ignore_value=True)]),
            errors.KeyNotFoundError,
        ),
        (TxnRequest(success=[PutRequest(b"a"), RangeRequest(b"k", revision=11)]), errors.FutureRevisionError),
        (TxnRequest(success=[PutRequest(b"a"), RangeRequest(b"k", revision=3)]), errors.CompactedError),
        (txn.CompactRequest(4), errors.CompactedError),
        (txn.CompactRequest(11), errors.FutureRevisionError),
    ],
    ids=[
        "ignore-value-missing",
        "ignore-lease-missing",
        "unknown-lease",
        "txn-unknown-lease",
        "txn-ignore-value-missing",
        "txn-future-range",
        "txn-compacted-range",
        "compact-at-compact",
        "compact-future",
    ],
)
def test_a_failing_request_leaves_no_trace(request_: object, error: type[errors.EtcdError]) -> None:
    st = state(kv(b"k", 2, 5, 1, b"v"), compact_revision=4)
    with pytest.raises(error):
        txn.apply(st, request_)  # type: ignore[arg-type]
    assert st.revision == 10 and st.compact_revision == 4 and not st.log and not st.events
    assert st.write_set() is None and st.get(b"k") == kv(b"k", 2, 5, 1, b"v")


def test_delete_range_deletes_in_key_order_at_one_revision() -> None:
    st = state(kv(b"b", 2, 2, 1, b"B"), kv(b"a", 3, 3, 1, b"A"), kv(b"c", 4, 4, 1, b"C"))
    resp = txn.apply(st, DeleteRangeRequest(b"a", b"c", prev_kv=True))
    assert resp == DeleteRangeResponse(11, 2, [kv(b"a", 3, 3, 1, b"A"), kv(b"b", 2, 2, 1, b"B")])
    assert [(e.type, e.kv, r.sub) for e, r in zip(st.events, st.log, strict=True)] == [
        (EventType.DELETE, kv(b"a", 0, 11, 0), 0),
        (EventType.DELETE, kv(b"b", 0, 11, 0), 1),
    ]
    assert txn.apply(st, DeleteRangeRequest(b"a", b"c")) == DeleteRangeResponse(11, 0, [])  # no bump


def test_compares_treat_a_missing_key_as_zeros_except_for_value() -> None:
    st = state(kv(b"k", 2, 5, 3, b"v", lease=7), kv(b"l", 4, 4, 1, b"w"), leases=(7,))

    def holds(*compares: Compare) -> bool:
        resp = txn.apply(st, TxnRequest(list(compares)))
        assert isinstance(resp, TxnResponse)
        return resp.succeeded

    assert holds(cmp(b"missing", CompareTarget.MOD, CompareResult.EQUAL, 0))
    assert holds(cmp(b"missing", CompareTarget.LEASE, CompareResult.EQUAL, 0))
    assert not holds(cmp(b"missing", CompareTarget.VALUE, CompareResult.EQUAL, b""))
    assert not holds(cmp(b"missing", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x"))
    assert holds(
        cmp(b"k", CompareTarget.VERSION, CompareResult.GREATER, 2),
        cmp(b"k", CompareTarget.LEASE, CompareResult.EQUAL, 7),
    )
    assert holds(cmp(b"k", CompareTarget.VALUE, CompareResult.LESS, b"w"))
    assert holds(cmp(b"k", CompareTarget.CREATE, CompareResult.NOT_EQUAL, 3))
    # Over a range, every key must satisfy the compare.
    assert holds(cmp(b"k", CompareTarget.MOD, CompareResult.GREATER, 3, b"m"))
    assert not holds(cmp(b"k", CompareTarget.MOD, CompareResult.GREATER, 4, b"m"))
    assert holds(cmp(b"x", CompareTarget.VERSION, CompareResult.EQUAL, 0, b"\x00"))  # empty range: zeros
    assert st.revision == 10  # compares alone write nothing


def test_nested_compares_are_decided_before_any_write_of_the_txn() -> None:
    st = state(kv(b"flag", 2, 2, 1, b"old"))
    inner = TxnRequest(
        [cmp(b"flag", CompareTarget.VALUE, CompareResult.EQUAL, b"old")],
        [PutRequest(b"seen", b"old"), RangeRequest(b"flag")],
        [PutRequest(b"seen", b"new")],
    )
    resp = txn.apply(st, TxnRequest([], [PutRequest(b"flag", b"new"), inner]))
    assert isinstance(resp, TxnResponse) and resp.revision == 11
    nested = resp.responses[1]
    assert isinstance(nested, TxnResponse) and nested.succeeded and nested.revision == 0
    assert st.get(b"seen") == kv(b"seen", 11, 11, 1, b"old")
    read = nested.responses[1]
    assert isinstance(read, RangeResponse) and read.kvs == [
        kv(b"flag", 2, 11, 2, b"new")
    ]  # sees the outer put


def test_txn_reads_see_its_own_writes_and_report_the_revision_then() -> None:
    st = state(kv(b"a", 2, 2, 1, b"1"))
    resp = txn.apply(st, TxnRequest([], [RangeRequest(b"a"), PutRequest(b"a", b"2"), RangeRequest(b"a")]))
    assert isinstance(resp, TxnResponse)
    before, put, after = resp.responses
    assert isinstance(before, RangeResponse) and before.revision == 10 and before.kvs[0].value == b"1"
    assert put == PutResponse(11, None)
    assert (
        isinstance(after, RangeResponse) and after.revision == 11 and after.kvs == [kv(b"a", 2, 11, 2, b"2")]
    )


def test_txn_range_at_an_explicit_revision_reads_the_historic_rows() -> None:
    """Even at the committed revision: the read set (`add_to_read_set`) holds such a range only there."""
    whole = key_range(b"a", b"")
    rs = ReadSet()
    txn.add_to_read_set(TxnRequest([], [RangeRequest(b"a", revision=10)]), rs)
    assert (rs.keys, rs.ranges, rs.historic) == (set(), [], [(whole, 10)])
    st = state(
        revision=10,
        compact_revision=4,
        historic={(whole, 5): [kv(b"a", 2, 5, 1, b"then")], (whole, 10): [kv(b"a", 2, 9, 3, b"now")]},
    )
    resp = txn.apply(
        st,
        TxnRequest(
            [],
            [
                RangeRequest(b"a", revision=5),
                RangeRequest(b"a", revision=10),
                PutRequest(b"b"),
                RangeRequest(b"a", revision=10),
            ],
        ),
    )
    assert isinstance(resp, TxnResponse)
    values = [r.kvs[0].value for r in resp.responses if isinstance(r, RangeResponse)]
    assert values == [b"then", b"now", b"now"]
    assert [r.revision for r in resp.responses] == [10, 10, 11, 11]


def test_read_only_and_no_op_txns_do_not_bump_the_revision() -> None:
    st = state(kv(b"a", 2, 2, 1))
    for request in (
        TxnRequest([], [RangeRequest(b"a")]),
        TxnRequest([], [DeleteRangeRequest(b"missing")]),
        TxnRequest(
            [cmp(b"a", CompareTarget.VERSION, CompareResult.EQUAL, 5)],
            [PutRequest(b"x")],
            [RangeRequest(b"a")],
        ),
        TxnRequest([], [TxnRequest([], [DeleteRangeRequest(b"m", b"n")])]),
    ):
        resp = txn.apply(st, request)
        assert isinstance(resp, TxnResponse) and resp.revision == 10
    assert st.write_set() is None


def test_compact_rules() -> None:
    st = state(revision=10)
    assert txn.apply(st, txn.CompactRequest(0)) == txn.CompactResponse(10)  # fresh: compact revision -1
    with pytest.raises(errors.CompactedError):
        txn.apply(st, txn.CompactRequest(0))
    assert txn.apply(st, txn.CompactRequest(10)) == txn.CompactResponse(10)  # == current
    with pytest.raises(errors.CompactedError):
        txn.apply(st, txn.CompactRequest(9))
    ws = st.write_set()
    assert ws is not None and ws.compact_revision == 10 and not ws.log


def test_the_key_length_limit_refuses_puts_at_any_depth_but_not_reads_or_deletes() -> None:
    long = b"k" * 17
    for request in (
        PutRequest(long),
        TxnRequest([], [PutRequest(b"ok")], [TxnRequest([], [], [PutRequest(long)])]),
    ):
        with pytest.raises(errors.KeyTooLongError, match="limit of 16 bytes"):
            txn.check_key_lengths(request, 16)
        txn.check_key_lengths(request, 0)  # 0: no limit
    # A key that cannot be written cannot exist either: reading or deleting it is harmless.
    txn.check_key_lengths(DeleteRangeRequest(long), 16)
    txn.check_key_lengths(TxnRequest([], [RangeRequest(long), DeleteRangeRequest(long)]), 16)


def test_an_empty_range_reads_nothing_and_compares_as_a_missing_key() -> None:
    """`range_end` <= `key` is an empty interval in etcd: a compare over it sees no key (zeros; a
    value compare fails), a delete over it deletes nothing; the batch needs to read nothing for them."""
    rs = ReadSet()
    request = TxnRequest(
        [cmp(b"z", CompareTarget.VERSION, CompareResult.EQUAL, 0, end=b"a")],
        [DeleteRangeRequest(b"z", b"a")],
        [],
    )
    txn.add_to_read_set(request, rs)
    assert (rs.keys, rs.ranges, rs.historic) == (set(), [], [])
    st = state(kv(b"m", 2, 2, 1, b"v"))
    resp = txn.apply(st, request)
    assert isinstance(resp, TxnResponse) and resp.succeeded and resp.revision == 10
    assert resp.responses == [DeleteRangeResponse(10, 0, [])]
    value = TxnRequest([cmp(b"z", CompareTarget.VALUE, CompareResult.EQUAL, b"", end=b"a")])
    resp = txn.apply(st, value)
    assert isinstance(resp, TxnResponse) and not resp.succeeded


def test_a_txn_needs_its_own_snapshot_when_any_branch_at_any_depth_reads_at_a_revision() -> None:
    at_5 = RangeRequest(b"a", revision=5)
    assert txn.needs_own_snapshot(TxnRequest([], [], [TxnRequest([], [TxnRequest([], [at_5])])]))
    assert txn.needs_own_snapshot(TxnRequest([], [PutRequest(b"x")], [at_5]))
    assert not txn.needs_own_snapshot(
        TxnRequest([], [RangeRequest(b"a"), TxnRequest([], [PutRequest(b"x")], [RangeRequest(b"b")])])
    )
    assert not txn.needs_own_snapshot(PutRequest(b"x"))


def test_a_txn_range_honours_its_limit_and_counts_the_whole_range() -> None:
    st = state(*ROWS)
    resp = txn.apply(st, TxnRequest([], [RangeRequest(b"a", b"z", limit=2)]))
    assert isinstance(resp, TxnResponse)
    [page] = resp.responses
    assert isinstance(page, RangeResponse)
    assert keys(page) == [b"a", b"b"] and page.count == len(ROWS) and page.more


def test_a_lease_id_picked_by_the_server_is_one_not_in_use() -> None:
    st = state(leases=(5, 6))
    picks = iter([5, 6, 7])
    resp = txn.apply(st, txn.LeaseGrantRequest(0, 10, 1000.0, lambda: next(picks)))
    assert isinstance(resp, txn.LeaseResponse) and resp.lease == Lease(7, 10, 1010.0)
    assert sorted(st.leases) == [5, 6, 7]


def test_a_keep_alive_never_moves_a_deadline_back_nor_renews_an_expired_lease() -> None:
    st = state(leases=(5,))  # deadline 1e12
    resp = txn.apply(st, txn.LeaseKeepAliveRequest(5, 1000.0, deadline=2000.0))
    assert isinstance(resp, txn.LeaseResponse) and resp.lease == Lease(5, 60, 1e12)
    assert st.write_set() is None  # nothing to write
    for expired in (txn.LeaseKeepAliveRequest(5, 1e12), txn.LeaseKeepAliveRequest(404, 1000.0)):
        resp = txn.apply(st, expired)
        assert isinstance(resp, txn.LeaseResponse) and resp.lease is None  # etcd: TTL 0
    assert st.write_set() is None
    revived = txn.apply(st, txn.LeaseKeepAliveRequest(5, 1e12, revive=True))
    assert isinstance(revived, txn.LeaseResponse) and revived.lease == Lease(5, 60, 1e12 + 60)
