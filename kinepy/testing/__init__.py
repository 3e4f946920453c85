"""pytest plugin: a throw-away etcd endpoint, kinepy on SQLite, for any project's tests.

Installing kinepy registers this module with pytest (entry point `pytest11`), so a test only asks:

    def test_something(kinepy_endpoint: str) -> None:   # "127.0.0.1:PORT", empty, revision 1
        ...

Fixtures
    ``kinepy_endpoint``: a fresh kinepy for this test, on a new SQLite file in ``tmp_path``.
    ``kinepy_server_factory``: ``start(*flags) -> endpoint`` starts another one, with extra flags.

The server is a subprocess (`python -m kinepy` under the interpreter running pytest) rather than
an in-process `kinepy.Server`: that would need the test's event loop, which synchronous tests do not
have and which pytest-asyncio scopes in several ways; a subprocess serves any test, blocking or
not. It listens on port 0 and the fixture reads the port from its log line, so there is no race
for a free port. At teardown it gets SIGTERM; a server that does not exit 0 fails the test, with
its log.

Submodules (not part of the plugin; imported on demand): ``kinepy.testing.databases`` starts throw-away
PostgreSQL and MariaDB servers, ``kinepy.testing.netproxy`` is a TCP proxy a test can cut (a network
partition). kinepy's own test suite and benchmarks use both.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 20.0  # seconds for a server to log its address
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
_SERVING = re.compile(r"serving the etcd v3 API on https?://(\S+)")


@dataclass
class _Process:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self, max_chars: int = 8000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def wait_for_endpoint(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            match = _SERVING.search(self.log())
            if match:
                return match[1]
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"kinepy exited with {code} before serving:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kinepy did not start within {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _environment() -> dict[str, str]:
    """This environment without kinepy's, k3s's and systemd's settings: the server is the same
    whatever the developer's shell exports."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KINEPY_") and key not in ("K3S_DATASTORE_ENDPOINT", "NOTIFY_SOCKET")
    }


@pytest.fixture
def kinepy_server_factory(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start(*flags)`` runs a fresh kinepy (new SQLite file under ``tmp_path``) and returns its
    ``"127.0.0.1:PORT"``; every server it started is stopped at teardown."""
    started: list[_Process] = []

    def start(*flags: str) -> str:
        root = tmp_path / f"kinepy-{len(started)}"
        root.mkdir()
        argv = [
            sys.executable,
            "-m",
            "kinepy",
            "--listen-address",
            "127.0.0.1:0",
            "--datastore-endpoint",
            f"sqlite://{root / 'state.db'}",
            "--log-level",
            "info",
            "--log-format",
            "text",
            "--workers",
            "1",
            *flags,
        ]
        log_path = root / "kinepy.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_environment()
            )
        process = _Process(proc, log_path)
        started.append(process)
        return process.wait_for_endpoint()

    yield start
    unclean = [(process, process.stop()) for process in started]
    unclean = [(process, code) for process, code in unclean if code != 0]
    if unclean:
        pytest.fail(
            "\n".join(f"kinepy exited with {code} on SIGTERM:\n{process.log()}" for process, code in unclean)
        )


@pytest.fixture
def kinepy_endpoint(kinepy_server_factory: Callable[..., str]) -> str:
    """A fresh kinepy for this test: ``"127.0.0.1:PORT"``, no keys, revision 1."""
    return kinepy_server_factory()
