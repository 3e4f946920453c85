"""A URL or a file name -> the Source that reads it or the Target that writes it.

A source is a datastore endpoint as `kinepy --datastore-endpoint` takes it (`sqlite://PATH`,
`postgres://…`, `mysql://…`) holding kinepy's store or kine's `kine` table (the URL kine was
given), a live etcd (`http://HOST:2379`), or the path of a file, recognised by its content: a SQLite
file (a kinepy store, e.g. a `kinepy backup` or `etcdctl snapshot save` of kinepy, or kine's
database) or an etcd snapshot (`etcdctl snapshot save` of etcd: a bbolt file).
"""

from __future__ import annotations

import os

from kinepy.backends.factory import create_backend
from kinepy.backends.sql.bulk import open_export
from kinepy.backends.sql.kine import SQLiteKineExport, sqlite_tables
from kinepy.endpoint import parse_endpoint
from kinepy.errors import ConfigError
from kinepy.migrate.bbolt import is_bbolt
from kinepy.migrate.etcd_live import TIMEOUT as ETCD_TIMEOUT
from kinepy.migrate.etcd_live import EtcdLiveSource, is_etcd_url
from kinepy.migrate.etcd_snapshot import EtcdSnapshotSource
from kinepy.migrate.etcd_snapshot_target import SCHEME as SNAPSHOT_SCHEME
from kinepy.migrate.etcd_snapshot_target import EtcdSnapshotTarget
from kinepy.migrate.etcd_target import EtcdTarget
from kinepy.migrate.kine_store import KineSource, ServerSource
from kinepy.migrate.kinepy_store import KinepySource, KinepyTarget
from kinepy.migrate.model import Source, Target
from kinepy.specs import BackendSettings, BackendSpec, EtcdSpec, SQLiteSpec

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_plain_path(location: str) -> bool:
    return "://" not in location


def _spec(location: str) -> BackendSpec:
    if is_plain_path(location):
        return SQLiteSpec(location)
    spec = parse_endpoint(location)
    if isinstance(spec, EtcdSpec):
        raise ConfigError(
            f"{spec.describe()} is an etcd endpoint: copying from a live etcd is not supported yet"
        )
    return spec


def file_kind(path: str) -> str:
    """`sqlite`, `etcd-snapshot` (a bbolt file) or `unknown`, from a file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    return "etcd-snapshot" if is_bbolt(head) else "unknown"


def _sqlite_source(path: str) -> Source:
    """kine's SQLite database (a `kine` table and no kinepy tables), or a kinepy store."""
    tables = sqlite_tables(path) if os.path.isfile(path) else set()
    if "kine" in tables and "kv_log" not in tables:
        return KineSource(SQLiteKineExport(path))
    return KinepySource(open_export(SQLiteSpec(path)))


def _first_endpoint(location: str) -> str:
    """The first of a comma-separated list of etcd URLs, with the list's query (TLS files)."""
    head, _, query = location.partition("?")
    first = head.split(",")[0]
    return f"{first}?{query}" if query else first


def open_source(location: str, *, connect_timeout: float = 10.0) -> Source:
    """The Source for `location` (nothing is connected or read before its `open`): a kinepy store
    or kine's table at a datastore endpoint, a live etcd at `http://HOST:PORT`, or a file
    recognised by its content (a SQLite file of kinepy or kine, an etcd snapshot)."""
    if is_plain_path(location):
        if not os.path.exists(location):
            raise ConfigError(f"source {location} does not exist")
        if os.path.isfile(location):
            kind = file_kind(location)
            if kind == "etcd-snapshot":
                return EtcdSnapshotSource(location)
            if kind != "sqlite":
                raise ConfigError(
                    f"source {location} is not a SQLite file (a kinepy store or backup, kine's "
                    "database) or an etcd snapshot"
                )
        return _sqlite_source(location)
    if is_etcd_url(location):  # any port: the etcd being left need not listen on 2379
        return EtcdLiveSource(_first_endpoint(location), timeout=max(connect_timeout, ETCD_TIMEOUT))
    spec = parse_endpoint(location)
    if isinstance(spec, SQLiteSpec):
        if spec.path == ":memory:" or spec.path.startswith("file::memory:"):
            return KinepySource(open_export(spec, connect_timeout=connect_timeout))  # refuses it
        return _sqlite_source(spec.path)
    if isinstance(spec, EtcdSpec):  # pragma: no cover - http(s):// is handled above
        raise ConfigError(f"{spec.describe()} is an etcd endpoint")
    return ServerSource(spec, connect_timeout=connect_timeout)


def open_target(location: str, *, connect_timeout: float = 10.0) -> Target:
    """The Target for `location`: a kinepy store on any backend (created when missing), or a live
    etcd at `http://HOST:PORT` (the current state only: see `etcd_target`), or an etcd snapshot file
    at `etcd-snapshot://PATH` (every revision: see `etcd_snapshot_target`)."""
    if is_etcd_url(location):
        return EtcdTarget(_first_endpoint(location), timeout=max(connect_timeout, ETCD_TIMEOUT))
    if location.startswith(SNAPSHOT_SCHEME):
        return EtcdSnapshotTarget(location.removeprefix(SNAPSHOT_SCHEME))
    spec = _spec(location)
    if isinstance(spec, SQLiteSpec):
        if spec.path == ":memory:" or spec.path.startswith("file::memory:"):
            raise ConfigError("an in-memory SQLite database cannot be a copy's target")
        directory = os.path.dirname(os.path.abspath(spec.path))
        if not os.path.isdir(directory):
            raise ConfigError(f"target directory {directory} does not exist")
    settings = BackendSettings(read_threads=1, max_connections=2, connect_timeout=connect_timeout)
    return KinepyTarget(create_backend(spec, settings), str(spec))


def same_location(a: str, b: str) -> bool:
    """Whether two locations name the same store (as far as can be told without connecting)."""
    if a.startswith(("http://", "https://", SNAPSHOT_SCHEME)) or b.startswith(
        ("http://", "https://", SNAPSHOT_SCHEME)
    ):
        return a == b
    sa, sb = _spec(a), _spec(b)
    if isinstance(sa, SQLiteSpec) and isinstance(sb, SQLiteSpec):
        return os.path.abspath(sa.path) == os.path.abspath(sb.path)
    return str(sa) == str(sb)
