"""The supervisor of `kinepy --workers N`: the `kinepy` process itself, serving nothing.

It checks the listen address, starts worker 0 (`python -m kinepy.workers.worker`, a fresh interpreter:
grpc is not fork-safe) and, once it serves, the others on the same port (port 0 becomes worker 0's
port); each binds the address with SO_REUSEPORT, so the kernel spreads new connections over them. When
every worker is ready it tells systemd READY=1. A worker that exits is started again (after 0.1 s,
doubling up to 10 s while it keeps failing within 10 s of its start) while the others serve; a worker
that fails before all are ready stops the start (exit 2 for its configuration, 1 otherwise). SIGTERM
or SIGINT: STOPPING=1, every worker drains as one kinepy would (`App.aclose`), exit 0 if all exited 0.

On SQLite it also creates the change pipes (`kinepy/backends/changes.py`): one per worker, every end
kept open here, so a restarted worker gets its pipe back. `--metrics-address` is served here, every
worker's metrics merged (`aggregate.py`), and etcd's health endpoints answered from every serving
worker's probe (`probe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kinepy.config import Config, WorkerRole
from kinepy.endpoint import backend_spec
from kinepy.errors import ConfigError, KinepyError, ListenError
from kinepy.listen import ListenAddress, check_listen_address, parse_listen_address
from kinepy.metrics.health import LOOP_MARGIN, NO_WORKER, READ_TIMEOUT, TIMED_OUT, Probe, Prober
from kinepy.metrics.listener import MetricsListener, parse_metrics_address
from kinepy.runtime import event_loop_runner, notify_systemd
from kinepy.specs import EtcdSpec, MySQLSpec, PostgresSpec, SQLiteSpec, bracket_host
from kinepy.tlsfiles import metrics_tls
from kinepy.workers import control
from kinepy.workers.aggregate import merge

log = logging.getLogger("kinepy.supervisor")

RESTART_DELAY = 0.1  # seconds before the first restart of a worker that exited
RESTART_DELAY_MAX = 10.0
STABLE_SECONDS = 10.0  # a worker that ran this long before exiting restarts after RESTART_DELAY again
STOP_TIMEOUT = 20.0  # seconds each worker has to drain after SIGTERM before SIGKILL (systemd waits 30)


class WorkerFailed(KinepyError):
    """A worker exited before it served."""

    def __init__(self, index: int, code: int) -> None:
        super().__init__(f"worker {index} exited with code {code} before serving (its log says why)")
        self.code = code


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owed: int = 0  # control replies not yet read (`Supervisor._ask`)


def listen_address_on(listen: ListenAddress, port: int) -> str:
    """`--listen-address` with the port `port` (the one worker 0 bound for port 0)."""
    return f"{bracket_host(listen.host)}:{port}" if listen.host is not None else f":{port}"


class Supervisor:
    """`Supervisor(config).run()`: serve with `config.workers` processes until SIGTERM; the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._workers = [_Worker(i) for i in range(config.workers)]
        self._pipes: list[tuple[int, int]] = []
        self._alarm_fd = -1  # the alarm table the workers share
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics: MetricsListener | None = None

    def run(self) -> int:
        with event_loop_runner() as runner:
            return runner.run(self._run())

    async def _run(self) -> int:
        config = self.config
        listen = parse_listen_address(config.listen_address)
        if listen.is_unix:
            raise ConfigError("--workers needs a TCP listen address: a Unix socket is one process's")
        spec = backend_spec(config)
        check_listen_address(listen)
        registry = None
        if config.metrics_address:
            host, port = parse_metrics_address(config.metrics_address)
            check_listen_address(ListenAddress(host, port))
            registry = CollectorRegistry()
            registry.register(_WorkersCollector(self))
        if isinstance(spec, SQLiteSpec | MySQLSpec | PostgresSpec):
            self._pipes = [os.pipe() for _ in self._workers]
        self._alarm_fd = os.memfd_create("kinepy-alarms")  # each worker sizes and maps it
        self._loop = loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            try:
                await self._start_all(listen)
            except WorkerFailed as exc:  # it said why on stderr, as `kinepy` would have
                log.debug("%s", exc)
                return exc.code if exc.code in (1, 2) else 1
            if registry is not None:
                prober = None if isinstance(spec, EtcdSpec) else self  # an etcd has endpoints of its own
                self._metrics = _listener(registry, config, prober)
                try:
                    await self._metrics.start()
                except OSError as exc:
                    raise ListenError(f"cannot serve metrics on {config.metrics_address}: {exc}") from None
            scheme = "https" if config.server_cert_file else "http"
            log.info(
                "serving the etcd v3 API on %s://%s with %d workers",
                scheme,
                listen.describe(self._port),
                len(self._workers),
            )
            notify_systemd("READY=1")
            keepers = [
                asyncio.create_task(self._keep(w), name=f"kinepy-keep-{w.index}") for w in self._workers
            ]
            await stop.wait()
            log.info("shutting down %d workers", len(self._workers))
            notify_systemd("STOPPING=1")
            self._stopping = True
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            codes = await self._stop_all()
            return 0 if all(code == 0 for code in codes) else 1
        finally:
            self._stopping = True
            await self._stop_all()
            if self._metrics is not None:
                await self._metrics.aclose()
            for read_fd, write_fd in self._pipes:
                os.close(read_fd)
                os.close(write_fd)
            os.close(self._alarm_fd)

    # -- starting ------------------------------------------------------------------------------

    async def _start_all(self, listen: ListenAddress) -> None:
        """Worker 0 first (it creates the schema, and picks the port when asked for port 0), then the
        others together."""
        self._port = listen.port
        first, *others = self._workers
        self._port = await self._start(first)
        await asyncio.gather(*(self._start(worker) for worker in others))

    def _worker_config(self, index: int) -> Config:
        listen = parse_listen_address(self.config.listen_address)
        return dataclasses.replace(
            self.config,
            listen_address=listen_address_on(listen, self._port),
            metrics_address="",  # served here, merged
            # One check of the file at start is enough: worker 0's, before the others open it.
            sqlite_integrity_check=self.config.sqlite_integrity_check if index == 0 else "off",
        )

    def _role(self, index: int) -> WorkerRole:
        pipes = self._pipes  # none on a real etcd
        return WorkerRole(
            index=index,
            count=len(self._workers),
            notify_read_fd=pipes[index][0] if pipes else -1,
            notify_write_fds=tuple(w for i, (_, w) in enumerate(pipes) if i != index),
            alarm_fd=self._alarm_fd,
        )

    async def _start(self, worker: _Worker) -> int:
        """Start `worker` and wait until it serves; its port. `WorkerFailed` if it exits first."""
        ours, theirs = socket.socketpair()
        role = self._role(worker.index)
        fds = [theirs.fileno(), role.notify_read_fd, *role.notify_write_fds, role.alarm_fd]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # systemd hears the supervisor
        with theirs:
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kinepy.workers.worker",
                str(theirs.fileno()),
                pass_fds=[fd for fd in fds if fd >= 0],
                env=env,
            )
        worker.started_at = time.monotonic()
        worker.reader, worker.writer = await asyncio.open_connection(sock=ours)
        worker.owed = 0
        worker.writer.write(control.settings_line(self._worker_config(worker.index), role))
        line = await worker.reader.readline()
        kind, _, port = line.strip().partition(b" ")
        if kind != control.READY or not port.isdigit():
            code = await worker.proc.wait()
            worker.proc = None
            worker.writer.close()
            raise WorkerFailed(worker.index, code)
        worker.ready = True
        log.info("worker %d (pid %d) serving", worker.index, worker.proc.pid)
        return int(port)

    # -- keeping them running ------------------------------------------------------------------

    async def _keep(self, worker: _Worker) -> None:
        """Start `worker` again whenever it exits, until shutdown."""
        delay = RESTART_DELAY
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.ready = False
            if worker.writer is not None:
                worker.writer.close()
            ran = time.monotonic() - worker.started_at
            delay = RESTART_DELAY if ran >= STABLE_SECONDS else min(delay * 2, RESTART_DELAY_MAX)
            log.warning(
                "worker %d (pid %d) exited with code %d after %.1fs; starting it again in %.1fs",
                worker.index,
                worker.proc.pid,
                code,
                ran,
                delay,
            )
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._start(worker)
                    worker.restarts += 1
                    break
                except (WorkerFailed, OSError) as exc:
                    delay = min(delay * 2, RESTART_DELAY_MAX)
                    log.warning("%s; starting it again in %.1fs", exc, delay)

    # -- stopping ------------------------------------------------------------------------------

    async def _stop_all(self) -> list[int]:
        """SIGTERM every worker, SIGKILL those still running after `STOP_TIMEOUT`; their exit codes."""
        for running in self._workers:
            if running.proc is not None and running.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    running.proc.send_signal(signal.SIGTERM)
        codes = []
        for worker in self._workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "worker %d (pid %d) did not stop in %.0fs: killed", worker.index, proc.pid, STOP_TIMEOUT
                )
                proc.kill()
                code = await proc.wait()
            if code != 0:
                log.warning("worker %d (pid %d) exited with code %d", worker.index, proc.pid, code)
            codes.append(code)
            worker.proc = None
            if worker.writer is not None:
                worker.writer.close()
        return codes

    # -- metrics -------------------------------------------------------------------------------

    async def _ask(self, worker: _Worker, request: bytes, within: float) -> bytes | None:
        """`worker`'s reply to `request` (`control.METRICS`, `control.HEALTH …`), None if it gave none
        within `within` s; replies owed to requests given up on before are read and dropped first."""
        if not worker.ready or worker.reader is None or worker.writer is None:
            return None
        reader, writer = worker.reader, worker.writer
        expected = request.partition(b" ")[0]
        async with worker.lock:
            worker.owed += 1
            writer.write(request + b"\n")
            deadline = asyncio.get_running_loop().time() + within
            try:
                while True:
                    async with asyncio.timeout_at(deadline):  # a reply's body follows its head at once
                        head = await reader.readline()
                    kind, _, length = head.strip().partition(b" ")
                    if not length.isdigit():
                        raise OSError(f"unexpected control line {head[:80]!r}")
                    body = await reader.readexactly(int(length))
                    worker.owed -= 1
                    if worker.owed == 0:
                        return body if kind == expected else None
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.warning(
                    "worker %d did not answer %s: %s",
                    worker.index,
                    expected.decode(),
                    str(exc) or "no answer in time",
                )
                return None

    def _ask_serving(self, request: bytes, within: float) -> list[bytes | None] | None:
        """From the metrics listener's thread: every serving worker's reply to `request` (None for one
        that gave none within `within` s); None when the event loop did not get to it, or is closed."""
        loop = self._loop
        if loop is None:
            return None

        async def ask() -> list[bytes | None]:
            serving = [w for w in self._workers if w.ready]
            return await asyncio.gather(*(self._ask(w, request, within) for w in serving))

        try:
            return asyncio.run_coroutine_threadsafe(ask(), loop).result(within + LOOP_MARGIN)
        except (TimeoutError, RuntimeError):
            return None

    def scrape_all(self) -> list[str]:
        """Every ready worker's metrics (from the metrics listener's thread)."""
        replies = self._ask_serving(control.METRICS, control.REPLY_TIMEOUT) or []
        return [body.decode() for body in replies if body is not None]

    def probe(self, read: bool) -> Probe:
        """The health probe of the server as a whole (from the metrics listener's thread): every serving
        worker's, the alarms of all, the first read error; a worker that does not answer in time fails
        the read."""
        if self._loop is None:
            return Probe((), NO_WORKER)
        request = control.HEALTH + (b" 1" if read else b" 0")
        replies = self._ask_serving(request, READ_TIMEOUT + LOOP_MARGIN)
        if replies is None:
            return Probe((), TIMED_OUT)
        if not replies:
            return Probe((), NO_WORKER)
        probes = [
            Probe((), TIMED_OUT if read else None) if r is None else Probe.from_json(r) for r in replies
        ]
        alarms = dict.fromkeys(name for probe in probes for name in probe.alarms)
        errors = [probe.read_error for probe in probes if probe.read_error is not None]
        return Probe(tuple(alarms), errors[0] if errors else None)

    def figures(self) -> tuple[int, int]:
        """(workers serving, restarts so far)."""
        return sum(w.ready for w in self._workers), sum(w.restarts for w in self._workers)


class _WorkersCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        ready, restarts = self._supervisor.figures()
        yield GaugeMetricFamily("kinepy_workers", "Worker processes serving.", value=ready)
        yield CounterMetricFamily(
            "kinepy_worker_restarts", "Workers started again after they exited.", value=restarts
        )
        yield from merge(self._supervisor.scrape_all())


@dataclass
class _Registry:
    registry: CollectorRegistry


def _listener(registry: CollectorRegistry, config: Config, prober: Prober | None) -> MetricsListener:
    return MetricsListener(
        _Registry(registry), config.metrics_address, ssl_context=metrics_tls(config), prober=prober
    )
