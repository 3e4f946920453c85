"""MariaDB's side of the Kubernetes workload: `benchmarks kube` with every statement in the slow log.

    python -m benchmarks.mysqlstat [--targets kinepy-mariadb-w1,kine-mariadb] [kube's options] \\
        [--top 12] [--stats-out FILE.json]

Runs `benchmarks kube` (same phases, same options) with the run's MariaDB restarted once logging every
statement to its slow log (`long_query_time=0`, with the plan's flags), each statement of a
multi-statement query on its own (performance_schema's digests name such a query by its first
statement, and miss kine's prepared statements). Per phase it prints, per statement shape (values
replaced by `?`, lists collapsed): calls and time per object, mean time, rows examined and sent per
call, the share that used a temporary table; with the server's counters per object (statements by kind,
rows InnoDB read and wrote, redo log writes and fsyncs). Logging every statement costs the server time:
compare counts and shares here, and take CPU per operation from `benchmarks kube` without it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import kube, targets

if TYPE_CHECKING:
    from kinepy.testing.databases import DatabaseServer

_ENTRY = re.compile(
    r"^# Query_time: (?P<time>[\d.]+)\s+Lock_time: [\d.]+\s+"
    r"Rows_sent: (?P<sent>\d+)\s+Rows_examined: (?P<examined>\d+)\n"
    r"# Rows_affected: (?P<affected>\d+)[^\n]*\n(?P<plan>(?:#[^\n]*\n)*)"
    r"(?:use [^\n]*;\n)?SET timestamp=\d+;\n(?P<text>.*?);\n(?=# |\Z)",
    re.M | re.S,
)
_LITERALS = [
    (re.compile(r"(?:_utf8mb4 )?[xX]'[0-9a-fA-F]*'|'(?:[^'\\]|\\.)*'"), "?"),
    (re.compile(r"(?<![\w`.@])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w`])"), "?"),
    (re.compile(r"\?(?:\s*,\s*\?)+"), "?+"),
    (re.compile(r"\(\?\+?\)(?:\s*,\s*\(\?\+?\))+"), "(?+),…"),
    (re.compile(r"(SELECT \?\+ FROM DUAL WHERE @kinepy_unmoved = \?)(?: UNION ALL \1)+"), r"\1 UNION ALL …"),
    (re.compile(r"\s+"), " "),
]


def shape(text: str) -> str:
    """`text` with its values replaced by `?` and lists of them collapsed: one line per statement shape."""
    for pattern, replacement in _LITERALS:
        text = pattern.sub(replacement, text)
    return text.strip()


def statements(log: str) -> dict[str, dict[str, float]]:
    """Per statement shape of a slow log's entries (kinepy's and kine's databases only): calls, total
    seconds, rows examined / sent / affected, and how many used a temporary table or a filesort."""
    shapes: dict[str, dict[str, float]] = {}
    for entry in _ENTRY.finditer(log):
        key = shape(entry["text"])
        if key.startswith(("SHOW ", "TRUNCATE ", "SELECT @@")):
            continue
        s = shapes.setdefault(
            key, dict.fromkeys(("calls", "seconds", "examined", "sent", "affected", "tmp", "filesort"), 0.0)
        )
        s["calls"] += 1
        s["seconds"] += float(entry["time"])
        s["examined"] += int(entry["examined"])
        s["sent"] += int(entry["sent"])
        s["affected"] += int(entry["affected"])
        s["tmp"] += "Tmp_table: Yes" in entry["plan"]
        s["filesort"] += "Filesort: Yes" in entry["plan"]
    return shapes


_COUNTERS = (
    "Com_commit",
    "Com_select",
    "Com_insert_select",
    "Com_insert",
    "Com_replace",
    "Com_replace_select",
    "Com_update",
    "Com_delete",
    "Com_delete_multi",
    "Innodb_rows_read",
    "Innodb_rows_inserted",
    "Innodb_rows_updated",
    "Innodb_rows_deleted",
    "Innodb_log_writes",
    "Innodb_os_log_fsyncs",
    "Innodb_data_fsyncs",
    "Handler_read_key",
    "Handler_read_next",
    "Handler_read_prev",
    "Handler_read_rnd_next",
    "Handler_tmp_write",
    "Created_tmp_tables",
    "Bytes_received",
    "Bytes_sent",
)


class _Profiled:
    """What `kube.Phases.measure` does, with the slow log and the counters read around it."""

    def __init__(self, server: DatabaseServer, top: int) -> None:
        self.server, self.top = server, top
        self.phases: list[dict[str, Any]] = []

    @property
    def slow_log(self) -> Path:
        return self.server.root / "slow.log"

    def counters(self) -> dict[str, int]:
        names = ",".join(f"'{name}'" for name in _COUNTERS)
        rows = self.server.sql(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
        return {str(name): int(value) for name, value in rows}

    def wrap(self, measure: Any) -> Any:
        def measured(phases: kube.Phases, phase: str, run: Any) -> dict[str, Any]:
            before, start = self.counters(), self.slow_log.stat().st_size
            row: dict[str, Any] = measure(phases, phase, run)
            after = self.counters()
            with self.slow_log.open(errors="replace") as log:
                log.seek(start)
                shapes = statements(log.read())
            top = sorted(shapes.items(), key=lambda item: -item[1]["seconds"])[: self.top]
            entry = {
                "target": phases.target.name,
                "phase": phase,
                "ops": row.get("ops"),
                "server_cpu_s_per_1k": row.get("server_cpu_s_per_1k"),
                "database_cpu_s": row.get("extra", {}).get("database_cpu_s"),
                "counters": {name: after[name] - before.get(name, 0) for name in after},
                "statements_per_phase": sum(int(s["calls"]) for s in shapes.values()),
                "statements": [{"text": text, **figures} for text, figures in top],
            }
            self.phases.append(entry)
            _print(entry)
            return row

        return measured


def _print(entry: dict[str, Any]) -> None:
    ops = entry["ops"] or 1
    out = sys.stderr
    out.write(
        f"\n=== {entry['target']} {entry['phase']} ({entry['ops']} objects): server + database CPU "
        f"{entry['server_cpu_s_per_1k'] or 0:.2f} s per 1000, the database's "
        f"{1000 * (entry['database_cpu_s'] or 0) / ops:.2f} s\n"
    )
    counters = entry["counters"]
    out.write(
        f"per object: statements {entry['statements_per_phase'] / ops:.2f}, "
        + ", ".join(f"{name} {value / ops:.2f}" for name, value in counters.items() if value)
        + "\n"
    )
    out.write(
        f"{'calls/obj':>9} {'us/obj':>8} {'us/call':>8} {'exam/call':>9} {'sent/call':>9} {'tmp':>4}"
        "  statement\n"
    )
    for s in entry["statements"]:
        calls = s["calls"] or 1
        out.write(
            f"{calls / ops:9.2f} {1e6 * s['seconds'] / ops:8.1f} {1e6 * s['seconds'] / calls:8.1f} "
            f"{s['examined'] / calls:9.1f} {s['sent'] / calls:9.1f} {s['tmp'] / calls:4.1f}"
            f"  {s['text'][:300]}\n"
        )


def _with_statistics(server: DatabaseServer) -> None:
    """Restart `server` logging every statement (the slow log, `long_query_time=0`) with its plan."""
    server.stop()
    server.extra_args += [
        "--slow-query-log=ON",
        "--long-query-time=0",
        f"--slow-query-log-file={server.root / 'slow.log'}",
        "--log-slow-verbosity=query_plan",
    ]
    server.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mysqlstat", description=__doc__.split("\n\n")[0]
    )
    kube.add_arguments(parser)
    parser.set_defaults(targets="kinepy-mariadb-w1,kine-mariadb", out="/tmp/kinepy-mysqlstat-kube.json")
    parser.add_argument("--top", type=int, default=12, help="statement shapes shown per phase")
    parser.add_argument("--stats-out", default="/tmp/kinepy-mysqlstat.json", help="the statistics as JSON")
    args = parser.parse_args(argv)
    get, measure = targets.DatabaseServers.get, kube.Phases.measure
    profiled: list[_Profiled] = []

    def get_profiled(self: targets.DatabaseServers, kind: str) -> DatabaseServer:
        fresh = kind not in self._servers
        server = get(self, kind)
        if fresh and kind == "mariadb":
            _with_statistics(server)
            profiled.append(_Profiled(server, args.top))
            kube.Phases.measure = profiled[-1].wrap(measure)  # type: ignore[method-assign]
        return server

    targets.DatabaseServers.get = get_profiled  # type: ignore[method-assign]
    try:
        code = kube.run(args)
    finally:
        targets.DatabaseServers.get, kube.Phases.measure = get, measure  # type: ignore[method-assign]
    Path(args.stats_out).write_text(json.dumps([e for p in profiled for e in p.phases], indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
