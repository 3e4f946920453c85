"""`kinepy --workers N`: N serving processes behind one listen address, and their supervisor.

count.py (how many), supervisor.py (the `kinepy` process: starts, restarts, drains, readiness, merged
metrics), worker.py (one serving process: an `App` with a `WorkerRole`), control.py (their line protocol),
aggregate.py (metrics merged over workers). The database is what keeps them one etcd: see
docs/architecture.md, "Workers".
"""
