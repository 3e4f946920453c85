"""A read-only reader of bbolt files (go.etcd.io/bbolt), the format of etcd's database and snapshots.

A bbolt file is an array of pages of `page_size` bytes; page `n` starts at `n * page_size`. Every page
opens with a 16-byte header (little-endian): `id` u64, `flags` u16, `count` u16, `overflow` u32 (the
number of pages that follow it and belong to it). Pages 0 and 1 are **meta** pages: a 64-byte record
after the header holds the magic 0xED0CDAED, the format version (2), the page size, the root bucket
(`root` page id, `sequence`), the freelist page, the high-water page id, the transaction id and an
FNV-1a 64 checksum of the record's first 56 bytes. The valid meta with the higher transaction id wins.

A bucket is a B+tree. A **branch** page holds `count` elements of `pos` u32, `ksize` u32, `pgid` u64
(the child page); a **leaf** page holds `count` elements of `flags` u32, `pos` u32, `ksize` u32,
`vsize` u32. `pos` counts from the element's own first byte to its key; the value follows the key.
A leaf element with flag 0x01 is a nested bucket whose value is a 16-byte bucket record (`root` u64,
`sequence` u64); `root == 0` means an **inline** bucket: its leaf page follows the record inside the
value. Keys are in bytewise order, so a walk of the tree in element order yields them sorted.

The file is mapped, not read, so memory stays bounded whatever its size. Every offset is checked
against the file and the page it belongs to: a truncated or corrupt file raises `BoltError` naming
what is wrong, never an `IndexError` or a wrong answer.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kinepy.errors import KinepyError
from kinepy.migrate.model import Closing

MAGIC = 0xED0CDAED
VERSION = 2

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
BUCKET_LEAF_FLAG = 0x01

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
# magic, version, page_size, flags, root, sequence, freelist, pgid, txid, checksum
_META = struct.Struct("<IIIIQQQQQQ")
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET = struct.Struct("<QQ")  # root, sequence
_ELEMENT_SIZE = 16
_MAX_DEPTH = 64  # a real tree of 2^64 pages is far shallower; deeper means a cycle
_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536, 1024, 2048)

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = 0xFFFFFFFFFFFFFFFF


class BoltError(KinepyError):
    """The file is not a bbolt database, or is truncated or corrupt."""


def fnv1a_64(data: bytes) -> int:
    """Go's hash/fnv New64a, which bbolt uses for the meta checksum."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h


@dataclass(slots=True, frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    pgid: int  # the high-water mark: pages [0, pgid) are in use
    txid: int


def is_bbolt(head: bytes) -> bool:
    """True when `head` (the first 32 bytes of a file, or more) opens with a bbolt meta page."""
    if len(head) < 24:
        return False
    _id, flags, _count, _overflow = _PAGE_HEADER.unpack_from(head, 0)
    magic, version = struct.unpack_from("<II", head, _PAGE_HEADER.size)
    return bool(flags & META_PAGE) and magic == MAGIC and version == VERSION


@dataclass(slots=True)
class Stats:
    """What the trees of a file are made of (like bbolt's `Bucket.Stats`)."""

    buckets: int = 0
    inline_buckets: int = 0
    branch_pages: int = 0
    leaf_pages: int = 0
    overflow_pages: int = 0
    keys: int = 0


class BoltFile(Closing):
    """An open bbolt file, read-only. `size` limits the bytes that belong to the database (an etcd
    snapshot carries a checksum after them). Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, size: int | None = None) -> None:
        self.path = Path(path)
        self._file = self.path.open("rb")
        try:
            file_size = self.path.stat().st_size
            self.size = file_size if size is None else size
            if self.size < 2 * 1024 or self.size > file_size:
                raise BoltError(f"{self.path}: {file_size} bytes is too short for a bbolt file")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.meta = self._read_meta()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if hasattr(self, "_map"):
            self._map.close()  # idempotent
        self._file.close()

    # -- meta ----------------------------------------------------------------------------------

    def _meta_at(self, offset: int) -> Meta | str:
        """The meta record of the page at `offset`, or why it is not valid."""
        if offset + _PAGE_HEADER.size + _META.size > self.size:
            return "beyond the end of the file"
        _id, flags, _count, _overflow = _PAGE_HEADER.unpack_from(self._map, offset)
        fields = _META.unpack_from(self._map, offset + _PAGE_HEADER.size)
        magic, version, page_size, _flags, root, _seq, freelist, pgid, txid, checksum = fields
        if not flags & META_PAGE:
            return f"page flags {flags:#x} are not a meta page's"
        if magic != MAGIC:
            return f"magic {magic:#x} is not bbolt's {MAGIC:#x}"
        if version != VERSION:
            return f"format version {version} is not {VERSION}"
        start = offset + _PAGE_HEADER.size
        if fnv1a_64(self._map[start : start + _META.size - 8]) != checksum:
            return "checksum mismatch"
        return Meta(page_size, root, freelist, pgid, txid)

    def _read_meta(self) -> Meta:
        first = self._meta_at(0)
        sizes = [first.page_size] if isinstance(first, Meta) else list(_PAGE_SIZES)
        for page_size in sizes:
            second = self._meta_at(page_size)
            metas = [m for m in (first, second) if isinstance(m, Meta) and m.page_size == page_size]
            if not metas:
                continue
            meta = max(metas, key=lambda m: m.txid)
            if meta.pgid * meta.page_size > self.size:
                raise BoltError(
                    f"{self.path}: truncated: the database has {meta.pgid} pages of {meta.page_size} "
                    f"bytes ({meta.pgid * meta.page_size} bytes) but the file holds {self.size}"
                )
            if not 2 <= meta.root < meta.pgid:
                raise BoltError(f"{self.path}: corrupt: root bucket page {meta.root} out of range")
            return meta
        reason = first if isinstance(first, str) else "no valid second meta page"
        raise BoltError(f"{self.path}: not a bbolt database (meta page 0: {reason})")

    # -- pages ---------------------------------------------------------------------------------

    def _page(self, pgid: int, expected: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, end) of page `pgid`, whose flags must include one of `expected`."""
        meta = self.meta
        if not 2 <= pgid < meta.pgid:
            raise BoltError(f"{self.path}: corrupt: page id {pgid} out of range [2, {meta.pgid})")
        offset = pgid * meta.page_size
        page_id, flags, count, overflow = _PAGE_HEADER.unpack_from(self._map, offset)
        end = offset + (1 + overflow) * meta.page_size
        if page_id != pgid:
            raise BoltError(f"{self.path}: corrupt: page {pgid} says it is page {page_id}")
        if not flags & expected:
            raise BoltError(f"{self.path}: corrupt: page {pgid} has flags {flags:#x}, not a tree page")
        if end > self.size:
            raise BoltError(f"{self.path}: truncated: page {pgid} runs past the end of the file")
        if offset + _PAGE_HEADER.size + count * _ELEMENT_SIZE > end:
            raise BoltError(f"{self.path}: corrupt: page {pgid} has more elements than fit")
        return offset, flags, count, end

    def _walk(self, offset: int, flags: int, count: int, end: int, depth: int) -> Iterator[tuple[int, int]]:
        """Every leaf element of the tree rooted at the page at `offset`, as (element offset, end of
        its page), in key order."""
        if depth > _MAX_DEPTH:
            raise BoltError(f"{self.path}: corrupt: tree deeper than {_MAX_DEPTH} levels")
        base = offset + _PAGE_HEADER.size
        if flags & LEAF_PAGE:
            for i in range(count):
                yield base + i * _ELEMENT_SIZE, end
        elif flags & BRANCH_PAGE:
            for i in range(count):
                _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(self._map, base + i * _ELEMENT_SIZE)
                yield from self._walk(*self._page(child, BRANCH_PAGE | LEAF_PAGE), depth + 1)
        else:
            raise BoltError(f"{self.path}: corrupt: tree page with flags {flags:#x}")

    def _count(self, offset: int, flags: int, count: int, end: int, depth: int) -> int:
        """The number of leaf elements under the page at `offset`, reading no leaf's elements."""
        if depth > _MAX_DEPTH:
            raise BoltError(f"{self.path}: corrupt: tree deeper than {_MAX_DEPTH} levels")
        if flags & LEAF_PAGE:
            return count
        base = offset + _PAGE_HEADER.size
        total = 0
        for i in range(count):
            _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(self._map, base + i * _ELEMENT_SIZE)
            total += self._count(*self._page(child, BRANCH_PAGE | LEAF_PAGE), depth + 1)
        return total

    def _leaf(self, element: int, end: int) -> tuple[int, int, int, int, int]:
        """(flags, key offset, key size, value offset, value size) of the leaf element at `element`."""
        flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(self._map, element)
        key = element + pos
        if key + ksize + vsize > end:
            raise BoltError(f"{self.path}: corrupt: a leaf element runs past the end of its page")
        return flags, key, ksize, key + ksize, vsize

    def stats(self) -> Stats:
        """Count the pages and buckets of every tree of the file (a full walk)."""
        stats = Stats()
        self._tree_stats(self.root(), stats)
        return stats

    def _tree_stats(self, bucket: Bucket, stats: Stats) -> None:
        stats.buckets += 1
        if bucket._inline is not None:
            stats.inline_buckets += 1
        else:
            self._page_stats(*self._page(bucket._root, BRANCH_PAGE | LEAF_PAGE), stats, 0)
        for element, end in bucket._elements():
            flags, key, ksize, _value, _vsize = self._leaf(element, end)
            if flags & BUCKET_LEAF_FLAG:
                child = bucket.bucket(self._map[key : key + ksize])
                assert child is not None
                self._tree_stats(child, stats)
            else:
                stats.keys += 1

    def _page_stats(self, offset: int, flags: int, count: int, end: int, stats: Stats, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise BoltError(f"{self.path}: corrupt: tree deeper than {_MAX_DEPTH} levels")
        stats.overflow_pages += (end - offset) // self.meta.page_size - 1
        if flags & LEAF_PAGE:
            stats.leaf_pages += 1
            return
        stats.branch_pages += 1
        base = offset + _PAGE_HEADER.size
        for i in range(count):
            _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(self._map, base + i * _ELEMENT_SIZE)
            self._page_stats(*self._page(child, BRANCH_PAGE | LEAF_PAGE), stats, depth + 1)

    # -- buckets -------------------------------------------------------------------------------

    def root(self) -> Bucket:
        """The root bucket, whose keys are the top-level buckets."""
        return Bucket(self, self.meta.root, None)

    def bucket(self, name: bytes) -> Bucket | None:
        """The top-level bucket `name`, or None."""
        return self.root().bucket(name)


class Bucket:
    """One bucket: a tree on its own pages (`root` > 0) or inline in its parent's leaf (`inline`:
    the offset and end of the inline page)."""

    def __init__(self, db: BoltFile, root: int, inline: tuple[int, int] | None) -> None:
        self._db = db
        self._root = root
        self._inline = inline

    def _elements(self) -> Iterator[tuple[int, int]]:
        db = self._db
        if self._inline is None:
            yield from db._walk(*db._page(self._root, BRANCH_PAGE | LEAF_PAGE), 0)
            return
        offset, end = self._inline
        if offset + _PAGE_HEADER.size > end:
            raise BoltError(f"{db.path}: corrupt: inline bucket shorter than a page header")
        _id, flags, count, _overflow = _PAGE_HEADER.unpack_from(db._map, offset)
        if not flags & LEAF_PAGE or offset + _PAGE_HEADER.size + count * _ELEMENT_SIZE > end:
            raise BoltError(f"{db.path}: corrupt: inline bucket is not a leaf page")
        yield from db._walk(offset, flags, count, end, 0)

    def count(self) -> int:
        """The number of keys (nested buckets included), from the page headers alone."""
        db = self._db
        if self._inline is not None:
            return sum(1 for _ in self._elements())
        return db._count(*db._page(self._root, BRANCH_PAGE | LEAF_PAGE), 0)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of this bucket in key order; nested buckets are skipped."""
        db, data = self._db, self._db._map
        for element, end in self._elements():
            flags, key, ksize, value, vsize = db._leaf(element, end)
            if not flags & BUCKET_LEAF_FLAG:
                yield data[key : key + ksize], data[value : value + vsize]

    def keys(self) -> Iterator[bytes]:
        """Every key of this bucket, nested buckets' names included, in key order."""
        db, data = self._db, self._db._map
        for element, end in self._elements():
            _flags, key, ksize, _value, _vsize = db._leaf(element, end)
            yield data[key : key + ksize]

    def bucket(self, name: bytes) -> Bucket | None:
        """The nested bucket `name`, or None."""
        db, data = self._db, self._db._map
        for element, end in self._elements():
            flags, key, ksize, value, vsize = db._leaf(element, end)
            if data[key : key + ksize] != name:
                continue
            if not flags & BUCKET_LEAF_FLAG:
                return None
            if vsize < _BUCKET.size:
                raise BoltError(f"{db.path}: corrupt: bucket {name!r} has a short header")
            root, _sequence = _BUCKET.unpack_from(data, value)
            if root == 0:
                return Bucket(db, 0, (value + _BUCKET.size, value + vsize))
            return Bucket(db, root, None)
        return None

    def get(self, key: bytes) -> bytes | None:
        """The value of `key` (not a nested bucket), or None. A scan: for small buckets only."""
        for k, v in self.items():
            if k == key:
                return v
        return None
