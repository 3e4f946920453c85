"""The one place that holds kinepy's settings and their defaults.

`cli.py` fills a `Config` from flags and the environment; library users build one directly.
Nothing else in kinepy reads `os.environ`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:2379"
DEFAULT_SQLITE_PATH = "./db/state.db"
# etcd's DefaultMaxRequestBytes; gRPC itself accepts this plus 512 KiB of overhead.
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
GRPC_OVERHEAD_BYTES = 512 * 1024
DEFAULT_MAX_TXN_OPS = 128
# Memory for watchers, by bytes (docs/configuration.md, --watch-window-bytes, says why these sizes).
DEFAULT_WATCH_WINDOW_BYTES = 64 << 20
DEFAULT_WATCH_STREAM_BUFFER_BYTES = 16 << 20
# kube-apiserver turns on RequestWatchProgress only for etcd >= 3.5.13 (it parses this as semver).
DEFAULT_EMULATED_ETCD_VERSION = "3.6.6"


SQLITE_INTEGRITY_CHECKS = ("quick", "full", "off")
"""`Config.sqlite_integrity_check`'s values."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything that configures one kinepy server."""

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    """`host:port` or `unix://path`; loopback unless told otherwise."""

    datastore_endpoint: str = ""
    """Kept as written; `kinepy.endpoint` parses it (empty = SQLite at ./db/state.db)."""

    server_cert_file: str = ""
    """TLS certificate for the listener (PEM); with `server_key_file`, clients must use TLS."""

    server_key_file: str = ""
    """TLS private key for the listener (PEM)."""

    trusted_ca_file: str = ""
    """CA bundle (PEM) that client certificates must chain to; setting it turns client-certificate auth on."""

    datastore_ca_file: str = ""
    """PostgreSQL/MySQL/etcd: CA bundle (PEM) the database's certificate must chain to; TLS on."""

    datastore_cert_file: str = ""
    """PostgreSQL/MySQL/etcd: client certificate (PEM) kinepy presents to the database; TLS on."""

    datastore_key_file: str = ""
    """PostgreSQL/MySQL/etcd: the client certificate's private key (PEM)."""

    datastore_skip_verify: bool = False
    """PostgreSQL/MySQL: use TLS without verifying the database's certificate."""

    slow_sql_threshold: float = 1.0
    """Seconds after which a datastore call is logged as slow (INFO); 0 turns it off."""

    slow_sql_warning_threshold: float = 5.0
    """Seconds after which a datastore call is logged as slow at WARNING; 0 turns it off."""

    metrics_address: str = ""
    """`host:port` serving Prometheus metrics at `/metrics` (`:9090`: loopback, 127.0.0.1;
    `0.0.0.0:9090` or `[::]:9090`: every interface); empty = not served (the registry,
    `App.metrics.registry`, is kept all the same). Over HTTPS with `metrics_cert_file` when set,
    else with the listener's certificate when `server_cert_file` is set, unless
    `metrics_ignore_tls_config`."""

    metrics_ignore_tls_config: bool = False
    """Serve metrics over plain HTTP even when the listener uses TLS (no effect with `metrics_cert_file`)."""

    metrics_cert_file: str = ""
    """TLS certificate (PEM) for the metrics listener, instead of the listener's; HTTPS on."""

    metrics_key_file: str = ""
    """TLS private key (PEM) of `metrics_cert_file`."""

    metrics_trusted_ca_file: str = ""
    """CA bundle (PEM) scrapers' client certificates must chain to (needs `metrics_cert_file`);
    client-certificate auth on for metrics."""

    emulated_etcd_version: str = DEFAULT_EMULATED_ETCD_VERSION
    """The etcd version `Status` reports. kube-apiserver asks for watch progress only from 3.5.13 on."""

    log_level: str = "info"
    log_format: str = "text"

    unsafe_no_fsync: bool = False
    """Acknowledge writes without waiting for them to reach the disk (SQLite synchronous=NORMAL)."""

    sqlite_integrity_check: str = "quick"
    """SQLite: check the file at start, "quick" (`PRAGMA quick_check`, at most 10 s), "full"
    (`integrity_check`, however long) or "off"; a damaged file is refused."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS

    write_batch_max: int = 1000
    """Most write requests committed in one database transaction (group commit)."""

    read_threads: int = 4
    """SQLite: reader threads, each with its own connection (WAL lets them read while the writer writes)."""

    watch_progress_notify_interval: float = 5.0
    """Seconds between progress notifications to idle `progress_notify` watchers (etcd: 10 min;
    kine and k3s: 5 s, which keeps kube-apiserver's watch cache bookmarks fresh)."""

    watch_window_events: int = 8192
    """Recent events kept in memory, so new and lagging watchers catch up without the database."""

    watch_window_bytes: int = DEFAULT_WATCH_WINDOW_BYTES
    """Most bytes (keys, values, prev_kv and per-event overhead) the recent-event window holds; the
    oldest revisions beyond it (or beyond `watch_window_events`) are read from the database instead."""

    watch_stream_buffer_events: int = 4096
    """Events queued per watch stream; a watcher beyond it catches up later instead of growing memory."""

    watch_stream_buffer_bytes: int = DEFAULT_WATCH_STREAM_BUFFER_BYTES
    """Bytes of events queued per watch stream, the same way (whichever cap is reached first)."""

    lease_expiry_interval: float = 0.5
    """Seconds between checks for expired leases (etcd checks about every 500 ms)."""

    compact_interval: float = 0.0
    """Seconds between automatic compactions; 0 disables them (kube-apiserver compacts by itself)."""

    compact_interval_jitter: int = 10
    """Percent by which each automatic compaction interval varies at random (0 to 99), so that
    processes sharing a database do not all compact at once."""

    compact_retention: int = 1000
    """Automatic compaction keeps this many most recent revisions of history."""

    compact_batch_rows: int = 1000
    """History rows one compaction transaction works through (whole revisions); bounds how long
    a write waits behind compaction."""

    datastore_max_connections: int = 10
    """PostgreSQL/MySQL: most connections this process opens to the database (its pool; at least 2).
    PostgreSQL adds one more, LISTENing for other processes' commits."""

    datastore_max_idle_time: float = 120.0
    """PostgreSQL/MySQL: seconds after which a connection left idle in the pool is closed; 0 = never."""

    datastore_poll_interval: float = 0.1
    """Seconds between looks for other processes' commits on a shared database: how soon a MySQL
    process's watchers see a write made through another process. PostgreSQL is woken by NOTIFY at
    once and looks this often only as a fallback."""

    datastore_connect_timeout: float = 30.0
    """PostgreSQL/MySQL: seconds to keep retrying an unreachable database at start before giving up
    (once running, kinepy reconnects by itself for as long as it takes)."""

    workers: int = 1
    """Serving processes behind the one listen address (`kinepy --workers`; TCP only). 1 serves in
    this process; more are started and supervised by `kinepy.workers` (the CLI's default is one per
    CPU). The library (`App`) always serves in its own process: it is one worker."""

    worker_socket_dir: str = ""
    """With several workers: each also serves on its own Unix socket `DIR/worker-N.sock`, to reach
    one worker in particular (tests, per-worker health checks). Empty: not served."""

    def __post_init__(self) -> None:
        if self.max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        if self.watch_window_bytes <= 0 or self.watch_stream_buffer_bytes <= 0:
            raise ValueError("watch_window_bytes and watch_stream_buffer_bytes must be positive")
        if self.datastore_max_connections < 2:
            raise ValueError("datastore_max_connections must be at least 2")
        if self.datastore_poll_interval <= 0:
            raise ValueError("datastore_poll_interval must be positive")
        if self.datastore_connect_timeout < 0:
            raise ValueError("datastore_connect_timeout must not be negative")
        if self.datastore_max_idle_time < 0:
            raise ValueError("datastore_max_idle_time must not be negative")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not 0 <= self.compact_interval_jitter < 100:
            raise ValueError("compact_interval_jitter must be from 0 to 99 (percent)")
        if bool(self.server_cert_file) != bool(self.server_key_file):
            raise ValueError("server_cert_file and server_key_file go together")
        if self.trusted_ca_file and not self.server_cert_file:
            raise ValueError(
                "trusted_ca_file (client-certificate auth) needs server_cert_file and server_key_file"
            )
        if bool(self.metrics_cert_file) != bool(self.metrics_key_file):
            raise ValueError("metrics_cert_file and metrics_key_file go together")
        if self.metrics_trusted_ca_file and not self.metrics_cert_file:
            raise ValueError(
                "metrics_trusted_ca_file (client-certificate auth for metrics) needs metrics_cert_file "
                "and metrics_key_file"
            )
        if bool(self.datastore_cert_file) != bool(self.datastore_key_file):
            raise ValueError("datastore_cert_file and datastore_key_file go together")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRole:
    """What makes an `App` one of several workers behind one address (`kinepy.workers`)."""

    index: int
    """0 to `count - 1`; worker 0 alone runs the duties that must run once (`leader`)."""

    count: int

    notify_read_fd: int = -1
    """SQL databases: this worker's end of its change pipe, readable when another worker committed."""

    notify_write_fds: tuple[int, ...] = ()
    """SQL databases: the other workers' change pipes, each told of this worker's commits."""

    alarm_fd: int = -1
    """The alarm table every worker shares (`kinepy.store.alarms.SharedAlarmTable`)."""

    @property
    def leader(self) -> bool:
        """Lease expiry, automatic compaction and resuming an interrupted compaction run here only."""
        return self.index == 0
