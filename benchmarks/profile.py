"""Where a kinepy server's time goes under one workload: py-spy samples, summarised per thread.

    python -m benchmarks.profile create-64 [--params '{"concurrency": 32}'] [--seconds 5] [--native]

Starts kinepy as the suite's ``kinepy-sqlite`` target (a fresh SQLite file, default durable
settings), loads the workload's dataset, runs the load generator with the workload's parameters
(those of ``--size full``, as ``python -m benchmarks list`` names them, unless overridden), records
the server with ``py-spy record --threads`` meanwhile, and prints, per thread, how much of the
time it was busy and the frames where the samples land. py-spy only samples threads that are
running, so a thread's sample count over the recording's length is its busy share. On the event
loop's thread, the samples whose innermost Python frame is the loop itself (``Runner.run``) are
time in C: gRPC's core and Cython layer and uvloop; ``--native`` shows those frames. Needs
``py-spy`` (``pip install py-spy``) and, unless run as root, permission to ptrace the server.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.drive import loadgen, preload
from benchmarks.targets import Kinepy
from benchmarks.workloads import SIZES, workloads


def _summarise(speedscope: Path, seconds: float, top: int) -> None:
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]

    def name(i: int) -> str:
        f = frames[i]
        return f"{f['name']} ({Path(f.get('file') or '?').name}:{f.get('line', '')})"

    for profile in data["profiles"]:
        weights = profile["weights"]
        busy = sum(weights)
        if busy < 0.01 * seconds:
            continue
        leaf: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for stack, weight in zip(profile["samples"], weights, strict=True):
            names = [name(i) for i in stack]
            leaf[names[-1] if names else "?"] += weight
            for n in set(names):
                inclusive[n] += weight
        print(f"\n== {profile['name']}: busy {100 * busy / seconds:.0f}% of {seconds:.0f} s")
        print("   innermost frame (share of the thread's busy time):")
        for n, w in leaf.most_common(top):
            print(f"   {100 * w / busy:5.1f}%  {n}")
        print("   inclusive:")
        for n, w in inclusive.most_common(top):
            print(f"   {100 * w / busy:5.1f}%  {n}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("workload", help="a workload of --size full: create-64, list-10k, watch-100, …")
    parser.add_argument("--params", default="{}", help="JSON parameters overriding the full size's")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to record (default: 5)")
    parser.add_argument("--native", action="store_true", help="C frames too (slower: lowers throughput)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default="", help="keep the speedscope JSON here")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy not found: pip install py-spy")
    by_name = {w.name: w for w in workloads(SIZES["full"])}
    if args.workload not in by_name:
        sys.exit(f"no such workload; choose from: {', '.join(by_name)}")
    workload = by_name[args.workload]
    params: dict[str, Any] = dict(workload.params)
    params.setdefault("prefix", f"/registry/bench/{workload.name}/profile/")  # as the suite's runs do
    params.update(json.loads(args.params))
    params["seconds"] = args.seconds + 2.0
    # the suite's kinepy-sqlite target (a fresh SQLite file, default durable settings) with one worker:
    # py-spy samples one process, and `--workers N` would make that the supervisor
    server = Kinepy("kinepy-sqlite-w1", extra_args=["--workers", "1"])
    server.start()
    try:
        assert server.proc is not None
        preload(server, [workload])
        with ThreadPoolExecutor(1) as pool, tempfile.TemporaryDirectory(prefix="kinepy-profile-") as tmp:
            load = pool.submit(loadgen, server.endpoint, workload.kind, params, timeout=600)
            time.sleep(1.0)  # past the connection set-up
            out = Path(args.out or Path(tmp) / "profile.json")
            record = ["py-spy", "record", "-p", str(server.proc.pid), "-d", str(int(args.seconds))]
            record += ["-r", "200", "-f", "speedscope", "-o", str(out), "--threads"]
            # py-spy reads C stacks only from a stopped process, so --native cannot be --nonblocking
            record.append("--native" if args.native else "--nonblocking")
            subprocess.run(record, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = load.result()
            print(
                f"{args.workload} {json.dumps(params)}: {result['ops_per_s']:.0f} {workload.unit}/s, "
                f"p50 {result['latencies_ms']['p50']:.2f} ms, p99 {result['latencies_ms']['p99']:.2f} ms"
            )
            _summarise(out, int(args.seconds), args.top)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
