"""What a results file says about its run: the machine, the versions, and the medians over repeats."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

from benchmarks import report
from benchmarks.gobuild import REPO_ROOT


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per workload and target: the median of each metric over the repeats, and the status."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["workload"], run["target"]), []).append(run)
    for (workload, target), group in groups.items():
        ok = [r for r in group if r["status"] in ("ok", "error")]
        entry: dict[str, Any] = {"status": group[0]["status"], "repeats": len(ok)}
        if not ok:
            entry["reason"] = group[0].get("reason", "")
        else:
            entry["status"] = "error" if any(r["status"] == "error" for r in ok) else "ok"
            for metric in (*report.METRICS, "max_ms", "client_cpu_util"):
                values = [r[metric] for r in ok if r.get(metric) is not None]
                entry[metric] = statistics.median(values) if values else None
            entry["client_bound"] = any(r["client_bound"] for r in ok)
            entry["errors"] = sum(r["errors"] for r in ok)
            extras: dict[str, Any] = {}
            for key in ok[0]["extra"]:
                values = [r["extra"][key] for r in ok if isinstance(r["extra"].get(key), int | float)]
                if values:
                    extras[key] = statistics.median(values)
            entry["extra"] = extras
        out.setdefault(workload, {})[target] = entry
    return out


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_start": os.getloadavg(),
    }


def versions(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        out["etcd"] = subprocess.run(
            ["/usr/bin/etcd", "--version"], capture_output=True, text=True
        ).stdout.split("\n")[0]
    import importlib.metadata

    for pkg in ("kinepy", "grpcio", "protobuf", "uvloop", "asyncpg", "aiomysql"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    with contextlib.suppress(Exception):
        out["kinepy_commit"] = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    with contextlib.suppress(Exception):
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "kinepy"], capture_output=True, text=True
        ).stdout.split("\n")
        out["kinepy_uncommitted"] = ", ".join(line[3:] for line in dirty if line.strip())
    if any(n.startswith("kine-") for n in names):
        from benchmarks.gobuild import KINE_VERSION

        out["kine"] = KINE_VERSION
    if any(n.startswith("etcd-") for n in names):
        from benchmarks.gobuild import ETCD_VERSION

        out["etcd_release"] = ETCD_VERSION
    return out
