"""etcd passthrough against real etcd 3.4: KV, watch and lease calls through kinepy answer as etcd does,
and a stopped endpoint fails over to the next.

kinepy takes an etcd URL on any port, as kine does: each etcd here listens on a free port of its own
loopback address (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import conftest
import pytest

pytestmark = pytest.mark.etcd

HOSTS = ("127.0.0.2", "127.0.0.3")
WATCH_TIMEOUT = 20.0  # seconds for the watch through kinepy to show three events


@dataclass
class HostEtcd(conftest.EtcdServer):
    """An etcd whose client URL is HOST:PORT."""

    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def _free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_etcd_on(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], HostEtcd]]:
    servers: list[HostEtcd] = []

    def make(host: str) -> HostEtcd:
        conftest._require_etcd()
        port = _free_port_on(host)
        root = tmp_path_factory.mktemp("etcd")
        server = HostEtcd(
            kind="etcd", port=port, log_path=root / "etcd.log", data_dir=root / "data", host=host
        )
        peer = f"http://{host}:{conftest.free_port()}"
        name = f"etcd-{host}"
        argv = [
            conftest.ETCD_BIN,
            f"--name={name}",
            f"--data-dir={server.data_dir}",
            f"--listen-client-urls={server.url}",
            f"--advertise-client-urls={server.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={name}={peer}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        servers.append(server)
        conftest._track(request, server)
        server._start(argv, lambda: conftest._etcd_healthy(server.endpoint))
        return server

    yield make
    for server in servers:
        server.stop()


def ctl(endpoint: str, *args: str, input: str | None = None) -> Any:
    """etcdctl -w json ARGS, exit code 0 required."""
    return conftest.run_etcdctl_json(endpoint, *args, input=input)


def _kvs(resp: dict[str, Any]) -> list[tuple[str, str, int, int, int]]:
    return [
        (kv["key"], kv.get("value", ""), kv["create_revision"], kv["mod_revision"], kv["version"])
        for kv in resp.get("kvs", [])
    ]


def test_kv_through_kinepy_is_what_etcd_holds(
    make_etcd_on: Callable[[str], HostEtcd], make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    etcd = make_etcd_on(HOSTS[0])
    proxy = make_kinepy_server(extra_args=["--datastore-endpoint", etcd.url]).endpoint
    put = ctl(proxy, "put", "a", "1")
    ctl(proxy, "put", "b", "2")
    txn = ctl(proxy, "txn", input='value("a") = "1"\n\nput a 10\n\nput a 0\n\n')
    assert txn["succeeded"] is True
    deleted = ctl(proxy, "del", "b")
    assert deleted["deleted"] == 1

    through, direct = ctl(proxy, "get", "", "--from-key"), ctl(etcd.endpoint, "get", "", "--from-key")
    assert _kvs(through) == _kvs(direct) != []
    assert through["header"]["revision"] == direct["header"]["revision"] == put["header"]["revision"] + 3
    assert through["header"]["cluster_id"] == direct["header"]["cluster_id"]  # etcd's own header
    # Errors come through with etcd's codes and texts.
    compacted = conftest.run_etcdctl(proxy, "get", "a", "--rev=999")
    assert compacted.returncode != 0 and "required revision is a future revision" in compacted.stderr


def test_watch_through_kinepy_sees_writes_made_directly(
    make_etcd_on: Callable[[str], HostEtcd], make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    etcd = make_etcd_on(HOSTS[0])
    proxy = make_kinepy_server(extra_args=["--datastore-endpoint", etcd.url]).endpoint
    start = ctl(etcd.endpoint, "put", "w/0", "x")["header"]["revision"]
    watcher = subprocess.Popen(
        [
            conftest.ETCDCTL_BIN,
            f"--endpoints={proxy}",
            "-w",
            "json",
            "watch",
            "--prefix",
            "w/",
            f"--rev={start}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    deadline = threading.Timer(WATCH_TIMEOUT, watcher.kill)  # a lost event fails instead of hanging
    deadline.start()
    try:
        ctl(etcd.endpoint, "put", "w/1", "y")
        ctl(etcd.endpoint, "del", "w/0")
        events: list[tuple[int, str]] = []
        assert watcher.stdout is not None
        for line in watcher.stdout:  # one JSON object per response
            for event in json.loads(line).get("Events", []):
                events.append((event.get("type", 0), event["kv"]["key"]))
            if len(events) >= 3:
                break
    finally:
        deadline.cancel()
        watcher.terminate()
        watcher.wait(timeout=10)
    # etcdctl -w json shows keys base64-encoded, the type as a number (PUT = 0 is omitted, DELETE = 1).
    assert events == [(0, "dy8w"), (0, "dy8x"), (1, "dy8w")]


def test_lease_grant_keepalive_revoke_through_kinepy(
    make_etcd_on: Callable[[str], HostEtcd], make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    etcd = make_etcd_on(HOSTS[0])
    proxy = make_kinepy_server(extra_args=["--datastore-endpoint", etcd.url]).endpoint
    lease = ctl(proxy, "lease", "grant", "60")["ID"]
    lease_hex = f"{lease:x}"
    ctl(proxy, "put", "--lease", lease_hex, "held", "v")
    kept = conftest.run_etcdctl(proxy, "lease", "keep-alive", "--once", lease_hex)
    assert kept.returncode == 0 and "keepalived with TTL(60)" in kept.stdout, kept.stderr
    direct = ctl(etcd.endpoint, "lease", "timetolive", lease_hex, "--keys")
    assert direct["granted-ttl"] == 60 and direct["keys"] == ["aGVsZA=="]
    conftest.run_etcdctl(proxy, "lease", "revoke", lease_hex).check_returncode()
    assert ctl(etcd.endpoint, "get", "held").get("kvs") is None
    assert ctl(proxy, "lease", "timetolive", lease_hex)["ttl"] == -1


def test_a_stopped_endpoint_fails_over_to_the_next(
    make_etcd_on: Callable[[str], HostEtcd], make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    first, second = make_etcd_on(HOSTS[0]), make_etcd_on(HOSTS[1])
    proxy = make_kinepy_server(extra_args=["--datastore-endpoint", f"{first.url},{second.url}"]).endpoint
    ctl(proxy, "put", "where", "first")
    assert _kvs(ctl(first.endpoint, "get", "where"))[0][1] == "Zmlyc3Q="  # base64("first")
    first.stop()
    # Independent single-member etcds (a real cluster would replicate): reads and writes go on, on the second.
    assert ctl(proxy, "get", "where").get("kvs") is None
    ctl(proxy, "put", "where", "second")
    assert _kvs(ctl(second.endpoint, "get", "where"))[0][1] == "c2Vjb25k"
    status = conftest.run_etcdctl(proxy, "endpoint", "health")
    assert status.returncode == 0, status.stderr
