"""A full disk under a running kinepy (issue 15, finding 2): the writes that find no space get etcd's
NOSPACE error, the NOSPACE alarm is raised and listed, and `etcdctl alarm disarm` clears it once space
is back, as with etcd past its quota.

The disk is real: a small tmpfs mounted for the test (as root; the suite runs as root in CI), so
SQLite's own write() gets ENOSPC and reports SQLITE_FULL ("database or disk is full") wherever it
happens, in the WAL or the database file. `PRAGMA max_page_count` would give the same SQLite error
without a mount, but only on the database file and at a page count rather than a full disk.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import conftest
import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy]

Etcdctl = Callable[..., subprocess.CompletedProcess[str]]
NOSPACE = "etcdserver: mvcc: database space exceeded"
VALUE = "v" * 100_000


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs, unmounted at the end (after the server that uses it has stopped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = _run("mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield mount
    _run("umount", "-l", str(mount))


def fill(path: Path, mib: int) -> None:
    """Take `mib` MiB of the disk; the file is deleted to give the space back."""
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(b"\0" * (1 << 20))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """etcdctl's last stderr line for a call kinepy refused with NOSPACE."""
    assert proc.returncode != 0, f"{proc.args} succeeded:\n{proc.stdout}"
    assert NOSPACE in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_a_full_disk_raises_nospace_until_disarmed(
    small_disk: Path, make_kinepy_server: Callable[..., conftest.KinepyServer], etcdctl: Etcdctl
) -> None:
    filler = small_disk / "filler"
    fill(filler, 10)  # leaves kinepy about 2 MiB
    server = make_kinepy_server(db_path=small_disk / "state.db", log_level="info")
    end = server.endpoint
    member_id = json.loads(ok(etcdctl(end, "-w", "json", "endpoint", "status")))[0]["Status"]["header"][
        "member_id"
    ]

    lease = ok(etcdctl(end, "lease", "grant", "600")).split()[1]
    acknowledged = []
    for i in range(100):  # 10 MiB of values: the disk fills long before
        proc = etcdctl(end, "put", f"k{i}", input=VALUE)
        if proc.returncode != 0:
            # etcd's error, as etcdctl prints it: code ResourceExhausted, etcd's text.
            assert "code = ResourceExhausted desc = etcdserver: mvcc: database space exceeded" in proc.stderr
            assert refused(proc) == f"Error: {NOSPACE}"
            break
        acknowledged.append(f"k{i}")
    else:
        pytest.fail("the disk never filled")
    assert acknowledged, "not even one write fitted"

    # The log says why, and where; the alarm is NOSPACE for this member, as etcd lists it.
    log = server.log_tail()
    [line] = [line for line in log.splitlines() if "NOSPACE alarm raised" in line]
    assert "ERROR kinepy.store.store: disk full: cannot write SQLite database /" in line
    assert f"{small_disk / 'state.db'} (database or disk is full)" in line
    assert "cannot rollback" not in log
    alarm = f"memberID:{member_id} alarm:NOSPACE"
    assert ok(etcdctl(end, "alarm", "list")).strip() == alarm
    assert json.loads(ok(etcdctl(end, "-w", "json", "alarm", "list")))["alarms"] == [
        {"memberID": member_id, "alarm": 1}
    ]
    status = json.loads(ok(etcdctl(end, "-w", "json", "endpoint", "status")))[0]["Status"]
    assert status["errors"] == [f"{alarm} "]

    # A lease renewal is a small write (kinepy stores it; etcd keeps it in memory): it fits in the WAL
    # space the failed commit left, and the alarm does not refuse it.
    assert (
        ok(etcdctl(end, "lease", "keep-alive", "--once", lease)).strip()
        == f"lease {lease} keepalived with TTL(600)"
    )

    # Disarmed while the disk is still full: the next write that finds no space raises it again.
    assert ok(etcdctl(end, "alarm", "disarm")).strip() == alarm
    assert ok(etcdctl(end, "alarm", "list")).strip() == ""
    refused(etcdctl(end, "put", "again", input=VALUE))
    assert ok(etcdctl(end, "alarm", "list")).strip() == alarm

    # Space is back, but while the alarm is active, what adds data is refused, as etcd's capped
    # applier refuses it; reads, deletes, compaction and defragmentation go on.
    filler.unlink()
    assert refused(etcdctl(end, "put", "small", "x")) == f"Error: {NOSPACE}"
    assert refused(etcdctl(end, "lease", "grant", "60")) == f"Error: failed to grant lease ({NOSPACE})"
    refused(etcdctl(end, "txn", input="\n\nput small x\n\n"))
    assert ok(etcdctl(end, "txn", input="\n\ndel small\n\n")).startswith("SUCCESS")
    keys = ok(etcdctl(end, "get", "k", "--prefix", "--keys-only")).split()
    assert keys == sorted(acknowledged)
    assert ok(etcdctl(end, "del", acknowledged[0])).strip() == "1"
    revision = json.loads(ok(etcdctl(end, "-w", "json", "get", "k0")))["header"]["revision"]
    ok(etcdctl(end, "compact", str(revision), "--physical"))
    ok(etcdctl(end, "defrag"))

    assert ok(etcdctl(end, "alarm", "disarm")).strip() == alarm
    assert ok(etcdctl(end, "alarm", "list")).strip() == ""
    assert ok(etcdctl(end, "put", "small", "x")).strip() == "OK"
    ok(etcdctl(end, "lease", "grant", "60"))

    # Every acknowledged write is there after a restart.
    server.restart()
    keys = ok(etcdctl(end, "get", "k", "--prefix", "--keys-only")).split()
    assert keys == sorted(acknowledged[1:])
    assert ok(etcdctl(end, "get", "small", "--print-value-only")).strip() == "x"
    assert os.path.getsize(small_disk / "state.db") > 0


def _alarm_script(endpoint: str) -> list[object]:
    """Alarm calls and what NOSPACE forbids, as a client sees them (member IDs made neutral)."""
    out: list[object] = []
    with grpc.insecure_channel(endpoint) as channel:
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        kv = rpc_pb2_grpc.KVStub(channel)
        lease = rpc_pb2_grpc.LeaseStub(channel)
        own = maintenance.Status(rpc_pb2.StatusRequest(), timeout=10).header.member_id
        names = {own: "self", 12345: "other"}

        def alarm(action: int, alarm: int, member: int = 0) -> None:
            resp = maintenance.Alarm(rpc_pb2.AlarmRequest(action=action, alarm=alarm, memberID=member))  # type: ignore[arg-type]
            out.append(("alarm", action, alarm, sorted((names[a.memberID], a.alarm) for a in resp.alarms)))

        def call(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
                out.append((what, "OK"))
            except grpc.RpcError as exc:
                out.append((what, exc.code().name, exc.details()))

        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"p", value=b"v"))
        delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"p"))
        nested = rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[put]))
        A = rpc_pb2.AlarmRequest
        alarm(A.GET, rpc_pb2.NONE)
        alarm(A.ACTIVATE, rpc_pb2.NOSPACE, 12345)
        alarm(A.ACTIVATE, rpc_pb2.NOSPACE, 12345)  # already active: nothing changed
        alarm(A.GET, rpc_pb2.NONE)
        alarm(A.GET, rpc_pb2.CORRUPT)
        out.append(("status errors", len(maintenance.Status(rpc_pb2.StatusRequest(), timeout=10).errors)))
        call("put", lambda: kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10))
        call("txn put", lambda: kv.Txn(rpc_pb2.TxnRequest(success=[put]), timeout=10))
        call("txn failure put", lambda: kv.Txn(rpc_pb2.TxnRequest(failure=[put]), timeout=10))
        call("txn nested put", lambda: kv.Txn(rpc_pb2.TxnRequest(success=[nested]), timeout=10))
        call("txn delete", lambda: kv.Txn(rpc_pb2.TxnRequest(success=[delete]), timeout=10))
        call("delete", lambda: kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k"), timeout=10))
        call("range", lambda: kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10))
        call("lease grant", lambda: lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10))
        call("compact", lambda: kv.Compact(rpc_pb2.CompactionRequest(revision=1), timeout=10))
        alarm(A.DEACTIVATE, rpc_pb2.NOSPACE, own)  # not active: nothing changed
        alarm(A.DEACTIVATE, rpc_pb2.NOSPACE, 12345)
        alarm(A.GET, rpc_pb2.NONE)
        call("put after disarm", lambda: kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10))
        call(
            "lease grant after disarm",
            lambda: lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=10),
        )
    return out


@pytest.mark.etcd
def test_alarm_calls_as_etcd(
    etcd_server: conftest.EtcdServer, make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    """Maintenance.Alarm and what an active NOSPACE refuses, call for call as etcd 3.4."""
    expected = _alarm_script(etcd_server.endpoint)
    assert ("put", "RESOURCE_EXHAUSTED", NOSPACE) in expected  # the script tests something
    assert _alarm_script(make_kinepy_server().endpoint) == expected
