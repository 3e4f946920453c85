"""The server's connections have etcd's TCP options, not grpc-core's (issue 15, finding 3).

grpc-core's 20 s `TCP_USER_TIMEOUT` drops a frozen client whose receive window has closed; etcd keeps it
(kinepy/server/listener.py). Linux copies the listening socket's options to each accepted connection:
the test reads them from the server side of a real connection.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import conftest
import grpc
import pytest

from kinepy.app import App
from kinepy.config import Config
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.server.listener import TCP_KEEPALIVE_SECONDS

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_USER_TIMEOUT is Linux's")

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
WATCHER = Path(__file__).parent / "clients" / "frozen_watcher.py"
FROZEN_SECONDS = 25  # longer than grpc-core's 20 s TCP_USER_TIMEOUT


def server_side_of(port: int, client_port: int) -> socket.socket:
    """A duplicate of this process's socket whose local port is `port` and peer port `client_port`."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
                if sock.getsockname()[1] == port and sock.getpeername()[1] == client_port:
                    return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no connection {port} <- {client_port}")


def client_ports(port: int) -> set[int]:
    """Local ports of this process's connections to `port`."""
    ports = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                    ports.add(sock.getsockname()[1])
            except (OSError, IndexError):
                pass
    return ports


async def test_connections_have_no_tcp_user_timeout_and_go_keepalive(tmp_path: Path) -> None:
    config = Config(datastore_endpoint=f"sqlite://{tmp_path / 'state.db'}", listen_address="127.0.0.1:0")
    async with App(config) as app, grpc.aio.insecure_channel(app.endpoint) as channel:
        await rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
        (client_port,) = client_ports(app.port)
        with server_side_of(app.port, client_port) as server_side:
            assert server_side.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT) == 0
            assert server_side.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == TCP_KEEPALIVE_SECONDS
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == TCP_KEEPALIVE_SECONDS


@pytest.mark.kinepy
@pytest.mark.slow
def test_a_frozen_watcher_keeps_its_stream(kinepy_server: conftest.KinepyServer) -> None:
    """A watcher frozen (SIGSTOP) for 25 s while 30 MB of events fill its windows gets them all once it
    runs again, and the next one. grpc-core's default dropped it ("Connection reset by peer")."""
    env = {**os.environ, "PYTHONPATH": str(conftest.REPO_ROOT)}
    argv = [sys.executable, str(WATCHER), kinepy_server.endpoint]
    watcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "created"
        watcher.send_signal(signal.SIGSTOP)
        with grpc.insecure_channel(kinepy_server.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for i in range(300):
                kv.Put(rpc_pb2.PutRequest(key=b"/frozen/%03d" % i, value=os.urandom(100_000)), timeout=30)
            time.sleep(FROZEN_SECONDS)
            watcher.send_signal(signal.SIGCONT)
            kv.Put(rpc_pb2.PutRequest(key=b"/frozen/final", value=b"x"), timeout=30)
        out, _ = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
        watcher.wait()
    assert out.strip() == "final after 301"
