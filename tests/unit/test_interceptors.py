"""WrappingServer: every servicer method wrapped once and served through one generic handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from kinepy.interceptors import WrappingServer
from kinepy.proto import rpc_pb2_grpc


class _RecordingServer:
    """Stands for grpc.aio.Server: records what is registered on it."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.append(service)


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _serve(server: _RecordingServer, method: str) -> grpc.RpcMethodHandler | None:
    """What grpc.aio does for a call to a method not registered: ask each generic handler in turn."""
    for handler in server.generic:
        found = handler.service(_Details(method))
        if found is not None:
            return found
    return None


def test_servicer_methods_are_not_grpc_registered_methods() -> None:
    # grpc.aio waits on one pending call request per registered method for every call it accepts.
    server = _RecordingServer()
    wrapping = WrappingServer(server, lambda method, handler: handler)
    rpc_pb2_grpc.add_KVServicer_to_server(rpc_pb2_grpc.KVServicer(), wrapping)
    rpc_pb2_grpc.add_LeaseServicer_to_server(rpc_pb2_grpc.LeaseServicer(), wrapping)
    assert server.registered == []
    for method in ("/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn", "/etcdserverpb.Lease/LeaseGrant"):
        assert _serve(server, method) is not None
    assert _serve(server, "/etcdserverpb.KV/Nothing") is None


def test_each_method_is_wrapped_once_and_answers_from_the_first_generic_handler() -> None:
    wrapped: list[str] = []

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append(method)
        return handler._replace(unary_unary=None)

    server = _RecordingServer()
    wrapping = WrappingServer(server, wrap)
    rpc_pb2_grpc.add_KVServicer_to_server(rpc_pb2_grpc.KVServicer(), wrapping)
    kv_methods = [f"/etcdserverpb.KV/{name}" for name in ("Range", "Put", "DeleteRange", "Txn", "Compact")]
    assert sorted(wrapped) == sorted(kv_methods)
    for method in kv_methods:
        handler = server.generic[0].service(_Details(method))
        assert handler is not None and handler.unary_unary is None  # the wrapped one
        _serve(server, method)
    assert sorted(wrapped) == sorted(kv_methods)  # served again, not wrapped again
