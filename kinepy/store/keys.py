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
