"""kinepy/server/listener.py looks at every descriptor of the process; it must not leave any behind."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
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


@pytest.mark.skipif(not FD_DIR.is_dir(), reason="needs /proc/self/fd (Linux)")
def test_finding_the_listening_sockets_keeps_this_process_file_locks(tmp_path: Path) -> None:
    # Closing any descriptor of a file releases every POSIX lock the process holds on it. SQLite
    # coordinates with other processes through such locks (on the database and its -shm file): had they
    # gone, another process opening the database would take itself for its only user.
    path = tmp_path / "locked"
    path.write_bytes(b"x")
    with socket.create_server(("127.0.0.1", 0)) as server, open(path, "r+b") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for sock in listening_sockets(server.getsockname()[1]):
            sock.close()
        probe = (
            "import fcntl, sys\n"
            "f = open(sys.argv[1], 'r+b')\n"
            "try:\n"
            "    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError:\n"
            "    sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", probe, str(path)], timeout=30, check=False)
        assert other.returncode == 3, "another process could take the lock: this process's lock was released"
