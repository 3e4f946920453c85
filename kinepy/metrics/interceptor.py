"""The gRPC handler wrap that counts every call and times the unary ones into `Metrics`."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from kinepy.metrics.registry import Metrics


def method_label(path: str) -> str:
    """`/etcdserverpb.KV/Range` -> `KV/Range`; `/grpc.health.v1.Health/Check` -> `Health/Check`."""
    service, _, method = path.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


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


class RequestMetrics:
    """Counts every call (servicers, passthrough, health, unknown methods) and times the unary ones:
    `wrap` is the handlers' wrap (`kinepy.interceptors.WrappingServer`), `unimplemented` the generic
    handler registered last, which counts the calls of methods nobody serves (grpc answers them)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.unimplemented = _Unimplemented(metrics)

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        metrics = self._metrics
        method = method_label(path)
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_timed(handler.unary_unary, method, metrics), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _counted(handler.stream_unary, method, metrics), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _counted(handler.unary_stream, method, metrics), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _counted(handler.stream_stream, method, metrics), **codec
        )


class _Unimplemented(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def service(self, details: grpc.HandlerCallDetails) -> None:
        self._metrics.calls_started += 1
        self._metrics.observe_request(method_label(details.method), "UNIMPLEMENTED", None)
        return None  # grpc answers UNIMPLEMENTED


def _timed(
    behavior: Callable[..., Any], method: str, metrics: Metrics, *, timed: bool = True
) -> Callable[..., Any]:
    """A coroutine behaviour, counted when it starts and when it ends (and timed, with `timed`)."""
    observe = metrics.observe_request

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics.calls_started += 1
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe(method, _outcome(context, error), time.perf_counter() - started if timed else None)

    return unary


def _counted(behavior: Callable[..., Any], method: str, metrics: Metrics) -> Callable[..., Any]:
    """A streaming behaviour (an async generator, or a coroutine for client streams and for
    methods answered UNIMPLEMENTED), counted when it starts and when it ends."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            metrics.calls_started += 1
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.observe_request(method, _outcome(context, error), None)

        return generator
    return _timed(behavior, method, metrics, timed=False)
