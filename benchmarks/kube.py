"""End to end through Kubernetes: kube-apiserver and kube-controller-manager on each target, driven over REST.

    python -m benchmarks kube [--targets etcd-3.6.5,kinepy-sqlite,kinepy-postgres,kine-sqlite] \\
        [--objects 1000] [--list-objects 10000] [--clients 8] [--size smoke|full] [--out FILE.json]

Per target (started fresh, as the suite's ``targets.py`` starts it): kube-apiserver v1.35.4 and
kube-controller-manager (only its namespace controller) from ``tests/kube-apiserver/build.sh`` (cached;
5-10 min cold), then, over HTTPS with a bearer token, ``--clients`` threads each on its own keep-alive
connection:

    create          ``--objects`` ConfigMaps of 1 KiB in a fresh namespace
    update          a PUT of each, with the resourceVersion its create returned
    (fill)          creates up to ``--list-objects`` ConfigMaps (not a phase of the table)
    list            a paginated LIST of the namespace (limit 500, following ``continue``), 3 times
    delete-ns       DELETE of the namespace, until its GET answers 404: kube-controller-manager's namespace
                    controller deletes every object first

The table is the suite's (report.py): per phase objects/s, request latency, the target's CPU (plus its
database server's) per 1000 objects and its peak RSS, the phase's seconds, and kube-apiserver's CPU;
ratios to etcd (3.6.5 when it ran) and of kinepy to kine per backend. The client is Python (threads on
http.client); its CPU share is in the JSON, and it is the same for every target.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.loadgen import percentile
from benchmarks.meta import machine, summarize, versions
from benchmarks.targets import (
    REPO_ROOT,
    DatabaseServers,
    Target,
    TargetUnavailable,
    free_port,
    make_target,
    rss_kib,
    tree_cpu_seconds,
)

BUILD_SH = REPO_ROOT / "tests" / "kube-apiserver" / "build.sh"
NAMESPACE = "bench"
READY_TIMEOUT = 180.0
DELETE_TIMEOUT = 1800.0
SIZES = {"smoke": (50, 200), "full": (1000, 10_000)}  # (--objects, --list-objects)


def log(message: str) -> None:
    sys.stderr.write(f"[kube {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def kube_bin() -> Path:
    """The directory of kube-apiserver, kube-controller-manager and kubectl (build.sh builds or reuses it)."""
    proc = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=90 * 60, check=False)
    if proc.returncode != 0:
        raise TargetUnavailable(f"{BUILD_SH.name} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def service_account_key(path: Path) -> None:
    """An RSA private key in PEM: with `cryptography` when installed, else with the openssl CLI."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def prepare_apiserver(bin_dir: Path, root: Path, etcd_url: str, port: int, token: str) -> list[str]:
    """kube-apiserver's command line on `etcd_url`, serving 127.0.0.1:`port` (self-signed TLS) to bearer
    `token` (system:masters); writes its service-account key, token file and ROOT/kubeconfig for clients."""
    sa_key, tokens, kubeconfig = root / "sa.key", root / "tokens.csv", root / "kubeconfig"
    service_account_key(sa_key)
    tokens.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    cluster = {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kube", "cluster": cluster}],
                "users": [{"name": "admin", "user": {"token": token}}],
                "contexts": [{"name": "kube", "context": {"cluster": "kube", "user": "admin"}}],
                "current-context": "kube",
            }
        )
    )
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={root / 'certs'}",
        f"--token-auth-file={tokens}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        "--service-cluster-ip-range=10.96.0.0/24",
        # The kubernetes Service's endpoints may not be a loopback address; without a kubelet nothing
        # needs them.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


class ControlPlane:
    """kube-apiserver on `etcd_url` and kube-controller-manager running the namespace controller only."""

    def __init__(self, bin_dir: Path, root: Path, etcd_url: str) -> None:
        self.bin_dir, self.root, self.etcd_url = bin_dir, root, etcd_url
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]
        return ""

    def start(self) -> None:
        apiserver = self._spawn(
            "kube-apiserver", prepare_apiserver(self.bin_dir, self.root, self.etcd_url, self.port, self.token)
        )
        deadline = time.monotonic() + READY_TIMEOUT
        client = Rest(self.port, self.token)
        while True:
            if apiserver.poll() is not None:
                raise RuntimeError(
                    f"kube-apiserver exited {apiserver.returncode}:\n{self.log_tail('kube-apiserver')}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if client.call("GET", "/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready:\n{self.log_tail('kube-apiserver')}")
            time.sleep(0.5)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.root / 'kubeconfig'}",
                "--controllers=namespace",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    @property
    def apiserver_pid(self) -> int:
        return self.procs["kube-apiserver"].pid

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


class Rest:
    """One keep-alive HTTPS connection to kube-apiserver (self-signed: not verified), bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.headers = port, {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self._conn is None:
            context = ssl._create_unverified_context()
            self._conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=120, context=context)
        headers = dict(self.headers)
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            self._conn.request(method, path, body=data, headers=headers)
            response = self._conn.getresponse()
            raw = response.read()
        except Exception:
            self.close()  # http.client keeps a failed exchange's state: the next request would not go out
            raise
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> HTTP {status}: {str(answer)[:1000]}")
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _configmap(name: str, value: str, resource_version: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"value": value}}


def _parallel(
    clients: list[Rest], items: list[Any], op: Callable[[Rest, Any], None]
) -> tuple[float, list[float]]:
    """`op(client, item)` for every item, client i taking items i, i+C, …; (wall seconds, latencies)."""
    latencies: list[list[float]] = [[] for _ in clients]

    def work(i: int) -> None:
        for item in items[i :: len(clients)]:
            started = time.perf_counter()
            op(clients[i], item)
            latencies[i].append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(work, range(len(clients))))
    return time.perf_counter() - started, sorted(x for lat in latencies for x in lat)


class Phases:
    """The measured phases on one control plane; each returns a row for report.table."""

    def __init__(self, target: Target, plane: ControlPlane, args: argparse.Namespace) -> None:
        self.target, self.plane, self.args = target, plane, args
        self.clients = [Rest(plane.port, plane.token) for _ in range(args.clients)]
        self.value = "x" * args.value_size
        self.versions: dict[str, str] = {}
        self.lock = threading.Lock()

    def measure(self, phase: str, run: Callable[[], tuple[int, float, list[float]]]) -> dict[str, Any]:
        t = self.target
        cpu0, db0 = tree_cpu_seconds(t.pid), tree_cpu_seconds(t.db_pid) if t.db_pid else 0.0
        api0, client0 = tree_cpu_seconds(self.plane.apiserver_pid), time.process_time()
        objects, seconds, latencies = run()
        database_cpu = (tree_cpu_seconds(t.db_pid) - db0) if t.db_pid else 0.0
        server_cpu = tree_cpu_seconds(t.pid) - cpu0 + database_cpu
        row = {
            "workload": phase,
            "target": t.name,
            "repeat": 0,
            "status": "ok",
            "ops": objects,
            "seconds": seconds,
            "ops_per_s": objects / seconds if seconds else 0.0,
            "p50_ms": 1e3 * percentile(latencies, 0.5),
            "p99_ms": 1e3 * percentile(latencies, 0.99),
            "max_ms": 1e3 * latencies[-1] if latencies else 0.0,
            "server_cpu_s": server_cpu,
            "server_cpu_s_per_1k": server_cpu / objects * 1000 if objects else None,
            "server_peak_rss_mib": rss_kib(t.pid, "VmHWM") / 1024,
            "client_cpu_s": time.process_time() - client0,
            "client_cpu_util": (time.process_time() - client0) / seconds if seconds else 0.0,
            "client_bound": False,
            "errors": 0,
            "first_error": "",
            "extra": {
                "phase_seconds": seconds,
                "apiserver_cpu_s": tree_cpu_seconds(self.plane.apiserver_pid) - api0,
                "database_cpu_s": database_cpu,
            },
        }
        log(report.one_line(row))
        return row

    def _create(self, names: list[str]) -> tuple[int, float, list[float]]:
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"

        def op(client: Rest, name: str) -> None:
            created = client.ok("POST", path, _configmap(name, self.value))
            with self.lock:
                self.versions[name] = created["metadata"]["resourceVersion"]

        seconds, latencies = _parallel(self.clients, names, op)
        return len(names), seconds, latencies

    def create(self) -> tuple[int, float, list[float]]:
        self.clients[0].ok("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        return self._create([f"cm-{i:06d}" for i in range(self.args.objects)])

    def update(self) -> tuple[int, float, list[float]]:
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"

        def op(client: Rest, name: str) -> None:
            body = _configmap(name, self.value[::-1] + "u", self.versions[name])
            client.ok("PUT", f"{path}/{name}", body)

        seconds, latencies = _parallel(self.clients, [f"cm-{i:06d}" for i in range(self.args.objects)], op)
        return self.args.objects, seconds, latencies

    def fill(self) -> tuple[int, float, list[float]]:
        return self._create([f"cm-{i:06d}" for i in range(self.args.objects, self.args.list_objects)])

    def list_all(self) -> tuple[int, float, list[float]]:
        client, wholes, pages = self.clients[0], [], []
        for _ in range(3):
            started, cont, seen = time.perf_counter(), "", 0
            while True:
                page_started = time.perf_counter()
                query = f"limit=500&continue={cont}" if cont else "limit=500"
                answer = client.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps?{query}")
                pages.append(time.perf_counter() - page_started)
                seen += len(answer["items"])
                cont = answer["metadata"].get("continue", "")
                if not cont:
                    break
            wholes.append(time.perf_counter() - started)
            if seen != self.args.list_objects:
                raise RuntimeError(f"LIST returned {seen} ConfigMaps, not {self.args.list_objects}")
        return 3 * self.args.list_objects, sum(wholes), sorted(pages)

    def delete_namespace(self) -> tuple[int, float, list[float]]:
        client, started = self.clients[0], time.perf_counter()
        client.ok("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
        while client.call("GET", f"/api/v1/namespaces/{NAMESPACE}")[0] != 404:
            if time.perf_counter() - started > DELETE_TIMEOUT:
                raise RuntimeError(f"namespace still there after {DELETE_TIMEOUT} s")
            time.sleep(0.05)
        return self.args.list_objects, time.perf_counter() - started, []

    def all(self) -> list[dict[str, Any]]:
        rows = [self.measure("create", self.create), self.measure("update", self.update)]
        if self.args.list_objects > self.args.objects:
            self.fill()
        rows.append(self.measure("list", self.list_all))
        rows.append(self.measure("delete-ns", self.delete_namespace))
        for client in self.clients:
            client.close()
        return rows


PHASES = {
    "create": ("objects", "ConfigMap creates (POST), {clients} clients"),
    "update": ("objects", "ConfigMap updates (PUT with the created resourceVersion), {clients} clients"),
    "list": ("objects", "paginated LIST of {list_objects} ConfigMaps (limit 500), 3 times; latency per page"),
    "delete-ns": ("objects", "namespace deletion holding {list_objects} ConfigMaps, until its GET is 404"),
}


def run(args: argparse.Namespace) -> int:
    default_objects, default_list = SIZES[args.size]
    args.objects = args.objects or default_objects
    args.list_objects = max(args.list_objects or default_list, args.objects)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    result: dict[str, Any] = {
        "date": time.strftime("%FT%T%z"),
        "size": f"{args.objects} objects, {args.list_objects} listed, {args.clients} clients",
        "repeats": 1,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks", *sys.argv[1:]]),
        "driver": "kube",
        "machine": machine(),
        "versions": versions(names),
        "targets": {},
        "workloads": {
            phase: {"description": text.format(**vars(args)), "unit": unit}
            for phase, (unit, text) in PHASES.items()
        },
        "runs": [],
    }
    bin_dir = kube_bin()
    databases = DatabaseServers()
    try:
        for name in names:
            try:
                target = make_target(name, databases, log)
            except TargetUnavailable as exc:
                log(f"!!! target {name} SKIPPED: {exc}")
                result["targets"][name] = {"status": "unavailable", "reason": str(exc)}
                continue
            result["targets"][name] = {"status": "ok"}
            log(f"{name}: starting the target, kube-apiserver and kube-controller-manager")
            target.start()
            assert target.workdir is not None
            plane = ControlPlane(bin_dir, target.workdir, f"http://{target.endpoint}")
            try:
                plane.start()
                result["runs"] += Phases(target, plane, args).all()
            except Exception as exc:  # one broken target must not lose the others
                log(f"!!! {name} FAILED: {exc}")
                result["runs"].append(
                    {
                        "workload": "create",
                        "target": name,
                        "repeat": 0,
                        "status": "failed",
                        "reason": str(exc)[:3000],
                    }
                )
            finally:
                plane.stop()
                target.stop()
    finally:
        databases.close()
    result["summary"] = summarize(result["runs"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report.table(result))
    log(f"wrote {out}")
    return 1 if any(r["status"] == "failed" for r in result["runs"]) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--targets",
        default="etcd-3.6.5,kinepy-sqlite,kinepy-postgres,kine-sqlite",
        help="comma-separated target names (default: %(default)s)",
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="full: 1000 objects, 10k listed"
    )
    parser.add_argument(
        "--objects", type=int, default=0, help="ConfigMaps created and updated (size's default)"
    )
    parser.add_argument("--list-objects", type=int, default=0, help="ConfigMaps listed and deleted")
    parser.add_argument("--clients", type=int, default=8, help="REST clients in parallel (default: 8)")
    parser.add_argument("--value-size", type=int, default=1024, help="bytes of data per ConfigMap")
    parser.add_argument("--out", default=f"benchmarks/results/{time.strftime('%F')}-kube.json")
