"""Reading `etcdctl snapshot save` output made by the real etcd 3.4, in Python.

One snapshot of a varied store (etcd_data.fill: Txns with several subs, overwrites, deletes, a
compaction, a 100 kB value, leases, 1500 keys) is read back and compared with what the same etcd
serves: every key with its revisions and version, every change above the compaction point, the
revisions, the leases. Damaged copies of it give a clear error.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import conftest
import etcd_data
import pytest

from kinepy.migrate.bbolt import BoltFile
from kinepy.migrate.etcd_snapshot import EtcdSnapshot, SnapshotError, is_etcd_snapshot

pytestmark = [pytest.mark.etcd]


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, etcd_data.Filled, conftest.EtcdServer]]:
    """A filled etcd (still running) and its snapshot."""
    root = tmp_path_factory.mktemp("snapshot")
    server = etcd_data.start_etcd(root)
    filled = etcd_data.fill(server.endpoint)
    path = root / "etcd.snapshot"  # any name: the content says what it is
    proc = conftest.run_etcdctl(server.endpoint, "snapshot", "save", str(path))
    assert proc.returncode == 0, proc.stderr
    yield path, filled, server
    server.stop()


def test_snapshot_holds_what_etcd_serves(saved: tuple[Path, etcd_data.Filled, conftest.EtcdServer]) -> None:
    path, filled, server = saved
    assert is_etcd_snapshot(path)
    with EtcdSnapshot(path) as snapshot:
        assert snapshot.has_checksum
        assert (snapshot.revision, snapshot.compact_revision) == (filled.revision, filled.compact_revision)
        rows = list(snapshot.history())
        assert snapshot.count() == len(rows)
        records = snapshot.lease_records()

    latest: dict[bytes, tuple[int, int, int, int, bytes, int]] = {}
    for row in rows:
        if row.tombstone:
            latest.pop(row.key, None)
        else:
            latest[row.key] = (row.create_revision, row.revision, row.version, row.lease, row.value, row.sub)
    expected = etcd_data.current(server.endpoint)
    assert len(expected) > etcd_data.MANY - 100
    assert [
        (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value) for kv in expected
    ] == [(key, *latest[key][:5]) for key in sorted(latest)]
    assert max(len(v[4]) for v in latest.values()) == etcd_data.BIG // 256 * 256

    above = [row for row in rows if row.revision > filled.compact_revision]
    changes = list(etcd_data.history(server.endpoint, filled.compact_revision, filled.revision))
    assert [
        (rev, delete, kv.key, kv.create_revision, kv.version, kv.lease, kv.value)
        for rev, delete, kv in changes
    ] == [(r.revision, r.tombstone, r.key, r.create_revision, r.version, r.lease, r.value) for r in above]
    assert sorted(r.revision for r in rows) == [r.revision for r in rows]
    # Several changes in one Txn: subs 0, 1, ... at one revision.
    assert any(row.sub > 0 for row in rows)
    # Nothing below the compaction point but the newest version of keys alive there.
    below = [row for row in rows if row.revision <= filled.compact_revision]
    assert len({row.key for row in below}) == len(below)

    assert [(r.id, r.ttl) for r in records] == [(filled.lease_id, filled.lease_ttl)]
    assert etcd_data.lease_ids(server.endpoint) == [filled.lease_id]


def test_snapshot_tree_has_branch_and_overflow_pages(
    saved: tuple[Path, etcd_data.Filled, conftest.EtcdServer],
) -> None:
    """The fixture really exercises the page kinds the reader must handle."""
    path, _filled, _server = saved
    with BoltFile(path, size=path.stat().st_size - 32) as db:
        stats = db.stats()
    assert stats.branch_pages >= 1
    assert stats.overflow_pages >= 1
    assert stats.inline_buckets >= 1


def _damaged(saved: tuple[Path, etcd_data.Filled, conftest.EtcdServer], tmp_path: Path, how: str) -> Path:
    source = saved[0]
    path = tmp_path / how
    shutil.copyfile(source, path)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    elif how == "one-byte-changed":
        data[len(data) // 3] ^= 0x01
    elif how == "no-checksum-corrupt-page":
        del data[-32:]
        page_size = 4096
        for page in range(2, len(data) // page_size):  # the first branch or leaf page: break its id
            offset = page * page_size
            if data[offset + 8] in (1, 2):
                data[offset] ^= 0xFF
                break
    elif how == "not-bbolt":
        data[16:20] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "truncated"),
        ("one-byte-changed", "sha256 checksum mismatch"),
        ("no-checksum-corrupt-page", "corrupt"),
        ("not-bbolt", "not an etcd snapshot"),
    ],
)
def test_damaged_snapshot_gives_a_clear_error(
    saved: tuple[Path, etcd_data.Filled, conftest.EtcdServer], tmp_path: Path, how: str, message: str
) -> None:
    path = _damaged(saved, tmp_path, how)
    before = path.read_bytes()
    with pytest.raises(SnapshotError, match=message):
        with EtcdSnapshot(path) as snapshot:
            for _row in snapshot.history():
                pass
    assert path.read_bytes() == before


def test_member_database_without_checksum_is_read(
    saved: tuple[Path, etcd_data.Filled, conftest.EtcdServer], tmp_path: Path
) -> None:
    """A member's `snap/db` has no checksum after it; it reads the same."""
    path = tmp_path / "db"
    path.write_bytes(saved[0].read_bytes()[:-32])
    with EtcdSnapshot(path) as snapshot:
        assert not snapshot.has_checksum
        assert snapshot.revision == saved[1].revision


def test_missing_file_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot read"):
        EtcdSnapshot(tmp_path / "nothing.db")
