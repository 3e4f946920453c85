"""Reading a live etcd over its v3 gRPC API: every key at one revision, and the leases.

The copy is the store **at one revision R**: the first request pins R (the store revision when it
runs), and every page of keys is read at R (`Range` with `revision`), so writes that land meanwhile
neither tear the copy nor show up in it. Each key keeps its `create_revision`, `mod_revision`,
`version` and lease, and the copy's store revision is R, so clients keep their revisions. History
below R is **not** copied (etcd serves it only as watch events, not as a table): the copy is
compacted at R, and a client asking for an older revision gets etcd's "required revision has been
compacted", as after a compaction on etcd itself.

Leases come from `LeaseLeases` and `LeaseTimeToLive`, each with the time it has left; one that
expires between the two reads is kept with a deadline of now, so the target revokes it (and deletes
its keys) as etcd did.

Keys sharing a `mod_revision` (written by one Txn) get subs 0, 1, ... in key order: etcd does not
say in which order the Txn wrote them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc

from kinepy.backends.base import LogRow
from kinepy.errors import KinepyError
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.types import Lease

PAGE_SIZE = 1000  # keys per Range: a page of 1000 Kubernetes objects stays far below gRPC's 2 GiB
TIMEOUT = 30.0  # seconds per request
_MAX_MESSAGE = 256 * 1024 * 1024


class EtcdSourceError(KinepyError):
    """The etcd cannot be read: unreachable, refused, or compacted past the copy's revision."""


def is_etcd_url(url: str) -> bool:
    """`http://host:port`: etcd's own client URL form (kinepy's SQL endpoints never use it)."""
    return url.startswith("http://")


def _target(url: str) -> str:
    if not is_etcd_url(url):
        raise EtcdSourceError(f"{url!r}: an etcd endpoint is http://HOST:PORT")
    host = url.removeprefix("http://").rstrip("/")
    if not host or "/" in host:
        raise EtcdSourceError(f"{url!r}: an etcd endpoint is http://HOST:PORT")
    return host


class EtcdLive:
    """A live etcd read at one revision. `revision` is pinned when the object is made."""

    def __init__(self, url: str, *, page_size: int = PAGE_SIZE, timeout: float = TIMEOUT) -> None:
        self.url = url
        self._page_size = page_size
        self._timeout = timeout
        self._channel = grpc.insecure_channel(
            _target(url),
            options=[("grpc.max_receive_message_length", _MAX_MESSAGE)],
        )
        self._kv = rpc_pb2_grpc.KVStub(self._channel)
        self._lease = rpc_pb2_grpc.LeaseStub(self._channel)
        try:
            reply = self._call(
                self._kv.Range, rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
            )
        except BaseException:
            self.close()
            raise
        self.revision: int = reply.header.revision
        self.compact_revision: int = self.revision
        self.key_count: int = reply.count

    def __enter__(self) -> EtcdLive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: object) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.OUT_OF_RANGE:
                raise EtcdSourceError(
                    f"{self.url}: etcd compacted past revision {getattr(self, 'revision', '?')} during the "
                    "copy; run it again"
                ) from exc
            raise EtcdSourceError(f"{self.url}: etcd did not answer: {code.name}: {details}") from exc

    def count(self) -> int:
        """The number of keys at the pinned revision."""
        return self.key_count

    def history(self) -> Iterator[LogRow]:
        """Every key at the pinned revision as one history row at its `mod_revision`, in key order."""
        subs: dict[int, int] = {}
        start = b"\0"
        while True:
            request = rpc_pb2.RangeRequest(
                key=start, range_end=b"\0", revision=self.revision, limit=self._page_size
            )
            reply = self._call(self._kv.Range, request)
            for kv in reply.kvs:
                sub = subs.get(kv.mod_revision, 0)
                subs[kv.mod_revision] = sub + 1
                yield LogRow(
                    kv.mod_revision, sub, kv.key, kv.create_revision, kv.version, kv.lease, kv.value, False
                )
            if not reply.more or not reply.kvs:
                return
            start = reply.kvs[-1].key + b"\0"

    def leases(self, now: float | None = None) -> list[Lease]:
        """Every lease, with a deadline of now plus the time it has left."""
        listed = self._call(self._lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest())
        leases = []
        for status in listed.leases:
            reply = self._call(self._lease.LeaseTimeToLive, rpc_pb2.LeaseTimeToLiveRequest(ID=status.ID))
            start = time.time() if now is None else now
            left = max(reply.TTL, 0)  # -1: it expired since it was listed
            leases.append(Lease(status.ID, max(reply.grantedTTL, 1), start + left))
        return leases
