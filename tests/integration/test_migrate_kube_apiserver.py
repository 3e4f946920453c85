"""A Kubernetes control plane moves to kinepy: kube-apiserver's data, written on kine (SQLite) or on the
suite's etcd 3.4 (copied from a snapshot file, or live), migrated with `kinepy migrate`, then served by
kinepy to a restarted kube-apiserver.

The objects keep their resourceVersions (kine's and etcd's revisions are kinepy's): a list returns the same
objects with the same resourceVersions, an update with the resourceVersion read before the move succeeds,
and a watch from the list sees the changes made after the move. kube-apiserver is
the build of test_kube_apiserver.py (cached; the first build takes 5-10 min).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import etcd_data
import pytest
from test_kube_apiserver import KubeApiserver, kube_bin
from test_migrate import MakeKinepy, kinepy_cli, ok
from test_migrate_from_kine import start_kine

pytestmark = [pytest.mark.kinepy, pytest.mark.slow]
__all__ = ["kube_bin"]  # a fixture of test_kube_apiserver, used here

NAMESPACE = "moved"
CONFIGMAPS = 20


def _objects(api: KubeApiserver) -> tuple[str, dict[str, tuple[str, dict[str, str]]]]:
    """The configmaps of NAMESPACE: (list resourceVersion, {name: (resourceVersion, data)})."""
    _, listed = api.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps")
    return listed["metadata"]["resourceVersion"], {
        item["metadata"]["name"]: (item["metadata"]["resourceVersion"], item.get("data", {}))
        for item in listed["items"]
    }


def _write(api: KubeApiserver) -> None:
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    base = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    for i in range(CONFIGMAPS):
        api.request("POST", base, {"metadata": {"name": f"cm-{i}"}, "data": {"round": "1"}})
    for i in range(0, CONFIGMAPS, 3):
        _, cm = api.request("GET", f"{base}/cm-{i}")
        cm["data"] = {"round": "2"}
        api.request("PUT", f"{base}/cm-{i}", cm)
    for i in (5, 6):
        api.request("DELETE", f"{base}/cm-{i}")


class Watch:
    """A raw watch (`?watch=1&resourceVersion=RV`) collecting (type, name, resourceVersion)."""

    def __init__(self, api: KubeApiserver, resource_version: str) -> None:
        import http.client
        import ssl

        self.events: list[tuple[str, str, str]] = []
        self._conn = http.client.HTTPSConnection(
            "127.0.0.1", api.port, timeout=60, context=ssl._create_unverified_context()
        )
        path = (
            f"/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&resourceVersion={resource_version}"
            "&allowWatchBookmarks=false"
        )
        self._conn.request("GET", path, headers={"Authorization": f"Bearer {api.token}"})
        self._response = self._conn.getresponse()
        assert self._response.status == 200, self._response.read()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._response:
                event = json.loads(line)
                meta = event["object"]["metadata"]
                self.events.append((event["type"], meta.get("name", ""), meta.get("resourceVersion", "")))
        except Exception:  # closed by stop()
            pass

    def wait_for(self, count: int) -> list[tuple[str, str, str]]:
        deadline = time.monotonic() + 30
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.events)

    def stop(self) -> None:
        # Shut the socket down first: closing the response waits for the reader thread's lock, and
        # that thread sits in recv() until data comes or the 60 s timeout passes.
        if self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


@pytest.fixture
def apiservers(
    kube_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], KubeApiserver]]:
    started: list[KubeApiserver] = []

    def start(etcd_url: str) -> KubeApiserver:
        api = KubeApiserver(kube_bin, tmp_path_factory.mktemp("kube-apiserver"), etcd_url)
        started.append(api)
        api.start()
        return api

    yield start
    for api in started:
        api.stop()


@pytest.mark.parametrize("source", ["kine", "etcd-snapshot", "etcd-live"])
def test_kube_apiserver_moves_to_kinepy_keeping_resource_versions(
    source: str,
    apiservers: Callable[[str], KubeApiserver],
    make_kinepy_server: MakeKinepy,
    tmp_path: Path,
) -> None:
    if source == "kine":
        (tmp_path / "kine").mkdir()
        kine_db = tmp_path / "kine" / "state.db"
        kine = start_kine(f"sqlite://{kine_db}", tmp_path / "kine")
        stop_source: Callable[[], Any] = kine.stop
        etcd_url, migrate_from = f"http://{kine.endpoint}", f"sqlite://{kine_db}"
    else:
        (tmp_path / "etcd").mkdir()
        etcd = etcd_data.start_etcd(tmp_path / "etcd")
        stop_source = etcd.stop
        snapshot = str(tmp_path / "etcd.snapshot")
        etcd_url, migrate_from = etcd.url, snapshot if source == "etcd-snapshot" else etcd.url
    target = tmp_path / "kinepy.db"
    try:
        api = apiservers(etcd_url)
        _write(api)
        list_rv, before = _objects(api)
        api.stop()
        if source == "etcd-snapshot":
            ok(conftest.run_etcdctl(etcd.endpoint, "snapshot", "save", snapshot))
        # The same command the docs show; a live etcd is read while it runs.
        ok(kinepy_cli("migrate", "--from", migrate_from, "--to", f"sqlite://{target}"))
    finally:
        stop_source()

    kinepy = make_kinepy_server(backend="sqlite", db_path=target)
    api = apiservers(kinepy.url)

    new_list_rv, after = _objects(api)
    assert after == before
    assert int(new_list_rv) >= int(list_rv)
    watch = Watch(api, new_list_rv)
    try:
        base = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
        rv, _ = before["cm-1"]
        _, cm = api.request("GET", f"{base}/cm-1")
        assert cm["metadata"]["resourceVersion"] == rv
        cm["data"] = {"round": "after the move"}
        _, updated = api.request("PUT", f"{base}/cm-1", cm)  # optimistic concurrency on the old RV
        assert int(updated["metadata"]["resourceVersion"]) > int(rv)
        api.request("POST", base, {"metadata": {"name": "new"}, "data": {"round": "3"}})
        events = watch.wait_for(2)
    finally:
        watch.stop()
    assert [(kind, name) for kind, name, _ in events] == [("MODIFIED", "cm-1"), ("ADDED", "new")]
