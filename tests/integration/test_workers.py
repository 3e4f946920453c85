"""`kinepy --workers N` on one SQLite file: what the supervisor promises, through real clients.

The cross-worker etcd guarantees of two workers (one revision order, compare-and-swap, watchers, lease
expiry once, compaction once) are test_multi_instance.py's, run on `sqlite-workers-2` and `-4`; here the
same histories on all four workers of one server, a read on every worker after a write acknowledged by
one, and the supervisor: a crashed worker restarted while the others serve, SIGTERM drains every
worker, systemd hears READY=1 only when all serve, metrics add up over workers. Each worker is reached
on its own socket (`--worker-socket-dir`), the same server as the shared TCP port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from blocking_clients import Client, Watch, event_tuple, revisions_between
from conftest import REPO_ROOT, KinepyServer, free_port
from histories import Event, Op, check, random_load, record_put

from kinepy.proto import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.kinepy]

MakeKinepy = Callable[..., KinepyServer]
RESTART_TIMEOUT = 30.0
HISTORY_SECONDS = 6.0


def _workers(
    make_kinepy_server: MakeKinepy, tmp_path: Path, count: int, *extra: str, backend: str = "sqlite"
) -> KinepyServer:
    sockets = tmp_path / "workers"
    sockets.mkdir()
    return make_kinepy_server(
        backend=backend, workers=count, extra_args=["--worker-socket-dir", str(sockets), *extra]
    )


def _client(server: KinepyServer, tmp_path: Path, index: int) -> Client:
    return Client(f"unix://{tmp_path / 'workers'}/worker-{index}.sock")


def _worker_pids(server: KinepyServer) -> dict[int, int]:
    """Each worker's latest pid, from the supervisor's log."""
    found = re.findall(r"worker (\d+) \(pid (\d+)\) serving", server.log_of_last_start())
    return {int(index): int(pid) for index, pid in found}


def test_watchers_on_every_worker_see_every_event_once_in_order(
    make_kinepy_server: MakeKinepy, tmp_path: Path
) -> None:
    server = _workers(make_kinepy_server, tmp_path, 4)
    clients = [_client(server, tmp_path, i) for i in range(4)]
    start = clients[0].put(b"h/seed", b"0") + 1
    create = rpc_pb2.WatchCreateRequest(key=b"h/", range_end=b"h0", prev_kv=True, start_revision=start)
    watches = [Watch(client, create) for client in clients]
    try:
        for watch in watches:
            watch.created()

        def writes(thread: int) -> list[int]:
            revisions = []
            for j in range(20):
                client = clients[(thread + j) % 4]
                key = b"h/%d/%d" % (thread, j % 3)
                if j % 5 == 4:
                    ops = [
                        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"t")),
                        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"h/shared", value=key)),
                    ]
                    resp = client.kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30)
                    revisions.append(int(resp.header.revision))
                else:
                    revisions.append(client.put(key, b"v%d" % j))
            return revisions

        with ThreadPoolExecutor(8) as pool:
            acknowledged = sorted(r for rs in pool.map(writes, range(8)) for r in rs)
        last = acknowledged[-1]
        histories = [[event_tuple(e) for e in watch.events_upto(last)] for watch in watches]
    finally:
        for watch in watches:
            watch.close()
        for client in clients:
            client.close()
    assert acknowledged == revisions_between(start, last)  # one revision each, none shared, no gap
    for history in histories[1:]:
        assert history == histories[0]
    assert sorted({t[4] for t in histories[0]}) == revisions_between(start, last)
    assert len(histories[0]) == 8 * (16 + 4 * 2)


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_four_workers_stay_linearizable_with_leases_expiring_and_compaction(
    make_kinepy_server: MakeKinepy, tmp_path: Path, backend: str
) -> None:
    """12 clients over 4 workers for a few seconds, recorded and checked as test_galera.py checks three
    instances on a cluster (tests/integration/histories.py): watchers on every worker agree, nothing
    acknowledged is lost, reads match the history at their revision, revisions respect real time.
    Leases expire meanwhile (each key deleted once) and worker 0 compacts every second. On MariaDB the
    workers' write caches follow each other's commits as told (mysql.py); on PostgreSQL too (postgres.py),
    and each passes over the NOTIFYs of the others' commits."""
    flags = ["--compact-interval", "1s", "--compact-retention", "200"]
    server = _workers(make_kinepy_server, tmp_path, 4, *flags, backend=backend)
    clients = [_client(server, tmp_path, i) for i in range(4)]
    whole = rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=1)
    watches = [Watch(client, whole) for client in clients]
    try:
        for watch in watches:
            watch.created()
        ops: list[Op] = []
        for index, client in enumerate(clients):
            lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2), timeout=30)
            ops.append(record_put(client, b"l/%d" % index, b"lease%d" % index, lease=lease.ID))
        deadline = time.monotonic() + HISTORY_SECONDS
        per_thread: list[list[Op]] = [[] for _ in range(12)]
        threads = [
            threading.Thread(target=random_load, args=(clients[t % 4], t, deadline, per_thread[t], 16))
            for t in range(len(per_thread))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ops += [op for thread_ops in per_thread for op in thread_ops]
        time.sleep(2.5)  # the leases' keys are gone by now, if not already during the load
        ops.append(record_put(clients[3], b"z/last", b"last"))
        last = ops[-1].revision
        seen = [[Event.of(e) for e in watch.events_upto(last)] for watch in watches]
    finally:
        for watch in watches:
            watch.close()
        for client in clients:
            client.close()
    failed = [op for op in ops if not op.ok]
    assert not failed, failed[:5]
    problems = check(ops, seen)
    assert not problems, "\n".join(problems)
    lease_deletes = [e for e in seen[0] if e.key.startswith(b"l/") and e.type == 1]
    assert sorted(e.key for e in lease_deletes) == [b"l/%d" % i for i in range(4)]
    compactions = re.findall(r"\[worker (\d)\] automatic compaction to revision", server.log_tail(10**7))
    assert compactions and set(compactions) == {"0"}


@pytest.mark.parametrize("backend", ["sqlite", "mariadb", "postgres"])
def test_a_commit_on_one_worker_reaches_a_watcher_on_another_without_waiting_for_the_poll(
    make_kinepy_server: MakeKinepy, tmp_path: Path, backend: str
) -> None:
    # A worker tells the others of each commit (change pipes; PostgreSQL's NOTIFY of another worker's
    # commit is passed over). With polling left to every 60 s, only that can bring the event within 20 s.
    sockets = tmp_path / "workers"
    sockets.mkdir()
    server = make_kinepy_server(
        backend=backend,
        workers=2,
        extra_args=["--worker-socket-dir", str(sockets), "--datastore-poll-interval", "60"],
    )
    writer, watcher = _client(server, tmp_path, 0), _client(server, tmp_path, 1)
    watch = Watch(watcher, rpc_pb2.WatchCreateRequest(key=b"wake"))
    try:
        watch.created()
        revision = writer.put(b"wake", b"1")
        _, response = watch.next(timeout=20)
        assert [(e.kv.key, e.kv.mod_revision) for e in response.events] == [(b"wake", revision)]
    finally:
        watch.close()
        writer.close()
        watcher.close()


def test_a_write_acknowledged_by_one_worker_is_read_by_every_other(
    make_kinepy_server: MakeKinepy, tmp_path: Path
) -> None:
    server = _workers(make_kinepy_server, tmp_path, 4)
    clients = [_client(server, tmp_path, i) for i in range(4)]
    try:
        for i in range(40):
            writer = i % 4
            revision = clients[writer].put(b"lin", b"%d" % i)
            for reader in range(4):
                if reader == writer:
                    continue
                resp = clients[reader].get(b"lin")
                assert resp.header.revision >= revision
                assert (resp.kvs[0].value, resp.kvs[0].mod_revision) == (b"%d" % i, revision)
    finally:
        for client in clients:
            client.close()


def test_an_alarm_raised_on_one_worker_is_listed_enforced_and_disarmed_on_every_other(
    make_kinepy_server: MakeKinepy, tmp_path: Path
) -> None:
    """Alarms are shared by the workers: NOSPACE activated through worker 0 is listed by worker 1 and
    refuses its puts (etcd's error), and a disarm through worker 1 lifts it on worker 0."""
    server = _workers(make_kinepy_server, tmp_path, 2)
    clients = [_client(server, tmp_path, i) for i in range(2)]
    maintenance = [rpc_pb2_grpc.MaintenanceStub(c.channel) for c in clients]
    try:
        member = maintenance[0].Status(rpc_pb2.StatusRequest(), timeout=10).header.member_id
        nospace = rpc_pb2.AlarmRequest(memberID=member, alarm=rpc_pb2.NOSPACE)
        maintenance[0].Alarm(
            rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=member, alarm=rpc_pb2.NOSPACE
            ),
            timeout=10,
        )
        listed = maintenance[1].Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=10)
        assert [(a.memberID, a.alarm) for a in listed.alarms] == [(member, rpc_pb2.NOSPACE)]
        with pytest.raises(grpc.RpcError) as refused:
            clients[1].put(b"k", b"v")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == "etcdserver: mvcc: database space exceeded"
        nospace.action = rpc_pb2.AlarmRequest.DEACTIVATE
        maintenance[1].Alarm(nospace, timeout=10)
        assert (
            not maintenance[0].Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=10).alarms
        )
        assert clients[0].put(b"k", b"v") > 0
    finally:
        for client in clients:
            client.close()


def test_a_crashed_worker_is_restarted_while_the_others_serve(
    make_kinepy_server: MakeKinepy, tmp_path: Path
) -> None:
    metrics_port = free_port()
    server = _workers(make_kinepy_server, tmp_path, 2, "--metrics-address", f"127.0.0.1:{metrics_port}")
    first, second = _client(server, tmp_path, 0), _client(server, tmp_path, 1)
    watch = Watch(first, rpc_pb2.WatchCreateRequest(key=b"c/", range_end=b"c0"))
    try:
        watch.created()
        before = _worker_pids(server)
        os.kill(before[1], signal.SIGKILL)
        written = [first.put(b"c/%d" % i, b"during") for i in range(20)]  # worker 0 serves meanwhile
        deadline = time.monotonic() + RESTART_TIMEOUT
        while True:
            try:
                after = second.put(b"c/after", b"through the new worker 1")
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, f"worker 1 not back:\n{server.log_tail()}"
                time.sleep(0.1)
        assert _worker_pids(server)[1] != before[1]
        # The restarted worker commits after what worker 0 wrote, and worker 0's watcher hears of it.
        assert after > written[-1]
        assert [e.kv.mod_revision for e in watch.events_upto(after)] == [*written, after]
        assert _scrape(metrics_port)["kinepy_worker_restarts_total"] == 1
    finally:
        watch.close()
        first.close()
        second.close()


def test_sigterm_drains_every_worker(make_kinepy_server: MakeKinepy, tmp_path: Path) -> None:
    server = _workers(make_kinepy_server, tmp_path, 2)
    clients = [_client(server, tmp_path, i) for i in range(2)]
    acknowledged: list[bytes] = []
    stop = threading.Event()

    def write(index: int) -> None:
        i = 0
        while not stop.is_set():
            key = b"d/%d/%d" % (index, i)
            try:
                clients[index % 2].put(key, b"x")
            except grpc.RpcError:
                return  # the server is going away: UNAVAILABLE, not acknowledged
            acknowledged.append(key)
            i += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    pids = _worker_pids(server)
    code = server.stop()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()
    assert code == 0, server.log_tail()
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    log = server.log_of_last_start()
    assert log.count("[worker 0] shutting down") == 1 and log.count("[worker 1] shutting down") == 1
    # Every acknowledged write is in the file.
    again = make_kinepy_server(db_path=server.db_path)
    reader = Client(again.endpoint)
    try:
        stored = {kv.key for kv in reader.get(b"d/", b"d0", keys_only=True).kvs}
    finally:
        reader.close()
    assert acknowledged and set(acknowledged) <= stored


def test_systemd_hears_ready_only_when_every_worker_serves(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    sockets = tmp_path / "workers"
    sockets.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINEPY_", "KINE_", "K3S_"))}
    env.update(NOTIFY_SOCKET=address, PYTHONPATH=str(REPO_ROOT))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        argv = [sys.executable, "-m", "kinepy", "--workers", "3", "--listen-address", "127.0.0.1:0"]
        argv += ["--datastore-endpoint", f"sqlite://{tmp_path / 'state.db'}"]
        argv += ["--worker-socket-dir", str(sockets)]
        server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        try:
            assert notify.recv(64) == b"READY=1"
            for index in range(3):  # each answers at once: it was serving before READY=1
                client = Client(f"unix://{sockets}/worker-{index}.sock")
                try:
                    assert client.kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=2).header.revision == 1
                finally:
                    client.close()
            server.send_signal(signal.SIGTERM)
            assert notify.recv(64) == b"STOPPING=1"
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    assert "with 3 workers" in stderr


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_add_up_over_workers(make_kinepy_server: MakeKinepy, tmp_path: Path) -> None:
    port = free_port()
    server = _workers(make_kinepy_server, tmp_path, 2, "--metrics-address", f"127.0.0.1:{port}")
    first, second = _client(server, tmp_path, 0), _client(server, tmp_path, 1)
    watch = Watch(second, rpc_pb2.WatchCreateRequest(key=b"m/", range_end=b"m0"))
    try:
        watch.created()
        revision = 0
        for i in range(3):
            revision = first.put(b"m/%d" % i, b"v")
        for _ in range(5):
            second.get(b"m/0")
        watch.events_upto(revision)
        samples = _scrape(port)
    finally:
        watch.close()
        first.close()
        second.close()
    assert samples["kinepy_workers"] == 2
    assert samples['kinepy_grpc_requests_total{code="OK",method="KV/Put"}'] == 3
    assert samples['kinepy_grpc_requests_total{code="OK",method="KV/Range"}'] == 5
    assert samples["kinepy_watchers"] == 1
    assert samples["kinepy_revision"] == revision  # the largest, not the sum
    assert samples["kinepy_commit_batch_size_count"] == 3  # worker 1 committed nothing
