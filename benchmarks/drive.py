"""Driving a target: one load generator run, and loading a dataset. Shared by the suite
(`python -m benchmarks run`) and the profiler (`python -m benchmarks.profile`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.targets import REPO_ROOT, Target
from benchmarks.workloads import Workload


def loadgen(endpoint: str, kind: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    spec = json.dumps({"endpoint": endpoint, "workload": kind, "params": params})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", spec],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen {kind} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def preload(target: Target, workload_list: list[Workload]) -> float:
    """Load the dataset of `workload_list` into `target`; returns the seconds it took."""
    started = time.perf_counter()
    for prefix, keys, value_size, rounds in workload_list[0].dataset.preload:
        params = {
            "prefix": prefix,
            "keys": keys,
            "value_size": value_size,
            "rounds": rounds,
            "batch": 100 if target.multi_op_txn else 1,
            "channels": 4,
        }
        loadgen(target.endpoint, "preload", params, timeout=4 * 3600)
    return time.perf_counter() - started
