"""kinepy's benchmark suite: kinepy, a real etcd and kine side by side, in one run.

    python -m benchmarks run [--targets kinepy-sqlite,etcd,kine-sqlite] [--workloads all] \\
        [--size smoke|full|scale] [--repeats N] [--out FILE.json] [--chart FILE.png]
    python -m benchmarks list [--size full]          the workloads and what they do
    python -m benchmarks report FILE.json [--chart FILE.png]   reprint a table, redraw a chart
    python -m benchmarks kube [--targets ...] [--size smoke|full]   kube-apiserver end to end (kube.py)
    python -m benchmarks soak [--minutes 60]         hours of mixed load; fails if anything grows (soak.py)
    python -m benchmarks etcd-bench [--targets etcd-3.6.5,kine-sqlite,kinepy-sqlite] [--workloads all] \\
        [--size smoke|full]                          the same, driven by etcd's own `benchmark` (etcd_tool.py)
    python -m benchmarks failover [--repeats 3]      PostgreSQL primary killed, standby promoted (failover.py)

For each dataset (see workloads.py) every target is started fresh and preloaded; then each workload runs
`repeats` times, the targets interleaved (the order rotates each repeat) so a noisy neighbour hits them
all alike. Before each run the target is compacted to its current revision, as kube-apiserver does every
few minutes. A run is one `python -m benchmarks.loadgen` process; around it the orchestrator reads the
server's CPU (/proc/PID/stat, the server's whole process tree plus its database server's) and samples its
RSS (VmHWM after resetting it, and VmRSS every 50 ms). The medians over the repeats go into the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import etcd_tool, failover, kube, report, soak
from benchmarks.drive import loadgen, preload
from benchmarks.meta import machine, summarize, versions
from benchmarks.targets import (
    TARGETS,
    DatabaseServers,
    Target,
    TargetUnavailable,
    check_target,
    make_target,
    reset_peak_rss,
    rss_kib,
    tree_cpu_seconds,
)
from benchmarks.workloads import SIZES, Workload, select

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_BOUND = 0.85  # client CPU / wall time per core it can use above which a run is flagged: the client
# was the limit
DRIVERS = {"loadgen": loadgen, etcd_tool.DRIVER: etcd_tool.run}


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def compact(target: Target) -> tuple[int, float]:
    """Compact `target` to its current revision (physical); returns (revision, seconds). A target that
    already compacted there answers 'compacted', which is fine."""
    import grpc

    from kinepy.proto import rpc_pb2, rpc_pb2_grpc

    started = time.perf_counter()
    with grpc.insecure_channel(target.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        revision = kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=60).header.revision
        try:
            kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=600)
        except grpc.RpcError as exc:
            if "compacted" not in (exc.details() or ""):
                raise
    return revision, time.perf_counter() - started


class RssSampler(threading.Thread):
    """Samples VmRSS of `pid` every 50 ms until `stop()`; `peak_kib` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.peak_kib, self._stop_event = pid, rss_kib(pid), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kib


def measure(target: Target, workload: Workload, repeat: int) -> dict[str, Any]:
    """One measured run of `workload` on `target`."""
    row: dict[str, Any] = {"workload": workload.name, "target": target.name, "repeat": repeat}
    if workload.kind in target.unsupported:
        return row | {"status": "unsupported", "reason": target.unsupported[workload.kind]}
    if workload.precompact:
        row["compacted_at"], row["compact_seconds"] = compact(target)
    params = dict(workload.params)
    params.setdefault("prefix", f"/registry/bench/{workload.name}/r{repeat}/")
    cpu0 = tree_cpu_seconds(target.pid)
    db0 = tree_cpu_seconds(target.db_pid) if target.db_pid else 0.0
    hwm_reset = reset_peak_rss(target.pid)
    sampler = RssSampler(target.pid)
    sampler.start()
    try:
        result = DRIVERS[workload.driver](target.endpoint, workload.kind, params, workload.timeout)
    finally:
        peak_sampled = sampler.stop()
    server_cpu = tree_cpu_seconds(target.pid) - cpu0
    db_cpu = (tree_cpu_seconds(target.db_pid) - db0) if target.db_pid else 0.0
    peak = max(peak_sampled, rss_kib(target.pid, "VmHWM") if hwm_reset else 0)
    if result["unsupported"]:
        return row | {"status": "unsupported", "reason": result["unsupported"]}
    ops, seconds = result["ops"], result["seconds"]
    client_util = result["client_cpu_s"] / seconds if seconds else 0.0
    client_cores = result.get("client_cores", 1)
    row |= {
        "status": "error" if result["errors"] else "ok",
        "ops": ops,
        "seconds": seconds,
        "ops_per_s": result["ops_per_s"],
        "p50_ms": result["latencies_ms"]["p50"],
        "p99_ms": result["latencies_ms"]["p99"],
        "max_ms": result["latencies_ms"]["max"],
        "server_cpu_s": server_cpu + db_cpu,
        "db_cpu_s": db_cpu,
        "server_cpu_s_per_1k": (server_cpu + db_cpu) / ops * 1000 if ops else None,
        "server_peak_rss_mib": peak / 1024,
        "client_cpu_s": result["client_cpu_s"],
        "client_cpu_util": client_util,
        "client_bound": client_util > CLIENT_BOUND * client_cores,
        "errors": result["errors"],
        "first_error": result["first_error"],
        "extra": result["extra"],
        "client_loop": result.get("client_loop", ""),
    }
    return row


def run(args: argparse.Namespace) -> int:
    if args.command == "etcd-bench":
        repeats, chosen = args.repeats or 1, etcd_tool.select(args.size, args.workloads)
    else:
        repeats, chosen = args.repeats or SIZES[args.size].repeats, select(args.size, args.workloads)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    for name in names:
        try:
            check_target(name)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    started = time.monotonic()
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size": args.size,
        "repeats": repeats,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks", *sys.argv[1:]]),
        "driver": chosen[0].driver if chosen else "loadgen",
        "machine": machine(),
        "versions": versions(names),
        "targets": {},
        "workloads": {
            w.name: {"description": w.description, "unit": w.unit, "dataset": w.dataset.name} for w in chosen
        },
        "runs": [],
        "preload_seconds": {},
    }
    databases = DatabaseServers()
    targets: list[Target] = []
    for name in names:
        try:
            targets.append(make_target(name, databases, log))
            result["targets"][name] = {"status": "ok"}
        except TargetUnavailable as exc:
            log(f"!!! target {name} SKIPPED: {exc}")
            result["targets"][name] = {"status": "unavailable", "reason": str(exc)}
    if not targets:
        raise SystemExit("no target could be started")
    datasets: dict[str, list[Workload]] = {}
    for w in chosen:
        datasets.setdefault(w.dataset.name, []).append(w)
    try:
        for dataset, group in datasets.items():
            log(f"dataset {dataset}: starting {', '.join(t.name for t in targets)}")
            live: list[Target] = []
            for target in targets:
                try:
                    target.start()
                except (RuntimeError, TargetUnavailable) as exc:
                    log(f"!!! {target.name} failed to start: {exc}")
                    result["runs"] += [
                        {
                            "workload": w.name,
                            "target": target.name,
                            "repeat": 0,
                            "status": "failed",
                            "reason": f"start: {exc}"[:2000],
                        }
                        for w in group
                    ]
                    continue
                live.append(target)
                seconds = preload(target, group)
                result["preload_seconds"].setdefault(dataset, {})[target.name] = seconds
                if group[0].dataset.preload:
                    log(f"  {target.name}: preloaded in {seconds:.1f} s")
            for workload in group:
                for repeat in range(repeats):
                    order = live[repeat % len(live) :] + live[: repeat % len(live)] if live else []
                    for target in order:
                        try:
                            row = measure(target, workload, repeat)
                        except Exception as exc:  # one broken run must not lose the others
                            row = {
                                "workload": workload.name,
                                "target": target.name,
                                "repeat": repeat,
                                "status": "failed",
                                "reason": f"{exc}"[:3000],
                            }
                            if target.proc is not None and target.proc.poll() is not None:
                                row["reason"] += (
                                    f"\nserver exited {target.proc.returncode}:\n{target.log_tail()}"
                                )
                        result["runs"].append(row)
                        log(report.one_line(row))
            for target in live:
                target.stop()
    finally:
        for target in targets:
            with contextlib.suppress(Exception):
                target.stop()
        databases.close()
    result["summary"] = summarize(result["runs"])
    result["elapsed_seconds"] = time.monotonic() - started
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report.table(result))
    log(f"wrote {out} ({result['elapsed_seconds']:.0f} s)")
    if args.chart:
        report.chart(result, Path(args.chart), log)
    failed = [r for r in result["runs"] if r["status"] == "failed"]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    today = dt.date.today().isoformat()
    p_run = sub.add_parser("run", help="run the suite")
    p_run.add_argument(
        "--targets",
        default="kinepy-sqlite,etcd,kine-sqlite",
        help=f"comma-separated, from {', '.join(TARGETS)} (default: %(default)s)",
    )
    p_run.add_argument(
        "--workloads", default="all", help="comma-separated names, 'all' or 'scale' (default: all)"
    )
    p_run.add_argument("--size", choices=sorted(SIZES), default="full")
    p_run.add_argument(
        "--repeats", type=int, default=0, help="runs per workload and target (default: per size)"
    )
    p_run.add_argument("--out", default=f"benchmarks/results/{today}.json")
    p_run.add_argument("--chart", default=f"benchmarks/results/{today}.png", help="PNG to draw ('' for none)")
    p_etcd = sub.add_parser("etcd-bench", help="the suite driven by etcd's own `benchmark` tool (Go client)")
    p_etcd.add_argument(
        "--targets",
        default="etcd-3.6.5,kine-sqlite,kinepy-sqlite",
        help=f"comma-separated, from {', '.join(TARGETS)} (default: %(default)s)",
    )
    p_etcd.add_argument("--workloads", default="all", help="comma-separated names or 'all' (default: all)")
    p_etcd.add_argument("--size", choices=sorted(etcd_tool.TOTALS), default="full")
    p_etcd.add_argument("--repeats", type=int, default=1, help="runs per workload and target (default: 1)")
    p_etcd.add_argument("--out", default=f"benchmarks/results/{today}-etcd-bench.json")
    p_etcd.add_argument("--chart", default="", help="PNG to draw (default: none)")
    p_kube = sub.add_parser("kube", help="end to end through kube-apiserver and kube-controller-manager")
    kube.add_arguments(p_kube)
    p_list = sub.add_parser("list", help="list the workloads")
    p_list.add_argument("--size", choices=sorted(SIZES), default="full")
    p_list.add_argument("--driver", choices=("loadgen", "etcd-bench"), default="loadgen")
    p_report = sub.add_parser("report", help="print the table of a results file; --chart redraws")
    p_report.add_argument("results")
    p_report.add_argument("--chart", default="")
    p_soak = sub.add_parser("soak", help="a long mixed load; fails if memory, descriptors, ... keep growing")
    soak.add_arguments(p_soak)
    p_failover = sub.add_parser("failover", help="failover time on a PostgreSQL primary with a standby")
    failover.add_arguments(p_failover)
    args = parser.parse_args(argv)
    if args.command in ("run", "etcd-bench"):
        return run(args)
    if args.command == "kube":
        return kube.run(args)
    if args.command == "soak":
        return soak.run(args)
    if args.command == "failover":
        return failover.run(args)
    if args.command == "list":
        listed = etcd_tool.select("full", "all") if args.driver == "etcd-bench" else select(args.size, "all")
        for w in listed:
            print(f"{w.name:<20} [{w.dataset.name}] {w.description}")
        return 0
    result = json.loads(Path(args.results).read_text())
    print(report.table(result))
    if args.chart:
        report.chart(result, Path(args.chart), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
