"""etcd's request rules (etcd keeps them in etcdserver/txn), evaluated in memory against a snapshot.

Three steps, as in etcd's server: *validate* a request on its own (no state), work out what it
must *read* (its read set), then *apply* it to a `BatchState` (the snapshot plus the writes of the
requests before it in the same commit). Apply checks everything that can fail before it changes
anything, so a request that errors leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kinepy import errors
from kinepy.backends.base import LogRow, ReadSet, Snapshot, WriteSet
from kinepy.store.keys import key_range
from kinepy.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    KeyRange,
    KeyValue,
    Lease,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    WriteRequest,
)

_SORT_ORDERS = frozenset(int(v) for v in SortOrder)
_SORT_TARGETS = frozenset(int(v) for v in SortTarget)


@dataclass(slots=True)
class CompactRequest:
    revision: int
    physical: bool = False
    expected_compact: int | None = None
    """Compact only if the compaction revision is still this one (automatic compaction's CAS)."""


@dataclass(slots=True)
class CompactResponse:
    revision: int


LOST_GAP = 2
"""Revisions left empty after the last acknowledged one when the database lost revisions (`skip_lost`)."""


@dataclass(slots=True)
class RevisionCheck:
    """Writes nothing: a batch that only looks at the database's revision, so that revisions the
    database lost are skipped (`BatchState.skip_lost`) before anything else is written. Answered
    with a `CompactResponse` carrying the revision."""


@dataclass(slots=True)
class LeaseGrantRequest:
    id: int  # 0: the server picks one
    ttl: int
    now: float
    pick_id: Callable[[], int] | None = None


@dataclass(slots=True)
class LeaseRevokeRequest:
    id: int
    # Expiry: revoke only if the persisted deadline is still at or before this time.
    expired_at: float | None = None


@dataclass(slots=True)
class LeaseKeepAliveRequest:
    """Persist a later deadline for a lease: `deadline` (a renewal received in memory earlier), or
    `now` + its TTL. Never moves a deadline back. A lease whose persisted deadline is at or before
    `now` is not renewed (it expired), unless `revive` (a start gives every lease a fresh TTL)."""

    id: int
    now: float
    deadline: float | None = None
    revive: bool = False


@dataclass(slots=True)
class LeaseResponse:
    revision: int
    lease: Lease | None  # None: not found (keepalive) or not expired after all (expiry)


LeaseRequest = LeaseGrantRequest | LeaseRevokeRequest | LeaseKeepAliveRequest
BatchRequest = WriteRequest | CompactRequest | LeaseRequest | RevisionCheck
"""Anything the writer commits in a batch."""


# -- validation (etcd's api/v3rpc/key.go) ------------------------------------------------------


def validate_range(req: RangeRequest) -> None:
    if not req.key:
        raise errors.KeyNotProvidedError()
    if req.sort_order not in _SORT_ORDERS or req.sort_target not in _SORT_TARGETS:
        raise errors.InvalidSortOptionError()


def validate_put(req: PutRequest) -> None:
    if not req.key:
        raise errors.KeyNotProvidedError()
    if req.ignore_value and req.value:
        raise errors.ValueProvidedError()
    if req.ignore_lease and req.lease != 0:
        raise errors.LeaseProvidedError()


def validate_delete_range(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise errors.KeyNotProvidedError()


def validate_txn(req: TxnRequest, max_txn_ops: int) -> None:
    _check_txn(req, max_txn_ops)
    _check_intervals(req.success)
    _check_intervals(req.failure)


def _check_txn(req: TxnRequest, max_txn_ops: int) -> None:
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise errors.TooManyOpsError()
    for cmp in req.compare:
        if not cmp.key:
            raise errors.KeyNotProvidedError()
    for op in (*req.success, *req.failure):
        _check_op(op, max_txn_ops - ops)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    if isinstance(op, RangeRequest):
        validate_range(op)
    elif isinstance(op, PutRequest):
        validate_put(op)
    elif isinstance(op, DeleteRangeRequest):
        validate_delete_range(op)
    elif isinstance(op, TxnRequest):
        _check_txn(op, max_txn_ops)
    else:
        raise errors.KeyNotFoundError()


def _delete_hits(deletes: list[tuple[bytes, bytes]], key: bytes) -> bool:
    # etcd's affine intervals: an empty end is infinity; a `"\0"` end makes an empty interval.
    return any(start <= key and (not end or key < end) for start, end in deletes)


def _check_intervals(ops: list[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: no key put twice, and no put into a range deleted, in one branch.

    The then/else branches of a nested txn exclude each other, so they may repeat a key."""
    deletes: list[tuple[bytes, bytes]] = []
    for op in ops:
        if isinstance(op, DeleteRangeRequest):
            deletes.append((op.key, op.range_end) if op.range_end else (op.key, op.key + b"\x00"))
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, TxnRequest):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for key in puts_then:
            if key in puts or _delete_hits(deletes, key):
                raise errors.DuplicateKeyError()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _delete_hits(deletes, key):
                raise errors.DuplicateKeyError()
            puts.add(key)
        deletes.extend(dels_then)
        deletes.extend(dels_else)
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or _delete_hits(deletes, op.key):
                raise errors.DuplicateKeyError()
            puts.add(op.key)
    return puts, deletes


def check_key_lengths(req: WriteRequest, limit: int) -> None:
    """Refuse, before it reaches a batch, a write of a key the datastore cannot index (`limit`
    bytes; 0 = no limit): failing inside the batch would fail every request committed with it."""
    if limit <= 0:
        return
    if isinstance(req, PutRequest):
        if len(req.key) > limit:
            raise errors.KeyTooLongError(f"kinepy: key is longer than the datastore's limit of {limit} bytes")
    elif isinstance(req, TxnRequest):
        for op in (*req.success, *req.failure):
            if isinstance(op, PutRequest | TxnRequest):
                check_key_lengths(op, limit)


# -- read sets -------------------------------------------------------------------------------


def add_to_read_set(req: BatchRequest, rs: ReadSet) -> None:
    """Everything `req` may read when applied, whichever branches its compares choose."""
    if isinstance(req, LeaseGrantRequest | LeaseKeepAliveRequest):
        rs.leases.add(req.id)
    elif isinstance(req, LeaseRevokeRequest):
        rs.leases.add(req.id)
        rs.lease_keys.add(req.id)
    elif isinstance(req, PutRequest):
        rs.keys.add(req.key)
        if req.lease:
            rs.leases.add(req.lease)
    elif isinstance(req, DeleteRangeRequest):
        _add_range(rs, key_range(req.key, req.range_end))
    elif isinstance(req, TxnRequest):
        for cmp in req.compare:
            _add_range(rs, key_range(cmp.key, cmp.range_end))
        for op in (*req.success, *req.failure):
            if isinstance(op, RangeRequest):
                kr = key_range(op.key, op.range_end)
                if op.revision > 0:
                    rs.historic.append((kr, op.revision))
                else:
                    _add_range(rs, kr)
            elif op is not None:
                add_to_read_set(op, rs)


def _add_range(rs: ReadSet, kr: KeyRange) -> None:
    if kr.end is not None and kr.end == kr.start + b"\x00":
        rs.keys.add(kr.start)
    elif kr.end is None or kr.start < kr.end:
        rs.ranges.append(kr)


def needs_own_snapshot(req: BatchRequest) -> bool:
    """A txn reading at an explicit revision must see exactly the committed state, so it is
    evaluated first in its batch (its read set is taken before any other write of the batch)."""
    if not isinstance(req, TxnRequest):
        return False
    for op in (*req.success, *req.failure):
        if isinstance(op, RangeRequest) and op.revision > 0:
            return True
        if isinstance(op, TxnRequest) and needs_own_snapshot(op):
            return True
    return False


# -- ranges ----------------------------------------------------------------------------------


def range_fetch_limit(req: RangeRequest) -> int:
    """How many rows etcd reads for `req` (0: all): one extra to learn `more`, unless it must
    sort or filter everything first."""
    if (
        req.sort_order != SortOrder.NONE
        or req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    ):
        return 0
    return req.limit + 1 if req.limit > 0 else 0


_SORT_KEYS = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def finish_range(req: RangeRequest, kvs: list[KeyValue], count: int, revision: int) -> RangeResponse:
    """etcd's Range after the read: filters, sort, limit, `more`, keys_only.

    `kvs` are in key order, as many as `range_fetch_limit` asked for."""
    if req.count_only:
        return RangeResponse(revision, [], False, count)
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    order = req.sort_order
    if req.sort_target != SortTarget.KEY and order == SortOrder.NONE:
        order = SortOrder.ASCEND
    if order != SortOrder.NONE and not (req.sort_target == SortTarget.KEY and order == SortOrder.ASCEND):
        kvs = sorted(kvs, key=_SORT_KEYS[SortTarget(req.sort_target)], reverse=order == SortOrder.DESCEND)
    more = False
    if req.limit > 0 and len(kvs) > req.limit:
        kvs = kvs[: req.limit]
        more = True
    if req.keys_only:
        kvs = [KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, b"", kv.lease) for kv in kvs]
    return RangeResponse(revision, kvs, more, count)


def check_read_revision(revision: int, current: int, compact: int) -> None:
    if revision > current:
        raise errors.FutureRevisionError()
    if 0 < revision < compact:
        raise errors.CompactedError()


# -- applying writes -------------------------------------------------------------------------


@dataclass(slots=True)
class BatchState:
    """The store as one batch sees it: the snapshot plus the writes applied so far."""

    revision: int
    compact_revision: int
    rows: dict[bytes, KeyValue | None]
    leases: dict[int, Lease]
    snapshot: Snapshot
    log: list[LogRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    touched: dict[bytes, KeyValue | None] = field(default_factory=dict)
    touched_leases: dict[int, Lease | None] = field(default_factory=dict)
    new_compact_revision: int | None = None

    @classmethod
    def of(cls, snapshot: Snapshot) -> BatchState:
        rows: dict[bytes, KeyValue | None] = dict(snapshot.rows)
        return cls(snapshot.revision, snapshot.compact_revision, rows, dict(snapshot.leases), snapshot)

    def get(self, key: bytes) -> KeyValue | None:
        return self.rows.get(key)

    def range(self, kr: KeyRange) -> list[KeyValue]:
        if kr.end is not None and kr.end == kr.start + b"\x00":
            kv = self.rows.get(kr.start)
            return [kv] if kv is not None else []
        found = [kv for key, kv in self.rows.items() if kv is not None and key in kr]
        found.sort(key=lambda kv: kv.key)
        return found

    def skip_lost(self, acknowledged: int) -> int:
        """The database is behind `acknowledged`, a revision this process already acknowledged: the
        revisions after the database's were lost (an asynchronous standby promoted, a backup restored).
        Go on after them, never reusing one, with history compacted at `acknowledged + LOST_GAP`
        (returned): what was read at the lost revisions can no longer be read, and a watch resumed
        from the revision after the last one its client saw (`acknowledged + 1` at most) is below the
        compaction, so it is cancelled as compacted, not silently continued."""
        fence = acknowledged + LOST_GAP
        self.revision = fence
        self.compact_revision = fence
        self.new_compact_revision = fence
        return fence

    def write_set(self) -> WriteSet | None:
        if not self.log and self.new_compact_revision is None and not self.touched_leases:
            return None
        return WriteSet(
            revision=self.revision,
            log=self.log,
            current=self.touched,
            compact_revision=self.new_compact_revision,
            leases=self.touched_leases,
            base_revision=self.snapshot.revision,
            events=self.events,
        )


class _NewRevision:
    """The revision one request writes: every change at `revision`, numbered by `sub`."""

    __slots__ = ("changed", "revision", "state", "sub")

    def __init__(self, state: BatchState) -> None:
        self.state = state
        self.revision = state.revision + 1
        self.sub = 0
        self.changed = False

    def put(self, key: bytes, value: bytes, lease: int) -> KeyValue | None:
        state = self.state
        prev = state.rows.get(key)
        if prev is None:
            kv = KeyValue(key, self.revision, self.revision, 1, value, lease)
        else:
            kv = KeyValue(key, prev.create_revision, self.revision, prev.version + 1, value, lease)
        state.rows[key] = kv
        state.touched[key] = kv
        state.log.append(
            LogRow(self.revision, self.sub, key, kv.create_revision, kv.version, lease, value, False)
        )
        state.events.append(Event(EventType.PUT, kv, prev))
        self.sub += 1
        self.changed = True
        return prev

    def delete(self, kv: KeyValue) -> None:
        state = self.state
        state.rows[kv.key] = None
        state.touched[kv.key] = None
        state.log.append(LogRow(self.revision, self.sub, kv.key, 0, 0, 0, b"", True))
        state.events.append(Event(EventType.DELETE, KeyValue(kv.key, 0, self.revision, 0, b"", 0), kv))
        self.sub += 1
        self.changed = True

    def current_revision(self) -> int:
        """What a read inside this request reports: the new revision once it has written."""
        return self.revision if self.changed else self.revision - 1

    def done(self) -> None:
        if self.changed:
            self.state.revision = self.revision


BatchResponse = PutResponse | DeleteRangeResponse | TxnResponse | CompactResponse | LeaseResponse


def apply(state: BatchState, req: BatchRequest) -> BatchResponse:
    """Apply one request to `state`; raises an `EtcdError` (and changes nothing) if it fails."""
    if isinstance(req, LeaseGrantRequest):
        return _lease_grant(state, req)
    if isinstance(req, LeaseRevokeRequest):
        return _lease_revoke(state, req)
    if isinstance(req, LeaseKeepAliveRequest):
        return _lease_keep_alive(state, req)
    if isinstance(req, PutRequest):
        _check_put_lease(state, req)
        _check_put_prev(state, req)
        new_rev = _NewRevision(state)
        put_resp = _put(state, new_rev, req)
        new_rev.done()
        return put_resp
    if isinstance(req, DeleteRangeRequest):
        new_rev = _NewRevision(state)
        del_resp = _delete_range(state, new_rev, req)
        new_rev.done()
        return del_resp
    if isinstance(req, TxnRequest):
        return _txn(state, req)
    if isinstance(req, RevisionCheck):
        return CompactResponse(state.revision)
    return _compact(state, req)


def _check_put_lease(state: BatchState, req: PutRequest) -> None:
    if req.lease and req.lease not in state.leases:
        raise errors.LeaseNotFoundError()


def _check_put_prev(state: BatchState, req: PutRequest) -> None:
    if (req.ignore_value or req.ignore_lease) and state.get(req.key) is None:
        raise errors.KeyNotFoundError()


def _put(state: BatchState, new_rev: _NewRevision, req: PutRequest) -> PutResponse:
    prev = state.get(req.key)
    value = prev.value if req.ignore_value and prev is not None else req.value
    lease = prev.lease if req.ignore_lease and prev is not None else req.lease
    new_rev.put(req.key, value, lease)
    return PutResponse(new_rev.revision, prev if req.prev_kv else None)


def _delete_range(state: BatchState, new_rev: _NewRevision, req: DeleteRangeRequest) -> DeleteRangeResponse:
    doomed = state.range(key_range(req.key, req.range_end))
    for kv in doomed:
        new_rev.delete(kv)
    revision = new_rev.revision if new_rev.changed else new_rev.revision - 1
    return DeleteRangeResponse(revision, len(doomed), doomed if req.prev_kv else [])


def _compare(state: BatchState, cmp: Compare) -> bool:
    kvs = state.range(key_range(cmp.key, cmp.range_end))
    if not kvs:
        if cmp.target == CompareTarget.VALUE:
            return False
        kvs = [KeyValue(cmp.key, 0, 0, 0, b"", 0)]
    return all(_compare_kv(cmp, kv) for kv in kvs)


def _compare_kv(cmp: Compare, kv: KeyValue) -> bool:
    target = cmp.target
    mine: int | bytes
    theirs: int | bytes
    if target == CompareTarget.VALUE:
        mine, theirs = kv.value, cmp.operand if isinstance(cmp.operand, bytes) else b""
    else:
        theirs = cmp.operand if isinstance(cmp.operand, int) else 0
        if target == CompareTarget.VERSION:
            mine = kv.version
        elif target == CompareTarget.CREATE:
            mine = kv.create_revision
        elif target == CompareTarget.MOD:
            mine = kv.mod_revision
        elif target == CompareTarget.LEASE:
            mine = kv.lease
        else:
            mine = theirs
    result = (mine > theirs) - (mine < theirs)  # type: ignore[operator]
    if cmp.result == CompareResult.EQUAL:
        return result == 0
    if cmp.result == CompareResult.NOT_EQUAL:
        return result != 0
    if cmp.result == CompareResult.GREATER:
        return result > 0
    if cmp.result == CompareResult.LESS:
        return result < 0
    return True


def _decide(state: BatchState, req: TxnRequest, path: dict[int, bool]) -> None:
    """etcd's compareToPath: every compare on the chosen path, decided before any write."""
    ok = all(_compare(state, cmp) for cmp in req.compare)
    path[id(req)] = ok
    for op in req.success if ok else req.failure:
        if isinstance(op, TxnRequest):
            _decide(state, op, path)


def _ops_on_path(req: TxnRequest, path: dict[int, bool]) -> list[RequestOp]:
    ops: list[RequestOp] = []
    for op in req.success if path[id(req)] else req.failure:
        if isinstance(op, TxnRequest):
            ops.extend(_ops_on_path(op, path))
        else:
            ops.append(op)
    return ops


def _is_read_only(req: TxnRequest) -> bool:
    return all(isinstance(op, RangeRequest) for op in (*req.success, *req.failure))


def _txn(state: BatchState, req: TxnRequest) -> TxnResponse:
    path: dict[int, bool] = {}
    _decide(state, req, path)
    ops = _ops_on_path(req, path)
    if not _is_read_only(req):
        for op in ops:
            if isinstance(op, PutRequest):
                _check_put_prev(state, op)
                _check_put_lease(state, op)
    for op in ops:
        if isinstance(op, RangeRequest) and op.revision > 0:
            check_read_revision(op.revision, state.revision, state.compact_revision)
    new_rev = _NewRevision(state)
    resp = _apply_txn(state, new_rev, req, path)
    new_rev.done()
    resp.revision = new_rev.current_revision()
    return resp


def _apply_txn(
    state: BatchState, new_rev: _NewRevision, req: TxnRequest, path: dict[int, bool]
) -> TxnResponse:
    succeeded = path[id(req)]
    responses: list[ResponseOp] = []
    for op in req.success if succeeded else req.failure:
        if isinstance(op, RangeRequest):
            responses.append(_txn_range(state, new_rev, op))
        elif isinstance(op, PutRequest):
            responses.append(_put(state, new_rev, op))
        elif isinstance(op, DeleteRangeRequest):
            responses.append(_delete_range(state, new_rev, op))
        elif isinstance(op, TxnRequest):
            responses.append(_apply_txn(state, new_rev, op, path))
    # A nested txn's header carries no revision; the outer one is set by the caller.
    return TxnResponse(0, succeeded, responses)


def _txn_range(state: BatchState, new_rev: _NewRevision, req: RangeRequest) -> RangeResponse:
    kr = key_range(req.key, req.range_end)
    current = new_rev.current_revision()
    if req.revision > 0:
        # The read set holds this range only as of `req.revision` (at most the committed revision:
        # a later one failed as future); at the committed revision that is the current state.
        kvs = list(state.snapshot.historic.get((kr, req.revision), []))
    else:
        kvs = state.range(kr)
    count = len(kvs)
    fetch = range_fetch_limit(req)
    if fetch:
        kvs = kvs[:fetch]
    return finish_range(req, kvs, count, current)


def _compact(state: BatchState, req: CompactRequest) -> CompactResponse:
    if req.revision <= state.compact_revision:
        raise errors.CompactedError()
    if req.expected_compact is not None and req.expected_compact != state.compact_revision:
        raise errors.CompactedError()
    if req.revision > state.revision:
        raise errors.FutureRevisionError()
    state.compact_revision = req.revision
    state.new_compact_revision = req.revision
    return CompactResponse(state.revision)


# -- leases ----------------------------------------------------------------------------------


def _lease_grant(state: BatchState, req: LeaseGrantRequest) -> LeaseResponse:
    lease_id = req.id
    if lease_id == 0 and req.pick_id is not None:
        lease_id = req.pick_id()
        while lease_id in state.leases:
            lease_id = req.pick_id()
    if lease_id in state.leases:
        raise errors.LeaseExistsError()
    lease = Lease(lease_id, req.ttl, req.now + req.ttl)
    state.leases[lease_id] = lease
    state.touched_leases[lease_id] = lease
    return LeaseResponse(state.revision, lease)


def _lease_revoke(state: BatchState, req: LeaseRevokeRequest) -> LeaseResponse:
    lease = state.leases.get(req.id)
    if lease is None:
        raise errors.LeaseNotFoundError()
    if req.expired_at is not None and lease.expires_at > req.expired_at:
        return LeaseResponse(state.revision, None)  # kept alive meanwhile
    new_rev = _NewRevision(state)
    attached = sorted(
        (kv for kv in state.rows.values() if kv is not None and kv.lease == req.id), key=_by_key
    )
    for kv in attached:
        new_rev.delete(kv)
    new_rev.done()
    del state.leases[req.id]
    state.touched_leases[req.id] = None
    return LeaseResponse(state.revision, lease)


def _lease_keep_alive(state: BatchState, req: LeaseKeepAliveRequest) -> LeaseResponse:
    lease = state.leases.get(req.id)
    if lease is None or (lease.expires_at <= req.now and not req.revive):
        return LeaseResponse(state.revision, None)
    deadline = req.now + lease.ttl if req.deadline is None else req.deadline
    if deadline <= lease.expires_at:
        return LeaseResponse(state.revision, lease)
    renewed = Lease(lease.id, lease.ttl, deadline)
    state.leases[lease.id] = renewed
    state.touched_leases[lease.id] = renewed
    return LeaseResponse(state.revision, renewed)


def _by_key(kv: KeyValue) -> bytes:
    return kv.key
