"""A URL or a file name -> the Source that reads it or the Target that writes it.

A source is a datastore endpoint as `kinepy --datastore-endpoint` takes it (`sqlite://PATH`,
`postgres://…`, `mysql://…`), or the path of a file, recognised by its content (a SQLite file:
a kinepy store, e.g. a `kinepy backup` or `etcdctl snapshot save` of kinepy). Readers of other
formats plug in here.
"""

from __future__ import annotations

import os

from kinepy.backends.factory import create_backend
from kinepy.backends.sql.bulk import open_export
from kinepy.endpoint import parse_endpoint
from kinepy.errors import ConfigError
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
    """`sqlite`, or `unknown`, from a file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    return "sqlite" if head == SQLITE_MAGIC else "unknown"


def open_source(location: str, *, connect_timeout: float = 10.0) -> Source:
    """The Source for `location` (nothing is connected or read before its `open`)."""
    if is_plain_path(location):
        if not os.path.exists(location):
            raise ConfigError(f"source {location} does not exist")
        if os.path.isfile(location) and file_kind(location) != "sqlite":
            raise ConfigError(f"source {location} is not a SQLite file (kinepy's store or backup)")
    return KinepySource(open_export(_spec(location), connect_timeout=connect_timeout))


def open_target(location: str, *, connect_timeout: float = 10.0) -> Target:
    """The Target for `location`: a kinepy store on any backend (created when missing)."""
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
    sa, sb = _spec(a), _spec(b)
    if isinstance(sa, SQLiteSpec) and isinstance(sb, SQLiteSpec):
        return os.path.abspath(sa.path) == os.path.abspath(sb.path)
    return str(sa) == str(sb)
