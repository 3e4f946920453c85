"""etcd passthrough: forward every etcd gRPC call, as raw bytes, to a real etcd cluster.

When `--datastore-endpoint` names a real etcd (`http(s)://host:port[,…]`, `unix(s)://path[,…]`), kinepy
starts no store. `PassthroughHandler.check` makes sure at start that an upstream answers etcd's `Status`
(over TLS or not, as its scheme says) and says clearly why none does; then
its listener forwards each call of the etcd services (unary and streaming: Watch, LeaseKeepAlive,
Snapshot) to the first upstream endpoint that answers, without decoding the messages. A call that
fails with UNAVAILABLE before any response was relayed is retried on the next endpoint (failover);
once a stream has relayed data it ends with the upstream's status, as a direct connection would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from kinepy.errors import BackendError, BackendUnavailable, ConfigError
from kinepy.proto import rpc_pb2
from kinepy.specs import EtcdSpec, upstream_tls

log = logging.getLogger(__name__)

_PASS = (lambda b: b, lambda b: b)  # serializer / deserializer for raw bytes
_FORWARDED_METADATA_SKIP = frozenset({"content-type", "user-agent", "grpc-accept-encoding", "grpc-timeout"})


STATUS_METHOD = "/etcdserverpb.Maintenance/Status"
_CHECK_ATTEMPT_SECONDS = 5.0  # one Status call at start
_CHECK_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where and how to reach one etcd member."""

    url: str  # as the endpoint names it: http(s)://host:port or unix(s)://path
    target: str  # grpc's: host:port or unix:path
    tls: bool


def upstreams(spec: EtcdSpec) -> list[Upstream]:
    out = []
    for url in spec.endpoints:
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme in ("unix", "unixs"):
            out.append(Upstream(url, f"unix:{rest}", scheme == "unixs"))
        else:
            out.append(Upstream(url, urlsplit(url).netloc, scheme == "https"))
    return out


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the etcd TLS file {path}: {exc.strerror or exc}") from None


def _why(upstream: Upstream, error: grpc.aio.AioRpcError) -> tuple[str, bool]:
    """What a failed `Status` says about `upstream`, and whether waiting can change it."""
    details = error.details() or ""
    code = error.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{upstream.url} answers, but not etcd's Status ({details}): is it an etcd?", False
    if "handshake failed" in details.lower() or "ssl_error" in details.lower():
        hint = "does it serve plain http://, or is its certificate not signed by --ca-file?"
        return f"{upstream.url}: TLS handshake failed ({hint}): {details}", False
    if "Failed parsing HTTP/2" in details:
        return f"{upstream.url} does not speak gRPC (HTTP/2): is it an etcd client URL?", False
    if upstream.tls is False and "Socket closed" in details:
        return f"{upstream.url} closed the connection (does it want https://?): {details}", True
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{upstream.url} did not answer within {_CHECK_ATTEMPT_SECONDS:.0f}s", True
    return f"{upstream.url}: {details or code.name}", code == grpc.StatusCode.UNAVAILABLE


class _Kind:
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


def _etcd_methods() -> dict[str, str]:
    """Every etcd RPC path and its streaming kind, from our own descriptors."""
    methods = {}
    for service in rpc_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            cs, ss = method.client_streaming, method.server_streaming
            kind = (
                _Kind.STREAM_STREAM
                if cs and ss
                else _Kind.STREAM_UNARY
                if cs
                else _Kind.UNARY_STREAM
                if ss
                else _Kind.UNARY_UNARY
            )
            methods[f"/{service.full_name}/{method.name}"] = kind
    return methods


class PassthroughHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic gRPC handler relaying etcd calls to upstream channels, with failover."""

    def __init__(self, spec: EtcdSpec) -> None:
        self._upstreams = upstreams(spec)
        tls = upstream_tls(spec)
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca_file),
            private_key=_read(tls.key_file),
            certificate_chain=_read(tls.cert_file),
        )
        self._channels: list[grpc.aio.Channel] = []
        self._methods = _etcd_methods()
        self._preferred = 0

    def _channel(self, index: int) -> grpc.aio.Channel:
        while len(self._channels) <= index:
            upstream = self._upstreams[len(self._channels)]
            options = [
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.max_send_message_length", 2**31 - 1),
            ]
            if upstream.tls:
                channel = grpc.aio.secure_channel(upstream.target, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(upstream.target, options=options)
            self._channels.append(channel)
        return self._channels[index]

    async def check(self, retry_for: float) -> None:
        """Return once an upstream answers etcd's `Status`; keep trying the unreachable ones for
        `retry_for` seconds; raise `BackendError` at once when every upstream fails in a way waiting
        cannot change (TLS or not as the scheme says, not gRPC, not etcd), `BackendUnavailable` when
        none answered in time. The ones that fail while another answers are logged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        request = rpc_pb2.StatusRequest().SerializeToString()
        while True:
            reasons: list[tuple[str, bool]] = []
            for index, upstream in enumerate(self._upstreams):
                call = self._channel(index).unary_unary(STATUS_METHOD, *_PASS)
                try:
                    answer = await call(request, timeout=_CHECK_ATTEMPT_SECONDS)
                except grpc.aio.AioRpcError as exc:
                    reasons.append(_why(upstream, exc))
                    continue
                version = rpc_pb2.StatusResponse.FromString(answer).version
                log.info("etcd upstream %s answers (etcd %s)", upstream.url, version)
                for reason, _ in reasons:
                    log.warning("etcd upstream %s", reason)
                self._preferred = index
                return
            text = "; ".join(reason for reason, _ in reasons)
            if not any(retry for _, retry in reasons):
                raise BackendError(f"etcd passthrough: no upstream answers: {text}")
            if loop.time() >= deadline:
                raise BackendUnavailable(
                    f"etcd passthrough: no upstream answered within {retry_for:.0f}s: {text}"
                )
            log.warning("etcd passthrough: no upstream answers yet (%s); retrying", text)
            await asyncio.sleep(_CHECK_RETRY_SECONDS)

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()

    def _order(self) -> list[int]:
        n = len(self._upstreams)
        return [(self._preferred + i) % n for i in range(n)]

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        kind = self._methods.get(method)
        if kind is None:
            return None  # grpc answers UNIMPLEMENTED
        if kind == _Kind.UNARY_UNARY:
            return grpc.unary_unary_rpc_method_handler(self._unary(method))
        if kind == _Kind.UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(self._server_stream(method))
        if kind == _Kind.STREAM_UNARY:
            return grpc.stream_unary_rpc_method_handler(self._client_stream(method))
        return grpc.stream_stream_rpc_method_handler(self._bidi(method))

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str | bytes]]:
        return [(k, v) for k, v in context.invocation_metadata() or () if k not in _FORWARDED_METADATA_SKIP]

    def _unary(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            last: grpc.aio.AioRpcError | None = None
            for index in self._order():
                call = self._channel(index).unary_unary(method, *_PASS)
                try:
                    response: bytes = await call(
                        request, metadata=self._metadata(context), timeout=context.time_remaining()
                    )
                    self._preferred = index
                    return response
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        await context.abort(exc.code(), exc.details() or "")
                    log.warning(
                        "etcd %s unavailable for %s: %s", self._upstreams[index].target, method, exc.details()
                    )
                    last = exc
            await context.abort(grpc.StatusCode.UNAVAILABLE, _all_down(last))
            raise AssertionError  # abort raised

        return handler

    def _server_stream(
        self, method: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            def call(index: int) -> AsyncIterable[bytes]:
                stream: AsyncIterable[bytes] = self._channel(index).unary_stream(method, *_PASS)(
                    request, metadata=self._metadata(context)
                )
                return stream

            async for message in self._relay(call, context):
                yield message

        return handler

    async def _relay(
        self, call: Callable[[int], AsyncIterable[bytes]], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """The messages of `call(index)` for the first upstream, in `_order`, that does not fail
        UNAVAILABLE before its first message; any other failure ends the stream with its status."""
        last: grpc.aio.AioRpcError | None = None
        for index in self._order():
            relayed = False
            try:
                async for message in call(index):
                    relayed = True
                    yield message
                return
            except grpc.aio.AioRpcError as exc:
                if relayed or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    await context.abort(exc.code(), exc.details() or "")
                last = exc
        await context.abort(grpc.StatusCode.UNAVAILABLE, _all_down(last))

    def _client_stream(self, method: str) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Any]:
        async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            call = self._channel(self._preferred).stream_unary(method, *_PASS)
            try:
                response: bytes = await call(requests, metadata=self._metadata(context))
                return response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise AssertionError from exc

        return handler

    def _bidi(
        self, method: str
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def handler(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            # Requests are pumped into a queue so that, if the first endpoint is down before it
            # answered anything, the same requests can be replayed to the next one.
            sent: list[bytes] = []
            incoming: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def pump() -> None:
                async for message in requests:
                    await incoming.put(message)
                await incoming.put(None)

            async def upstream_requests(replay: list[bytes]) -> AsyncIterator[bytes]:
                for old in replay:
                    yield old
                while (new := await incoming.get()) is not None:
                    sent.append(new)
                    yield new

            def call(index: int) -> AsyncIterable[bytes]:
                stream: AsyncIterable[bytes] = self._channel(index).stream_stream(method, *_PASS)(
                    upstream_requests(list(sent)), metadata=self._metadata(context)
                )
                return stream

            pumper = asyncio.create_task(pump(), name="kinepy-passthrough-pump")
            try:
                async for message in self._relay(call, context):
                    yield message
            finally:
                pumper.cancel()

        return handler


def _all_down(last: grpc.aio.AioRpcError | None) -> str:
    detail = f": {last.details()}" if last is not None else ""
    return f"kinepy: no etcd endpoint is available{detail}"
