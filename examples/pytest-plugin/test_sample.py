"""How another project uses kinepy's pytest plugin instead of starting an etcd.

With kinepy installed (`pip install kinepy`), pytest finds the `kinepy_endpoint` fixture by itself:
no conftest, no import. Each test gets an empty etcd v3 endpoint, "127.0.0.1:PORT", on its own SQLite
file. This file is run by kinepy's own suite (tests/integration/test_pytest_plugin.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import grpc
import pytest

from kinepy.proto import rpc_pb2, rpc_pb2_grpc  # any etcd v3 client works; these stubs ship with kinepy


def test_put_then_get_over_grpc(kinepy_endpoint: str) -> None:
    with grpc.insecure_channel(kinepy_endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        put = kv.Put(rpc_pb2.PutRequest(key=b"greeting", value=b"hello"), timeout=10)
        got = kv.Range(rpc_pb2.RangeRequest(key=b"greeting"), timeout=10)
    assert put.header.revision == 2  # a fresh store: revision 1 before the first write
    assert [kv.value for kv in got.kvs] == [b"hello"]


def test_each_test_gets_an_empty_store(kinepy_endpoint: str) -> None:
    with grpc.insecure_channel(kinepy_endpoint) as channel:
        got = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"), timeout=10)
    assert got.count == 0 and got.header.revision == 1


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed")
def test_etcdctl(kinepy_endpoint: str) -> None:
    def etcdctl(*args: str) -> str:
        env = {**os.environ, "ETCDCTL_API": "3"}
        argv = ["etcdctl", f"--endpoints={kinepy_endpoint}", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=30).stdout

    etcdctl("put", "color", "blue")
    assert etcdctl("get", "color", "--print-value-only").strip() == "blue"


def test_two_servers(kinepy_server_factory) -> None:  # type: ignore[no-untyped-def]
    first, second = kinepy_server_factory(), kinepy_server_factory()
    assert first != second
