"""Writing a bbolt file from sorted key-value streams, page by page (the reader is `bbolt.py`).

A bulk load, not a database: each top-level bucket is built once, from its keys in bytewise order,
leaf pages first (each written as soon as it is full, so memory holds one page and one branch key per
leaf page), then the branch levels above them. Then come the root bucket's page, an empty freelist
page, and the two meta pages at the head of the file. Pages are filled up to the page size; an element
larger than a page gets overflow pages, as bbolt does. bbolt (and etcd) open the result like any of its
own files and may write to it: its freelist is empty and every page below the high-water mark is used.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kinepy.migrate.bbolt import (
    BRANCH_PAGE,
    BUCKET_LEAF_FLAG,
    LEAF_PAGE,
    MAGIC,
    META_PAGE,
    VERSION,
    fnv1a_64,
)

FREELIST_PAGE = 0x10
PAGE_SIZE = 4096
_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_ELEMENT = 16
_META_BODY = struct.Struct(
    "<IIIIQQQQQ"
)  # magic, version, page_size, flags, root, sequence, freelist, pgid, txid


class BoltWriter:
    """Writes a new bbolt file at `path`: `bucket(name, items)` per top-level bucket, in any order,
    then `close()` (which writes the root bucket, the freelist and the meta pages)."""

    def __init__(self, path: str | Path, *, page_size: int = PAGE_SIZE) -> None:
        self.path = Path(path)
        self.page_size = page_size
        self._file: BinaryIO = self.path.open("wb")
        self._next = 2  # pages 0 and 1 are the meta pages, written last
        self._buckets: dict[bytes, int] = {}
        self._file.write(b"\0" * 2 * page_size)

    def __enter__(self) -> BoltWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _write_page(self, flags: int, elements: list[bytes], data: list[bytes]) -> int:
        """Write one page (with overflow pages if it needs them); its id."""
        body = b"".join(elements) + b"".join(data)
        size = _HEADER.size + len(body)
        pages = -(-size // self.page_size)
        pgid = self._next
        self._next += pages
        header = _HEADER.pack(pgid, flags, len(elements), pages - 1)
        self._file.write(header + body + b"\0" * (pages * self.page_size - size))
        return pgid

    def _leaves(self, items: Iterable[tuple[bytes, bytes, int]]) -> list[tuple[bytes, int]]:
        """Leaf pages of `items` (key, value, element flags); (first key, page id) of each."""
        builder = BucketBuilder(self)
        for key, value, flags in items:
            builder.add(key, value, flags)
        return builder.leaves()

    def _write_leaf(self, elements: list[tuple[bytes, bytes, int]]) -> int:
        headers, data = [], []
        offset = len(elements) * _ELEMENT  # from the first element to the first key
        for i, (key, value, flags) in enumerate(elements):
            pos = offset - i * _ELEMENT
            headers.append(struct.pack("<IIII", flags, pos, len(key), len(value)))
            data.append(key + value)
            offset += len(key) + len(value)
        return self._write_page(LEAF_PAGE, headers, data)

    def _branches(self, children: list[tuple[bytes, int]]) -> int:
        """Branch levels over `children` (first key, page id) up to one root; the root's id."""
        while len(children) > 1:
            level: list[tuple[bytes, int]] = []
            group: list[tuple[bytes, int]] = []
            used = _HEADER.size
            for key, pgid in children:
                need = _ELEMENT + len(key)
                if group and used + need > self.page_size:
                    level.append((group[0][0], self._write_branch(group)))
                    group, used = [], _HEADER.size
                group.append((key, pgid))
                used += need
            level.append((group[0][0], self._write_branch(group)))
            children = level
        return children[0][1]

    def _write_branch(self, group: list[tuple[bytes, int]]) -> int:
        headers, data = [], []
        offset = len(group) * _ELEMENT
        for i, (key, pgid) in enumerate(group):
            headers.append(struct.pack("<IIQ", offset - i * _ELEMENT, len(key), pgid))
            data.append(key)
            offset += len(key)
        return self._write_page(BRANCH_PAGE, headers, data)

    def bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write the top-level bucket `name` holding `items`, given in strictly increasing key order."""
        builder = self.open_bucket(name)
        for key, value in items:
            builder.add(key, value)
        self.close_bucket(name, builder)

    def open_bucket(self, name: bytes) -> BucketBuilder:
        """A top-level bucket filled by `add` calls (keys in strictly increasing order), then given to
        `close_bucket`. One bucket at a time: its pages are written as they fill."""
        if name in self._buckets:
            raise ValueError(f"bucket {name!r} written twice")
        return BucketBuilder(self)

    def close_bucket(self, name: bytes, builder: BucketBuilder) -> None:
        self._buckets[name] = self._branches(builder.leaves())

    def abort(self) -> None:
        """Stop writing; the file is left incomplete (its meta pages are zero) for the caller to delete."""
        self._file.close()

    def close(self) -> None:
        """Write the root bucket, an empty freelist and both meta pages; close the file."""
        if self._file.closed:
            return
        root = self._branches(
            self._leaves(
                (name, struct.pack("<QQ", pgid, 0), BUCKET_LEAF_FLAG)
                for name, pgid in sorted(self._buckets.items())
            )
        )
        freelist = self._write_page(FREELIST_PAGE, [], [])
        for txid in (0, 1):
            body = _META_BODY.pack(MAGIC, VERSION, self.page_size, 0, root, 0, freelist, self._next, txid)
            page = _HEADER.pack(txid, META_PAGE, 0, 0) + body + struct.pack("<Q", fnv1a_64(body))
            self._file.seek(txid * self.page_size)
            self._file.write(page)
        self._file.close()


class BucketBuilder:
    """The leaf pages of one bucket, written as they fill."""

    def __init__(self, writer: BoltWriter) -> None:
        self._writer = writer
        self._pages: list[tuple[bytes, int]] = []
        self._elements: list[tuple[bytes, bytes, int]] = []
        self._used = _HEADER.size
        self._previous: bytes | None = None

    def add(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if self._previous is not None and key <= self._previous:
            raise ValueError(f"keys out of order: {key!r} after {self._previous!r}")
        self._previous = key
        need = _ELEMENT + len(key) + len(value)
        if self._elements and self._used + need > self._writer.page_size:
            self._flush()
        self._elements.append((key, value, flags))
        self._used += need

    def _flush(self) -> None:
        first = self._elements[0][0] if self._elements else b""
        self._pages.append((first, self._writer._write_leaf(self._elements)))
        self._elements, self._used = [], _HEADER.size

    def leaves(self) -> list[tuple[bytes, int]]:
        """Write the last leaf page; (first key, page id) of every leaf page."""
        if self._elements or not self._pages:
            self._flush()
        return self._pages
