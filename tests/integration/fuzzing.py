"""Hypothesis strategies for etcd's requests, generated from the message descriptors in kinepy/proto.

`requests(descriptor)` draws a message of any shape the schema allows (every field optional, repeated fields
of up to three elements, nested messages a few levels deep, enum values out of range, keys from a small set
so that operations meet each other); `wire(descriptor)` draws bytes: a message's encoding, often damaged
(truncated, a byte changed, garbage spliced in) so that the decoder's error paths are driven too.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 3  # nested messages (Txn in Txn in Txn)
KEYS = [b"", b"\x00", b"/", b"/fuzz/a", b"/fuzz/b", b"/fuzz/c", b"/fuzz0", b"\xff", b"\xff\xff"]
INT64 = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**63 - 1))
UINT64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)

OVERRIDES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    # Compaction stays at the start of the history (or far in the future), so that most of the history the
    # test checks at the end is still there.
    ("CompactionRequest", "revision"): st.one_of(st.integers(-3, 30), st.integers(2**40, 2**63 - 1)),
    # Short leases expire (and delete their keys) during the run; long ones do not.
    ("LeaseGrantRequest", "TTL"): st.one_of(st.integers(-3, 5), INT64),
}


# Fields always set, so that most requests get past the first check and reach the store.
ALWAYS = {
    ("RangeRequest", "key"),
    ("PutRequest", "key"),
    ("DeleteRangeRequest", "key"),
    ("Compare", "key"),
    ("WatchCreateRequest", "key"),
    ("RequestOp", "request_put"),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(KEYS[2:]), st.sampled_from(KEYS), st.binary(max_size=16))
    if t == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=8)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.integers(-2, len(field.enum_type.values) + 1)  # out of range too
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return INT64
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return UINT64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return UINT32
    return INT32


def requests(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type `descriptor`, any fields set."""
    cls = message_factory.GetMessageClass(descriptor)
    required: dict[str, st.SearchStrategy[Any]] = {}
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value: st.SearchStrategy[Any]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            value = _nested(field, depth + 1)
        else:
            value = OVERRIDES.get((descriptor.name, field.name), _scalar(field))
        value = st.lists(value, max_size=3) if field.is_repeated else value
        (required if (descriptor.name, field.name) in ALWAYS else fields)[field.name] = value
    return st.fixed_dictionaries(required, optional=fields).map(lambda kwargs: _build(cls, kwargs))


def _nested(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Message]:
    assert field.message_type is not None
    descriptor = field.message_type
    return st.deferred(lambda: requests(descriptor, depth))


def _build(cls: type[Message], kwargs: dict[str, Any]) -> Message:
    message = cls()
    for name, value in kwargs.items():  # one at a time: several members of a oneof, the last wins
        if isinstance(value, list):
            getattr(message, name).extend(value)
        elif isinstance(value, Message):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


@st.composite
def _damaged(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "splice", "garbage"]))
    if how == "garbage" or not data:
        return draw(st.binary(max_size=24))
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]


def wire(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Encodings of `descriptor` messages: three in four intact, the rest damaged."""
    encoded = requests(descriptor).map(lambda message: message.SerializeToString())
    return st.one_of(encoded, encoded, encoded, encoded.flatmap(_damaged))
