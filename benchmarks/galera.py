"""Kube-shaped workloads on a 3-node MariaDB Galera cluster against one MariaDB server.

    python -m benchmarks.galera [--workloads put-seq,create-64,update-1000,mixed,list-10k,watch-1] \\
        [--seconds 4] [--repeats 3] [--setups mariadb,galera,galera-local,galera-one-node] [--out FILE.json]

Setups (each on a fresh database; the servers are `kinepy.testing.databases`'):

    mariadb          one kinepy on one MariaDB server
    galera           three kinepy, one per Galera node, as kinepy runs by default: writes through the
                     node every kinepy picks, reads on its own node; the load generator spreads its
                     calls over the three, round-robin per call (a k3s cluster with a server per node)
    galera-local     the same with `?galera_writer=local`: each kinepy writes through its own node and
                     runs again the batches that fail certification
    galera-one-node  three kinepy, all on Galera node 0 (reads and writes)

Every setup runs at once; each workload (`benchmarks/workloads.py`, size `full`, only the data it reads
preloaded) runs `--repeats` times per setup with `python -m benchmarks.loadgen`, the setups interleaved;
the table gives the medians of throughput, p50 and p99 latency, and the failed requests of all runs.
It also measures what causal reads cost on Galera: a point SELECT on a node with `wsrep_sync_wait` 0
and 1, idle and while another node commits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.drive import loadgen
from benchmarks.targets import REPO_ROOT
from benchmarks.workloads import SIZES, Workload, workloads
from kinepy.testing.databases import (
    DatabaseServer,
    GaleraCluster,
    free_port,
    start_database_server,
    start_galera_cluster,
)

SETUPS = ("mariadb", "galera", "galera-local", "galera-one-node")
DEFAULT_WORKLOADS = "put-seq,create-64,update-1000,mixed,list-10k,watch-1"
START_TIMEOUT = 60.0


def log(message: str) -> None:
    sys.stderr.write(f"[galera-bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def kinepys(urls: list[str]) -> Iterator[str]:
    """One kinepy per datastore URL; yields their endpoints joined by commas (loadgen spreads over them)."""
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="kinepy-galera-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    endpoints = []
    try:
        for index, url in enumerate(urls):
            endpoint = f"127.0.0.1:{free_port()}"
            argv = [sys.executable, "-m", "kinepy", "--listen-address", endpoint, "--datastore-endpoint", url]
            with (workdir / f"kinepy{index}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*argv, "--log-level", "warning"],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=workdir,
                    )
                )
            _wait_for(endpoint, procs[-1], workdir / f"kinepy{index}.log")
            endpoints.append(endpoint)
        yield ",".join(endpoints)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for(endpoint: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kinepy exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"kinepy did not listen on {endpoint} within {START_TIMEOUT} s")


def _preload(endpoint: str, workload: Workload) -> None:
    """The part of the workload's dataset it reads (its prefix), 100 puts per txn, through the first
    kinepy (32 loaders writing through three would only measure conflicts)."""
    endpoint = endpoint.split(",")[0]
    prefix = workload.params.get("prefix")
    for key_prefix, keys, value_size, rounds in workload.dataset.preload:
        if key_prefix == prefix:
            params = {"prefix": key_prefix, "keys": keys, "value_size": value_size, "rounds": rounds}
            loadgen(endpoint, "preload", {**params, "batch": 100, "channels": 4}, timeout=3600)


def run_interleaved(
    endpoints: dict[str, str], chosen: list[Workload], repeats: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each workload `repeats` times on every setup, the setups interleaved (their order rotates each
    repeat, so a noisy neighbour hits them all alike); per setup and workload the medians of
    throughput, p50 and p99 over the runs, the errors of every run added up, and the runs."""
    setups = list(endpoints)
    results: dict[str, dict[str, dict[str, Any]]] = {setup: {} for setup in setups}
    for workload in chosen:
        for endpoint in endpoints.values():
            _preload(endpoint, workload)
        runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in setups}
        for repeat in range(repeats):
            for setup in setups[repeat % len(setups) :] + setups[: repeat % len(setups)]:
                params = {"prefix": f"/registry/bench/{workload.name}/r{repeat}/", **workload.params}
                result = loadgen(endpoints[setup], workload.kind, params, timeout=workload.timeout)
                runs[setup].append(result)
                latency = result["latencies_ms"]
                log(
                    f"  {setup} {workload.name}: {result['ops_per_s']:.0f} {workload.unit}/s, "
                    f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, {result['errors']} errors"
                )
        for setup, setup_runs in runs.items():
            results[setup][workload.name] = {
                "ops_per_s": statistics.median(float(r["ops_per_s"]) for r in setup_runs),
                "latencies_ms": {
                    q: statistics.median(float(r["latencies_ms"][q]) for r in setup_runs)
                    for q in ("p50", "p99")
                },
                "errors": sum(int(r["errors"]) for r in setup_runs),
                "runs": setup_runs,
            }
    return results


def _select_latency(node: DatabaseServer, sync_wait: int, count: int) -> float:
    """Mean seconds of a point SELECT over TCP on `node` with `wsrep_sync_wait` = `sync_wait`."""
    import pymysql

    from kinepy.testing.databases import PASSWORD, USER

    conn = pymysql.connect(host="127.0.0.1", port=node.port, user=USER, password=PASSWORD, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION wsrep_sync_wait = {sync_wait}")
            started = time.perf_counter()
            for _ in range(count):
                cur.execute("SELECT 1 FROM mysql.user LIMIT 1")
                cur.fetchall()
            return (time.perf_counter() - started) / count
    finally:
        conn.close()


def _medians(node: DatabaseServer, count: int, rounds: int) -> dict[int, float]:
    """Median over `rounds` (alternating wsrep_sync_wait 0 and 1) of the mean point SELECT, in µs."""
    samples: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for sync_wait in (0, 1):
            samples[sync_wait].append(_select_latency(node, sync_wait, count) * 1e6)
    return {sync_wait: statistics.median(values) for sync_wait, values in samples.items()}


def sync_wait_cost(cluster: GaleraCluster, count: int = 500, rounds: int = 7) -> dict[str, float]:
    """Microseconds per point SELECT on node 1 with wsrep_sync_wait 0 and 1 (medians of alternating
    rounds), idle and while node 0 commits."""
    import pymysql

    from kinepy.testing.databases import PASSWORD, USER

    out = {f"idle, sync_wait={w}": us for w, us in _medians(cluster.nodes[1], count, rounds).items()}
    name = cluster.create_database()
    stop = threading.Event()

    def writes() -> None:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=cluster.nodes[0].port,
            user=USER,
            password=PASSWORD,
            database=name,
            autocommit=True,
        )
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, n BIGINT)")
            cur.execute("INSERT INTO t VALUES (1, 0)")
            while not stop.is_set():
                cur.execute("UPDATE t SET n = n + 1 WHERE id = 1")
        conn.close()

    writer = threading.Thread(target=writes, daemon=True)
    writer.start()
    time.sleep(0.5)
    try:
        busy = _medians(cluster.nodes[1], count, rounds)
        out |= {f"node 0 committing, sync_wait={w}": us for w, us in busy.items()}
    finally:
        stop.set()
        writer.join(timeout=10)
        cluster.drop_database(name)
    return out


def _urls(setup: str, single: DatabaseServer | None, cluster: GaleraCluster | None) -> list[str]:
    """The datastore endpoints of the kinepy processes of `setup`, on a fresh database."""
    if setup == "mariadb":
        assert single is not None
        return [single.url(single.create_database())]
    assert cluster is not None
    name = cluster.create_database()
    if setup == "galera-one-node":
        return [cluster.url(name, 0)] * 3
    local = "?galera_writer=local" if setup == "galera-local" else ""
    return [url + local for url in cluster.urls(name)]


def table(results: dict[str, dict[str, dict[str, Any]]], chosen: list[Workload]) -> str:
    setups = list(results)
    lines = ["| workload | metric | " + " | ".join(setups) + " |", "|---|---|" + "---|" * len(setups)]
    for workload in chosen:
        runs = [results[s].get(workload.name) for s in setups]
        rows: dict[str, Callable[[dict[str, Any]], str]] = {
            f"{workload.unit}/s": lambda r: f"{r['ops_per_s']:.0f}",
            "p50 ms": lambda r: f"{r['latencies_ms']['p50']:.1f}",
            "p99 ms": lambda r: f"{r['latencies_ms']['p99']:.1f}",
            "failed": lambda r: str(r["errors"]),
        }
        for metric, cell in rows.items():
            cells = [cell(r) if r else "-" for r in runs]
            lines.append(f"| {workload.name} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.galera", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    by_name = {w.name: w for w in workloads(SIZES["full"])}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in names]
    chosen = [
        Workload(
            w.name,
            w.kind,
            w.dataset,
            {**w.params, "seconds": args.seconds},
            w.description,
            w.unit,
        )
        for w in chosen
    ]
    setups = args.setups.split(",")
    extra: dict[str, Any] = {}
    single: DatabaseServer | None = None
    cluster: GaleraCluster | None = None
    try:
        if "mariadb" in setups:
            single = start_database_server("mariadb")
            log(f"MariaDB {single.version} started in {single.startup_seconds:.1f} s")
        if any(s.startswith("galera") for s in setups):
            cluster = start_galera_cluster()
            log(f"Galera cluster of {len(cluster.nodes)} started in {cluster.startup_seconds:.1f} s")
            extra["sync_wait_select_us"] = sync_wait_cost(cluster)
            log(f"causal reads: {extra['sync_wait_select_us']}")
        with contextlib.ExitStack() as stack:
            endpoints = {}
            for setup in setups:
                urls = _urls(setup, single, cluster)
                endpoints[setup] = stack.enter_context(kinepys(urls))
                log(f"{setup}: {len(urls)} kinepy on {endpoints[setup]}")
            results = run_interleaved(endpoints, chosen, args.repeats)
    finally:
        if single is not None:
            single.remove()
        if cluster is not None:
            cluster.remove()
    print(table(results, chosen))
    for what, micros in extra.get("sync_wait_select_us", {}).items():
        print(f"point SELECT on a Galera node, {what}: {micros:.0f} µs")
    if args.out:
        args.out.write_text(
            json.dumps({"results": results, "extra": extra, "seconds": args.seconds}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
