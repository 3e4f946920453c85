"""`Metrics`: one server's Prometheus registry and what feeds it.

Each `App` owns a `Metrics` with its own `CollectorRegistry` (not prometheus_client's global one),
so a test or a program can run several servers in one process. The store knows nothing of
Prometheus: the writer and the compactor call plain callbacks (`on_commit`, `on_compact`), the gRPC
interceptor (`interceptor.py`) counts calls, and watch figures are read from the store when a scrape
asks for them, on the store's event loop (a scrape served from another thread waits for it).

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
import concurrent.futures
from collections.abc import Iterable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kinepy.store.store import Store

# etcd's grpc_server_handling_seconds uses Prometheus' default buckets; kinepy answers most reads in
# well under 5 ms, so the lower end is finer.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# etcd_disk_backend_commit_duration_seconds: ExponentialBuckets(0.001, 2, 14).
COMMIT_BUCKETS = tuple(0.001 * 2**i for i in range(14))
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 … 1024 (write_batch_max defaults to 1000)
COMPACTION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
STORE_READ_TIMEOUT = 5.0  # seconds a scrape from another thread waits for the event loop


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
        self._store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.registry.register(_StoreCollector(self))
        self.calls_started = 0
        """Calls handed to a handler so far; `App.aclose` watches it to let queued calls start."""
        self._children: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def attach_store(self, store: Store) -> None:
        """Report `store`'s figures from now on; called on the event loop that runs it."""
        self._store, self._loop = store, asyncio.get_running_loop()

    def store_figures(self) -> StoreFigures | None:
        """The attached store's figures, read on its event loop; None without a store, or when the
        loop is closed or does not answer within `STORE_READ_TIMEOUT`."""
        store, loop = self._store, self._loop
        if store is None or loop is None:
            return None
        try:
            if asyncio.get_running_loop() is loop:
                return _read_figures(store)
        except RuntimeError:
            pass  # no loop runs in this thread: the HTTP listener's
        result: concurrent.futures.Future[StoreFigures | None] = concurrent.futures.Future()

        def read() -> None:
            if result.set_running_or_notify_cancel():
                try:
                    result.set_result(_read_figures(store))
                except BaseException as exc:
                    result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read)
            return result.result(timeout=STORE_READ_TIMEOUT)
        except (RuntimeError, TimeoutError):  # the loop is closed, or busy beyond the timeout
            result.cancel()
            return None

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


class StoreFigures(NamedTuple):
    """What a scrape reports of the store, read at one instant."""

    watchers: int
    watch_streams: int
    watch_events_sent: int
    revision: int
    compact_revision: int


def _read_figures(store: Store) -> StoreFigures | None:
    watch = store.watch_figures()
    if watch is None:  # not started yet
        return None
    return StoreFigures(
        watch.watchers, watch.streams, watch.events_sent, watch.revision, max(watch.compact_revision, 0)
    )


class _StoreCollector(Collector):
    """Figures the server keeps anyway, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "kinepy_grpc_started", "gRPC calls started.", value=self._metrics.calls_started
        )
        figures = self._metrics.store_figures()
        if figures is None:
            return
        yield GaugeMetricFamily("kinepy_watchers", "Open watchers.", value=figures.watchers)
        yield GaugeMetricFamily("kinepy_watch_streams", "Open Watch streams.", value=figures.watch_streams)
        yield CounterMetricFamily(
            "kinepy_watch_events_sent", "Events queued to watchers.", value=figures.watch_events_sent
        )
        yield GaugeMetricFamily("kinepy_revision", "The store's current revision.", value=figures.revision)
        yield GaugeMetricFamily(
            "kinepy_compact_revision", "The compaction revision.", value=figures.compact_revision
        )
