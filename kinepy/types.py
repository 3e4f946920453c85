"""Domain types: what the store works on, free of protobuf.

Field names follow etcd's protos and etcd's zero values keep their meaning: `lease=0` is no lease,
`range_end=b""` is a single key, `revision=0` is "latest".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class KeyValue(NamedTuple):
    """A key at one revision. A named tuple rather than a frozen dataclass: pages build hundreds
    of them per request, and a tuple is built in a quarter of the time (0.13 against 0.48 ms for
    500 rows)."""

    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int = 0


@dataclass(slots=True, frozen=True)
class KeyRange:
    """`[start, end)` in bytewise order; `end=None` means "to the end of the keyspace"."""

    start: bytes
    end: bytes | None

    def __contains__(self, key: bytes) -> bool:
        return key >= self.start and (self.end is None or key < self.end)

    def meets(self, low: bytes, high: bytes) -> bool:
        """Whether any key from `low` to `high` (both included) is in the range."""
        return high >= self.start and (self.end is None or low < self.end)


@dataclass(slots=True, frozen=True)
class RangeQuery:
    """A read a backend serves: at most `limit` rows (0: all) of `key_range` at `revision` (<= 0:
    latest), in key order, and how many keys the range holds (unless `count` is False: the caller
    knows it, and the count is then just the number of rows read). With `keys_only`, values may be
    left empty; with `count_only`, no rows need be returned."""

    key_range: KeyRange
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    count: bool = True


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(slots=True, frozen=True)
class Event:
    """One change. A DELETE's `kv` carries only the key and the deletion revision."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


@dataclass(slots=True)
class RangeRequest:
    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: int = 0
    sort_target: int = 0
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(slots=True)
class RangeResponse:
    revision: int
    kvs: list[KeyValue]
    more: bool
    count: int


@dataclass(slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(slots=True)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(slots=True)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(slots=True)
class DeleteRangeResponse:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue] = field(default_factory=list)


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(slots=True)
class Compare:
    result: int
    target: int
    key: bytes
    range_end: bytes = b""
    # The operand: an int for VERSION/CREATE/MOD/LEASE, bytes for VALUE.
    operand: int | bytes = 0


@dataclass(slots=True)
class TxnRequest:
    compare: list[Compare] = field(default_factory=list)
    success: list[RequestOp] = field(default_factory=list)
    failure: list[RequestOp] = field(default_factory=list)


@dataclass(slots=True)
class TxnResponse:
    revision: int
    succeeded: bool
    responses: list[ResponseOp]


# A request op is one of these; `None` stands for an empty oneof (etcd: "key not found").
RequestOp = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest | None
ResponseOp = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse
WriteRequest = PutRequest | DeleteRangeRequest | TxnRequest


@dataclass(slots=True, frozen=True)
class Lease:
    id: int
    ttl: int
    expires_at: float  # unix time, seconds
