"""kinepy.migrate.bbolt_writer writes what kinepy.migrate.bbolt reads: branch, leaf and overflow pages,
empty buckets; damaged files fail with BoltError. (Real etcd files: tests/integration/test_migrate_etcd*.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from kinepy.migrate.bbolt import BoltError, BoltFile
from kinepy.migrate.bbolt_writer import BoltWriter


def _zero(data: bytes, at: int) -> bytes:
    return data[:at] + b"\0" * 4 + data[at + 4 :]


def test_a_damaged_meta_page_falls_back_to_the_other(tmp_path: Path) -> None:
    """As bbolt does: the valid meta page with the highest transaction id wins."""
    path = tmp_path / "db"
    buckets = write(path)
    path.write_bytes(_zero(path.read_bytes(), 4096 + 16))
    with BoltFile(path) as db:
        assert list(db.root().keys()) == sorted(buckets)


def write(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    buckets = {
        b"many": [(b"%08d" % i, b"v" * (i % 90)) for i in range(30_000)],
        b"big": [(b"a", bytes(range(256)) * 100), (b"b", b"small")],
        b"empty": [],
    }
    with BoltWriter(path) as writer:
        for name, items in buckets.items():
            writer.bucket(name, items)
    return buckets


def test_what_is_written_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "db"
    buckets = write(path)
    with BoltFile(path) as db:
        assert list(db.root().keys()) == sorted(buckets)
        for name, items in buckets.items():
            bucket = db.bucket(name)
            assert bucket is not None
            assert list(bucket.items()) == items
            assert bucket.count() == len(items)
        stats = db.stats()
        assert stats.branch_pages >= 1 and stats.overflow_pages >= 1
        assert db.bucket(b"missing") is None


def test_keys_out_of_order_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of order"):
        with BoltWriter(tmp_path / "db") as writer:
            writer.bucket(b"b", [(b"2", b""), (b"1", b"")])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) - 4096], "truncated"),
        (lambda data: _zero(_zero(data, 16), 4096 + 16), "not a bbolt database"),
        (lambda data: data[: 2 * 4096 + 3] + b"\xff" + data[2 * 4096 + 4 :], "corrupt"),
    ],
    ids=["truncated", "bad-magic", "page-id"],
)
def test_damaged_files_fail_clearly(tmp_path: Path, damage: object, message: str) -> None:
    path = tmp_path / "db"
    write(path)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(BoltError, match=message):
        with BoltFile(path) as db:
            for name in list(db.root().keys()):
                bucket = db.bucket(name)
                assert bucket is not None
                list(bucket.items())
