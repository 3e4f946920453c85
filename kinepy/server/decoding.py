"""Every etcd method's requests decoded as etcd decodes them (kinepy/server/wire.py), errors as grpc-go's.

A handler wrap gives each etcd method's handler the request class's `wire.decoder`, which never
raises (grpc.aio would answer `UNKNOWN` "Unexpected <class 'DecodeError'>" and leave a stream open):

- a unary call with a malformed request ends `INTERNAL` "grpc: error unmarshalling request: <error>";
- a stream ends `INTERNAL` "grpc: failed to unmarshal the received message <error>" at its first
  malformed message, as grpc-go's `RecvMsg` error ends etcd's Watch and LeaseKeepAlive handlers;
- a message over the receive limit (`--max-request-bytes` + 512 KiB, as etcd's) ends the call
  `RESOURCE_EXHAUSTED` "grpc: received message larger than max (N vs. LIMIT)", grpc-go's text. grpc-core
  itself refuses only messages over `TRANSPORT_LIMIT_FACTOR` times that limit (8 MiB with the defaults),
  before reading them, with its own text ("Received message larger than max (N vs. 4*LIMIT)"): grpc-go
  refuses on the length prefix, without reading, which grpc-core cannot be told to do at a limit of ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory

from kinepy.proto import rpc_pb2
from kinepy.server.wire import Malformed, decoder

UNARY_ERROR = "grpc: error unmarshalling request: "
STREAM_ERROR = "grpc: failed to unmarshal the received message "
TRANSPORT_LIMIT_FACTOR = 4


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A request over the receive limit: its size and the limit."""

    size: int
    limit: int

    @property
    def details(self) -> str:
        return f"grpc: received message larger than max ({self.size} vs. {self.limit})"


def _refusal(request: Malformed | TooLarge, prefix: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(request, TooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, request.details
    return grpc.StatusCode.INTERNAL, prefix + request.error


def _decoders(max_receive_bytes: int) -> dict[str, Callable[[bytes], Any]]:
    decoders = {}
    for service in rpc_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            decode = decoder(message_factory.GetMessageClass(method.input_type))
            decoders[f"/{service.full_name}/{method.name}"] = _limited(decode, max_receive_bytes)
    return decoders


def _limited(decode: Callable[[bytes], Any], limit: int) -> Callable[[bytes], Any]:
    def limited(data: bytes) -> Any:
        if len(data) > limit:
            return TooLarge(len(data), limit)
        return decode(data)

    return limited


class EtcdDecoding:
    """The handlers' wrap (`kinepy.interceptors.WrappingServer`): etcd's methods get etcd's decoding;
    other methods (health) stay as they are."""

    def __init__(self, max_receive_bytes: int) -> None:
        self._decoders = _decoders(max_receive_bytes)

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        decode = self._decoders.get(path)
        if decode is None or handler.request_deserializer is None:
            return handler  # not an etcd method, or one that forwards raw bytes (passthrough)
        if handler.stream_unary is not None:
            return handler  # etcd has no client-streaming method with a single response
        return _wrap(handler, decode)


def _wrap(handler: grpc.RpcMethodHandler, decode: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    codec = {"request_deserializer": decode, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_unary_stream(handler.unary_stream), **codec)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream), **codec)


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if type(request) is Malformed or type(request) is TooLarge:
            await context.abort(*_refusal(request, UNARY_ERROR))
        return await behavior(request, context)

    return unary


def _unary_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if type(request) is Malformed or type(request) is TooLarge:
            await context.abort(*_refusal(request, UNARY_ERROR))
        async for response in behavior(request, context):
            yield response

    return unary_stream


def _streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # An async generator function: grpc.aio takes any other handler for a sync generator.
    async def streaming(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        call = _StreamCall(asyncio.current_task())
        responses = behavior(call.checked(requests), context)
        try:
            while call.refusal is None:
                call.waiting = True
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if call.refusal is None or call.handler is None:
                        raise
                    call.handler.uncancel()
                    break
                finally:
                    call.waiting = False
                yield response
        finally:
            await responses.aclose()
        if call.refusal is not None:
            await context.abort(*call.refusal)

    return streaming


class _StreamCall:
    """A stream's requests up to the first malformed one, which ends the call.

    The status must be sent from the handler's task: grpc-core refuses a status sent from the task that
    reads requests while the handler sends a response (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS). So the
    reader records the refusal and cancels the handler if it is waiting inside the servicer, or else
    leaves it to see the refusal before it asks the servicer for its next response.
    """

    def __init__(self, handler: asyncio.Task[Any] | None) -> None:
        self.handler = handler
        self.refusal: tuple[grpc.StatusCode, str] | None = None
        self.waiting = False

    async def checked(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if type(request) is Malformed or type(request) is TooLarge:
                self.refusal = _refusal(request, STREAM_ERROR)
                if self.waiting and self.handler is not None:
                    self.handler.cancel()
                await asyncio.Event().wait()  # until the handler, ending the call, cancels its reader
            yield request
