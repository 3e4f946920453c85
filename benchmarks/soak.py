"""The soak: hours of kube-like load on kinepy (SQLite); does anything grow without bound?

    python -m benchmarks soak --minutes 60 [--sample-seconds 60] [--out FILE.json]

A fresh kinepy is preloaded with `keys` objects; then one load process (``python -m benchmarks.soak load``,
built on benchmarks/loadgen.py) runs, for the whole time:

- `concurrency` workers of a kube-apiserver-like mix: gets, list pages, update txns on the objects, and
  Event creations on keys attached to short leases (`event_ttl`, one lease per worker reused for half its
  life), which kinepy expires and deletes, so the key count stays bounded as in a cluster;
- `watchers` Watch streams on the whole prefix, reading every event;
- `leases` long-lived leases refreshed every few seconds on one LeaseKeepAlive stream;
- a compactor that every `compact_interval` seconds compacts to the revision it saw the time before, as
  kube-apiserver does every 5 minutes.

Every `--sample-seconds` the soak samples the server's RSS, open file descriptors and threads
(/proc/PID), the history rows (`kv_log`, read-only) and the database's size (the file and its WAL). At the
end each series is fitted with a least-squares line over the samples after the warm-up (the first fifth
of the run): a series **grows without bound** when the 95% confidence interval of its slope lies above
zero *and* the fitted growth over the run is material (over 10% of its mean, or, for descriptors and
threads, over 5). Exit status: 0 nothing grows, 1 something grows, 2 the load failed or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.drive import loadgen
from benchmarks.loadgen import Client, Recorder, create_txn, prefix_end, run_closed_loop, update_txn
from benchmarks.targets import REPO_ROOT, DatabaseServers, Target, make_target, rss_kib
from kinepy.proto import rpc_pb2

PREFIX = "/registry/soak/"
METRICS = ("rss_kib", "fds", "threads", "history_rows", "db_bytes")
RELATIVE_TOLERANCE = 0.10  # growth over the run, as a fraction of the series' mean, that counts
ABSOLUTE_TOLERANCE = {"fds": 5.0, "threads": 5.0}  # counts: a few more is noise, not a leak
WARMUP_FRACTION = 0.2

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; the normal's 1.96 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]  # fmt: skip


def log(message: str) -> None:
    sys.stderr.write(f"[soak {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------------
# The verdict.


@dataclass(frozen=True)
class Trend:
    """A least-squares line through (seconds, value) samples: slope per hour with its 95% interval."""

    samples: int
    mean: float
    slope_per_hour: float
    low_per_hour: float
    high_per_hour: float
    growth_over_run: float  # fitted slope x the span of the samples fitted

    def grows(self, metric: str) -> bool:
        tolerance = max(RELATIVE_TOLERANCE * abs(self.mean), ABSOLUTE_TOLERANCE.get(metric, 0.0))
        return self.low_per_hour > 0 and self.growth_over_run > tolerance


def t975(dof: int) -> float:
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def trend(points: list[tuple[float, float]]) -> Trend | None:
    """The fitted line, or None with fewer than 3 points (no interval)."""
    n = len(points)
    if n < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    residuals = [y - (my + slope * (x - mx)) for x, y in points]
    se = math.sqrt(sum(r * r for r in residuals) / (n - 2) / sxx)
    half = t975(n - 2) * se
    return Trend(
        samples=n,
        mean=my,
        slope_per_hour=slope * 3600,
        low_per_hour=(slope - half) * 3600,
        high_per_hour=(slope + half) * 3600,
        growth_over_run=slope * (xs[-1] - xs[0]),
    )


def verdict(samples: list[dict[str, float]], seconds: float) -> dict[str, Any]:
    """Per metric: its trend after the warm-up and whether it grows without bound."""
    warm = [s for s in samples if s["t"] >= WARMUP_FRACTION * seconds]
    out: dict[str, Any] = {}
    for metric in METRICS:
        fitted = trend([(s["t"], s[metric]) for s in warm])
        if fitted is None:
            out[metric] = {"samples": len(warm), "grows": False, "note": "too few samples after warm-up"}
        else:
            out[metric] = {**fitted.__dict__, "grows": fitted.grows(metric)}
    return out


# --------------------------------------------------------------------------------------------------
# Sampling the server.


def sample(target: Target, started: float) -> dict[str, float]:
    pid = target.pid
    assert target.workdir is not None
    db = target.workdir / "state.db"
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return {
        "t": time.monotonic() - started,
        "rss_kib": float(rss_kib(pid)),
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
        "threads": float(threads),
        "history_rows": float(history_rows(db)),
        "db_bytes": float(sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())),
    }


def history_rows(db: Path) -> int:
    """Rows of kinepy's history table, counted through a second connection to the SQLite file.

    An ordinary connection, told to write nothing: a read-only one (`?mode=ro`) made the server die
    of SIGBUS in SQLite's shared-memory index within seconds while it took writes (seen twice in soak
    runs, and reproduced in isolation; ordinary connections did not)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute("PRAGMA query_only = ON")
        (rows,) = conn.execute("SELECT count(*) FROM kv_log").fetchone()
    return int(rows)


# --------------------------------------------------------------------------------------------------
# The load (in its own process: python -m benchmarks.soak load SPEC).


async def load(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    prefix = p["prefix"].encode()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_watcher(c, i, prefix, stop, rec)) for i in range(p["watchers"])]
    tasks.append(asyncio.create_task(_keepalives(c, p, stop, rec)))
    tasks.append(asyncio.create_task(_compactor(c, p, stop, rec)))
    try:
        return await _mix(c, p, rec)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _mix(c: Client, p: dict[str, Any], rec: Recorder) -> float:
    prefix, value = p["prefix"].encode(), os.urandom(p["value_size"])
    objects = prefix + b"objects/"
    resp = await c.kv().Range(
        rpc_pb2.RangeRequest(key=objects, range_end=prefix_end(objects), keys_only=True)
    )
    known = {kv.key: kv.mod_revision for kv in resp.kvs}
    keys = sorted(known)
    if not keys:
        raise RuntimeError(f"no keys under {objects!r}: not preloaded")
    rng = random.Random(3)
    event_leases: dict[int, tuple[int, float]] = {}  # worker -> (lease, granted at)

    async def event_lease(w: int) -> int:
        lease, granted = event_leases.get(w, (0, 0.0))
        if time.monotonic() - granted > p["event_ttl"] / 2:
            reply = await c.lease(w).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=p["event_ttl"]))
            lease, granted = reply.ID, time.monotonic()
            event_leases[w] = (lease, granted)
        return lease

    async def op(w: int, n: int) -> None:
        kv, r = c.kv(w), rng.random()
        if r < 0.4:
            await kv.Range(rpc_pb2.RangeRequest(key=rng.choice(keys)))
            rec.count("get")
        elif r < 0.5:
            await kv.Range(rpc_pb2.RangeRequest(key=objects, range_end=prefix_end(objects), limit=500))
            rec.count("list")
        elif r < 0.85:
            key = rng.choice(keys)
            reply = await kv.Txn(update_txn(key, value, known[key]))
            if reply.succeeded:
                known[key] = reply.header.revision
            else:
                kvs = reply.responses[0].response_range.kvs
                known[key] = kvs[0].mod_revision if kvs else 0
            rec.count("update")
        else:
            key = b"%sevents/%04d/%010d" % (prefix, w, n)
            txn = create_txn(key, value[:256])
            txn.success[0].request_put.lease = await event_lease(w)
            await kv.Txn(txn)
            rec.count("event")

    return await run_closed_loop(p["concurrency"], p["seconds"], op, rec)


async def _watcher(c: Client, i: int, prefix: bytes, stop: asyncio.Event, rec: Recorder) -> None:
    create = rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))

    async def requests() -> Any:
        yield rpc_pb2.WatchRequest(create_request=create)
        await stop.wait()

    call = c.watch(i).Watch(requests())
    reader = asyncio.ensure_future(_read_events(call, rec))
    await stop.wait()
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await reader


async def _read_events(call: Any, rec: Recorder) -> None:
    try:
        async for response in call:
            if response.canceled:
                rec.error(RuntimeError(f"watch canceled: {response.cancel_reason}"))
                return
            rec.count("watch_events", len(response.events))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            rec.error(exc)


async def _keepalives(c: Client, p: dict[str, Any], stop: asyncio.Event, rec: Recorder) -> None:
    lease = c.lease()
    ids = [(await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10))).ID for _ in range(p["leases"])]
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def requests() -> Any:
        while (lease_id := await queue.get()) is not None:
            yield rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)

    call = lease.LeaseKeepAlive(requests())
    try:
        while not stop.is_set():
            for lease_id in ids:
                queue.put_nowait(lease_id)
            for _ in ids:
                reply = await call.read()
                if reply is grpc.aio.EOF or reply.TTL <= 0:
                    rec.error(RuntimeError(f"keepalive failed: {reply}"))
                    return
                rec.count("keepalives")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 3)
    except grpc.aio.AioRpcError as exc:
        rec.error(exc)
    finally:
        queue.put_nowait(None)
        call.cancel()


async def _compactor(c: Client, p: dict[str, Any], stop: asyncio.Event, rec: Recorder) -> None:
    kv, previous = c.kv(), 0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), p["compact_interval"])
        if stop.is_set():
            return
        current = (await kv.Range(rpc_pb2.RangeRequest(key=b"\0"))).header.revision
        if previous:
            try:
                await kv.Compact(rpc_pb2.CompactionRequest(revision=previous, physical=True), timeout=600)
                rec.count("compactions")
            except grpc.aio.AioRpcError as exc:
                if "compacted" not in (exc.details() or ""):
                    rec.error(exc)
        previous = current


def _load_main(spec_json: str) -> None:
    spec = json.loads(spec_json)

    async def run() -> dict[str, Any]:
        rec = Recorder()
        async with Client(spec["endpoint"], channels=4) as client:
            seconds = await load(client, spec["params"], rec)
        return {"seconds": seconds, "ops": len(rec.latencies), "errors": rec.errors,
                "first_error": rec.first_error, "extra": rec.extra}  # fmt: skip

    sys.stdout.write(json.dumps(asyncio.run(run())) + "\n")


# --------------------------------------------------------------------------------------------------
# The orchestrator.


def parameters(seconds: float) -> dict[str, Any]:
    return {
        "prefix": PREFIX,
        "seconds": seconds,
        "value_size": 1024,
        "concurrency": 16,
        "watchers": 20,
        "leases": 10,
        "event_ttl": 30,
        # kube-apiserver's 5 minutes; a short soak compacts more often so that it sees several cycles.
        "compact_interval": min(300.0, max(5.0, seconds / 8)),
    }


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds if args.seconds else args.minutes * 60
    interval = args.sample_seconds
    databases = DatabaseServers()
    target = make_target("kinepy-sqlite", databases, log)
    target.start()
    result: dict[str, Any] = {"seconds": seconds, "sample_seconds": interval, "samples": []}
    try:
        log(f"kinepy on {target.endpoint}; preloading")
        loadgen(
            target.endpoint,
            "preload",
            {
                "prefix": PREFIX + "objects/",
                "keys": args.keys,
                "value_size": 1024,
                "batch": 100,
                "channels": 4,
            },
            timeout=3600,
        )
        params = parameters(seconds)
        result["params"] = params
        spec = json.dumps({"endpoint": target.endpoint, "params": params})
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        started = time.monotonic()
        load_proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak", "load", spec],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        log(f"load running for {seconds:.0f} s, a sample every {interval:.0f} s")
        samples: list[dict[str, float]] = result["samples"]
        while load_proc.poll() is None:
            if target.proc is None or target.proc.poll() is not None:
                break
            samples.append(sample(target, started))
            log(" ".join(f"{k}={v:.0f}" for k, v in samples[-1].items()))
            deadline = started + len(samples) * interval
            while load_proc.poll() is None and time.monotonic() < deadline:
                time.sleep(min(1.0, interval))
        stdout, _ = load_proc.communicate(timeout=seconds + 600)
        alive = target.proc is not None and target.proc.poll() is None
        result["server_alive"] = alive
        if not alive and target.proc is not None:
            result["server_exit_code"] = target.proc.returncode
            log(f"the server exited with {target.proc.returncode}:\n{target.log_tail()}")
        result["load"] = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
        result["verdict"] = verdict(samples, seconds)
    finally:
        target.stop()
        databases.close()
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {args.out}")
    load = result.get("load")
    if not result.get("server_alive") or load is None or load["errors"]:
        return 2
    return 1 if any(v["grows"] for v in result["verdict"].values()) else 0


def table(result: dict[str, Any]) -> str:
    lines = [f"soak: {result['seconds']:.0f} s, {len(result['samples'])} samples"]
    load = result.get("load") or {}
    if load:
        lines.append(f"load: {load['ops']} operations, {load['errors']} errors, {json.dumps(load['extra'])}")
        if load["first_error"]:
            lines.append(f"first error: {load['first_error']}")
    lines.append(f"server alive at the end: {result.get('server_alive')}")
    lines.append(f"{'metric':<14}{'first':>14}{'last':>14}{'slope/h (95% interval)':>40}  verdict")
    for metric, v in result.get("verdict", {}).items():
        first = result["samples"][0][metric] if result["samples"] else float("nan")
        last = result["samples"][-1][metric] if result["samples"] else float("nan")
        if "slope_per_hour" in v:
            slope = f"{v['slope_per_hour']:.4g} ({v['low_per_hour']:.4g} .. {v['high_per_hour']:.4g})"
        else:
            slope = v.get("note", "")
        lines.append(
            f"{metric:<14}{first:>14.0f}{last:>14.0f}{slope:>40}  {'GROWS' if v['grows'] else 'bounded'}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the load runs (default 60)")
    parser.add_argument("--seconds", type=float, default=0.0, help="the same in seconds, for tests")
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="between samples (default 60)")
    parser.add_argument("--keys", type=int, default=5000, help="objects preloaded (default 5000)")
    parser.add_argument("--out", default="", help="write the samples and the verdict to this JSON file")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "load":
        _load_main(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(prog="python -m benchmarks soak")
        add_arguments(parser)
        sys.exit(run(parser.parse_args()))
