"""Failover time of kinepy on a PostgreSQL primary with a streaming standby.

    python -m benchmarks failover [--repeats 3] [--modes synchronous,asynchronous] [--writers 4] \\
        [--load-seconds 3] [--out FILE.json]

Each repeat starts a fresh primary and standby (`start_replicated_postgres` of kinepy/testing/databases.py:
pg_basebackup -R, loopback, fsync on; `synchronous`: `synchronous_standby_names = '*'` on the primary),
kinepy on the multi-host endpoint (`postgres://…@primary,standby/db?target_session_attrs=read-write`,
benchmarks/targets.py's kinepy target) and `--writers` threads putting keys back to back. After
`--load-seconds` the primary is killed (SIGKILL, every process of it) and the standby promoted at once
(`pg_promote()`). The failover time is from the last write acknowledged before the kill to the first
acknowledged of those sent after it: what a client sees, detection aside (the kill and the promotion
are immediate here; in production add the time the failover manager takes to decide). Afterwards every
acknowledged write is looked up: with a synchronous standby none may be missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.targets import Kinepy

PREFIX, PREFIX_END = b"/failover/", b"/failover0"
CALL_TIMEOUT = 5.0
RECOVERY_LIMIT = 120.0


def log(message: str) -> None:
    sys.stderr.write(f"[failover {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


@dataclass
class KinepyOnReplicas(Kinepy):
    """kinepy on a fresh database of a primary and its standby, through the multi-host endpoint."""

    replicas: Any = None  # a kinepy.testing.databases.ReplicatedPostgres

    def prepare(self) -> None:
        self._db_name = self.replicas.primary.create_database()

    def datastore(self) -> str:
        return str(self.replicas.url(self._db_name))


@dataclass
class Writes:
    """(sent, acknowledged, key, value, revision) of every acknowledged put; failures counted."""

    acks: list[tuple[float, float, bytes, bytes, int]] = field(default_factory=list)
    failed: int = 0
    first_failure: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def writer(self, endpoint: str, n: int) -> None:
        import grpc

        from kinepy.proto import rpc_pb2, rpc_pb2_grpc

        with grpc.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            i = 0
            while not self.stop.is_set():
                key, value = PREFIX + b"%d/%08d" % (n, i), b"v%d.%d" % (n, i)
                i += 1
                sent = time.monotonic()
                try:
                    resp = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT)
                except grpc.RpcError as exc:
                    self.failed += 1
                    self.first_failure = self.first_failure or f"{exc.code().name}: {exc.details()}"
                    time.sleep(0.01)
                    continue
                self.acks.append((sent, time.monotonic(), key, value, int(resp.header.revision)))

    def sent_after(self, moment: float) -> list[tuple[float, float, bytes, bytes, int]]:
        return [ack for ack in self.acks if ack[0] > moment]


def _missing(endpoint: str, acks: list[tuple[float, float, bytes, bytes, int]]) -> int:
    """How many acknowledged writes are not there, at their revision, with their value."""
    import grpc

    from kinepy.proto import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        resp = kv.Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=60)
    stored = {item.key: (item.value, int(item.mod_revision)) for item in resp.kvs}
    return sum(1 for _, _, key, value, revision in acks if stored.get(key) != (value, revision))


def one_failover(synchronous: bool, writers: int, load_seconds: float) -> dict[str, Any]:
    from kinepy.testing.databases import start_replicated_postgres

    replicas = start_replicated_postgres(synchronous=synchronous)
    target = KinepyOnReplicas("kinepy-postgres-replicas", backend="postgres", replicas=replicas)
    writes = Writes()
    try:
        target.start()
        threads = [
            threading.Thread(target=writes.writer, args=(target.endpoint, n), daemon=True)
            for n in range(writers)
        ]
        for thread in threads:
            thread.start()
        time.sleep(load_seconds)
        promotion = replicas.fail_over()
        killed = replicas.killed_at
        deadline = time.monotonic() + RECOVERY_LIMIT
        while not writes.sent_after(killed) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        writes.stop.set()
        for thread in threads:
            thread.join(timeout=2 * CALL_TIMEOUT)
        after = writes.sent_after(killed)
        before = [ack[1] for ack in writes.acks if ack[1] < killed]
        result = {
            "synchronous": synchronous,
            "failover_seconds": min(ack[1] for ack in after) - max(before) if after and before else None,
            "promotion_seconds": promotion,
            "acknowledged": len(writes.acks),
            "acknowledged_before_kill": len(before),
            "failed": writes.failed,
            "first_failure": writes.first_failure,
            "missing": _missing(target.endpoint, writes.acks),
            "lost_revisions_logged": "the datastore lost revisions" in target.log_tail(),
        }
    finally:
        writes.stop.set()
        target.stop()
        replicas.remove()
    return result


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| standby | runs | failover (median) | min … max | promotion (median) | the rest (median) | "
        "writes failed | acknowledged writes missing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for synchronous in (True, False):
        mine = [r for r in runs if r["synchronous"] == synchronous and r["failover_seconds"] is not None]
        if not mine:
            continue
        times = [r["failover_seconds"] for r in mine]
        lines.append(
            f"| {'synchronous' if synchronous else 'asynchronous'} | {len(mine)} | "
            f"{statistics.median(times):.2f} s | {min(times):.2f} … {max(times):.2f} s | "
            f"{statistics.median(r['promotion_seconds'] for r in mine):.2f} s | "
            f"{statistics.median(r['failover_seconds'] - r['promotion_seconds'] for r in mine):.2f} s | "
            f"{sum(r['failed'] for r in mine)} | {sum(r['missing'] for r in mine)} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"synchronous", "asynchronous"}
    if unknown:
        log(f"unknown modes {sorted(unknown)}: synchronous, asynchronous")
        return 2
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for mode in modes:
            result = one_failover(mode == "synchronous", args.writers, args.load_seconds)
            runs.append(result)
            log(f"{mode} #{repeat + 1}: {json.dumps(result)}")
    print(table(runs))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "args": vars(args)}, indent=1) + "\n")
        log(f"wrote {args.out}")
    lost = sum(r["missing"] for r in runs if r["synchronous"])
    return 1 if lost else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="failovers per mode (default 3)")
    parser.add_argument(
        "--modes", default="synchronous,asynchronous", help="standby modes, comma-separated (default: both)"
    )
    parser.add_argument("--writers", type=int, default=4, help="threads putting keys (default 4)")
    parser.add_argument("--load-seconds", type=float, default=3.0, help="of load before the kill (default 3)")
    parser.add_argument("--out", default="", help="write every run to this JSON file")
