"""etcd's key-range rules."""

from __future__ import annotations

from kinepy.types import KeyRange


def key_range(key: bytes, range_end: bytes) -> KeyRange:
    """The keys a request with `key` and `range_end` covers.

    Empty `range_end` is the single key; `"\\0"` means every key >= `key`; otherwise
    `[key, range_end)` in bytewise order (empty when `range_end <= key`).
    """
    if not range_end:
        return KeyRange(key, key + b"\x00")
    if range_end == b"\x00":
        return KeyRange(key, None)
    return KeyRange(key, range_end)


def is_empty(r: KeyRange) -> bool:
    return r.end is not None and r.end <= r.start


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that turns `prefix` into a prefix range (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"
