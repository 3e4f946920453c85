"""The metrics HTTP listener: `/metrics` only, GET and HEAD, closed promptly, collectors read on the loop."""

from __future__ import annotations

import asyncio
import http.client

from kinepy.metrics.listener import MetricsListener
from kinepy.metrics.registry import Metrics


def _request(port: int, method: str, path: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Length"), response.read()
    finally:
        connection.close()


async def test_listener_serves_metrics_at_metrics_only() -> None:
    metrics = Metrics()
    metrics.calls_started = 7
    listener = MetricsListener(metrics, "127.0.0.1:0")
    await listener.start()
    try:
        assert listener.url == f"http://127.0.0.1:{listener.port}/metrics"
        status, length, body = await asyncio.to_thread(_request, listener.port, "GET", "/metrics")
        assert (status, length) == (200, str(len(body)))
        assert b"kinepy_grpc_started_total 7.0" in body
        head_status, head_length, head_body = await asyncio.to_thread(
            _request, listener.port, "HEAD", "/metrics"
        )
        assert (head_status, head_body) == (200, b"")
        assert head_length is not None and abs(int(head_length) - len(body)) < 16  # process figures move
        assert (await asyncio.to_thread(_request, listener.port, "GET", "/"))[0] == 404
        assert (await asyncio.to_thread(_request, listener.port, "POST", "/metrics"))[0] == 405
    finally:
        await listener.aclose()
    await listener.aclose()  # idempotent
