"""What kinepy's gRPC server interceptors share (`metrics/interceptor.py`, `server/decoding.py`).

A leaf: it imports nothing from kinepy, so the metrics and the server layers may both use it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""Makes the handler an interceptor hands out for a method (its path) from the servicer's handler."""


class WrappedHandlers:
    """An interceptor's wrapped handlers, one per method. Generated servicers hand out the same handler
    object for every call of a method, so each is wrapped once, at the method's first call."""

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
