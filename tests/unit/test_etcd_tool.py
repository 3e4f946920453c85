"""benchmarks/etcd_tool.py: reading etcd's `benchmark` reports, and the command lines it builds; the
ratio columns of report.py (to etcd 3.6.5, and of kinepy to kine on the same backend)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import etcd_tool, report
from benchmarks.targets import check_target

# The shape of etcd v3.6.5's pkg/report output with --precise (trimmed histogram).
PUT_REPORT = """
Summary:
  Total:\t2.5 secs.
  Slowest:\t0.25 secs.
  Fastest:\t0.0005 secs.
  Average:\t0.0074 secs.
  Stddev:\t0.0042 secs.
  Requests/sec:\t8000

Response time histogram:
  0.0005 [1]\t|
  0.025 [19999]\t|∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎

Latency distribution:
  10% in 0.003 secs.
  25% in 0.005 secs.
  50% in 0.007 secs.
  75% in 0.009 secs.
  90% in 0.011 secs.
  95% in 0.012 secs.
  99% in 0.02 secs.
  99.9% in 0.1 secs.
"""


def test_a_report_gives_throughput_and_latencies() -> None:
    figures = etcd_tool.parse(PUT_REPORT)
    assert figures["ops"] == 20_000 and figures["seconds"] == 2.5 and figures["ops_per_s"] == 8000
    assert figures["latencies_ms"] == pytest.approx({"p50": 7.0, "p99": 20.0, "max": 250.0})
    assert figures["errors"] == 0 and figures["first_error"] == ""


def test_errors_are_counted_and_the_first_kept() -> None:
    text = (
        PUT_REPORT + "\nError distribution:\n  [12]\trpc error: code = Unavailable\n  [3]\tcontext deadline\n"
    )
    figures = etcd_tool.parse(text)
    assert figures["errors"] == 15 and figures["first_error"] == "rpc error: code = Unavailable"


def test_watch_latency_reads_the_events_section() -> None:
    text = (
        "\nPut summary:\n"
        + PUT_REPORT
        + "\nWatch events summary:\n"
        + PUT_REPORT.replace("0.02 secs", "0.004 secs")
    )
    assert etcd_tool.parse(text, "Watch events summary:")["latencies_ms"]["p99"] == pytest.approx(4.0)
    assert etcd_tool.parse(text, "Put summary:")["latencies_ms"]["p99"] == pytest.approx(20.0)


def test_every_workload_has_a_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_tool, "binary", lambda: "benchmark")
    lines = {w.name: etcd_tool.argv("127.0.0.1:2379", w.kind, w.params) for w in etcd_tool.workloads("full")}
    assert lines["put-64"][:6] == [
        "benchmark", "--endpoints=127.0.0.1:2379", "--clients=64", "--conns=8", "--precise", "put",
    ]  # fmt: skip
    assert "--val-size=256" in lines["put-1"] and "--clients=1" in lines["put-1"]
    assert lines["range-1key-16"][6:8] == [etcd_tool.RANGE_KEY, "--total=20000"]
    assert "--consistency=l" in lines["range-1key-16"]
    assert "--count-only" in lines["count-only-10k"]
    assert {"--streams=100", "--put-rate=200", "--watchers-per-stream=1"} <= set(lines["watch-latency"])
    assert lines["lease-keepalive"][5:] == ["lease-keepalive", "--total=10000"]
    with pytest.raises(SystemExit, match="unknown workload"):
        etcd_tool.select("full", "put-64,nope")


def _entry(ops_per_s: float) -> dict[str, Any]:
    return {"status": "ok", "ops_per_s": ops_per_s, "extra": {}}


def test_ratios_to_etcd_and_of_kinepy_to_kine_on_each_backend() -> None:
    targets = ["etcd-3.6.5", "kine-postgres", "kinepy-postgres", "kinepy-sqlite"]
    result = {
        "targets": {t: {"status": "ok"} for t in targets},
        "workloads": {"put-64": {"unit": "ops"}},
        "summary": {"put-64": dict(zip(targets, map(_entry, (8000.0, 2000.0, 3000.0, 4000.0)), strict=True))},
        "size": "full",
        "repeats": 1,
        "date": "today",
        "machine": {"nproc": 2, "cpu_model": "x", "loadavg_start": (1.0, 1.0, 1.0)},
    }
    lines = report.table(result).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    ratios = dict(zip(header[6:], row[6:], strict=True))
    assert ratios == {
        "kine-postgres ×etcd-3.6.5": "0.25",  # noqa: RUF001
        "kinepy-postgres ×etcd-3.6.5": "0.38",  # noqa: RUF001
        "kinepy-sqlite ×etcd-3.6.5": "0.50",  # noqa: RUF001
        "kinepy-postgres ×kine-postgres": "1.50",  # noqa: RUF001
    }


def test_kinepy_with_workers_is_a_target_and_pairs_with_kine_on_its_backend() -> None:
    check_target("kinepy-sqlite-w2")
    check_target("kinepy-mariadb-w16")
    for wrong in ("kinepy-sqlite-w0", "kine-sqlite-w2", "kinepy-oracle-w2", "etcd-w2"):
        with pytest.raises(ValueError, match="unknown target"):
            check_target(wrong)
    targets = ["etcd-3.6.5", "kine-sqlite", "kinepy-sqlite-w1", "kinepy-sqlite-w2"]
    result = {
        "targets": {t: {"status": "ok"} for t in targets},
        "workloads": {"put-64": {"unit": "ops"}},
        "summary": {"put-64": dict(zip(targets, map(_entry, (8000.0, 4000.0, 2000.0, 3000.0)), strict=True))},
        "size": "full",
        "repeats": 1,
        "date": "today",
        "machine": {"nproc": 2, "cpu_model": "x", "loadavg_start": (1.0, 1.0, 1.0)},
    }
    header = report.table(result).splitlines()[0]
    assert "kinepy-sqlite-w2 ×kine-sqlite" in header and "kinepy-sqlite-w1 ×kine-sqlite" in header  # noqa: RUF001
