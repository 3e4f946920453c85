"""The benchmark suite at smoke size, against kinepy on SQLite and a real etcd: it must not rot.

This checks breakage, not timing: `python -m benchmarks run --size smoke` finishes, every workload has a
result for both targets, and the figures are sane (operations happened, latencies and CPU positive, no
failed run, no lost watch event, lists and counts returned what was loaded).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest

pytestmark = [pytest.mark.kinepy, pytest.mark.etcd, pytest.mark.slow]

TARGETS = ("kinepy-sqlite", "etcd")
BUDGET = 90.0  # seconds the smoke run may take


def test_smoke_run_reports_every_workload_with_sane_numbers(tmp_path: Path) -> None:
    conftest._require_etcd()
    out, chart = tmp_path / "smoke.json", tmp_path / "smoke.png"
    argv = [sys.executable, "-m", "benchmarks", "run", "--size", "smoke", "--targets", ",".join(TARGETS)]
    argv += ["--out", str(out), "--chart", str(chart)]
    started = time.monotonic()
    proc = subprocess.run(
        argv, cwd=conftest.REPO_ROOT, capture_output=True, text=True, timeout=3 * BUDGET, check=False
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"benchmarks exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    # Timing is the benchmark's business, not a test's: report it, do not assert it.
    print(f"smoke run took {elapsed:.0f} s (usual: under {BUDGET:.0f} s)")

    result = json.loads(out.read_text())
    listing = subprocess.run(
        [sys.executable, "-m", "benchmarks", "list", "--size", "smoke"],
        cwd=conftest.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = [line.split()[0] for line in listing.stdout.splitlines()]
    assert list(result["workloads"]) == expected
    assert {t: info["status"] for t, info in result["targets"].items()} == dict.fromkeys(TARGETS, "ok")
    problems = []
    for workload in expected:
        for target in TARGETS:
            entry = result["summary"].get(workload, {}).get(target)
            where = f"{workload} on {target}"
            if entry is None or entry["status"] != "ok":
                problems.append(f"{where}: {entry}")
                continue
            if not (entry["ops_per_s"] > 0 and 0 < entry["p50_ms"] <= entry["p99_ms"] <= entry["max_ms"]):
                problems.append(f"{where}: throughput/latency {entry}")
            if not (entry["server_cpu_s_per_1k"] > 0 and entry["server_peak_rss_mib"] > 5):
                problems.append(f"{where}: server CPU/RSS {entry}")
            if entry["client_cpu_util"] <= 0:
                problems.append(f"{where}: client CPU not reported")
            if entry["extra"].get("lost"):
                problems.append(f"{where}: {entry['extra']['lost']} watch events lost")
    assert not problems, "\n".join(problems)
    # The list and compaction workloads report their own figures.
    assert result["summary"]["list-1k"]["etcd"]["extra"]["list_seconds_median"] > 0
    assert "longest_write_stall_ms" in result["summary"]["compact-500"]["kinepy-sqlite"]["extra"]
    assert "| put-seq | ops/s |" in proc.stdout and "kinepy-sqlite ×etcd" in proc.stdout  # noqa: RUF001
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.stat().st_size > 10_000


def test_unknown_target_is_refused() -> None:
    """A typo in --targets stops the run before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--targets", "nope", "--size", "smoke"],
        cwd=conftest.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "unknown target 'nope'" in proc.stderr


def test_floor_measures_every_shape(tmp_path: Path) -> None:
    """`python -m benchmarks.floor` (the canned grpc.aio server docs/performance.md compares with)
    runs every shape and reports figures that mean something."""
    out = tmp_path / "floor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.floor", "--seconds", "0.5", "--out", str(out)],
        cwd=conftest.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"benchmarks.floor exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())["results"]
    assert len(results) == 6
    for r in results:
        assert r["ops_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["shape"] in proc.stdout


def test_soak_samples_and_judges_every_series(tmp_path: Path) -> None:
    """`python -m benchmarks soak`, 30 s instead of minutes: the load runs without errors against a server
    that stays up, every series is sampled and fitted. Whether something grows in 30 s is not asserted:
    a server warming up does (exit status 1 is the verdict, 2 or a crash the failure)."""
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "benchmarks", "soak", "--seconds", "30", "--sample-seconds", "3"]
    proc = subprocess.run(
        [*argv, "--keys", "500", "--out", str(out)],
        cwd=conftest.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1), f"soak exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert result["server_alive"]
    assert result["load"]["errors"] == 0, result["load"]["first_error"]
    extra = result["load"]["extra"]
    for kind in ("get", "list", "update", "event", "watch_events", "keepalives", "compactions"):
        assert extra.get(kind, 0) > 0, f"no {kind} in {extra}"
    assert len(result["samples"]) >= 8
    for metric, judged in result["verdict"].items():
        assert "slope_per_hour" in judged and judged["samples"] >= 3, (metric, judged)
        assert judged["low_per_hour"] <= judged["slope_per_hour"] <= judged["high_per_hour"]
    assert "rss_kib" in proc.stdout
