"""A real kube-apiserver (v1.35.4, built from the k8s.io/kubernetes module) on kinepy, driven by kubectl.

``tests/kube-apiserver/build.sh`` builds ``kube-apiserver`` and ``kubectl`` once into
``${KINEPY_CACHE:-~/.cache/kinepy}/kube-1.35.4/bin`` (5-10 min cold on 2 cores; later runs reuse it, and
need no Go at all). Per backend (``sqlite``, ``postgres``, ``mariadb``: kinepy/testing/databases.py) this
test starts kinepy, then kube-apiserver with ``--etcd-servers=http://127.0.0.1:PORT`` on free ports (token
auth, RBAC, a generated service-account key, a self-signed serving certificate in tmp), waits for
``/readyz``, and:

1. kubectl: creates a namespace, configmaps and a secret; ``kubectl apply``s a CRD, waits for it to be
   Established, applies objects of it (client-side, then a server-side apply changing one); lists with
   paging (``--chunk-size=2``, checking in kubectl's request log that ``continue`` tokens were followed);
   watches (``kubectl get -w --output-watch-events``) and sees ADDED, MODIFIED and DELETED for changes made
   meanwhile; deletes everything (the CRD's deletion runs its finalizer inside kube-apiserver; a namespace
   only reaches Terminating, as nothing else runs: no kube-controller-manager).
2. 1000 rounds of configmap create / update (PUT with the resourceVersion just read) / list / delete over
   the REST API (http.client, keep-alive, bearer token; kubectl would take 4 processes per round), every
   answer checked; any error fails.
3. kube-apiserver's health checks still pass, its log shows no broken watch stream (GOAWAY) and kinepy
   stops cleanly.

``KINEPY_KUBE_ROUNDS`` changes the 1000. Without Go and without a cached build the test is skipped with a
loud reason, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import free_port

from benchmarks.kube import prepare_apiserver

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_SH = REPO_ROOT / "tests" / "kube-apiserver" / "build.sh"
BUILD_TIMEOUT = 90 * 60.0  # seconds: a cold build of both binaries on 2 busy cores, module downloads included
READY_TIMEOUT = 120.0  # seconds for kube-apiserver's /readyz
KUBECTL_TIMEOUT = 90.0  # seconds for one kubectl run
WATCH_TIMEOUT = 30.0  # seconds to see an event after the change that causes it
ROUNDS = int(os.environ.get("KINEPY_KUBE_ROUNDS", "1000"))
NAMESPACE = "kinepy-e2e"
CHURN_NAMESPACE = "kinepy-churn"
CRD_GROUP = "kinepy.test"
CRD_NAME = f"widgets.{CRD_GROUP}"

pytestmark = [pytest.mark.slow, pytest.mark.kinepy]


# --------------------------------------------------------------------------------------------------
# The binaries.


def _skip_or_fail(reason: str) -> None:
    message = f"!!! {reason}: the kube-apiserver end-to-end tests did NOT run. !!!"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _say(text: str) -> None:
    """Write to the process's real stderr, which pytest does not capture (if there is one)."""
    if sys.__stderr__ is not None:
        sys.__stderr__.write(text)


@pytest.fixture(scope="session")
def kube_bin() -> Path:
    """The directory holding ``kube-apiserver`` and ``kubectl`` (built by build.sh unless cached)."""
    # build.sh needs no Go when its cache is current; without Go and a current cache it exits 3.
    _say(  # the first build takes a while; say so even when pytest captures output
        f"\n[kube-apiserver: {BUILD_SH.relative_to(REPO_ROOT)} (cached after the first build, which takes "
        "5-10 min on 2 cores)]\n"
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [str(BUILD_SH)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"build.sh did not finish in {BUILD_TIMEOUT} s:\n{stderr}", pytrace=False)
    if proc.returncode == 3 or (proc.returncode != 0 and not shutil.which("go")):
        _skip_or_fail(
            f"`go` not found and no cached kube-apiserver build (install Go >= 1.21): {proc.stderr.strip()}"
        )
    if proc.returncode != 0:
        pytest.fail(f"build.sh exited {proc.returncode}:\n{proc.stderr[-8000:]}", pytrace=False)
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    _say(f"[kube-apiserver: {bin_dir} ready after {time.monotonic() - started:.0f} s]\n")
    for name in ("kube-apiserver", "kubectl"):
        assert (bin_dir / name).is_file(), f"build.sh printed {bin_dir}, which has no {name}"
    return bin_dir


# --------------------------------------------------------------------------------------------------
# kube-apiserver and its clients.


class ApiError(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status


@dataclass
class KubeApiserver:
    """kube-apiserver on 127.0.0.1:``port`` (self-signed TLS), with an admin bearer token."""

    kind = "kube-apiserver"  # with `endpoint` and `log_tail`, what conftest attaches to a failing report
    bin_dir: Path
    root: Path
    etcd_url: str
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    kinepy_metrics_url: str = ""
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _conn: http.client.HTTPSConnection | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "kube-apiserver.log"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def start(self) -> None:
        argv = [
            *prepare_apiserver(self.bin_dir, self.root, self.etcd_url, self.port, self.token),
            "--storage-backend=etcd3",
            "--etcd-prefix=/registry",
            # apiserver-driven compaction every 10 s instead of 5 min, so that the test runs across several.
            "--etcd-compaction-interval=10s",
            "--v=1",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"===== start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                pytest.fail(f"kube-apiserver exited with {code} before it was ready:\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/readyz?verbose", check=False, timeout=5)
                if status == 200:
                    return
                last = f"HTTP {status}: {body}"
            except OSError as exc:
                last = repr(exc)
                self._conn = None
            if time.monotonic() > deadline:
                pytest.fail(
                    f"kube-apiserver not ready after {READY_TIMEOUT} s; last /readyz: {last}\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.5)

    def stop(self) -> int | None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        code, self.proc = self.proc.returncode, None
        return code

    def log_tail(self, max_chars: int = 12_000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return text if len(text) <= max_chars else "…\n" + text[-max_chars:]

    # REST, over one keep-alive HTTPS connection (self-signed certificate: not verified).

    def request(
        self, method: str, path: str, body: Any = None, *, check: bool = True, timeout: float = 30.0
    ) -> tuple[int, Any]:
        """Send one request; returns (status, parsed JSON or text). With ``check``, a status >= 400 raises
        ``ApiError``. A dropped keep-alive connection is reopened once for idempotent methods."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=timeout, context=ssl._create_unverified_context()
                )
            self._conn.timeout = timeout
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read().decode(errors="replace")
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn.close()
                self._conn = None
                if attempt == 2 or method not in ("GET", "PUT", "DELETE"):
                    raise
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        if check and response.status >= 400:
            raise ApiError(method, path, response.status, raw)
        return response.status, parsed

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
                pytrace=False,
            )
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


@pytest.fixture
def kube_apiserver(
    kube_bin: Path,
    database: Any,
    make_kinepy_on: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[KubeApiserver]:
    """kinepy on the backend under test, and a ready kube-apiserver on it; both stopped at teardown
    (kube-apiserver first). Both logs are attached to a failing test's report."""
    metrics_port = free_port()
    kinepy = make_kinepy_on(
        database.url, log_level="info", extra_args=["--metrics-address", f"127.0.0.1:{metrics_port}"]
    )
    apiserver = KubeApiserver(kube_bin, tmp_path_factory.mktemp("kube-apiserver"), kinepy.url)
    apiserver.kinepy_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    conftest._track(request, apiserver)
    try:
        apiserver.start()
        yield apiserver
    finally:
        code = apiserver.stop()
    assert code in (None, 0), f"kube-apiserver exited with {code} on SIGTERM:\n{apiserver.log_tail()}"


# --------------------------------------------------------------------------------------------------
# Watching with kubectl.


class KubectlWatch:
    """``kubectl get ... -w --output-watch-events -o json`` in a subprocess; events parsed as they arrive."""

    def __init__(self, apiserver: KubeApiserver, *args: str) -> None:
        argv = [str(apiserver.bin_dir / "kubectl"), f"--kubeconfig={apiserver.kubeconfig}", "get", *args]
        argv += ["--watch", "--output-watch-events", "-o", "json"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[tuple[str, str, dict[str, Any]]] = []  # (type, name, object)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.proc.stdout:
            buffer += line
            while True:
                stripped = buffer.lstrip()
                if not stripped:
                    buffer = ""
                    break
                try:
                    event, end = decoder.raw_decode(stripped)
                except ValueError:
                    break  # an incomplete object: read more lines
                buffer = stripped[end:]
                obj = event.get("object", {})
                with self._cond:
                    self.events.append((event.get("type", "?"), obj.get("metadata", {}).get("name", ""), obj))
                    self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str, str, dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + WATCH_TIMEOUT
        with self._cond:
            while not any(predicate(*event) for event in self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    stderr = self.stderr() if self.proc.poll() is not None else ""
                    seen = [(t, n) for t, n, _ in self.events]
                    pytest.fail(f"kubectl watch: no {what} within {WATCH_TIMEOUT} s; saw {seen}\n{stderr}")
                self._cond.wait(min(remaining, 0.5))

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------------
# The test.


CRD_YAML = f"""\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {CRD_NAME}
spec:
  group: {CRD_GROUP}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
              color: {{type: string}}
          status:
            type: object
            properties:
              phase: {{type: string}}
"""


def _widgets_yaml(sizes: dict[str, int]) -> str:
    return "".join(
        f"---\napiVersion: {CRD_GROUP}/v1\nkind: Widget\n"
        f"metadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n  size: {size}\n  color: blue\n"
        for name, size in sizes.items()
    )


def _kubectl_scenario(api: KubeApiserver) -> None:
    # Namespace, configmaps, a secret.
    api.kubectl("create", "namespace", NAMESPACE)
    for i in range(5):
        api.kubectl("-n", NAMESPACE, "create", "configmap", f"cm-{i}", f"--from-literal=index={i}")
    secret_value = secrets.token_hex(12)
    api.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "s1", f"--from-literal=password={secret_value}"
    )
    secret = api.kubectl_json("-n", NAMESPACE, "get", "secret", "s1")
    assert base64.b64decode(secret["data"]["password"]).decode() == secret_value

    # A CRD and objects of it.
    api.kubectl("apply", "-f", "-", input=CRD_YAML)
    api.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    sizes = {"w-a": 1, "w-b": 2, "w-c": 3}
    # Discovery of a new group can lag its Established condition by a moment: retry the first apply briefly.
    deadline = time.monotonic() + 30
    while (proc := api.kubectl("apply", "-f", "-", input=_widgets_yaml(sizes), check=False)).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"kubectl apply of Widgets kept failing:\n{proc.stderr}", pytrace=False)
        time.sleep(1)
    sizes["w-b"] = 20
    applied = api.kubectl("apply", "-f", "-", input=_widgets_yaml(sizes)).stdout
    assert "widget.kinepy.test/w-b configured" in applied and "w-a unchanged" in applied, applied
    api.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kinepy-e2e",
        "--force-conflicts",
        "-f",
        "-",
        input=_widgets_yaml({"w-c": 30}),
    )
    widgets = api.kubectl_json("-n", NAMESPACE, "get", "widgets")
    assert {w["metadata"]["name"]: w["spec"]["size"] for w in widgets["items"]} == {
        "w-a": 1,
        "w-b": 20,
        "w-c": 30,
    }

    # Paging: 5 configmaps two at a time; kubectl's request log (-v=6) shows the continue tokens.
    paged = api.kubectl("-n", NAMESPACE, "get", "configmaps", "--chunk-size=2", "-o", "name", "-v=6")
    assert paged.stdout.split() == [f"configmap/cm-{i}" for i in range(5)], paged.stdout
    requests = [line for line in paged.stderr.splitlines() if "/configmaps?" in line]
    assert len(requests) == 3 and sum("continue=" in line for line in requests) == 2, paged.stderr
    assert all("limit=2" in line for line in requests), paged.stderr
    paged_widgets = api.kubectl("-n", NAMESPACE, "get", "widgets", "--chunk-size=1", "-o", "name")
    assert len(paged_widgets.stdout.split()) == 3, paged_widgets.stdout

    # Watch: the initial list, then an ADDED, a MODIFIED and a DELETED for changes made meanwhile.
    watch = KubectlWatch(api, "-n", NAMESPACE, "configmaps")
    try:
        watch.wait_for(lambda t, n, o: t == "ADDED" and n == "cm-4", "initial ADDED cm-4")
        api.kubectl("-n", NAMESPACE, "create", "configmap", "watched", "--from-literal=a=b")
        watch.wait_for(lambda t, n, o: t == "ADDED" and n == "watched", "ADDED watched")
        api.kubectl("-n", NAMESPACE, "patch", "configmap", "cm-1", "-p", '{"data":{"index":"one"}}')
        watch.wait_for(
            lambda t, n, o: t == "MODIFIED" and n == "cm-1" and o.get("data", {}).get("index") == "one",
            "MODIFIED cm-1",
        )
        api.kubectl("-n", NAMESPACE, "delete", "configmap", "watched")
        watch.wait_for(lambda t, n, o: t == "DELETED" and n == "watched", "DELETED watched")
    finally:
        watch.stop()
    widget_watch = KubectlWatch(api, "-n", NAMESPACE, "widgets")
    try:
        widget_watch.wait_for(lambda t, n, o: t == "ADDED" and n == "w-c", "initial ADDED w-c")
        api.kubectl("-n", NAMESPACE, "patch", "widget", "w-a", "--type=merge", "-p", '{"spec":{"size":11}}')
        widget_watch.wait_for(
            lambda t, n, o: t == "MODIFIED" and n == "w-a" and o["spec"]["size"] == 11, "MODIFIED w-a"
        )
    finally:
        widget_watch.stop()

    # Delete: the objects, the CRD (its cleanup finalizer runs in kube-apiserver), the namespace.
    api.kubectl("-n", NAMESPACE, "delete", "widgets", "--all", "--timeout=60s")
    api.kubectl("-n", NAMESPACE, "delete", "configmaps", "--all", "--timeout=60s")
    api.kubectl("-n", NAMESPACE, "delete", "secret", "s1", "--timeout=60s")
    api.kubectl("delete", "crd", CRD_NAME, "--timeout=60s")
    assert api.kubectl("get", "crd", "-o", "name").stdout.strip() == ""
    assert api.kubectl_json("-n", NAMESPACE, "get", "configmaps,secrets")["items"] == []
    api.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    ns = api.kubectl_json("get", "namespace", NAMESPACE)
    # No kube-controller-manager runs, so nothing finishes the namespace's deletion.
    assert ns["metadata"].get("deletionTimestamp") and ns["status"]["phase"] == "Terminating", ns


def _churn(api: KubeApiserver, rounds: int) -> float:
    """`rounds` rounds of create / update / list / delete of configmaps over REST; returns the seconds."""
    base = f"/api/v1/namespaces/{CHURN_NAMESPACE}/configmaps"
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": CHURN_NAMESPACE}})
    live: list[str] = []
    revisions: list[int] = []
    keep = 5  # configmaps alive at once: each is deleted `keep` rounds after its creation
    started = time.monotonic()
    for i in range(rounds):
        name = f"churn-{i}"
        _, created = api.request("POST", base, {"metadata": {"name": name}, "data": {"round": str(i)}})
        assert created["metadata"]["name"] == name and created["data"] == {"round": str(i)}, created
        created["data"]["round"] = f"{i}-updated"
        _, updated = api.request("PUT", f"{base}/{name}", created)  # carries the resourceVersion just read
        revisions += [
            int(created["metadata"]["resourceVersion"]),
            int(updated["metadata"]["resourceVersion"]),
        ]
        assert revisions[-1] > revisions[-2], (created, updated)
        live.append(name)
        if i % 10 == 0:  # paged list, two at a time
            names: list[str] = []
            token = ""
            while True:
                _, page = api.request("GET", f"{base}?limit=2" + (f"&continue={token}" if token else ""))
                names += [item["metadata"]["name"] for item in page["items"]]
                token = page["metadata"].get("continue", "")
                if not token:
                    break
        else:
            _, listed = api.request("GET", base)
            names = [item["metadata"]["name"] for item in listed["items"]]
            by_name = {item["metadata"]["name"]: item["data"]["round"] for item in listed["items"]}
            assert by_name.get(name) == f"{i}-updated", listed
        assert sorted(names) == sorted(live), (i, names, live)
        if len(live) > keep:
            gone = live.pop(0)
            _, status = api.request("DELETE", f"{base}/{gone}")
            assert status.get("kind") in ("Status", "ConfigMap"), status
    for gone in live:
        api.request("DELETE", f"{base}/{gone}")
    elapsed = time.monotonic() - started
    # resourceVersion is kinepy's revision: one per create, update and delete, strictly increasing.
    assert revisions == sorted(set(revisions)), "resourceVersions went backwards or repeated"
    assert revisions[-1] - revisions[0] >= 3 * (rounds - keep) - 2, (revisions[0], revisions[-1])
    _, listed = api.request("GET", base)
    assert listed["items"] == [], listed
    # A conflicting update (stale resourceVersion) must be refused with 409, as etcd's compare would.
    _, cm = api.request("POST", base, {"metadata": {"name": "conflict"}, "data": {"v": "1"}})
    api.request("PUT", f"{base}/conflict", {**cm, "data": {"v": "2"}})
    status, body = api.request("PUT", f"{base}/conflict", {**cm, "data": {"v": "3"}}, check=False)
    assert status == 409, (status, body)
    api.request("DELETE", f"{base}/conflict")
    api.request("DELETE", f"/api/v1/namespaces/{CHURN_NAMESPACE}")
    return elapsed


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _kinepy_metric(api: KubeApiserver, name: str) -> float:
    for line in _get(api.kinepy_metrics_url).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"kinepy serves no metric {name}")


def test_kube_apiserver_with_kubectl(kube_apiserver: KubeApiserver, database: Any) -> None:
    api = kube_apiserver
    version = api.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == "v1.35.4", version

    _kubectl_scenario(api)

    elapsed = _churn(api, ROUNDS)
    # kube-apiserver's compactor (every 10 s) compacts at the revision it saw one cycle earlier.
    deadline = time.monotonic() + 60
    while (compacted := _kinepy_metric(api, "kinepy_compact_revision")) <= 0:
        assert time.monotonic() < deadline, "kube-apiserver's compaction never reached kinepy in 60 s"
        time.sleep(1)
    (api.root / "kinepy-metrics.txt").write_text(_get(api.kinepy_metrics_url))
    _, listed = api.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps")  # after the compaction
    assert listed["items"] == [], listed

    _, readyz = api.request("GET", "/readyz?verbose")
    assert "[+]etcd ok" in readyz and "[+]etcd-readiness ok" in readyz, readyz
    _, livez = api.request("GET", "/livez?verbose")
    assert "[+]etcd ok" in livez, livez
    _, metrics = api.request("GET", "/metrics")
    (api.root / "metrics.txt").write_text(metrics)
    # Consistent LISTs are served from the watch cache after a progress request to kinepy; a fallback to
    # a direct read means the progress answer took over 3 s (or RequestWatchProgress was judged unsupported).
    fallbacks = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("apiserver_watch_cache_consistent_read_total{") and 'fallback="true"' in line
    )
    log = api.log_path.read_text(errors="replace")
    # A GOAWAY (e.g. too_many_pings) would break every watch on kube-apiserver's connection to kinepy.
    broken = [line for line in log.splitlines() if re.search(r"GOAWAY|too_many_pings", line)]
    assert not broken, "\n".join(broken[:20])
    sys.stderr.write(
        f"[kube-apiserver on kinepy/{database.kind}: {ROUNDS} configmap rounds in {elapsed:.1f} s "
        f"({ROUNDS * 4 / elapsed:.0f} requests/s); compacted at revision {compacted:.0f}; "
        f"consistent LISTs that fell back: {fallbacks:.0f}]\n"
    )


def test_kube_apiserver_over_tls_with_client_certificates(
    kube_bin: Path,
    make_kinepy_server: Callable[..., Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """kinepy ``--server-cert-file/--server-key-file/--trusted-ca-file`` paired with kube-apiserver
    ``--etcd-servers=https://… --etcd-cafile/--etcd-certfile/--etcd-keyfile`` (docs/kubernetes.md);
    SQLite only: TLS sits in front of the backend."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("kube-apiserver-etcd-client")
    paths = {
        name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key", "client", "client-key")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(str(paths["server"]), append=True)
    server_cert.private_key_pem.write_to_path(str(paths["server-key"]))
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(paths["client"]), append=True)
    client_cert.private_key_pem.write_to_path(str(paths["client-key"]))
    tls = ["--server-cert-file", str(paths["server"]), "--server-key-file", str(paths["server-key"])]
    kinepy = make_kinepy_server(log_level="info", extra_args=[*tls, "--trusted-ca-file", str(paths["ca"])])

    api = KubeApiserver(
        kube_bin,
        tmp_path / "kube-apiserver",
        f"https://127.0.0.1:{kinepy.port}",
        extra_args=[
            f"--etcd-cafile={paths['ca']}",
            f"--etcd-certfile={paths['client']}",
            f"--etcd-keyfile={paths['client-key']}",
        ],
    )
    api.root.mkdir()
    conftest._track(request, api)
    try:
        api.start()
        api.kubectl("create", "namespace", NAMESPACE)
        watch = KubectlWatch(api, "-n", NAMESPACE, "configmaps")
        try:
            api.kubectl("-n", NAMESPACE, "create", "configmap", "over-tls", "--from-literal=k=v")
            watch.wait_for(lambda t, n, o: t == "ADDED" and n == "over-tls", "ADDED over-tls")
        finally:
            watch.stop()
        assert api.kubectl_json("-n", NAMESPACE, "get", "configmap", "over-tls")["data"] == {"k": "v"}
        _, readyz = api.request("GET", "/readyz?verbose")
        assert "[+]etcd ok" in readyz and "[+]etcd-readiness ok" in readyz, readyz
    finally:
        code = api.stop()
    assert code in (None, 0), f"kube-apiserver exited with {code} on SIGTERM:\n{api.log_tail()}"
