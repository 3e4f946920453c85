"""Prometheus metrics: one registry per server, served as text on `--metrics-address`.

Each `App` owns a `Metrics` with its own `CollectorRegistry` (not prometheus_client's global one),
so a test or a program can run several servers in one process. The store knows nothing of
Prometheus: the writer and the compactor call plain callbacks (`on_commit`, `on_compact`), and
watch figures are read from the hub when a scrape asks for them, on the event loop.

| Metric | Type | Labels | What |
| --- | --- | --- | --- |
| `kinepy_grpc_started_total` | counter | | calls started (matched to a handler) |
| `kinepy_grpc_requests_total` | counter | `method`, `code` | finished calls by method (`KV/Range`) and code |
| `kinepy_grpc_request_duration_seconds` | histogram | `method` | time to answer a unary call |
| `kinepy_commit_duration_seconds` | histogram | | one group-commit database transaction |
| `kinepy_commit_batch_size` | histogram | | write requests committed in one transaction |
| `kinepy_compaction_duration_seconds` | histogram | | one physical compaction |
| `kinepy_compaction_deleted_rows_total` | counter | | history rows removed by compaction |
| `kinepy_watchers` | gauge | | open watchers |
| `kinepy_watch_streams` | gauge | | open Watch streams |
| `kinepy_watch_events_sent_total` | counter | | events queued to watchers |
| `kinepy_revision` | gauge | | the store's current revision |
| `kinepy_compact_revision` | gauge | | the compaction revision |

plus prometheus_client's `process_*` figures (CPU, memory, open files).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kinepy.errors import ConfigError
from kinepy.store.store import Store

log = logging.getLogger(__name__)

# etcd's grpc_server_handling_seconds uses Prometheus' default buckets; kinepy answers most reads in
# well under 5 ms, so the lower end is finer.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# etcd_disk_backend_commit_duration_seconds: ExponentialBuckets(0.001, 2, 14).
COMMIT_BUCKETS = tuple(0.001 * 2**i for i in range(14))
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 … 1024 (write_batch_max defaults to 1000)
COMPACTION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_HEAD_TIMEOUT = 10.0  # seconds a scraper may take to send its request line and headers


def method_label(path: str) -> str:
    """`/etcdserverpb.KV/Range` -> `KV/Range`; `/grpc.health.v1.Health/Check` -> `Health/Check`."""
    service, _, method = path.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


class Metrics:
    """Every metric of one server, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kinepy_grpc_requests",
            "gRPC calls finished, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "kinepy_grpc_request_duration_seconds",
            "Time to answer a unary gRPC call.",
            ["method"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.commit_duration = Histogram(
            "kinepy_commit_duration_seconds",
            "Duration of one group-commit database transaction.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.commit_batch_size = Histogram(
            "kinepy_commit_batch_size",
            "Write requests committed in one database transaction.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.compaction_duration = Histogram(
            "kinepy_compaction_duration_seconds",
            "Duration of one physical compaction (all its batches).",
            buckets=COMPACTION_BUCKETS,
            registry=self.registry,
        )
        self.compaction_deleted_rows = Counter(
            "kinepy_compaction_deleted_rows",
            "History rows removed by physical compaction.",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.store: Store | None = None
        self.registry.register(_StoreCollector(self))
        self.interceptor = _RequestInterceptor(self)
        self.calls_started = 0
        """Calls handed to a handler so far; `App.aclose` watches it to let queued calls start."""
        self._children: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def observe_request(self, method: str, code: str, seconds: float | None) -> None:
        """One finished call; `seconds` is None for streams (their length says nothing of latency)."""
        child = self._children.get((method, code))
        if child is None:
            child = self._children[(method, code)] = self.requests.labels(method, code)
        child.inc()
        if seconds is not None:
            duration = self._durations.get(method)
            if duration is None:
                duration = self._durations[method] = self.request_duration.labels(method)
            duration.observe(seconds)

    def observe_commit(self, seconds: float, size: int) -> None:
        """The writer's `on_commit`."""
        self.commit_duration.observe(seconds)
        self.commit_batch_size.observe(size)

    def observe_compaction(self, seconds: float, deleted_rows: int) -> None:
        """The compactor's `on_compact`."""
        self.compaction_duration.observe(seconds)
        self.compaction_deleted_rows.inc(deleted_rows)

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    """Figures the store keeps anyway, read at scrape time (on the event loop: see `MetricsServer`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "kinepy_grpc_started", "gRPC calls started.", value=self._metrics.calls_started
        )
        store = self._metrics.store
        hub = store.hub if store is not None else None
        if hub is None:
            return
        yield GaugeMetricFamily("kinepy_watchers", "Open watchers.", value=hub.watcher_count)
        yield GaugeMetricFamily("kinepy_watch_streams", "Open Watch streams.", value=hub.stream_count)
        yield CounterMetricFamily(
            "kinepy_watch_events_sent", "Events queued to watchers.", value=hub.events_sent
        )
        yield GaugeMetricFamily("kinepy_revision", "The store's current revision.", value=hub.revision)
        yield GaugeMetricFamily(
            "kinepy_compact_revision", "The compaction revision.", value=max(hub.compact_revision, 0)
        )


def _outcome(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status code name a call ended with."""
    code = context.code()  # set by abort() or set_code(), None otherwise
    if code is not None:
        return str(getattr(code, "name", code))
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


class _RequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call (servicers, passthrough, health) and times the unary ones."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Generated servicers hand out the same handler object for every call of a method: wrap once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        self._metrics.calls_started += 1
        handler = await continuation(details)
        if handler is None:
            self._metrics.observe_request(method_label(details.method), "UNIMPLEMENTED", None)
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method_label(details.method))
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        observe = self._metrics.observe_request
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_timed(handler.unary_unary, method, observe), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _counted(handler.stream_unary, method, observe), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _counted(handler.unary_stream, method, observe), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _counted(handler.stream_stream, method, observe), **codec
        )


Observe = Callable[[str, str, float | None], None]


def _timed(behavior: Callable[..., Any], method: str, observe: Observe) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe(method, _outcome(context, error), time.perf_counter() - started)

    return unary


def _counted(behavior: Callable[..., Any], method: str, observe: Observe) -> Callable[..., Any]:
    """A streaming behaviour (an async generator, or a coroutine for client streams and for
    methods answered UNIMPLEMENTED), counted when it ends."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                observe(method, _outcome(context, error), None)

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe(method, _outcome(context, error), None)

    return coroutine


def parse_metrics_address(address: str) -> tuple[str | None, int]:
    """`HOST:PORT`, `:PORT` (every interface) or `[IPv6]:PORT` -> (host or None, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"invalid metrics address {address!r}: use HOST:PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]")
    return (host or None), int(port)


class MetricsServer:
    """A minimal HTTP/1.1 server for `GET /metrics`, on the event loop.

    It runs on the loop rather than in prometheus_client's thread so that collectors read the
    watch hub from the thread that changes it; rendering takes about a millisecond.
    """

    def __init__(self, metrics: Metrics, address: str) -> None:
        self._metrics = metrics
        self._host, self._port = parse_metrics_address(address)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("serving metrics on %s", self.url)

    @property
    def port(self) -> int:
        """The port bound (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self._host or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            verb, target, *_ = [*request_line.split(" "), "", ""]
            path = target.split("?", 1)[0]
            if verb not in ("GET", "HEAD"):
                status, body, content_type = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path != "/metrics":
                status, body, content_type = "404 Not Found", b"metrics are at /metrics\n", "text/plain"
            else:
                status, body, content_type = "200 OK", self._metrics.render(), CONTENT_TYPE_LATEST
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if verb != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            log.debug("metrics request dropped: %r", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
