"""Protobuf <-> domain types, converted once at the edge."""

from __future__ import annotations

from collections.abc import Callable

from kinepy import types
from kinepy.proto import kv_pb2, rpc_pb2

_OPERAND_FIELD = {
    types.CompareTarget.VERSION: "version",
    types.CompareTarget.CREATE: "create_revision",
    types.CompareTarget.MOD: "mod_revision",
    types.CompareTarget.VALUE: "value",
    types.CompareTarget.LEASE: "lease",
}
_TARGETS = frozenset(int(t) for t in types.CompareTarget)


class Headers:
    """Builds response headers for one member."""

    __slots__ = ("cluster_id", "member_id", "raft_term")

    def __init__(self, cluster_id: int, member_id: int, raft_term: int = 1) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.raft_term = raft_term

    def __call__(self, revision: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.member_id, revision=revision, raft_term=self.raft_term
        )


# -- requests --------------------------------------------------------------------------------


def range_request(r: rpc_pb2.RangeRequest) -> types.RangeRequest:
    return types.RangeRequest(
        r.key,
        r.range_end,
        r.limit,
        r.revision,
        r.sort_order,
        r.sort_target,
        r.serializable,
        r.keys_only,
        r.count_only,
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    )


def put_request(r: rpc_pb2.PutRequest) -> types.PutRequest:
    return types.PutRequest(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_range_request(r: rpc_pb2.DeleteRangeRequest) -> types.DeleteRangeRequest:
    return types.DeleteRangeRequest(r.key, r.range_end, r.prev_kv)


def compare(c: rpc_pb2.Compare) -> types.Compare:
    target = int(c.target)
    field = _OPERAND_FIELD.get(types.CompareTarget(target)) if target in _TARGETS else None
    operand: int | bytes = b"" if target == types.CompareTarget.VALUE else 0
    if field is not None and c.WhichOneof("target_union") == field:
        operand = getattr(c, field)
    return types.Compare(c.result, target, c.key, c.range_end, operand)


def request_op(op: rpc_pb2.RequestOp) -> types.RequestOp:
    which = op.WhichOneof("request")
    if which == "request_range":
        return range_request(op.request_range)
    if which == "request_put":
        return put_request(op.request_put)
    if which == "request_delete_range":
        return delete_range_request(op.request_delete_range)
    if which == "request_txn":
        return txn_request(op.request_txn)
    return None


def txn_request(r: rpc_pb2.TxnRequest) -> types.TxnRequest:
    return types.TxnRequest(
        [compare(c) for c in r.compare],
        [request_op(op) for op in r.success],
        [request_op(op) for op in r.failure],
    )


# -- responses -------------------------------------------------------------------------------


def kv(k: types.KeyValue) -> kv_pb2.KeyValue:
    return _kv_by(kv_pb2.KeyValue, k)


def _kv_by(make: Callable[..., kv_pb2.KeyValue], k: types.KeyValue) -> kv_pb2.KeyValue:
    """`k` as a KeyValue message built by `make`: the message's constructor, or a repeated field's
    `add`, which builds it in place where a list of messages passed to a constructor is copied again
    (0.29 against 0.72 ms for 500 keys; the call through here costs nothing measurable)."""
    return make(
        key=k.key,
        create_revision=k.create_revision,
        mod_revision=k.mod_revision,
        version=k.version,
        value=k.value,
        lease=k.lease,
    )


def _add_kvs(add: Callable[..., kv_pb2.KeyValue], kvs: list[types.KeyValue]) -> None:
    for k in kvs:
        _kv_by(add, k)


def range_response(resp: types.RangeResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.RangeResponse:
    out = rpc_pb2.RangeResponse(header=header, more=resp.more, count=resp.count)
    _add_kvs(out.kvs.add, resp.kvs)
    return out


def put_response(resp: types.PutResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.PutResponse:
    out = rpc_pb2.PutResponse(header=header)
    if resp.prev_kv is not None:
        out.prev_kv.CopyFrom(kv(resp.prev_kv))
    return out


def delete_range_response(
    resp: types.DeleteRangeResponse, header: rpc_pb2.ResponseHeader
) -> rpc_pb2.DeleteRangeResponse:
    out = rpc_pb2.DeleteRangeResponse(header=header, deleted=resp.deleted)
    _add_kvs(out.prev_kvs.add, resp.prev_kvs)
    return out


def txn_response(resp: types.TxnResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.TxnResponse:
    out = rpc_pb2.TxnResponse()
    _fill_txn_response(out, resp, header)
    return out


def _fill_txn_response(
    out: rpc_pb2.TxnResponse, resp: types.TxnResponse, header: rpc_pb2.ResponseHeader
) -> None:
    # Nested txns are built in place: upb copies a sub-message by parsing it, which stops 50 deep.
    out.header.CopyFrom(header)
    out.succeeded = resp.succeeded
    for r in resp.responses:
        if isinstance(r, types.TxnResponse):
            nested = out.responses.add().response_txn
            _fill_txn_response(nested, r, rpc_pb2.ResponseHeader(revision=r.revision))
        else:
            out.responses.append(_response_op(r))


def _response_op(resp: types.ResponseOp) -> rpc_pb2.ResponseOp:
    # Sub-responses carry a header with only the revision set, as etcd's do.
    header = rpc_pb2.ResponseHeader(revision=resp.revision)
    if isinstance(resp, types.RangeResponse):
        return rpc_pb2.ResponseOp(response_range=range_response(resp, header))
    if isinstance(resp, types.PutResponse):
        return rpc_pb2.ResponseOp(response_put=put_response(resp, header))
    if isinstance(resp, types.DeleteRangeResponse):
        return rpc_pb2.ResponseOp(response_delete_range=delete_range_response(resp, header))
    return rpc_pb2.ResponseOp(response_txn=txn_response(resp, header))
