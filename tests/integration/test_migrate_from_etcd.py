"""`kinepy migrate` from etcd: a snapshot file and a live etcd, into kinepy, served as etcd served it.

The suite's real etcd 3.4 holds a varied store (etcd_data.fill: Txns, overwrites, deletes, a
compaction, a 100 kB value, a lease, 1500 keys). A kinepy server on the copy must answer like etcd:
the same store revision, Range at every revision from the compaction point, Watch from it, the
lease, and "compacted" below it. The commands are the ones docs/operations.md shows.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import conftest
import etcd_data
import pytest
from etcd_release import etcd_release
from test_migrate import Client, MakeKinepy, View, connect, kinepy_cli, ok, serve_and_view, source_store, view

from kinepy.migrate.etcd_target import MARKER
from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy]
__all__ = ["connect"]  # a fixture of test_migrate, used here


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[conftest.EtcdServer, etcd_data.Filled]]:
    server = etcd_data.start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server, etcd_data.fill(server.endpoint)
    server.stop()


def etcd_view(server: conftest.EtcdServer, connect: Callable[[str], Client], compact: int) -> View:
    return view(connect(server.endpoint), compact)


def without_hash(v: View) -> View:
    return dataclasses.replace(v, hash=0)  # etcd's HashKV hashes bbolt's bytes; kinepy's its rows


def test_snapshot_file_migrates_with_revisions_history_and_leases(
    etcd: tuple[conftest.EtcdServer, etcd_data.Filled],
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    server, filled = etcd
    snapshot = tmp_path / "snapshot.db"
    ok(conftest.run_etcdctl(server.endpoint, "snapshot", "save", str(snapshot)))
    original = etcd_view(server, connect, filled.compact_revision)

    target = tmp_path / "state.db"
    out = ok(kinepy_cli("migrate", "--from", str(snapshot), "--to", f"sqlite://{target}"))
    assert f"revision {filled.revision}, compacted at {filled.compact_revision}" in out
    copy = serve_and_view(make_kinepy_server, connect, f"sqlite://{target}", filled.compact_revision)
    assert without_hash(copy) == without_hash(original)
    assert original.revision == filled.revision
    assert original.events and original.leases and "compacted" in original.below_compaction

    current = tmp_path / "current.db"
    out = ok(kinepy_cli("migrate", "--current-only", "--from", str(snapshot), "--to", f"sqlite://{current}"))
    assert f"revision {filled.revision}, compacted at {filled.revision}" in out
    only = serve_and_view(make_kinepy_server, connect, f"sqlite://{current}", filled.revision)
    assert only.ranges[filled.revision] == original.ranges[filled.revision]
    assert only.leases == original.leases


def test_corrupt_snapshot_is_refused_and_creates_nothing(
    etcd: tuple[conftest.EtcdServer, etcd_data.Filled], tmp_path: Path
) -> None:
    server, _filled = etcd
    snapshot = tmp_path / "snapshot.db"
    ok(conftest.run_etcdctl(server.endpoint, "snapshot", "save", str(snapshot)))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x10
    snapshot.write_bytes(bytes(data))
    target = tmp_path / "state.db"
    proc = kinepy_cli("migrate", "--from", str(snapshot), "--to", f"sqlite://{target}")
    assert proc.returncode == 1
    assert "sha256 checksum mismatch" in proc.stderr
    assert not target.exists()


def test_live_etcd_migrates_the_current_state_with_its_revisions(
    etcd: tuple[conftest.EtcdServer, etcd_data.Filled],
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    server, _filled = etcd
    target = tmp_path / "state.db"
    out = ok(kinepy_cli("migrate", "--from", server.url, "--to", f"sqlite://{target}"))
    revision = etcd_data.current_revision(server.endpoint)
    assert f"revision {revision}, compacted at {revision}" in out
    original = etcd_view(server, connect, revision)
    copy = serve_and_view(make_kinepy_server, connect, f"sqlite://{target}", revision)
    assert copy.revision == original.revision == revision
    assert copy.ranges == original.ranges  # every key with its create/mod revision, version, lease
    assert copy.leases == original.leases
    # The events at the copied revision, without their previous values (older history stays behind).
    assert [e[:5] for e in copy.events] == [e[:5] for e in original.events]
    assert "compacted" in copy.below_compaction  # history below the copied revision is not copied


def test_back_to_etcd_copies_the_current_state_and_says_revisions_are_lost(
    make_etcd_server: Callable[[], conftest.EtcdServer],
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    _server, original, _compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    etcd = make_etcd_server()
    proc = kinepy_cli("migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", etcd.url)
    out = ok(proc)
    assert "revisions, versions and history not kept" in out
    assert "keys get etcd's own revisions" in proc.stderr
    current = original.ranges[original.revision]
    copied = etcd_data.current(etcd.endpoint)
    assert [(kv.key, kv.value, kv.lease) for kv in copied] == [(k[0], k[1], k[5]) for k in current]
    assert all(kv.version == 1 for kv in copied)
    assert etcd_data.lease_ids(etcd.endpoint) == [lease_id for lease_id, _ttl in original.leases]
    # Granted for the time the lease had left, so its deadline stays.
    [(lease_id, granted)] = etcd_view(etcd, connect, 1).leases
    [(original_id, original_ttl)] = original.leases
    assert lease_id == original_id and original_ttl - 30 < granted <= original_ttl

    again = kinepy_cli("migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", etcd.url)
    assert again.returncode == 1
    assert f"target etcd {etcd.url} already holds a store" in again.stderr
    ok(kinepy_cli("migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", etcd.url, "--replace"))
    assert [(kv.key, kv.value, kv.lease) for kv in etcd_data.current(etcd.endpoint)] == [
        (k[0], k[1], k[5]) for k in current
    ]


def test_snapshot_for_etcd_restore_keeps_every_revision(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    """kinepy -> an etcd snapshot file -> `etcdctl snapshot restore` -> an etcd serving the same store."""
    source, original, compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    source.stop()
    snapshot = tmp_path / "etcd.snapshot"
    out = ok(
        kinepy_cli(
            "migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", f"etcd-snapshot://{snapshot}"
        )
    )
    assert f"HashKV {original.hash} at revision {original.revision} on both sides" in out
    assert not snapshot.with_name("etcd.snapshot.part").exists()

    peer = f"http://127.0.0.1:{conftest.free_port()}"
    restored = tmp_path / "restored"
    proc = conftest.run_etcdctl(
        "127.0.0.1:1",
        "snapshot",
        "restore",
        str(snapshot),
        f"--data-dir={restored}",
        "--name=restored",
        f"--initial-cluster=restored={peer}",
        f"--initial-advertise-peer-urls={peer}",
    )
    assert proc.returncode == 0, proc.stderr
    etcd = etcd_data.start_etcd(tmp_path, restored=(restored, "restored", peer))
    try:
        copy = etcd_view(etcd, connect, compact)
    finally:
        etcd.stop()
    assert without_hash(copy) == without_hash(original)
    assert original.events and original.leases and "compacted" in original.below_compaction


def test_snapshot_target_that_exists_is_refused(make_kinepy_server: MakeKinepy, tmp_path: Path) -> None:
    source = tmp_path / "a.db"
    make_kinepy_server(backend="sqlite", db_path=source).stop()
    existing = tmp_path / "etcd.snapshot"
    existing.write_bytes(b"keep me")
    proc = kinepy_cli("migrate", "--from", f"sqlite://{source}", "--to", f"etcd-snapshot://{existing}")
    assert proc.returncode == 1 and "already holds a store" in proc.stderr
    assert existing.read_bytes() == b"keep me"


ETCD_36 = "v3.6.17"


def test_etcd_36_snapshot_in_and_out_keeps_every_revision(
    make_kinepy_server: MakeKinepy, connect: Callable[[str], Client], tmp_path: Path
) -> None:
    """etcd 3.6's layout both ways: its snapshot migrates into kinepy and serves the same store, and
    the snapshot kinepy writes of that store is restored by etcdutl 3.6 into an etcd 3.6 that serves it
    again."""
    bin_dir = etcd_release(ETCD_36)
    (tmp_path / "source").mkdir()
    source = etcd_data.start_etcd(tmp_path / "source", binary=str(bin_dir / "etcd"))
    try:
        filled = etcd_data.fill(source.endpoint)
        snapshot = tmp_path / "etcd36.snapshot"
        ok(conftest.run_etcdctl(source.endpoint, "snapshot", "save", str(snapshot)))
        original = etcd_view(source, connect, filled.compact_revision)
    finally:
        source.stop()

    target = tmp_path / "state.db"
    ok(kinepy_cli("migrate", "--from", str(snapshot), "--to", f"sqlite://{target}"))
    copy = serve_and_view(make_kinepy_server, connect, f"sqlite://{target}", filled.compact_revision)
    assert without_hash(copy) == without_hash(original)

    back = tmp_path / "back.snapshot"
    ok(kinepy_cli("migrate", "--from", f"sqlite://{target}", "--to", f"etcd-snapshot://{back}"))
    peer = f"http://127.0.0.1:{conftest.free_port()}"
    restored = tmp_path / "restored"
    proc = subprocess.run(
        [
            str(bin_dir / "etcdutl"),
            "snapshot",
            "restore",
            str(back),
            f"--data-dir={restored}",
            "--name=restored",
            f"--initial-cluster=restored={peer}",
            f"--initial-advertise-peer-urls={peer}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "restored-etcd").mkdir()
    etcd = etcd_data.start_etcd(
        tmp_path / "restored-etcd", restored=(restored, "restored", peer), binary=str(bin_dir / "etcd")
    )
    try:
        again = etcd_view(etcd, connect, filled.compact_revision)
    finally:
        etcd.stop()
    assert without_hash(again) == without_hash(original)


def test_interrupted_copies_into_etcd_are_redone(
    make_etcd_server: Callable[[], conftest.EtcdServer],
    make_kinepy_server: MakeKinepy,
    connect: Callable[[str], Client],
    tmp_path: Path,
) -> None:
    """An etcd holding the incomplete-copy marker (a copy cut short) and a leftover FILE.part are
    taken over by the next run, which finishes and leaves neither behind."""
    _server, original, _compact = source_store(make_kinepy_server, connect, tmp_path / "a.db")
    etcd = make_etcd_server()
    marker = '{"revision": 99, "compact_revision": -1}'
    with etcd_data.channel(etcd.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(rpc_pb2.PutRequest(key=MARKER, value=marker.encode()))
        kv.Put(rpc_pb2.PutRequest(key=b"k/00", value=b"half-copied"))
    proc = kinepy_cli("migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", etcd.url)
    ok(proc)
    assert "interrupted copy of another store" in proc.stderr
    current = original.ranges[original.revision]
    assert [(kv.key, kv.value) for kv in etcd_data.current(etcd.endpoint)] == [(k[0], k[1]) for k in current]

    snapshot = tmp_path / "etcd.snapshot"
    snapshot.with_name("etcd.snapshot.part").write_bytes(b"cut short")
    ok(
        kinepy_cli(
            "migrate", "--from", f"sqlite://{tmp_path / 'a.db'}", "--to", f"etcd-snapshot://{snapshot}"
        )
    )
    assert not snapshot.with_name("etcd.snapshot.part").exists()
    assert snapshot.stat().st_size % 512 == 32
