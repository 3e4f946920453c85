"""etcd's HTTP health endpoints on `--metrics-address` (`kinepy.metrics.health`), one process and two
workers: the status codes, content types and bodies etcd 3.6.5 gives on its `--listen-metrics-urls`
(observed with curl; docs/operations.md, "Health checks"), an alarm making `/health` fail unless
excluded, and a database that hangs or goes away making the read checks fail within the timeout
while the listener goes on answering."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import conftest
import grpc
import pytest

from kinepy.metrics.health import LOOP_MARGIN, READ_TIMEOUT
from kinepy.proto import rpc_pb2, rpc_pb2_grpc
from kinepy.testing.databases import DatabaseServer

pytestmark = [pytest.mark.kinepy]

MakeKinepy = Callable[..., conftest.KinepyServer]
TEXT = "text/plain; charset=utf-8"
HEALTHY = '{"health":"true","reason":""}'
READYZ_VERBOSE = (
    "[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\n[+]data_corruption ok\nok\n"
)
WORST_CASE = READ_TIMEOUT + 2 * LOOP_MARGIN + 1.0  # the longest a health answer may take, with slack


@dataclass
class Answer:
    status: int
    content_type: str | None
    nosniff: bool
    body: str


def get(port: int, path: str, method: str = "GET") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WORST_CASE + 5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return Answer(
            resp.status,
            resp.getheader("Content-Type"),
            resp.getheader("X-Content-Type-Options") == "nosniff",
            resp.read().decode(),
        )
    finally:
        conn.close()


def alarm(endpoint: str, action: rpc_pb2.AlarmRequest.AlarmAction, which: rpc_pb2.AlarmType) -> None:
    """Activate or deactivate an alarm, as `etcdctl` could not (kinepy lists any alarm a client raises)."""
    with grpc.insecure_channel(endpoint) as channel:
        request = rpc_pb2.AlarmRequest(action=action, memberID=1, alarm=which)
        rpc_pb2_grpc.MaintenanceStub(channel).Alarm(request, timeout=10)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_health_livez_readyz_answer_as_etcd_does(make_kinepy_server: MakeKinepy, workers: int) -> None:
    port = conftest.free_port()
    server = make_kinepy_server(workers=workers, extra_args=["--metrics-address", f"127.0.0.1:{port}"])

    # Healthy: etcd 3.6.5's answers, byte for byte (its /health is sniffed as text, without nosniff).
    for path in ("/health", "/health?exclude=NOSPACE&serializable=true", "/health?serializable=false"):
        assert get(port, path) == Answer(200, TEXT, False, HEALTHY)
    for path in ("/livez", "/readyz", "/livez/serializable_read", "/readyz/data_corruption"):
        assert get(port, path) == Answer(200, TEXT, True, "ok\n")
    assert get(port, "/livez?verbose").body == "[+]serializable_read ok\nok\n"
    assert get(port, "/readyz?verbose") == Answer(200, TEXT, True, READYZ_VERBOSE)
    assert get(port, "/readyz?verbose=false&exclude=serializable_read&exclude=nothing").body == (
        READYZ_VERBOSE.replace("[+]serializable_read ok\n", "")
    )
    assert get(port, "/livez/serializable_read?verbose").body == "[+]serializable_read ok\nok\n"

    # Only GET; paths etcd does not serve are 404, as before.
    for path in ("/health", "/livez", "/readyz/linearizable_read"):
        assert get(port, path, "POST") == Answer(405, TEXT, True, "Method Not Allowed\n")
    assert get(port, "/health", "HEAD").status == 405
    for path in ("/health/", "/livez/", "/readyz/foo", "/livez/linearizable_read", "/healthz", "/"):
        assert get(port, path).status == 404, path
    assert get(port, "/metrics").status == 200

    # NOSPACE: /health fails unless told to exclude it; /livez and /readyz do not look at it (etcd 3.6).
    alarm(server.endpoint, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.NOSPACE)
    nospace = Answer(503, TEXT, True, '{"health":"false","reason":"ALARM NOSPACE"}\n')
    assert get(port, "/health") == nospace
    assert get(port, "/health?serializable=true&exclude=CORRUPT") == nospace
    assert get(port, "/health?exclude=NOSPACE&serializable=true") == Answer(200, TEXT, False, HEALTHY)
    assert get(port, "/livez").status == get(port, "/readyz").status == 200

    # CORRUPT (kinepy only lists it): /readyz's data_corruption check fails, with every line shown.
    alarm(server.endpoint, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.CORRUPT)
    corrupt = "[-]data_corruption failed: alarm activated: CORRUPT\n"
    readyz = "[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\n" + corrupt + "\n"
    assert get(port, "/readyz") == get(port, "/readyz?verbose") == Answer(503, TEXT, True, readyz)
    assert get(port, "/readyz/data_corruption").body == corrupt + "\n"
    assert get(port, "/readyz?exclude=data_corruption").status == 200
    assert get(port, "/health?exclude=NOSPACE").body == '{"health":"false","reason":"ALARM CORRUPT"}\n'
    assert get(port, "/livez").status == 200

    for which in (rpc_pb2.NOSPACE, rpc_pb2.CORRUPT):
        alarm(server.endpoint, rpc_pb2.AlarmRequest.DEACTIVATE, which)
    assert get(port, "/health") == Answer(200, TEXT, False, HEALTHY)
    assert get(port, "/readyz").status == 200


@pytest.fixture
def postgres(make_database_server: Callable[[str], DatabaseServer]) -> Iterator[DatabaseServer]:
    server = make_database_server("postgres")
    yield server
    server.pause(False)  # a test that failed while it hung must not leave it stopped


def timed(port: int, path: str) -> tuple[Answer, float]:
    started = time.monotonic()
    answer = get(port, path)
    return answer, time.monotonic() - started


@pytest.mark.postgres
@pytest.mark.slow
def test_a_database_that_hangs_or_goes_away_fails_the_checks_within_the_timeout(
    postgres: DatabaseServer, make_kinepy_on: MakeKinepy, workers: int
) -> None:
    port = conftest.free_port()
    server = make_kinepy_on(
        postgres.url(postgres.create_database()),
        workers=workers,
        extra_args=["--metrics-address", f"127.0.0.1:{port}"],
    )
    assert get(port, "/health").status == 200

    # The database hangs. An alarm is looked at first, as etcd does: no read, an answer at once.
    alarm(server.endpoint, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.NOSPACE)
    postgres.pause()
    try:
        answer, seconds = timed(port, "/health")
        assert answer.body == '{"health":"false","reason":"ALARM NOSPACE"}\n' and seconds < 1, (
            answer,
            seconds,
        )
        # The read times out, with etcd's text, and the answer comes within the bound.
        answer, seconds = timed(port, "/health?exclude=NOSPACE")
        assert answer == Answer(
            503, TEXT, True, '{"health":"false","reason":"RANGE ERROR:etcdserver: request timed out"}\n'
        )
        assert READ_TIMEOUT - 0.5 <= seconds <= READ_TIMEOUT + 1, seconds
        answer, seconds = timed(port, "/readyz")  # one read answers both read checks
        assert answer.status == 503 and seconds <= READ_TIMEOUT + 1, (answer, seconds)
        assert "[-]serializable_read failed: etcdserver: request timed out\n" in answer.body
        assert "[-]linearizable_read failed: etcdserver: request timed out\n" in answer.body
        assert "[+]non_learner ok\n" in answer.body
        # Checks that do not read answer at once; the listener still serves /metrics.
        answer, seconds = timed(port, "/readyz/data_corruption")
        assert answer.status == 200 and seconds < 1, (answer, seconds)
        assert get(port, "/metrics").status == 200
    finally:
        postgres.pause(False)
    alarm(server.endpoint, rpc_pb2.AlarmRequest.DEACTIVATE, rpc_pb2.NOSPACE)
    assert _healthy_again(port)

    # The database goes away: the read fails with the datastore's error, not a timeout.
    postgres.stop()
    answer, seconds = timed(port, "/health")
    assert answer.status == 503 and seconds <= WORST_CASE, (answer, seconds)
    assert answer.body.startswith('{"health":"false","reason":"RANGE ERROR:kinepy: datastore unavailable'), (
        answer
    )
    assert get(port, "/livez").status == 503
    postgres.start()
    assert _healthy_again(port)


def _healthy_again(port: int, within: float = 30.0) -> bool:
    """Whether /health answers 200 within `within` s (the database's connections come back)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if get(port, "/health").status == 200:
            return True
        time.sleep(0.2)
    return False
