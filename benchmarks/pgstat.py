"""PostgreSQL's side of the Kubernetes workload: `benchmarks kube` with pg_stat_statements on.

    python -m benchmarks.pgstat [--targets kinepy-postgres-w1,kine-postgres] [kube's options] \\
        [--top 12] [--out FILE.json]

Runs `benchmarks kube` (same phases, same options) with the run's PostgreSQL restarted once with
``shared_preload_libraries=pg_stat_statements`` (``track=all``, so statements a trigger runs count too,
``track_planning``, and ``track_io_timing``). Around each phase it resets the statistics and then
prints, per statement: calls, plans made and their mean time, total and mean execution time, shared
blocks hit and dirtied, WAL bytes; with the database's commits, WAL written, the tables' size, live
and dead rows after the phase and their row counters (which PostgreSQL reports with a delay).
`--explain-ms` also loads auto_explain: the plan, times and buffers of every statement slower than
that go to `--explain-log`.
pg_stat_statements adds its own cost to every statement: compare the counts and the shares, and take
CPU per operation from `benchmarks kube` without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import kube, targets

if TYPE_CHECKING:
    from kinepy.testing.databases import DatabaseServer

_STATEMENTS = """
SELECT calls, plans, round(mean_plan_time::numeric * 1000, 1), round(total_exec_time::numeric, 1),
       round(mean_exec_time::numeric * 1000, 1), rows,
       shared_blks_hit, shared_blks_read, shared_blks_dirtied, wal_bytes, toplevel,
       regexp_replace(left(query, 400), '\\s+', ' ', 'g')
FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat%'
ORDER BY total_exec_time DESC LIMIT {top}
"""
_COLUMNS = (
    "calls",
    "plans",
    "plan_us",
    "total_ms",
    "mean_us",
    "rows",
    "hit",
    "read",
    "dirtied",
    "wal_bytes",
    "toplevel",
    "query",
)
_DATABASES = "SELECT datname FROM pg_database WHERE datname LIKE 'kinepy_%'"
_DATABASE = (
    "SELECT sum(xact_commit), sum(xact_rollback), sum(tup_returned), sum(tup_fetched) FROM pg_stat_database"
)
_TABLES = (
    "SELECT relname, sum(n_tup_ins), sum(n_tup_upd), sum(n_tup_hot_upd), sum(n_tup_del), "
    "sum(seq_scan), sum(idx_scan) FROM pg_stat_user_tables GROUP BY relname"
)
_WAL = "SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal"
_SIZES = (
    "SELECT relname, pg_relation_size(relid) / 8192, n_live_tup, n_dead_tup, autovacuum_count "
    "FROM pg_stat_user_tables ORDER BY relname"
)


class _Profiled:
    """What `kube.Phases.measure` does, with pg_stat_statements reset before and read after."""

    def __init__(self, server: DatabaseServer, top: int) -> None:
        self.server, self.top = server, top
        self.phases: list[dict[str, Any]] = []

    def counters(self) -> dict[str, Any]:
        """Cumulative counters of every database (pg_stat_database, pg_stat_wal) and the current
        database's tables, summed over the databases this run created."""
        databases = [row[0] for row in self.server.sql(_DATABASES)]
        tables: dict[str, list[int]] = {}
        for name in databases:
            for relname, *values in self.server.sql(_TABLES, database=name):
                sums = tables.setdefault(relname, [0] * len(values))
                tables[relname] = [a + int(b or 0) for a, b in zip(sums, values, strict=True)]
        return {
            "pages_live_dead_autovacuums": {
                name: {row[0]: [int(v) for v in row[1:]] for row in self.server.sql(_SIZES, database=name)}
                for name in databases
            },
            "database": [int(v or 0) for v in self.server.sql(_DATABASE)[0]],
            "wal": [int(float(v)) for v in self.server.sql(_WAL)[0]],
            "tables": tables,
        }

    def wrap(self, measure: Any) -> Any:
        def measured(phases: kube.Phases, phase: str, run: Any) -> dict[str, Any]:
            self.server.sql("SELECT pg_stat_statements_reset()")
            before = self.counters()
            row: dict[str, Any] = measure(phases, phase, run)
            after = self.counters()
            rows = self.server.sql(_STATEMENTS.format(top=self.top))
            statements = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
            delta = {
                "commits_rollbacks_returned_fetched": [
                    a - b for a, b in zip(after["database"], before["database"], strict=True)
                ],
                "wal_records_bytes_syncs": [a - b for a, b in zip(after["wal"], before["wal"], strict=True)],
                "tables_ins_upd_hot_del_seq_idx": {
                    name: [a - b for a, b in zip(values, before["tables"].get(name, [0] * 6), strict=True)]
                    for name, values in after["tables"].items()
                },
            }
            delta["pages_live_dead_autovacuums_after"] = after["pages_live_dead_autovacuums"]
            self.phases.append(
                {
                    "target": phases.target.name,
                    "phase": phase,
                    "ops": row.get("ops"),
                    **delta,
                    "statements": statements,
                }
            )
            _print(self.phases[-1])
            return row

        return measured


def _print(entry: dict[str, Any]) -> None:
    ops = entry["ops"] or 1
    out = sys.stderr
    out.write(f"\n=== {entry['target']} {entry['phase']} ({entry['ops']} objects)\n")
    commits, rollbacks, _, _ = entry["commits_rollbacks_returned_fetched"]
    records, wal_bytes, syncs = entry["wal_records_bytes_syncs"]
    out.write(
        f"per object: commits {commits / ops:.2f}, rollbacks {rollbacks / ops:.2f}, WAL records "
        f"{records / ops:.1f}, WAL bytes {wal_bytes / ops:.0f}, WAL syncs {syncs / ops:.2f}\n"
    )
    for database, tables in entry["pages_live_dead_autovacuums_after"].items():
        out.write(f"  after, {database}: pages/live/dead/autovacuums {tables}\n")
    for name, values in entry["tables_ins_upd_hot_del_seq_idx"].items():
        per_object = [round(v / ops, 2) for v in values]
        out.write(f"  {name}: ins/upd/hot/del/seq_scan/idx_scan per object {per_object}\n")
    header = (
        "calls/obj",
        "plans/obj",
        "plan us",
        "total ms",
        "mean us",
        "hit/call",
        "dirt/call",
        "wal B/call",
    )
    out.write(" ".join(f"{h:>10}" for h in header) + "  query\n")
    for s in entry["statements"]:
        calls = int(s["calls"]) or 1
        figures = (
            calls / ops,
            int(s["plans"]) / ops,
            float(s["plan_us"]),
            float(s["total_ms"]),
            float(s["mean_us"]),
            int(s["hit"]) / calls,
            int(s["dirtied"]) / calls,
            int(s["wal_bytes"]) / calls,
        )
        nested = "" if s["toplevel"] == "t" else "(nested) "
        out.write(" ".join(f"{f:10.2f}" for f in figures) + f"  {nested}{s['query'][:300]}\n")


def _with_statistics(server: DatabaseServer, explain_ms: float) -> None:
    """Restart `server` with pg_stat_statements loaded and the view created; with `explain_ms`,
    auto_explain logs (to the server's log) the plan, times and buffers of every statement slower."""
    libraries = "pg_stat_statements, auto_explain" if explain_ms else "pg_stat_statements"
    server.sql(f"ALTER SYSTEM SET shared_preload_libraries = {libraries}")
    server.sql("ALTER SYSTEM SET track_io_timing = on")
    server.stop()
    server.start()
    settings = {"pg_stat_statements.track": "'all'", "pg_stat_statements.track_planning": "on"}
    if explain_ms:
        settings |= {
            "auto_explain.log_min_duration": f"'{explain_ms}ms'",
            "auto_explain.log_analyze": "on",
            "auto_explain.log_buffers": "on",
            "auto_explain.log_nested_statements": "on",
        }
    for setting, value in settings.items():
        server.sql(f"ALTER SYSTEM SET {setting} = {value}")
    server.sql("SELECT pg_reload_conf()")
    server.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgstat", description=__doc__.split("\n\n")[0])
    kube.add_arguments(parser)
    parser.set_defaults(targets="kinepy-postgres-w1,kine-postgres", out="/tmp/kinepy-pgstat-kube.json")
    parser.add_argument("--top", type=int, default=12, help="statements shown per phase")
    parser.add_argument("--explain-ms", type=float, default=0.0, help="auto_explain beyond this")
    parser.add_argument("--explain-log", default="/tmp/kinepy-pgstat-explain.log", help="their plans")
    parser.add_argument("--stats-out", default="/tmp/kinepy-pgstat.json", help="the statistics as JSON")
    args = parser.parse_args(argv)
    get, measure = targets.DatabaseServers.get, kube.Phases.measure
    profiled: list[_Profiled] = []
    log_paths: list[Path] = []

    def get_profiled(self: targets.DatabaseServers, kind: str) -> DatabaseServer:
        fresh = kind not in self._servers
        server = get(self, kind)
        if fresh and kind == "postgres":
            _with_statistics(server, args.explain_ms)
            log_paths.append(server.log_path)
            profiled.append(_Profiled(server, args.top))
            kube.Phases.measure = profiled[-1].wrap(measure)  # type: ignore[method-assign]
        return server

    close = targets.DatabaseServers.close

    def close_keeping_log(self: targets.DatabaseServers) -> None:
        if args.explain_ms:  # the server's log goes with its directory
            Path(args.explain_log).write_text("".join(path.read_text(errors="replace") for path in log_paths))
        close(self)

    targets.DatabaseServers.get = get_profiled  # type: ignore[method-assign]
    targets.DatabaseServers.close = close_keeping_log  # type: ignore[method-assign]
    try:
        code = kube.run(args)
    finally:
        targets.DatabaseServers.get, kube.Phases.measure = get, measure  # type: ignore[method-assign]
        targets.DatabaseServers.close = close  # type: ignore[method-assign]

    phases = [entry for p in profiled for entry in p.phases]
    Path(args.stats_out).write_text(json.dumps(phases, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
