"""Every error kinepy raises, in one place.

    KinepyError
    ├── ConfigError            bad flag, environment variable or datastore endpoint
    ├── ListenError            the server cannot listen on its address (in use, not this host's, …)
    ├── BackendError           the database failed a statement
    │   ├── BackendUnavailable the database cannot be reached (retryable)
    │   │   └── BackendConflict a replicated database rolled a transaction back (a conflict)
    │   └── BackendNoSpace     the database's disk is full
    └── EtcdError              an etcd rule was broken; carries etcd's gRPC code and exact text
        ├── KeyNotProvidedError, KeyNotFoundError, ValueProvidedError, LeaseProvidedError,
        ├── TooManyOpsError, DuplicateKeyError, InvalidSortOptionError, RequestTooLargeError,
        ├── CompactedError, FutureRevisionError,
        ├── LeaseNotFoundError, LeaseExistsError, LeaseTTLTooLargeError,
        └── UnavailableError, StoppedError, …

The gRPC code is kept as its name (a string) so that `kinepy.store` needs no grpc import;
`kinepy.server` turns it into a status. The Go client maps errors by their exact text, so the
texts here are etcd's byte for byte (etcd's api/v3rpc/rpctypes/error.go).
"""

from __future__ import annotations


class KinepyError(Exception):
    """Base of every kinepy error."""


class ConfigError(KinepyError):
    """A flag, environment variable or endpoint is not one kinepy accepts."""


class ListenError(KinepyError):
    """The server cannot listen on its address: another process holds it, it is not an address of
    this host, the port is privileged, or grpc refused it."""


class BackendError(KinepyError):
    """The database failed a statement."""


class BackendUnavailable(BackendError):
    """The database cannot be reached; the request may be retried."""


class BackendConflict(BackendUnavailable):
    """A multi-primary database (Galera, Group Replication) rolled a transaction back because one
    committed on another node conflicted with it; the whole transaction may be run again."""


class BackendNoSpace(BackendError):
    """The database could not write for want of space (SQLite's SQLITE_FULL: "database or disk is
    full"); the message names the file. The store raises the NOSPACE alarm and answers NoSpaceError."""


class EtcdError(KinepyError):
    """An error etcd itself would return, with its gRPC code name and exact message."""

    code: str = "UNKNOWN"
    message: str = ""

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class KeyNotProvidedError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: key is not provided"


class KeyNotFoundError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: key not found"


class ValueProvidedError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: value is provided"


class LeaseProvidedError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: lease is provided"


class TooManyOpsError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: too many operations in txn request"


class DuplicateKeyError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request"


class InvalidSortOptionError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: invalid sort option"


class RequestTooLargeError(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: request is too large"


class CompactedError(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"


class FutureRevisionError(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision"


class NoSpaceError(EtcdError):
    """The database's disk is full, or the NOSPACE alarm is active (etcd's ErrGRPCNoSpace: etcd answers
    it beyond its quota and while the alarm is raised)."""

    code, message = "RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded"


class LeaseNotFoundError(EtcdError):
    code, message = "NOT_FOUND", "etcdserver: requested lease not found"


class LeaseExistsError(EtcdError):
    code, message = "FAILED_PRECONDITION", "etcdserver: lease already exists"


class LeaseTTLTooLargeError(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: too large lease TTL"


class TooManyRequestsError(EtcdError):
    """A write batch kept conflicting with other nodes' commits (`BackendConflict`) until its
    retries ran out."""

    code, message = "RESOURCE_EXHAUSTED", "etcdserver: too many requests"


class AuthNotEnabledError(EtcdError):
    code, message = "FAILED_PRECONDITION", "etcdserver: authentication is not enabled"


class StoppedError(EtcdError):
    """The server is shutting down (etcd's ErrGRPCStopped); clients retry, on another endpoint if any."""

    code, message = "UNAVAILABLE", "etcdserver: server stopped"


class UnavailableError(EtcdError):
    """The datastore is unreachable; the message says why (never with a password)."""

    code, message = "UNAVAILABLE", "kinepy: datastore unavailable"


class KeyTooLongError(EtcdError):
    """A key longer than the datastore can index (PostgreSQL and MySQL cap index entries)."""

    code, message = "INVALID_ARGUMENT", "kinepy: key is longer than the datastore allows"


# Watch cancel reasons are the unprefixed mvcc texts (etcd's server/storage/mvcc errors).
WATCH_RANGE_EMPTY = "mvcc: watcher range is empty"
WATCH_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


def client_message(exc: EtcdError | BackendError) -> str:
    """The text a client is given for `exc`: etcd's own for an etcd error (or a full disk)."""
    if isinstance(exc, EtcdError):
        return exc.message
    if isinstance(exc, BackendUnavailable):
        return f"kinepy: datastore unavailable: {exc}"
    if isinstance(exc, BackendNoSpace):
        return NoSpaceError.message
    return f"kinepy: datastore error: {exc}"
