"""Moving a whole store between kinepy backends, in from kine and etcd, back to etcd: `kinepy migrate`,
`kinepy backup`, `kinepy restore`.

- `model.py`     what a copy moves (Header, history rows, leases) and the Source/Target interfaces;
- `kinepy_store.py` kinepy's own store (SQLite, PostgreSQL, MySQL) as a Source and as a Target;
- `kine_store.py` kine's `kine` table as a Source (and the PostgreSQL/MySQL source that tells kinepy's
                 store from kine's);
- `bbolt.py`, `etcd_snapshot.py` an etcd snapshot file read as a Source;
- `etcd_live.py` a live etcd read at one revision as a Source;
- `etcd_target.py` a live etcd receiving the current state (new revisions) as a Target;
- `bbolt_writer.py`, `etcd_snapshot_target.py` an etcd snapshot file written as a Target (every revision);
- `endpoints.py` a URL or a file name -> the Source or Target that reads or writes it;
- `copy.py`      the engine: refuse a non-empty target, copy in batches, resume, check the copy;
- `progress.py`  a progress bar on a terminal, log lines elsewhere;
- `cli.py`       the subcommands.

The SQL lives in `kinepy/backends/sql/` (`bulk.py`, `kine.py`, `spool.py`); this package never builds a
statement.
"""
