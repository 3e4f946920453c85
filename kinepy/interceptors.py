"""What kinepy's gRPC call wrappers share (`metrics/interceptor.py`, `server/decoding.py`): handlers
wrapped once per method, at registration.

A grpc.aio server interceptor would do the same per call: grpc.aio runs the interceptors' chain of
coroutines on every call before it finds the handler (≈ 50 µs a call with two of them, measured with the
do-nothing server of `benchmarks/kubewire.py`; docs/performance.md). `WrappingServer` instead wraps each
handler as it is registered (and those a generic handler hands out, at a method's first call).

A leaf: it imports nothing from kinepy, so the metrics and the server layers may both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""Makes the handler served for a method (its path) from the servicer's handler."""


def chained(*wraps: Wrap) -> Wrap:
    """One wrap applying `wraps` from the last to the first: the first wraps outermost."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for each in reversed(wraps):
            handler = each(method, handler)
        return handler

    return wrap


class WrappedHandlers:
    """Wrapped handlers, one per method. Generated servicers hand out the same handler object for every
    call of a method, so each is wrapped once, at registration or at the method's first call."""

    __slots__ = ("_wrap", "_wrapped")

    def __init__(self, wrap: Wrap) -> None:
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` (the servicer's, for the method at path `method`) wrapped."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler, handlers: WrappedHandlers) -> None:
        self._inner = inner
        self._handlers = handlers

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else self._handlers.get(details.method, handler)


class _Methods(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The handlers of the servicers' methods, by path: one dictionary lookup a call."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method)


class WrappingServer:
    """Registers servicers on `server` (it stands for the server in the generated `add_*_to_server`
    functions), every handler wrapped by `wrap`.

    The servicers' methods are served through one generic handler, not as grpc's registered methods:
    grpc.aio keeps a pending call request per registered method and waits on all of them
    (`asyncio.wait`) for every call it accepts, ≈ 19 µs a call more with etcd's 44 methods than with
    none (docs/performance.md)."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap) -> None:
        self.server = server
        self._handlers = WrappedHandlers(wrap)
        self._methods = _Methods()
        server.add_generic_rpc_handlers([self._methods])  # first: asked before any other

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers([_WrappedGeneric(h, self._handlers) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            self._methods.handlers[path] = self._handlers.get(path, handler)
