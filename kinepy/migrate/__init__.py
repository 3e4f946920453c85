"""Moving a whole store between kinepy backends, and in from kine and etcd: `kinepy migrate`,
`kinepy backup`, `kinepy restore`.

- `model.py`     what a copy moves (Header, history rows, leases) and the Source/Target interfaces;
- `kinepy_store.py` kinepy's own store (SQLite, PostgreSQL, MySQL) as a Source and as a Target;
- `bbolt.py`, `etcd_snapshot.py` readers of etcd snapshot files;
- `endpoints.py` a URL or a file name -> the Source or Target that reads or writes it;
- `copy.py`      the engine: refuse a non-empty target, copy in batches, resume, check the copy;
- `progress.py`  a progress bar on a terminal, log lines elsewhere;
- `cli.py`       the subcommands.

The SQL lives in `kinepy/backends/sql/bulk.py`; this package never builds a statement.
"""
