"""kinepy/server/listener.py looks at every descriptor of the process; it must not leave any behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kinepy.server.listener import listening_sockets

FD_DIR = Path("/proc/self/fd")


@pytest.mark.skipif(not FD_DIR.is_dir(), reason="needs /proc/self/fd (Linux)")
def test_finding_the_listening_sockets_leaves_no_descriptor_open() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, open(os.devnull) as not_a_socket:
        assert not_a_socket.fileno() >= 0
        port = server.getsockname()[1]
        before = sorted(os.listdir(FD_DIR))
        found = listening_sockets(port)
        assert len(found) == 1
        for sock in found:
            sock.close()
        assert sorted(os.listdir(FD_DIR)) == before
