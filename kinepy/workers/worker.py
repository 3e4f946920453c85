"""One worker of `kinepy --workers N`: `python -m kinepy.workers.worker FD`, started by the supervisor.

It reads its settings from the control socket FD (`control.py`), serves an `App` with its `WorkerRole`
(the listen address shared by SO_REUSEPORT, its own gRPC server, event loop and database connections),
says READY with the port it bound, answers the supervisor's metrics scrapes, and drains on SIGTERM or
when the supervisor goes away. Exit codes and error lines are the CLI's (`runtime.exit_code`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from prometheus_client import generate_latest

from kinepy.app import App
from kinepy.config import Config, WorkerRole
from kinepy.metrics.health import NO_STORE, Probe, probe_store
from kinepy.runtime import event_loop_runner, exit_code, setup_logging
from kinepy.workers import control

log = logging.getLogger("kinepy.worker")


async def _answer(app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer scrapes and health probes until the supervisor's end closes."""
    while line := await reader.readline():
        kind, _, argument = line.strip().partition(b" ")
        if kind == control.METRICS:
            body = generate_latest(app.metrics.registry)
        elif kind == control.HEALTH:
            probe = (
                Probe((), NO_STORE) if app.store is None else await probe_store(app.store, argument == b"1")
            )
            body = probe.to_json()
        else:
            continue
        writer.write(kind + b" %d\n" % len(body) + body)
        await writer.drain()


async def serve(config: Config, role: WorkerRole, sock: socket.socket) -> None:
    app = App(config, role=role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app:
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(control.READY + b" %d\n" % app.port)
        await writer.drain()
        answering = asyncio.create_task(_answer(app, reader, writer), name="kinepy-worker-control")
        answering.add_done_callback(lambda _: stop.set())  # the supervisor is gone: drain and stop
        await stop.wait()
        log.info("shutting down")
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await answering
        writer.close()


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    line = control.read_line(sock)
    if not line:
        return 1  # the supervisor went away before saying what to serve
    config, role = control.parse_settings(line)
    if config.log_level.upper() != "DEBUG":
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    setup_logging(config.log_level, config.log_format, worker=role.index)

    def run() -> None:
        with event_loop_runner() as runner:
            runner.run(serve(config, role, sock))

    return exit_code(run, config.datastore_endpoint)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
