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

etcd lists keys in key order; the copy goes in revision order, so the keys are spooled to a
temporary SQLite file (bounded memory) and read back by revision. Keys sharing a `mod_revision`
(written by one Txn) get subs 0, 1, ... in key order: etcd does not say in which order the Txn wrote
them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc

from kinepy.backends.base import LogRow
from kinepy.backends.sql.spool import RowSpool
from kinepy.errors import KinepyError
from kinepy.migrate.model import Closing, Header
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.specs import EtcdSpec, upstream_tls
from kinepy.types import Lease

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # keys per Range: a page of 1000 Kubernetes objects stays far below gRPC's 2 GiB
TIMEOUT = 30.0  # seconds per request (an unreachable etcd fails at once, whatever the timeout)
_MAX_MESSAGE = 256 * 1024 * 1024


class EtcdSourceError(KinepyError):
    """The etcd cannot be read: unreachable, refused, or compacted past the copy's revision."""


def is_etcd_url(url: str) -> bool:
    """`http(s)://host:port`: etcd's own client URL form (kinepy's SQL endpoints never use it)."""
    return url.startswith(("http://", "https://"))


def etcd_channel(url: str, error: type[KinepyError]) -> tuple[grpc.Channel, str]:
    """A channel to the etcd at `http://HOST:PORT`, or `https://HOST:PORT` with TLS files in the query
    (`?ca-file=…&cert-file=…&key-file=…`, as for passthrough; default: the system CAs, no client
    certificate); and the URL without its query, to show."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise error(f"{url!r}: an etcd endpoint is http(s)://HOST:PORT[?ca-file=…&cert-file=…&key-file=…]")
    target = parts.netloc
    shown = f"{parts.scheme}://{target}"
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE)]
    if parts.scheme == "http":
        return grpc.insecure_channel(target, options=options), shown
    tls = upstream_tls(EtcdSpec((shown,), dict(parse_qsl(parts.query))))

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise error(f"{shown}: cannot read {path}: {exc.strerror}") from exc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file),
        private_key=read(tls.key_file),
        certificate_chain=read(tls.cert_file),
    )
    return grpc.secure_channel(target, credentials, options=options), shown


class EtcdLive(Closing):
    """A live etcd read at one revision. `revision` is pinned when the object is made."""

    def __init__(self, url: str, *, page_size: int = PAGE_SIZE, timeout: float = TIMEOUT) -> None:
        self._page_size = page_size
        self._timeout = timeout
        self._channel, self.url = etcd_channel(url, EtcdSourceError)
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

    def keys(self) -> Iterator[LogRow]:
        """Every key at the pinned revision as a history row at its `mod_revision`, in key order
        (`sub` 0: the Source numbers the keys of one revision once they are in revision order)."""
        start = b"\0"
        while True:
            request = rpc_pb2.RangeRequest(
                key=start, range_end=b"\0", revision=self.revision, limit=self._page_size
            )
            reply = self._call(self._kv.Range, request)
            for kv in reply.kvs:
                yield LogRow(
                    kv.mod_revision, 0, kv.key, kv.create_revision, kv.version, kv.lease, kv.value, False
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


class EtcdLiveSource:
    """A live etcd as a copy's `Source` (kinepy.migrate.model): its keys at one revision R, the
    copy compacted at R (see the module's docstring). `endpoint` is `http://HOST:PORT`."""

    def __init__(self, endpoint: str, *, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.description = f"etcd {urlsplit(endpoint)._replace(query='').geturl()}"
        self._timeout = timeout
        self._etcd: EtcdLive | None = None
        self._spool: RowSpool | None = None

    async def open(self, *, current_only: bool) -> Header:
        etcd = self._etcd = await asyncio.to_thread(EtcdLive, self.endpoint, timeout=self._timeout)
        log.info(
            "%s: reading every key at revision %d; etcd's history below it is not copied "
            "(the copy is compacted at %d)",
            self.description,
            etcd.revision,
            etcd.revision,
        )
        spool = self._spool = RowSpool()
        await asyncio.to_thread(self._read_all, etcd, spool)
        # The identity stays kinepy's own (0: the target chooses): etcd's is a member of a raft cluster.
        return Header(etcd.revision, etcd.revision, 0, 0, log_rows=spool.rows, current_rows=spool.rows)

    @staticmethod
    def _read_all(etcd: EtcdLive, spool: RowSpool) -> None:
        """Every key, spooled to disk: etcd lists keys in key order, a copy goes in revision order."""
        keys = etcd.keys()
        while batch := list(itertools.islice(keys, 5000)):
            spool.add(batch)

    async def log(self, *, batch_rows: int) -> AsyncIterator[list[LogRow]]:
        spool = self._spool
        assert spool is not None, "open() first"
        rows = spool.in_revision_order()
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(rows, batch_rows))):
            yield batch

    async def leases(self) -> list[Lease]:
        etcd = self._etcd
        assert etcd is not None, "open() first"
        return await asyncio.to_thread(etcd.leases)

    async def hash_kv(self, revision: int) -> int | None:
        return None  # etcd's HashKV hashes bbolt's bytes, not comparable with kinepy's

    async def aclose(self) -> None:
        etcd, self._etcd = self._etcd, None
        spool, self._spool = self._spool, None
        if etcd is not None:
            etcd.close()
        if spool is not None:
            spool.close()
