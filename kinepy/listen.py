"""`--listen-address`: parsed and checked before anything is created.

    HOST:PORT        a name or IPv4 address (`127.0.0.1:2379`, `localhost:2379`, `0.0.0.0:2379`)
    :PORT            every interface, IPv4 and IPv6 (the Go and kine form)
    [IPv6]:PORT      `[::1]:2379`, `[::]:2379` (every interface)
    unix://PATH      a Unix socket at PATH (relative to the working directory unless absolute)

PORT is 0 to 65535; 0 picks a free port. `check_listen_address` then makes sure the address can be
bound (and that no other process holds it) before a database is opened.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass

from kinepy.errors import ConfigError, ListenError

__all__ = ["FORMS", "ListenAddress", "check_listen_address", "parse_listen_address"]

FORMS = "HOST:PORT, :PORT (every interface), [IPv6]:PORT or unix://PATH"
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_EVERY_INTERFACE = ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the server listens: `host` (None: every interface) and `port`, or a Unix socket `path`."""

    host: str | None = None
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def every_interface(self) -> bool:
        return not self.is_unix and (self.host is None or self.host in _EVERY_INTERFACE)

    def grpc_target(self) -> str:
        """The address as grpc's `add_*_port` takes it."""
        if self.path is not None:
            return f"unix:{self.path}"
        host = self.host if self.host is not None else ("::" if socket.has_ipv6 else "0.0.0.0")
        return f"{_bracket(host)}:{self.port}"

    def describe(self, port: int | None = None) -> str:
        """`host:port` as bound (`port` if given: the one grpc picked for 0), or `unix://path`;
        every interface is said so."""
        if self.path is not None:
            return f"unix://{self.path}"
        target = self.grpc_target().rpartition(":")[0]
        text = f"{target}:{self.port if port is None else port}"
        return f"{text} (every interface)" if self.every_interface else text


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _invalid(text: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid listen address {text!r}: {reason}; use {FORMS}")


def parse_listen_address(text: str) -> ListenAddress:
    """Parse `--listen-address`; raise `ConfigError` saying what is wrong and what to write."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path:
            raise _invalid(text, "the Unix socket path is empty")
        if "\0" in path:
            raise _invalid(text, "the Unix socket path contains a NUL byte")
        return ListenAddress(path=path)
    if "://" in text:
        scheme = text.partition("://")[0]
        raise _invalid(text, f"{scheme}:// is not a listen address scheme (only unix:// is)")
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise _invalid(text, "an IPv6 address is written [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise _invalid(text, f"{host!r} is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _invalid(text, "the port is missing")
        if ":" in host:
            raise _invalid(text, "write an IPv6 address in brackets, e.g. [::1]:2379")
        if host and not _HOST_RE.fullmatch(host):
            raise _invalid(text, f"{host!r} is not a host name or IPv4 address")
    if not port_text:
        raise _invalid(text, "the port is missing")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise _invalid(text, f"port {port_text!r} is not a number from 0 to 65535")
    return ListenAddress(host=host or None, port=int(port_text))


def check_listen_address(address: ListenAddress) -> None:
    """Raise `ListenError` when the address cannot be bound: another process holds it, it is not an
    address of this host, the port is privileged, the socket's directory is missing.

    grpc binds TCP with SO_REUSEPORT, so without this check a second server on a taken port could
    start and silently share it.
    """
    if address.path is not None:
        _check_unix_path(address)
        return
    if address.port == 0:
        return
    text = address.describe()
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {text}: cannot resolve {address.host!r}: {exc.strerror}"
        ) from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(f"cannot listen on {text}: address already in use") from None
                if exc.errno == errno.EAFNOSUPPORT and address.host is None:
                    continue  # no IPv6 on this host: every interface is the IPv4 ones
                raise ListenError(f"cannot listen on {text}: {exc.strerror or exc}") from None


def _check_unix_path(address: ListenAddress) -> None:
    path = address.path or ""
    text = address.describe()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ListenError(f"cannot listen on {text}: directory {directory} does not exist")
    if os.path.exists(path):
        # kine removes a stale socket file; a socket something still answers on is in use.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(path) == 0:
                raise ListenError(f"cannot listen on {text}: address already in use")
        if not _is_socket(path):
            raise ListenError(f"cannot listen on {text}: {path} exists and is not a socket")


def _is_socket(path: str) -> bool:
    return stat.S_ISSOCK(os.stat(path).st_mode)
