"""Domain errors -> gRPC status, in one wrapper shared by every servicer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from kinepy.errors import (
    BackendError,
    BackendNoSpace,
    BackendUnavailable,
    EtcdError,
    NoSpaceError,
    client_message,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_code(name: str) -> grpc.StatusCode:
    code: grpc.StatusCode = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
    return code


def etcd_errors(method: F) -> F:
    """Turn kinepy errors raised by a unary handler into etcd's status codes and texts."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (EtcdError, BackendError) as exc:
            await abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]


async def abort(context: grpc.aio.ServicerContext, exc: EtcdError | BackendError, what: str) -> None:
    """End the call (unary or stream) with etcd's code and text for `exc` (`client_message`), raised by
    `what` (grpc's `abort` raises: nothing after it runs)."""
    if isinstance(exc, BackendError) and not isinstance(exc, BackendUnavailable):
        log.error("%s failed in the datastore: %s", what, exc)
    await context.abort(_code(exc), client_message(exc))


def _code(exc: EtcdError | BackendError) -> grpc.StatusCode:
    if isinstance(exc, EtcdError):
        return status_code(exc.code)
    if isinstance(exc, BackendNoSpace):  # a call outside the writer (Defragment's VACUUM): etcd's error
        return status_code(NoSpaceError.code)
    return grpc.StatusCode.UNAVAILABLE


T = TypeVar("T", bound=type)


def unimplemented_by_default(service: str, hints: Mapping[str, str] | None = None) -> Callable[[T], T]:
    """Answer every RPC the class does not define with UNIMPLEMENTED and a message naming it
    (instead of grpc's generic "Method not implemented!"), with `hints[name]` after it if given:
    `kinepy: Maintenance.Hash is not supported (a test-only call; use HashKV)`."""

    def decorate(cls: T) -> T:
        base = cls.__mro__[1]
        for name, member in vars(base).items():
            if name.startswith("_") or not callable(member) or name in vars(cls):
                continue
            hint = (hints or {}).get(name)
            setattr(cls, name, _unimplemented(f"{service}.{name}", hint))
        return cls

    return decorate


def _unimplemented(what: str, hint: str | None) -> Callable[..., Awaitable[Any]]:
    message = f"kinepy: {what} is not supported" + (f" ({hint})" if hint else "")

    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    handler.__name__ = what.rsplit(".", 1)[-1]
    return handler
