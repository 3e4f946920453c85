"""Counts carried from one page of a paginated list to the next.

etcd answers every Range with `count`, the number of keys in the requested range at the read
revision, however small the page: each page of a paginated list costs a count of the keys still
ahead, O(keys) per page and O(keys²) per list. kube-apiserver pages with a pinned revision R and
asks for page n+1 from the key after page n's last one: `[last + "\\0", end)` at R. At a pinned
revision nothing changes, so that count is exactly page n's count minus the keys page n returned
(they are the first keys of page n's range, in key order). `PageCounts` remembers it, so every
page after the first reads only its own rows.

Only pages read in key order without filters qualify (their rows are the first keys of the range);
a count is used once, for the request that continues the page, and the table is bounded.
"""

from __future__ import annotations

from collections import OrderedDict

from kinepy.types import RangeRequest, RangeResponse

_Key = tuple[bytes, bytes, int]  # (key, range_end, revision)


class PageCounts:
    """The count each continuing page will have, by (key, range_end, revision)."""

    def __init__(self, size: int = 4096) -> None:
        self._counts: OrderedDict[_Key, int] = OrderedDict()
        self._size = size
        self.hits = 0

    def take(self, req: RangeRequest, fetch_limit: int) -> int | None:
        """The count for `req` if a previous page told it (once), else None."""
        if req.revision <= 0 or not _qualifies(req, fetch_limit) or not self._counts:
            return None
        count = self._counts.pop((req.key, req.range_end, req.revision), None)
        if count is not None:
            self.hits += 1
        return count

    def remember(self, req: RangeRequest, fetch_limit: int, resp: RangeResponse) -> None:
        """After answering `req` at revision `req.revision` (or, for 0, `resp.revision`)."""
        if not resp.more or not resp.kvs or not _qualifies(req, fetch_limit):
            return
        revision = req.revision if req.revision > 0 else resp.revision
        self._counts[(resp.kvs[-1].key + b"\x00", req.range_end, revision)] = resp.count - len(resp.kvs)
        if len(self._counts) > self._size:
            self._counts.popitem(last=False)


def _qualifies(req: RangeRequest, fetch_limit: int) -> bool:
    # A fetch limit of limit + 1 means: key order, no sort, no revision filters (txn.range_fetch_limit).
    return bool(req.range_end) and req.limit > 0 and fetch_limit == req.limit + 1 and not req.count_only
