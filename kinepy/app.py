"""`App`: one kinepy server (backend + store + gRPC), the library entry point.

async with App(Config(datastore_endpoint="sqlite:///tmp/state.db", listen_address="127.0.0.1:0")) as app:
    print(app.endpoint)   # "127.0.0.1:PORT", ready for any etcd v3 client
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
import types

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kinepy.backends.base import Backend
from kinepy.backends.factory import create_backend
from kinepy.backends.timing import TimedBackend
from kinepy.config import GRPC_OVERHEAD_BYTES, Config, WorkerRole
from kinepy.endpoint import backend_spec
from kinepy.errors import ListenError
from kinepy.interceptors import WrappingServer, chained
from kinepy.listen import ListenAddress, check_listen_address, parse_listen_address
from kinepy.metrics.health import StoreProber
from kinepy.metrics.interceptor import RequestMetrics
from kinepy.metrics.listener import MetricsListener, parse_metrics_address
from kinepy.metrics.registry import Metrics
from kinepy.passthrough import PassthroughHandler
from kinepy.proto import rpc_pb2_grpc
from kinepy.server import convert
from kinepy.server.decoding import TRANSPORT_LIMIT_FACTOR, EtcdDecoding
from kinepy.server.kv import KVServicer
from kinepy.server.lease import LeaseServicer
from kinepy.server.listener import use_etcd_tcp_options
from kinepy.server.maintenance import AuthServicer, ClusterServicer, MaintenanceServicer
from kinepy.server.watch import WatchServicer, add_watch_servicer
from kinepy.specs import BackendSettings, BackendSpec, EtcdSpec, bracket_host
from kinepy.store.store import Store, StoreSettings
from kinepy.tlsfiles import metrics_tls, read_tls_file, tls_context

log = logging.getLogger(__name__)

QUIESCE_SECONDS = 0.02  # shutdown: no new call started for this long means the loop has caught up
QUIESCE_MAX_SECONDS = 0.5
UNLIMITED = 2**31 - 1  # the largest value of a grpc-core integer channel argument


def receive_limit(config: Config) -> int:
    """The largest request accepted, as etcd's: `--max-request-bytes` + 512 KiB."""
    return config.max_request_bytes + GRPC_OVERHEAD_BYTES


def server_options(config: Config, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """grpc-core's options; `reuse_port`: share the port with the other workers (SO_REUSEPORT)."""
    return [
        # etcd's limit is checked, with grpc-go's text, by kinepy/server/decoding.py.
        ("grpc.max_receive_message_length", receive_limit(config) * TRANSPORT_LIMIT_FACTOR),
        ("grpc.max_send_message_length", UNLIMITED),
        # kube-apiserver pings every 30 s even on idle watch streams; grpc-core's default policy
        # (5 min, 2 strikes) would answer with GOAWAY too_many_pings. Accept what etcd accepts.
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        # etcd's server keepalive (--grpc-keepalive-interval 2h, --grpc-keepalive-timeout 20s), which is
        # also grpc-core's; grpc-core's TCP_USER_TIMEOUT is undone in kinepy/server/listener.py.
        ("grpc.keepalive_time_ms", 2 * 3600 * 1000),
        ("grpc.keepalive_timeout_ms", 20 * 1000),
        # Fail on a port another process holds instead of silently sharing it; workers share theirs
        # (the supervisor checked that no other process holds it).
        ("grpc.so_reuseport", int(reuse_port)),
        # grpc-core queues the calls that arrive faster than the event loop takes them, and refuses
        # (CANCELLED; "Internal error from Core" in grpc.aio clients) those that find 1,000 waiting
        # (early, at random) or 3,000 (always). A restarting kube-apiserver re-lists and re-watches
        # everything at once; etcd (grpc-go) has no such queue limit: neither has kinepy.
        ("grpc.server.max_pending_requests", UNLIMITED),
        ("grpc.server.max_pending_requests_hard_limit", UNLIMITED),
    ]


def backend_settings(config: Config, role: WorkerRole | None = None) -> BackendSettings:
    """The settings a backend is opened with, from `config` (and the worker's change pipes)."""
    return BackendSettings(
        synchronous=not config.unsafe_no_fsync,
        read_threads=config.read_threads,
        sqlite_integrity_check=config.sqlite_integrity_check,
        max_connections=config.datastore_max_connections,
        connect_timeout=config.datastore_connect_timeout,
        max_idle_time=config.datastore_max_idle_time,
        notify_read_fd=-1 if role is None else role.notify_read_fd,
        notify_write_fds=() if role is None else role.notify_write_fds,
    )


class App:
    """A kinepy server: start it, use `endpoint`, close it. With `role`, one of the workers of
    `kinepy --workers` (`kinepy.workers`), sharing the listen address with the others."""

    def __init__(self, config: Config, *, role: WorkerRole | None = None) -> None:
        self.config = config
        self.role = role
        self.backend: Backend | None = None
        self.store: Store | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._passthrough: PassthroughHandler | None = None
        self._headers = convert.Headers(0, 0)
        self.port = 0
        self.metrics = Metrics()
        """This server's Prometheus metrics (`metrics.registry`), collected whether or not they are served."""
        self.metrics_server: MetricsListener | None = None

    @property
    def endpoint(self) -> str:
        """Where clients on this host connect: `host:port` (127.0.0.1 when every interface is
        served), or `unix://path`."""
        listen = parse_listen_address(self.config.listen_address)
        if listen.path is not None:
            return f"unix://{listen.path}"
        host = "127.0.0.1" if listen.every_interface or listen.host is None else listen.host
        return f"{bracket_host(host)}:{self.port}"

    async def start(self) -> None:
        """Check every input (addresses, endpoint, TLS files) and that the addresses can be bound,
        then open the database and serve. Every failure is a `KinepyError`: `ConfigError` for an
        input, `ListenError` for an address, `BackendError` for the database."""
        config = self.config
        listen = parse_listen_address(config.listen_address)
        spec = backend_spec(config)
        credentials = self._server_credentials()
        metrics_tls = self._metrics_tls()
        role = self.role
        if role is None:  # a worker's supervisor checked it, and the other workers may hold it now
            check_listen_address(listen)
        if config.metrics_address:
            host, port = parse_metrics_address(config.metrics_address)
            check_listen_address(ListenAddress(host, port))
        log.info("datastore: %s", spec.describe())
        requests = RequestMetrics(self.metrics)
        wraps = [requests.wrap]  # the first wraps outermost
        if not isinstance(spec, EtcdSpec):  # passthrough forwards the bytes to etcd as they are
            wraps.append(EtcdDecoding(receive_limit(config)).wrap)
        server = grpc.aio.server(options=server_options(config, reuse_port=role is not None))
        handlers = WrappingServer(server, chained(*wraps))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, handlers)
        if isinstance(spec, EtcdSpec):
            self._passthrough = PassthroughHandler(spec)
            await self._passthrough.check(retry_for=config.datastore_connect_timeout)
            handlers.add_generic_rpc_handlers([self._passthrough])
        else:
            await self._start_store(spec, handlers)
        self.port = self._bind(server, listen, credentials)
        if listen.path is not None:
            os.chmod(listen.path, 0o600)  # as kine: only this user's processes may connect
        else:
            use_etcd_tcp_options(self.port)
        if role is not None and config.worker_socket_dir:
            own = ListenAddress(path=os.path.join(config.worker_socket_dir, f"worker-{role.index}.sock"))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(own.path or "")  # this worker's, left by its predecessor
            self._bind(server, own, credentials)
            os.chmod(own.path or "", 0o600)
        if self.store is not None:
            headers = self._headers
            rpc_pb2_grpc.add_ClusterServicer_to_server(
                ClusterServicer(self.store, headers, name="kinepy", client_urls=[self.client_url]), handlers
            )
        server.add_generic_rpc_handlers([requests.unimplemented])  # last: methods nobody serves
        await server.start()
        self._server = server
        if config.metrics_address:
            prober = None if self.store is None else StoreProber(self.store, asyncio.get_running_loop())
            self.metrics_server = MetricsListener(
                self.metrics, config.metrics_address, ssl_context=metrics_tls, prober=prober
            )
            try:
                await self.metrics_server.start()
            except OSError as exc:
                raise ListenError(
                    f"cannot serve metrics on {config.metrics_address}: {exc.strerror or exc}"
                ) from None
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if listen.is_unix:
            log.info("serving the etcd v3 API on %s", self.client_url)
        else:
            scheme = "https" if config.server_cert_file else "http"
            log.info("serving the etcd v3 API on %s://%s", scheme, listen.describe(self.port))

    def _bind(
        self, server: grpc.aio.Server, listen: ListenAddress, credentials: grpc.ServerCredentials | None
    ) -> int:
        target = listen.grpc_target()
        try:
            if credentials is None:
                port: int = server.add_insecure_port(target)
            else:
                port = server.add_secure_port(target, credentials)
        except RuntimeError:
            raise ListenError(f"cannot listen on {listen.describe()}: grpc refused the address") from None
        return port

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        """The listener's TLS credentials, the files read and checked now."""
        config = self.config
        if not config.server_cert_file:
            return None
        tls_context(config.server_cert_file, config.server_key_file, config.trusted_ca_file)
        return grpc.ssl_server_credentials(
            [(read_tls_file(config.server_key_file), read_tls_file(config.server_cert_file))],
            root_certificates=read_tls_file(config.trusted_ca_file) if config.trusted_ca_file else None,
            require_client_auth=bool(config.trusted_ca_file),
        )

    def _metrics_tls(self) -> ssl.SSLContext | None:
        return metrics_tls(self.config)

    @property
    def client_url(self) -> str:
        """The endpoint as a URL: `http(s)://host:port`, or `unix(s)://path` (the `s`: TLS)."""
        tls = bool(self.config.server_cert_file)
        if self.endpoint.startswith("unix://"):
            return self.endpoint.replace("unix://", "unixs://", 1) if tls else self.endpoint
        return ("https://" if tls else "http://") + self.endpoint

    async def _start_store(self, spec: BackendSpec, server: WrappingServer) -> None:
        config = self.config
        backend = TimedBackend(
            create_backend(spec, backend_settings(config, self.role)),
            threshold=config.slow_sql_threshold,
            warning_threshold=config.slow_sql_warning_threshold,
        )
        await backend.start()
        self.backend = backend
        store = Store(
            backend,
            StoreSettings.of(config),
            on_commit=self.metrics.observe_commit,
            on_compact=self.metrics.observe_compaction,
            leader=self.role is None or self.role.leader,
            alarm_fd=-1 if self.role is None else self.role.alarm_fd,
        )
        await store.start()
        self.store = store
        self.metrics.attach_store(store)
        headers = self._headers = convert.Headers(backend.cluster_id, backend.member_id)
        rpc_pb2_grpc.add_KVServicer_to_server(
            KVServicer(store, headers, max_request_bytes=config.max_request_bytes), server
        )
        add_watch_servicer(WatchServicer(store, headers, max_request_bytes=config.max_request_bytes), server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseServicer(store, headers), server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(
            MaintenanceServicer(store, headers, version=config.emulated_etcd_version), server
        )
        rpc_pb2_grpc.add_AuthServicer_to_server(AuthServicer(store, headers), server)

    async def aclose(self, *, grace: float = 2.0) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` s), drain writes, close."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.store is not None:
            # Watch and LeaseKeepAlive streams never end by themselves: end them now, UNAVAILABLE,
            # so that clients retry elsewhere (or after the restart) and the grace below is for
            # unary calls.
            self.store.end_streams()
        if self._server is not None:
            await self._let_received_calls_start(min(grace, QUIESCE_MAX_SECONDS))
            await self._server.stop(grace)
            self._server = None
        if self.store is not None:
            await self.store.aclose()
            self.store = None
        if self.backend is not None:
            await self.backend.aclose()
            self.backend = None
        if self._passthrough is not None:
            await self._passthrough.aclose()
            self._passthrough = None
        if self.metrics_server is not None:
            await self.metrics_server.aclose()
            self.metrics_server = None

    async def _let_received_calls_start(self, limit: float) -> None:
        """Wait (at most `limit` s) until no call has started for `QUIESCE_SECONDS`.

        `grpc.aio.Server.stop` cancels (CANCELLED, which etcd clients do not retry) every call the
        transport received but the event loop has not yet handed to a handler; under load that is
        most of a burst of writes. Once the loop has caught up they count as in flight and the
        grace lets them finish.
        """
        deadline = time.monotonic() + limit
        seen = -1
        while self.metrics.calls_started != seen and time.monotonic() < deadline:
            seen = self.metrics.calls_started
            await asyncio.sleep(QUIESCE_SECONDS)

    async def __aenter__(self) -> App:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await self.aclose()
