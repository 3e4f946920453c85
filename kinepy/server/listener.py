"""The listening sockets' TCP options: etcd's, not grpc-core's.

grpc-core sets `TCP_USER_TIMEOUT` (20 s, its keepalive timeout) on every server socket: a client whose
process is frozen (SIGSTOP, a paused VM, a long GC) stops reading, its receive window closes, and Linux then
drops the connection after 20 s of unacknowledged zero-window probes. etcd (grpc-go) sets no
`TCP_USER_TIMEOUT`: it keeps the client, and only its HTTP/2 keepalive (a ping after 2 h without a frame from
the client, 20 s for the answer: `--grpc-keepalive-interval`, `--grpc-keepalive-timeout`) closes a connection
whose peer does not answer. Go also turns TCP keepalive probes on for every accepted connection (15 s idle,
then every 15 s), which finds a vanished peer of an idle connection within minutes.

grpc-core has no option for either, but Linux copies a listening socket's options to the connections it
accepts, so setting them on the listening sockets, after `add_*_port` created them and before the server
accepts anything, gives every connection etcd's behaviour.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

log = logging.getLogger(__name__)

TCP_KEEPALIVE_SECONDS = 15  # Go's net package: first probe after 15 s idle, then every 15 s
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux's number; Python exposes it on Linux
_FD_DIR = "/proc/self/fd"


def listening_sockets(port: int) -> list[socket.socket]:
    """Duplicates of this process's listening TCP sockets bound to `port` (Linux; none elsewhere)."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return []
    found: list[socket.socket] = []
    duplicates: set[int] = set()
    for name in names:
        if int(name) in duplicates:  # a number listed before this loop reused for one of its duplicates
            continue
        # Only sockets are duplicated: closing a duplicate of a file's descriptor would release every
        # POSIX lock this process holds on that file, SQLite's among them, and another process opening
        # the database would then take itself for its only user (truncated -shm: SIGBUS, disk I/O errors).
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            fd = os.dup(int(name))
        except OSError:  # closed meanwhile
            continue
        duplicates.add(fd)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket: close the duplicate, or every server start leaks one per descriptor
            os.close(fd)
            continue
        if _is_listening_tcp(sock, port):
            found.append(sock)
        else:
            sock.close()
    return found


def _is_listening_tcp(sock: socket.socket, port: int) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        return listening and sock.getsockname()[1] == port
    except OSError:
        return False


def use_etcd_tcp_options(port: int) -> int:
    """Give the listening sockets on `port` etcd's TCP options; returns how many sockets were changed."""
    changed = 0
    for sock in listening_sockets(port):
        with sock:
            try:
                # 0: the kernel's own rules (retransmissions give up after about 15 minutes)
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPALIVE_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPALIVE_SECONDS)
            except OSError as exc:
                log.warning("cannot set TCP options on the listening socket of port %d: %s", port, exc)
                continue
            changed += 1
    return changed
