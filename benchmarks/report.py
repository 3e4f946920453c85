"""The table and the chart of a results file.

Table: one row per workload and metric, one column per target, then a ratio column against etcd (3.6.5 when
it ran, else Debian's) per other target, and one of kinepy against kine per backend both ran on (a figure
divided by the other's: above 1 is better for throughput, worse for latency, CPU and RSS). A cell
is the median over the repeats; ``unsup.`` means the target does not implement the workload's requests
(kine), ``FAILED`` that the run broke (the JSON has the reason); ``*`` marks a run where the load
generator used more than 85 % of a core, so the figure may be the client's limit, not the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_s_per_1k", "server_peak_rss_mib")
LABELS = {
    "ops_per_s": "throughput /s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "server_cpu_s_per_1k": "server CPU s/1k",
    "server_peak_rss_mib": "server peak RSS MiB",
}
EXTRA_ROWS = {  # workload-specific figures worth a row of their own
    "list_seconds_median": "whole list s",
    "longest_write_stall_ms": "longest write stall ms",
    "compaction_seconds": "compaction s",
    "conflicts": "conflicts",
    "lost": "events lost",
    "phase_seconds": "phase s",
    "apiserver_cpu_s": "kube-apiserver CPU s",
}
BASELINES = ("etcd-3.6.5", "etcd")  # the first of these that ran is every ratio's denominator


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def one_line(row: dict[str, Any]) -> str:
    """A progress line for one run."""
    head = f"{row['workload']:<16} {row['target']:<16} r{row['repeat']}"
    if row["status"] in ("unsupported", "failed"):
        reason = (row.get("reason") or "").splitlines()
        return f"{head} {row['status'].upper()}: {reason[0] if reason else ''}"
    flag = " CLIENT-BOUND" if row["client_bound"] else ""
    err = f" errors={row['errors']} ({row['first_error'][:120]})" if row["errors"] else ""
    return (
        f"{head} {row['ops_per_s']:>9.1f}/s p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms "
        f"cpu {_fmt(row['server_cpu_s_per_1k'])} s/1k rss {row['server_peak_rss_mib']:.0f} MiB "
        f"client {row['client_cpu_util']:.0%}{flag}{err}"
    )


def _cell(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return "n/a"
    if entry["status"] == "unsupported":
        return "unsup."
    if entry["status"] == "failed":
        return "FAILED"
    value = entry.get(metric) if metric in METRICS else entry.get("extra", {}).get(metric)
    text = _fmt(value)
    if entry.get("client_bound") and metric == "ops_per_s":
        text += "*"
    if entry.get("status") == "error" and metric == "ops_per_s":
        text += "!"
    return text


def _value(entry: dict[str, Any] | None, metric: str) -> float | None:
    if entry is None or entry["status"] not in ("ok", "error"):
        return None
    value = entry.get(metric) if metric in METRICS else entry.get("extra", {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def _unsupported(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Each reason a target gave for not running workloads, and where ("kine-sqlite: a, b")."""
    where: dict[tuple[str, str], list[str]] = {}
    for workload, entries in summary.items():
        for target, entry in entries.items():
            if entry["status"] == "unsupported":
                reason = (entry.get("reason") or "").splitlines()
                where.setdefault((target, reason[0][:200] if reason else ""), []).append(workload)
    return [f"{target}: {', '.join(ws)}: {reason}" for (target, reason), ws in where.items()]


def table(result: dict[str, Any]) -> str:
    """The Markdown table of `result` (a results file's content)."""
    summary: dict[str, dict[str, Any]] = result["summary"]
    targets = [t for t, info in result["targets"].items() if info["status"] == "ok"]
    base_name = next((b for b in BASELINES if b in targets), "")
    pairs = [(t, base_name) for t in targets if base_name and t != base_name]
    pairs += [(t, "kine-" + t.split("-")[1]) for t in targets if t.startswith("kinepy-")]
    pairs = [(t, other) for t, other in pairs if other in targets]
    ratio_names = [f"{t} ×{other}" for t, other in pairs]  # noqa: RUF001
    header = ["workload", "metric", *targets, *ratio_names]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for workload in result["workloads"]:
        entries = summary.get(workload, {})
        metrics = list(METRICS) + [
            m for m in EXTRA_ROWS if any(m in (e.get("extra") or {}) for e in entries.values())
        ]
        for metric in metrics:
            label = LABELS.get(metric) or EXTRA_ROWS[metric]
            if metric == "ops_per_s":
                label = f"{result['workloads'][workload]['unit']}/s"
            cells = [_cell(entries.get(t), metric) for t in targets]
            ratios = []
            for t, other in pairs:
                v, base = _value(entries.get(t), metric), _value(entries.get(other), metric)
                ratios.append(f"{v / base:.2f}" if v is not None and base else "-")
            lines.append("| " + " | ".join([workload, label, *cells, *ratios]) + " |")
    skipped = [f"{t}: {info['reason']}" for t, info in result["targets"].items() if info["status"] != "ok"]
    notes = [
        "",
        f"{result['size']} size, median of {result['repeats']} run(s) per cell, {result['date']}, "
        f"{result['machine']['nproc']} CPUs ({result['machine']['cpu_model']}), load average at start "
        f"{', '.join(f'{x:.1f}' for x in result['machine']['loadavg_start'])}.",
        "`*` = the client above 85 % of the cores it can use (client-bound); `!` = some operations failed "
        "(see the JSON); `unsup.` = the target rejects the workload's requests.",
    ]
    notes += [f"Skipped target {s}" for s in skipped]
    notes += [f"`unsup.` {line}" for line in _unsupported(summary)]
    return "\n".join(lines + notes)


def chart(result: dict[str, Any], path: Path, log: Callable[[str], None]) -> None:
    """A PNG: one panel per metric, grouped horizontal bars (one per target) for each workload, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no chart drawn")
        return
    summary = result["summary"]
    targets = [t for t, info in result["targets"].items() if info["status"] == "ok"]
    workloads = list(result["workloads"])
    fig, axes = plt.subplots(
        1,
        len(METRICS),
        figsize=(4.2 * len(METRICS), 0.45 * len(workloads) * len(targets) / 2 + 2),
        sharey=True,
    )
    height = 0.8 / max(1, len(targets))
    for ax, metric in zip(axes, METRICS, strict=True):
        for i, target in enumerate(targets):
            ys, xs = [], []
            for j, workload in enumerate(workloads):
                v = _value(summary.get(workload, {}).get(target), metric)
                if v is not None and v > 0:
                    ys.append(j + i * height)
                    xs.append(v)
            ax.barh(ys, xs, height=height, label=target)
        ax.set_xscale("log")
        ax.set_title(
            LABELS[metric] + (" (higher is better)" if metric == "ops_per_s" else " (lower is better)"),
            fontsize=9,
        )
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks([j + 0.4 - height / 2 for j in range(len(workloads))], workloads, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"kinepy benchmarks, {result['size']} size, {result['date']} "
        f"({result['machine']['nproc']} CPUs, shared machine)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"wrote {path}")
