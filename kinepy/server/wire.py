"""Requests decoded as etcd decodes them: the same messages refused, with the same texts.

etcd's messages are gogo-protobuf code (`Unmarshal` generated per message): a field whose wire type is not
the declared one is an error ("proto: wrong wireType = 2 for field Revision"), where upb keeps it as an
unknown field and reads the message without it (a malformed `CompactionRequest` then ran as `Compact(0)`).
gogo has no nesting limit, where upb stops at 100 levels (50 nested txns). grpc-go answers a request it
cannot decode with `INTERNAL` "grpc: error unmarshalling request: <gogo's error>", and ends a stream on a
message it cannot decode with `INTERNAL` "grpc: failed to unmarshal the received message <gogo's error>".

`decoder(cls)` is a request deserializer for grpc: upb parses (fast, in C); the Python walker below, which
follows gogo's generated code step by step, runs only when upb fails or the bytes were not exactly the
message's canonical encoding (unknown or misencoded fields, duplicates, non-minimal varints), to find gogo's
error or accept what gogo accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google._upb import _message as upb
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

MAX_DEPTH = 600
"""Message nesting accepted (a nested txn is two levels: 290 txns inside each other). gogo has no limit;
Python needs one, for its own recursion."""

_EOF = "unexpected EOF"
_OVERFLOW = "proto: integer overflow"
_NEGATIVE = "proto: negative length found during unmarshaling"
_TOO_DEEP = "exceeded maximum recursion depth"  # google.golang.org/protobuf's text
_INT64 = 1 << 64
_VARINT, _FIXED64, _BYTES, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


_WIRE_TYPES = {
    FieldDescriptor.TYPE_MESSAGE: _BYTES,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_STRING: _BYTES,
    FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_DOUBLE: _FIXED64,
    FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_FLOAT: _FIXED32,
}


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that does not decode: `error` is gogo's text."""

    error: str


class _WireError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Field:
    go_name: str
    wire_type: int  # the declared one
    packable: bool  # a repeated varint: wire type 2 (packed) is accepted too
    message: Descriptor | None


def decoder(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer: the message, or `Malformed` with gogo's error text."""
    descriptor = cls.DESCRIPTOR

    def decode(data: bytes) -> Message | Malformed:
        try:
            message = cls.FromString(data)
        except DecodeError:
            return _decode_slowly(cls, data)
        message.DiscardUnknownFields()  # gogo (etcd's options) keeps none either
        if message.ByteSize() == len(data):
            return message  # the canonical encoding of what was read: nothing was skipped
        error = check(descriptor, data)
        return message if error is None else Malformed(error)

    return decode


def _decode_slowly(cls: type[Message], data: bytes) -> Message | Malformed:
    error = check(cls.DESCRIPTOR, data)
    if error is not None:
        return Malformed(error)
    # gogo accepts it, so upb refused it for its nesting limit (checked by the walker to be at most
    # MAX_DEPTH here) or a string that is not UTF-8, which gogo does not check either.
    upb.SetAllowOversizeProtos(True)
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        return Malformed(str(exc))
    finally:
        upb.SetAllowOversizeProtos(False)


def check(descriptor: Any, data: bytes) -> str | None:
    """gogo's error for `data` as a `descriptor` message, or None if gogo accepts it."""
    try:
        _check(descriptor, memoryview(data), 0, len(data), 1)
    except _WireError as exc:
        return str(exc)
    return None


@functools.cache
def _fields(descriptor: Descriptor) -> dict[int, _Field]:
    return {field.number: _field(field) for field in descriptor.fields}


def _field(field: FieldDescriptor) -> _Field:
    message = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING):
        wire_type = _BYTES
    elif field.type in (
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_DOUBLE,
    ):
        wire_type = _FIXED64
    elif field.type in (
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_FLOAT,
    ):
        wire_type = _FIXED32
    else:
        wire_type = _VARINT
    return _Field(_go_name(field.name), wire_type, field.is_repeated and wire_type != _BYTES, message)


def _go_name(name: str) -> str:
    """protoc-gen-gogo's CamelCase: `range_end` -> `RangeEnd`, `ID` -> `ID`, `peerURLs` -> `PeerURLs`."""
    parts = name.split("_")
    return "".join(part[:1].upper() + part[1:] for part in parts)


def _go_type(descriptor: Descriptor) -> str:
    names = [descriptor.name]
    parent = descriptor.containing_type
    while parent is not None:
        names.append(parent.name)
        parent = parent.containing_type
    return "_".join(reversed(names))


def _varint(data: memoryview, i: int, end: int) -> tuple[int, int]:
    """gogo's varint loop: the value (64 bits, wrapping as Go's) and the index after it."""
    value, shift = 0, 0
    while True:
        if shift >= 64:
            raise _WireError(_OVERFLOW)
        if i >= end:
            raise _WireError(_EOF)
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value % _INT64, i
        shift += 7


def _signed(value: int) -> int:
    return value - _INT64 if value >= 1 << 63 else value


def _length(data: memoryview, i: int, end: int) -> tuple[int, int]:
    """A length prefix: the index after the bytes it counts, and the index where they start."""
    length, i = _varint(data, i, end)
    length = _signed(length)
    if length < 0:
        raise _WireError(_NEGATIVE)
    post = i + length
    if post >= 1 << 63:  # Go's int overflows to a negative index
        raise _WireError(_NEGATIVE)
    if post > end:
        raise _WireError(_EOF)
    return post, i


def _check(descriptor: Descriptor, data: memoryview, i: int, end: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _WireError(_TOO_DEEP)
    fields = _fields(descriptor)
    while i < end:
        start = i
        wire, i = _varint(data, i, end)
        number = (wire >> 3) & 0xFFFFFFFF  # Go's int32(wire >> 3)
        number = number - (1 << 32) if number >= 1 << 31 else number
        wire_type = wire & 0x7
        if wire_type == _END_GROUP:
            raise _WireError(f"proto: {_go_type(descriptor)}: wiretype end group for non-group")
        if number <= 0:
            raise _WireError(f"proto: {_go_type(descriptor)}: illegal tag {number} (wire type {wire})")
        field = fields.get(number)
        if field is None:
            i = start + _skip(data, start, end)
            continue
        if wire_type == _BYTES and field.packable:
            post, i = _length(data, i, end)
            while i < post:
                _, i = _varint(data, i, end)
            continue
        if wire_type != field.wire_type:
            raise _WireError(f"proto: wrong wireType = {wire_type} for field {field.go_name}")
        if wire_type == _VARINT:
            _, i = _varint(data, i, end)
        elif wire_type == _BYTES:
            post, i = _length(data, i, end)
            if field.message is not None:
                _check(field.message, data, i, post, depth + 1)
            i = post
        else:
            i += 8 if wire_type == _FIXED64 else 4
            if i > end:
                raise _WireError(_EOF)
    if i > end:
        raise _WireError(_EOF)


def _skip(data: memoryview, start: int, end: int) -> int:
    """gogo's skip<File>: the length of the unknown field at `start`, groups included."""
    i, depth = start, 0
    while i < end:
        wire, i = _varint(data, i, end)
        wire_type = wire & 0x7
        if wire_type == _VARINT:
            _, i = _varint(data, i, end)
        elif wire_type == _FIXED64:
            i += 8
        elif wire_type == _BYTES:
            length, i = _varint(data, i, end)
            if _signed(length) < 0:
                raise _WireError(_NEGATIVE)
            i += length
        elif wire_type == _START_GROUP:
            depth += 1
        elif wire_type == _END_GROUP:
            if depth == 0:
                raise _WireError("proto: unexpected end of group")
            depth -= 1
        elif wire_type == _FIXED32:
            i += 4
        else:
            raise _WireError(f"proto: illegal wireType {wire_type}")
        if depth == 0:
            if i > end:
                raise _WireError(_EOF)
            return i - start
    raise _WireError(_EOF)
