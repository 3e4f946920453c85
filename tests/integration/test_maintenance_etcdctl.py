"""etcdctl's maintenance commands against kinepy, next to a real etcd 3.4.23.

Each test runs on both servers (the ``server`` fixture) and asserts what an operator relies on; where
the two can print the same thing (compaction, defrag, snapshot save), the outputs are compared too.
A kinepy snapshot is a copy of its SQLite database, not a bbolt file, so ``snapshot status`` is not
expected to read it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy, pytest.mark.kinepy_backends]

Etcdctl = Callable[..., subprocess.CompletedProcess[str]]
Server = conftest.EtcdServer | conftest.KinepyServer


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:  # etcd, and kinepy on each backend
        metafunc.parametrize("server", conftest.etcd_and_kinepy_params(metafunc.config), indirect=True)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "etcd":
        etcd: conftest.EtcdServer = request.getfixturevalue("etcd_server")
        return etcd
    make_kinepy: Callable[..., conftest.KinepyServer] = request.getfixturevalue("make_kinepy_server")
    return make_kinepy(backend=request.param)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_endpoint_status(server: Server, etcdctl: Etcdctl) -> None:
    ok(etcdctl(server.endpoint, "put", "k", "v"))
    [status] = json.loads(ok(etcdctl(server.endpoint, "-w", "json", "endpoint", "status")))
    assert status["Endpoint"] == server.endpoint
    body = status["Status"]
    assert body["header"]["revision"] == 2
    assert body["dbSize"] > 0
    assert body["leader"] == body["header"]["member_id"]
    assert body["version"].startswith("3.")
    table = ok(etcdctl(server.endpoint, "-w", "table", "endpoint", "status"))
    assert server.endpoint in table


def test_endpoint_health(server: Server, etcdctl: Etcdctl) -> None:
    proc = etcdctl(server.endpoint, "endpoint", "health")
    ok(proc)
    # etcdctl 3.4 prints the simple form on stderr.
    assert proc.stderr.startswith(f"{server.endpoint} is healthy: successfully committed proposal: took = ")
    [health] = json.loads(ok(etcdctl(server.endpoint, "-w", "json", "endpoint", "health")))
    assert health["health"] is True


def test_member_list(server: Server, etcdctl: Etcdctl) -> None:
    doc = json.loads(ok(etcdctl(server.endpoint, "-w", "json", "member", "list")))
    [member] = doc["members"]
    assert member["clientURLs"] == [f"http://{server.endpoint}"]
    assert member["ID"] == doc["header"]["member_id"]
    line = ok(etcdctl(server.endpoint, "member", "list")).strip()
    assert line.endswith(f", http://{server.endpoint}, false")


def _compaction_script(etcdctl: Etcdctl, endpoint: str) -> list[tuple[int, str, str]]:
    out = []
    for args in (
        ("put", "k", "1"),
        ("put", "k", "2"),
        ("put", "k", "3"),
        ("compaction", "3"),
        ("get", "--rev=2", "k"),
        ("get", "--rev=3", "k", "--print-value-only"),
        ("compaction", "--physical", "3"),
        ("compaction", "--physical", "4"),
        ("get", "--rev=3", "k"),
        ("compaction", "9"),
    ):
        proc = etcdctl(endpoint, *args)
        err = proc.stderr.splitlines()[-1] if proc.stderr else ""  # drop etcdctl's own retry log lines
        out.append((proc.returncode, proc.stdout, err))
    return out


def test_compaction_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer, etcdctl: Etcdctl
) -> None:
    expected = _compaction_script(etcdctl, etcd_server.endpoint)
    assert _compaction_script(etcdctl, kinepy_server.endpoint) == expected
    assert expected[3] == (0, "compacted revision 3\n", "")
    assert expected[4] == (1, "", "Error: etcdserver: mvcc: required revision has been compacted")
    assert expected[5] == (0, "2\n", "")
    assert expected[6][2] == "Error: etcdserver: mvcc: required revision has been compacted"
    assert expected[7] == (0, "compacted revision 4\n", "")
    assert expected[9][2] == "Error: etcdserver: mvcc: required revision is a future revision"


def test_defrag_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer, etcdctl: Etcdctl
) -> None:
    outputs = []
    for server in (etcd_server, kinepy_server):
        for i in range(20):
            ok(etcdctl(server.endpoint, "put", f"d{i}", "x" * 1000))
        ok(etcdctl(server.endpoint, "del", "--prefix", "d"))
        proc = etcdctl(server.endpoint, "defrag")
        outputs.append((proc.returncode, proc.stdout.replace(server.endpoint, "<endpoint>"), proc.stderr))
        assert ok(etcdctl(server.endpoint, "put", "after", "defrag")) == "OK\n"  # still serving
    assert outputs[1] == outputs[0] == (0, "Finished defragmenting etcd member[<endpoint>]\n", "")


# On every backend a kinepy snapshot is a SQLite file: a copy of the database file on SQLite, the
# store at one revision written by kinepy/backends/sql/bulk.py on PostgreSQL and MySQL
# (tests/integration/test_migrate.py restores them).
def test_snapshot_save_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer, etcdctl: Etcdctl, tmp_path: Path
) -> None:
    outputs = []
    for name, server in (("etcd", etcd_server), ("kinepy", kinepy_server)):
        ok(etcdctl(server.endpoint, "put", "snap", "shot"))
        path = tmp_path / f"{name}.db"
        proc = etcdctl(server.endpoint, "snapshot", "save", str(path))
        outputs.append((proc.returncode, proc.stdout.replace(str(path), "<path>")))
        assert proc.returncode == 0, proc.stderr
        assert path.stat().st_size > 0
    assert outputs[1] == outputs[0] == (0, "Snapshot saved at <path>\n")
    with (tmp_path / "kinepy.db").open("rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["move-leader", "1"], "kinepy: Maintenance.MoveLeader is not supported (kinepy is a single member)"),
        (
            ["member", "add", "m2", "--peer-urls=http://127.0.0.1:2380"],
            "kinepy: Cluster.MemberAdd is not supported",
        ),
        (["member", "remove", "1"], "kinepy: Cluster.MemberRemove is not supported"),
    ],
)
def test_membership_changes_are_refused_with_a_message_naming_the_call(
    make_kinepy_server: Callable[..., conftest.KinepyServer], etcdctl: Etcdctl, args: list[str], message: str
) -> None:
    """What etcdctl prints for the calls a single-member kinepy does not serve: the call named, and a
    hint where there is one, not grpc's bare 'Method not implemented!'."""
    server = make_kinepy_server()
    proc = etcdctl(server.endpoint, *args)
    assert proc.returncode != 0
    assert "Unimplemented" in proc.stderr and message in proc.stderr, proc.stderr
