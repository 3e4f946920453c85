"""The suite's second driver: etcd's own load tool, ``benchmark`` from etcd v3.6.5's tools/benchmark.

    python -m benchmarks etcd-bench [--targets etcd-3.6.5,kine-sqlite,kinepy-sqlite] [--workloads all] \\
        [--size smoke|full] [--repeats N] [--out FILE.json]

A Go client (clientv3 over grpc-go) uses both cores the way a Go program does, so it is not the limit the
suite's Python load generator can be; the figures compare with etcd's own published ones. The workloads
are those of issue 12's table, with the tool's own flags (``argv`` below prints them in the JSON):

    put-64           put, 64 clients over 8 connections, 256 B values, a fresh random key each
    txn-put-64       txn-put (a Txn with one Put, no compare), 64 / 8, 256 B, keys 0..total-1
    put-1            put, 1 client, 256 B, a fresh random key each (latency-bound)
    range-1key-16    range of one key, linearizable, 16 clients / 4 connections
    count-only-10k   range --count-only over a prefix holding 10k keys of 1 KiB, 1 client
    watch-latency    100 watch streams (1 watcher each, 4 connections) on one key, 200 puts/s;
                     the tool measures from a put's reply to the event's arrival: p99 is the figure
    lease-keepalive  LeaseKeepAlive (a stream per call, as clientv3's KeepAliveOnce does), 16 / 4

``run`` returns the same result shape as ``python -m benchmarks.loadgen``, so the orchestrator measures
the server around it (CPU, RSS, compaction first) exactly as for its own load generator.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.gobuild import etcd_tools
from benchmarks.loadgen import prefix_end
from benchmarks.workloads import KIB, Dataset, Workload

DRIVER = "etcd-benchmark"
# What a server says when it does not do a request: kine's own words, and its SQL servers' when a key is not
# text (kine stores keys in text columns on PostgreSQL and MySQL; the tool writes binary keys).
_UNSUPPORTED_TEXTS = (
    "not implemented",
    "not supported",
    "unsupported",
    "invalid byte sequence for encoding",
    "illegal mix of collations",
)
_RANDOM_KEYS = 1 << 31  # put: a key space this large makes every key fresh


@cache
def binary() -> Path:
    return etcd_tools(lambda line: None) / "benchmark"


def argv(endpoint: str, kind: str, p: dict[str, Any]) -> list[str]:
    """The `benchmark` command line for workload `kind` with parameters `p`."""
    out = [str(binary()), f"--endpoints={endpoint}", f"--clients={p['clients']}", f"--conns={p['conns']}"]
    out += ["--precise", kind]
    if kind == "put":
        out += [f"--total={p['total']}", f"--val-size={p['value_size']}", f"--key-space-size={_RANDOM_KEYS}"]
    elif kind == "txn-put":
        out += [f"--total={p['total']}", f"--val-size={p['value_size']}", f"--key-space-size={p['total']}"]
    elif kind == "range":
        out += [p["key"], *([p["range_end"]] if p.get("range_end") else [])]
        out += [
            f"--total={p['total']}",
            "--consistency=l",
            *(["--count-only"] if p.get("count_only") else []),
        ]
    elif kind == "watch-latency":
        out += [f"--streams={p['streams']}", "--watchers-per-stream=1", f"--put-rate={p['rate']}"]
        out += [f"--put-total={p['total']}", f"--val-size={p['value_size']}"]
    elif kind == "lease-keepalive":
        out += [f"--total={p['total']}"]
    else:
        raise ValueError(f"unknown etcd benchmark workload {kind!r}")
    return out


def parse(text: str, section: str = "") -> dict[str, Any]:
    """The figures of one `benchmark` report (after the line `section`, when given)."""
    if section:  # up to the next section ("Put summary:", "Watch events summary:")
        text = re.split(r"\n\S[^\n]*summary:\n", text.split(section, 1)[1])[0] if section in text else ""

    def seconds(label: str) -> float:
        m = re.search(rf"^\s*{re.escape(label)}\s+([0-9.e+-]+) secs", text, re.M)
        return float(m.group(1)) if m else 0.0

    rps = re.search(r"^\s*Requests/sec:\s+([0-9.e+-]+)", text, re.M)
    percentiles = {
        float(m.group(1)): float(m.group(2))
        for m in re.finditer(r"^\s*([0-9.]+)% in ([0-9.e+-]+) secs", text, re.M)
    }
    errors = [(int(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^\s*\[(\d+)\]\t(.*)$", text, re.M)]
    total = seconds("Total:")
    ops_per_s = float(rps.group(1)) if rps else 0.0
    return {
        "ops": round(ops_per_s * total),
        "seconds": total,
        "ops_per_s": ops_per_s,
        "latencies_ms": {
            "p50": 1e3 * percentiles.get(50.0, 0.0),
            "p99": 1e3 * percentiles.get(99.0, 0.0),
            "max": 1e3 * seconds("Slowest:"),
        },
        "errors": sum(n for n, _ in errors),
        "first_error": errors[0][1][:500] if errors else "",
    }


def run(endpoint: str, kind: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `benchmark KIND` against `endpoint`; the result in `python -m benchmarks.loadgen`'s shape."""
    command = argv(endpoint, kind, params)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    section = "Watch events summary:" if kind == "watch-latency" else ""
    figures = parse(proc.stdout, section)
    said = (proc.stdout + proc.stderr).lower()
    unsupported = next((t for t in _UNSUPPORTED_TEXTS if t in said), None)
    if unsupported and (proc.returncode != 0 or figures["ops"] == 0 or figures["errors"]):
        first = figures["first_error"] or "\n".join(proc.stderr.strip().splitlines()[-1:])
        return {**figures, "unsupported": first[:500], "client_cpu_s": client_cpu, "extra": {}}
    if proc.returncode != 0 or (figures["ops"] == 0 and not figures["errors"]):
        raise RuntimeError(
            f"benchmark {kind} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    extra: dict[str, Any] = {"argv": " ".join(command[1:])}
    if kind == "watch-latency":
        extra["put_p99_ms"] = parse(proc.stdout, "Put summary:")["latencies_ms"]["p99"]
    return {
        **figures,
        "unsupported": None,
        "client_cpu_s": client_cpu,
        "extra": extra,
        "client_loop": "go",
        "client_cores": os.cpu_count() or 1,
    }


# --------------------------------------------------------------------------------------------------
# The workloads, at two sizes: totals per run (the tool counts requests, not seconds).

TOTALS = {
    "smoke": {"put-64": 400, "txn-put-64": 400, "put-1": 100, "range": 400, "count": 100, "watch": 200},
    "full": {
        "put-64": 20_000,
        "txn-put-64": 20_000,
        "put-1": 3000,
        "range": 20_000,
        "count": 2000,
        "watch": 1000,
    },
}
COUNT_KEYS = {"smoke": 1000, "full": 10_000}
RANGE_KEY = "/registry/bench/range/00000000"  # the one key the preload writes (prefix + %08d)
COUNT_PREFIX = "/registry/bench/count/"


def workloads(size: str) -> list[Workload]:
    """Issue 12's table, at `size` (smoke or full)."""
    n, keys = TOTALS[size], COUNT_KEYS[size]
    empty = Dataset("empty")
    reads = Dataset("reads", (("/registry/bench/range/", 1, 256, 1), (COUNT_PREFIX, keys, KIB, 1)))
    lease_total = n["put-64"] // 2

    def w(name: str, kind: str, dataset: Dataset, description: str, unit: str = "ops", **p: Any) -> Workload:
        return Workload(name, kind, dataset, p, description, unit, driver=DRIVER)

    return [
        w(
            "put-64",
            "put",
            empty,
            "put, 64 clients / 8 conns, 256 B",
            clients=64,
            conns=8,
            total=n["put-64"],
            value_size=256,
        ),
        w(
            "txn-put-64",
            "txn-put",
            empty,
            "txn-put, 64 / 8, 256 B",
            clients=64,
            conns=8,
            total=n["txn-put-64"],
            value_size=256,
        ),
        w(
            "put-1",
            "put",
            empty,
            "put, 1 client, 256 B",
            clients=1,
            conns=1,
            total=n["put-1"],
            value_size=256,
        ),
        w(
            "range-1key-16",
            "range",
            reads,
            "range one key, linearizable, 16 / 4",
            clients=16,
            conns=4,
            total=n["range"],
            key=RANGE_KEY,
        ),
        w(
            f"count-only-{keys // 1000}k",
            "range",
            reads,
            f"range --count-only over {keys} keys, 1 client",
            clients=1,
            conns=1,
            total=n["count"],
            key=COUNT_PREFIX,
            range_end=prefix_end(COUNT_PREFIX.encode()).decode(),
            count_only=True,
        ),
        w(
            "watch-latency",
            "watch-latency",
            empty,
            "watch-latency: 100 streams on 4 conns, 200 puts/s; p99 put reply → event",
            "events",
            clients=4,
            conns=4,
            streams=100,
            rate=200,
            total=n["watch"],
            value_size=256,
        ),
        w(
            "lease-keepalive",
            "lease-keepalive",
            empty,
            "lease-keepalive, 16 / 4",
            clients=16,
            conns=4,
            total=lease_total,
        ),
    ]


def select(size: str, names: str) -> list[Workload]:
    """Workloads by comma-separated `names` ("all" = every one)."""
    every = workloads(size)
    if names == "all":
        return every
    by_name = {w.name: w for w in every}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]
