"""PageCounts: the count a paginated list's next page will have, told once, in a bounded table."""

from __future__ import annotations

from kinepy.store.pages import PageCounts
from kinepy.types import KeyValue, RangeRequest, RangeResponse

REVISION = 7


def _page(prefix: bytes, key: bytes = b"") -> RangeRequest:
    """A page of two keys of the list of `prefix` at REVISION, from `key` (the prefix: the first page)."""
    return RangeRequest(key or prefix, prefix + b"\xff", limit=2, revision=REVISION)


def _answer(*keys: bytes, count: int) -> RangeResponse:
    return RangeResponse(REVISION, [KeyValue(k, 2, 2, 1, b"", 0) for k in keys], more=True, count=count)


def test_the_next_page_is_told_its_count_once() -> None:
    counts = PageCounts()
    counts.remember(_page(b"a/"), 3, _answer(b"a/1", b"a/2", count=5))
    assert counts.take(_page(b"a/", b"a/3"), 3) is None  # not where the first page ended
    assert counts.take(_page(b"a/", b"a/2\x00"), 3) == 3
    assert counts.take(_page(b"a/", b"a/2\x00"), 3) is None  # once
    assert counts.hits == 1


def test_the_table_forgets_its_oldest_count_beyond_its_size() -> None:
    counts = PageCounts(size=2)
    for prefix in (b"a/", b"b/", b"c/"):
        counts.remember(_page(prefix), 3, _answer(prefix + b"1", prefix + b"2", count=10))
    assert counts.take(_page(b"a/", b"a/2\x00"), 3) is None  # forgotten: the page counts its keys
    assert counts.take(_page(b"b/", b"b/2\x00"), 3) == 8
    assert counts.take(_page(b"c/", b"c/2\x00"), 3) == 8
