"""Where kinepy on SQLite would stop scaling with cores: the model's inputs, measured, and the model.

    python -m benchmarks.scaling [--total 20000] [--out FILE.json]

What one more worker costs and what it adds, measured here with etcd's own `benchmark` (Go) over ONE
connection to `kinepy --workers 2` on a fresh SQLite file: the kernel keeps a connection on the worker
its SO_REUSEPORT hash chose, so one worker serves every request and the other only follows the
first one's commits. From /proc, per worker:

- `c_put`: the serving worker's CPU per put (64 clients on the connection, so batches form);
- `c_follow`: the other worker's CPU per put it follows (reads it back from `kv_log`, publishes it);
- `c_read`: the serving worker's CPU per single-key linearizable Range (16 clients);
- `c_keepalive`: its CPU per LeaseKeepAlive (16 clients; renewals are held in memory).

Then, in this process and without gRPC, the writer's ceiling: a `Store` on a fresh SQLite file with
`--in-flight` puts outstanding; the time inside the write transaction (BEGIN IMMEDIATE … COMMIT, what
the workers serialise on) per batch and per put.

The model, for N workers on N cores with the clients elsewhere: reads and keep-alives share nothing
between workers, so N / c. A write is served by one worker and followed by the N - 1 others, so a
worker's share of W writes/s costs (W / N)·c_put + W·(N - 1)/N·c_follow of its core, and the
transactions of all workers run one at a time: W ≤ min(N / (c_put + (N - 1)·c_follow), 1 / t_lock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks import etcd_tool
from benchmarks.targets import Kinepy, _stat, _with_descendants
from kinepy.proto import rpc_pb2, rpc_pb2_grpc

CORES = (1, 2, 8, 16, 64)
READ_KEY = "/registry/scaling/read"


def _cpu(pid: int) -> float:
    return _stat(pid)[1]


def _bench(endpoint: str, kind: str, params: dict[str, Any], workers: list[int]) -> dict[str, Any]:
    """Run etcd's tool once; its result plus each worker's CPU seconds over the run."""
    before = [_cpu(pid) for pid in workers]
    result = etcd_tool.run(endpoint, kind, params, timeout=600)
    cpu = [_cpu(pid) - b for pid, b in zip(workers, before, strict=True)]
    if result.get("unsupported") or result["errors"]:
        raise RuntimeError(f"{kind}: {result.get('unsupported') or result['first_error']}")
    return {**result, "worker_cpu_s": cpu}


def measure_workers(total: int) -> dict[str, float]:
    """c_put, c_follow, c_read, c_keepalive in seconds per request (see the module's docstring)."""
    server = Kinepy("kinepy-sqlite-w2", extra_args=["--workers", "2"])
    server.start()
    try:
        workers = _with_descendants(server.pid)[1:]
        if len(workers) != 2:
            raise RuntimeError(f"expected 2 workers under the supervisor, found {workers}")
        with grpc.insecure_channel(server.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            kv.Put(rpc_pb2.PutRequest(key=READ_KEY.encode(), value=b"v" * 256), timeout=10)
        one = {"clients": 64, "conns": 1, "total": total, "value_size": 256}
        # each run is a new connection, so either worker may serve it: the busier one did
        puts = _bench(server.endpoint, "put", one, workers)
        serving, following = sorted(puts["worker_cpu_s"], reverse=True)
        reads = _bench(server.endpoint, "range", {**one, "clients": 16, "key": READ_KEY}, workers)
        leases = _bench(server.endpoint, "lease-keepalive", {**one, "clients": 16}, workers)
        figures = {
            "c_put": serving / puts["ops"],
            "c_follow": following / puts["ops"],
            "c_read": max(reads["worker_cpu_s"]) / reads["ops"],
            "c_keepalive": max(leases["worker_cpu_s"]) / leases["ops"],
            "puts_per_s_one_worker": puts["ops_per_s"],
            "reads_per_s_one_worker": reads["ops_per_s"],
            "keepalives_per_s_one_worker": leases["ops_per_s"],
        }
        for name, value in figures.items():
            shown = f"{value * 1e6:9.1f} µs" if name.startswith("c_") else f"{value:9.0f}"
            print(f"  {name:28} {shown}")
        return figures
    finally:
        server.stop()


async def _writer_ceiling(in_flight: int, seconds: float) -> dict[str, float]:
    from kinepy.backends.factory import create_backend
    from kinepy.backends.sql.sqlite import SQLiteBackend
    from kinepy.config import Config
    from kinepy.endpoint import backend_spec
    from kinepy.specs import BackendSettings
    from kinepy.store.store import Store
    from kinepy.types import PutRequest

    with tempfile.TemporaryDirectory(prefix="kinepy-scaling-") as directory:
        backend = create_backend(
            backend_spec(Config(datastore_endpoint=f"sqlite://{directory}/state.db")), BackendSettings()
        )
        assert isinstance(backend, SQLiteBackend)
        inner = backend._write
        locked = [0.0, 0]  # seconds inside BEGIN IMMEDIATE … COMMIT, batches

        def timed(steps: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(steps)
            finally:
                locked[0] += time.perf_counter() - started
                locked[1] += 1

        backend._write = timed  # type: ignore[method-assign]
        await backend.start()
        store = Store(backend)
        await store.start()
        try:
            puts = 0
            deadline = time.monotonic() + seconds
            value = b"v" * 256

            async def client(number: int) -> None:
                nonlocal puts
                i = 0
                while time.monotonic() < deadline:
                    await store.put(PutRequest(key=b"/registry/scaling/%d/%d" % (number, i), value=value))
                    i += 1
                    puts += 1

            started = time.perf_counter()
            await asyncio.gather(*(client(n) for n in range(in_flight)))
            wall = time.perf_counter() - started
        finally:
            await store.aclose()
            await backend.aclose()
    figures = {
        "puts_per_s_in_process": puts / wall,
        "batches": float(locked[1]),
        "puts_per_batch": puts / max(1, locked[1]),
        "t_lock_per_put": locked[0] / max(1, puts),
        "lock_busy_share": locked[0] / wall,
    }
    print(
        f"  in process, {in_flight} in flight: {figures['puts_per_s_in_process']:.0f} puts/s, "
        f"{figures['puts_per_batch']:.0f} puts per batch, {1e6 * figures['t_lock_per_put']:.1f} µs "
        f"per put inside the write transaction (busy {100 * figures['lock_busy_share']:.0f} % of the time)"
    )
    return figures


def model(figures: dict[str, float]) -> list[dict[str, float]]:
    """Throughput per workload for each number of cores in CORES (one worker per core)."""
    rows = []
    for n in CORES:
        cpu_bound = n / (figures["c_put"] + (n - 1) * figures["c_follow"])
        rows.append(
            {
                "cores": n,
                "reads_per_s": n / figures["c_read"],
                "keepalives_per_s": n / figures["c_keepalive"],
                "puts_per_s_cpu": cpu_bound,
                "puts_per_s_lock": 1 / figures["t_lock_per_put"],
                "puts_per_s": min(cpu_bound, 1 / figures["t_lock_per_put"]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=20000, help="requests per etcd benchmark run")
    parser.add_argument("--in-flight", type=int, default=1024, help="puts outstanding in the writer test")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the writer test")
    parser.add_argument("--out", default="", help="write the figures and the model here (JSON)")
    args = parser.parse_args()
    print("per request, kinepy --workers 2 on SQLite, one connection (etcd benchmark):")
    figures = measure_workers(args.total)
    print("the writer, in process:")
    figures |= asyncio.run(_writer_ceiling(args.in_flight, args.seconds))
    rows = model(figures)
    print("\n| workers = cores | 1-key range/s | keep-alive/s | put/s, CPU | put/s, write lock | put/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['cores']:.0f} | {row['reads_per_s']:,.0f} | {row['keepalives_per_s']:,.0f} | "
            f"{row['puts_per_s_cpu']:,.0f} | {row['puts_per_s_lock']:,.0f} | {row['puts_per_s']:,.0f} |"
        )
    limit = 1 / figures["c_follow"]
    print(f"\nputs/s with unbounded cores, CPU bound: 1 / c_follow = {limit:,.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"figures": figures, "model": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
