"""`MetricsListener`: serves a `Metrics` registry at `GET /metrics` on `--metrics-address`, and etcd's
health endpoints (`/health`, `/livez`, `/readyz`: `health.py`) when given a prober.

prometheus_client's own WSGI app renders the registry (content negotiation, gzip, `?name[]=`); the
stdlib's `wsgiref` server runs it, one thread per request, as prometheus_client's `start_http_server`
does. It is not used as it is for three reasons: it answers every path (here any path but `/metrics`
and the health endpoints is 404), it looks the bound host up in DNS (`HTTPServer.server_bind` calls
`socket.getfqdn`) and it logs nothing. Collectors that read the store hop to its event loop
(`Metrics.store_figures`). `:PORT` is loopback (127.0.0.1), unlike kine's every interface: metrics
leave the host only when an address says so (`0.0.0.0:PORT`, `[::]:PORT`).
TLS, when wanted, is an `ssl.SSLContext` wrapped around the listening socket, as
`start_http_server(certfile=…)` does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from kinepy.errors import ConfigError
from kinepy.metrics import health
from kinepy.specs import bracket_host

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
LOOPBACK = "127.0.0.1"  # where `:PORT` serves: metrics go beyond this host only when told
REQUEST_TIMEOUT = 10.0  # seconds a scraper may take to send its request (and to read the answer)
POLL_INTERVAL = 0.1  # seconds the serving thread takes to notice a shutdown

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Registered(Protocol):
    """What is served: a `Metrics`, or the supervisor's merge of its workers' (`kinepy.workers`)."""

    @property
    def registry(self) -> CollectorRegistry: ...


def parse_metrics_address(address: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (loopback: 127.0.0.1) or `[IPv6]:PORT` -> (host, port). Metrics are
    served on every interface only when told so: `0.0.0.0:PORT` or `[::]:PORT`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"invalid metrics address {address!r}: use HOST:PORT, e.g. 127.0.0.1:9090")
    host = host.strip("[]")
    return (host or LOOPBACK), int(port)


def metrics_app(metrics: Registered, prober: health.Prober | None = None) -> WSGIApp:
    """prometheus_client's app for `metrics.registry`, at `/metrics` (HEAD answers as GET would, without
    the body), and with `prober` etcd's health endpoints."""
    render = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if prober is not None and path != METRICS_PATH:
            checked = health.answer(method, path, environ.get("QUERY_STRING", ""), prober)
            if checked is not None:
                status, headers, body = checked
                start_response(status, headers)
                return [] if method == "HEAD" else [body]
        if path != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"metrics are at {METRICS_PATH}\n".encode()]
        if method != "HEAD":
            return render(environ, start_response)  # type: ignore[no-any-return]
        answer: list[Any] = []
        body = b"".join(render({**environ, "REQUEST_METHOD": "GET"}, lambda *args: answer.extend(args[:2])))
        status, headers = answer
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return []

    return app


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics request: " + format, *args)


class _Server(ThreadingWSGIServer):
    """prometheus_client's thread-per-request WSGI server, bound without a DNS lookup; `dual_stack`
    (for `[::]`, every interface) accepts IPv4 on an IPv6 socket."""

    dual_stack = False

    def server_bind(self) -> None:
        if self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class MetricsListener:
    """Serves `metrics` (and with `prober` the health endpoints) over HTTP (HTTPS with `ssl_context`) on
    `address`, from a thread of its own."""

    def __init__(
        self,
        metrics: Registered,
        address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        prober: health.Prober | None = None,
    ) -> None:
        self._metrics = metrics
        self._prober = prober
        self._host, self._port = parse_metrics_address(address)
        self._ssl_context = ssl_context
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._server = server = self._bind()
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="kinepy-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving metrics on %s", self.url)

    def _bind(self) -> _Server:
        host = self._host
        family = socket.getaddrinfo(host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(_Server):
            address_family = family
            dual_stack = host == "::"

        server = Server((host, self._port), _Handler)
        server.set_app(metrics_app(self._metrics, self._prober))
        return server

    @property
    def host(self) -> str:
        """The address bound: 127.0.0.1 unless told otherwise."""
        assert self._server is not None
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port bound (useful with port 0)."""
        assert self._server is not None
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{bracket_host(self._host)}:{self.port}{METRICS_PATH}"

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits for the serving thread to notice (POLL_INTERVAL); not on the event loop,
        # which a scrape in progress may be waiting for.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
