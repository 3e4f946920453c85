"""etcdctl parity: one etcdctl scenario, run against real etcd and against kinepy, must print the same.

A scenario is data: a list of etcdctl steps (arguments, plus stdin for ``txn -i``), always run on a fresh
server, so revisions are comparable (a fresh store is at revision 1). ``run_scenario`` returns each step's
exit code, stdout and stderr, normalised so that only what the server decided is left:

- ``-w json`` lines are parsed; ``cluster_id``, ``member_id`` and ``raft_term`` leave the top-level header;
  base64 keys and values are decoded (a readable diff, nothing lost); keys are sorted.
- etcdctl's client-side zap log lines (``{"level":"warn","ts":…,"target":"endpoint://client-<uuid>/…",
  "error":"rpc error: code = OutOfRange desc = …"}``) keep level, message, attempt and error, so the gRPC
  code and text of every error are compared; timestamps, caller and the random target are dropped.
- The server's address becomes ``<endpoint>``.

The etcd side is checked on its own too (``test_scenario_on_etcd``): each scenario runs twice on two fresh
etcd servers and must print the same — proof the normalisation removes everything run-specific — and
scenarios carry a few expectations about etcd 3.4's answers, so a broken harness cannot pass by comparing
two empty outputs. That is also why kinepy, on each backend, is compared with one etcd run per scenario
(``etcd_output``).

etcdctl 3.4 has no ``get --count-only`` (3.5 added it: "Error: unknown flag: --count-only"); ``count`` is
compared through ``-w json`` here and ``count_only`` through python-etcd3 in ``test_etcd3_client.py``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

# kinepy on each backend (conftest's kinepy_backend); tests without kinepy run once.
pytestmark = pytest.mark.kinepy_backends

COMPACTED = "Error: etcdserver: mvcc: required revision has been compacted"
FUTURE = "Error: etcdserver: mvcc: required revision is a future revision"


# --------------------------------------------------------------------------------------------------
# The harness.


@dataclass(frozen=True)
class Step:
    """One etcdctl run: its arguments (after ``--endpoints``) and what to feed on stdin."""

    args: tuple[str, ...]
    input: str | None = None


@dataclass(frozen=True)
class StepOutput:
    """What one etcdctl run printed, normalised; ``command`` is there to make diffs readable."""

    command: str
    exit_code: int
    stdout: tuple[str, ...]
    stderr: tuple[str, ...]

    def json(self) -> Any:
        """The (normalised) JSON document this step printed with ``-w json``."""
        docs = [json.loads(line) for line in self.stdout if line.startswith("{")]
        assert len(docs) == 1, f"expected one JSON document from {self.command!r}: {self.stdout}"
        return docs[0]


RunScenario = Callable[[str, Sequence[Step]], list[StepOutput]]


@pytest.fixture
def run_scenario(etcdctl: Callable[..., subprocess.CompletedProcess[str]]) -> RunScenario:
    """``run_scenario(endpoint, steps)``: run each step with etcdctl, in order; the normalised outputs."""
    return functools.partial(_run_scenario, etcdctl)


def _run_scenario(
    etcdctl: Callable[..., subprocess.CompletedProcess[str]], endpoint: str, steps: Sequence[Step]
) -> list[StepOutput]:
    outputs = []
    for item in steps:
        proc = etcdctl(endpoint, *item.args, input=item.input)
        outputs.append(
            StepOutput(
                command=_describe(item),
                exit_code=proc.returncode,
                stdout=normalise_stdout(proc.stdout, endpoint),
                stderr=normalise_stderr(proc.stderr, endpoint),
            )
        )
    return outputs


def _describe(item: Step) -> str:
    return shlex.join(item.args) + ("" if item.input is None else f" <<< {item.input!r}")


_RUN_SPECIFIC_HEADER_FIELDS = ("cluster_id", "member_id", "raft_term")
_LOG_PREFIX = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?\S*\s+")


def normalise_stdout(text: str, endpoint: str) -> tuple[str, ...]:
    lines = []
    for line in text.replace(endpoint, "<endpoint>").splitlines():
        if line.startswith("{"):
            line = json.dumps(_normalise_document(json.loads(line)), sort_keys=True)
        lines.append(line)
    return tuple(lines)


def normalise_stderr(text: str, endpoint: str) -> tuple[str, ...]:
    lines = []
    for line in text.replace(endpoint, "<endpoint>").splitlines():
        if line.startswith('{"level"'):
            entry = json.loads(line)
            line = f"[{entry.get('level')}] {entry.get('msg')}"
            if "attempt" in entry:
                line += f" (attempt {entry['attempt']})"
            if "error" in entry:
                line += f": {entry['error']}"
        lines.append(_LOG_PREFIX.sub("", line))
    return tuple(lines)


def _normalise_document(doc: Any) -> Any:
    """Drop the run-specific ids from the top-level header only: etcd's nested txn headers carry just
    ``revision``, so a server that adds more there shows up as a difference."""
    doc = _decode_base64(doc)
    if isinstance(doc, dict) and isinstance(doc.get("header"), dict):
        for name in _RUN_SPECIFIC_HEADER_FIELDS:
            doc["header"].pop(name, None)
    return doc


def _decode_base64(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _decode_base64(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_base64(v, key) for v in value]
    if key in ("key", "value", "range_end") and isinstance(value, str):
        try:
            return "b64:" + base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value
    return value


# --------------------------------------------------------------------------------------------------
# Scenarios.


def step(*args: str, input: str | None = None) -> Step:
    return Step(tuple(args), input)


def txn(
    compares: Sequence[str], success: Sequence[str] = (), failure: Sequence[str] = (), *flags: str
) -> Step:
    """``etcdctl txn -i``: each section (compares, success ops, failure ops) ends with a blank line."""
    return Step(
        ("txn", "-i", *flags),
        "".join("".join(f"{line}\n" for line in section) + "\n" for section in (compares, success, failure)),
    )


def puts(*pairs: tuple[str, str]) -> list[Step]:
    return [step("put", k, v) for k, v in pairs]


def _revisions(outputs: list[StepOutput]) -> list[int]:
    return [o.json()["header"]["revision"] for o in outputs]


def _no_check(outputs: list[StepOutput]) -> None:
    pass


@dataclass(frozen=True)
class Scenario:
    id: str
    steps: list[Step]
    # Expectations about etcd's own answers; it receives the normalised outputs.
    check: Callable[[list[StepOutput]], None] = _no_check


def _check_revisions(outputs: list[StepOutput]) -> None:
    assert _revisions(outputs) == [1, 2, 3, 3, 4, 4, 4, 5, 6]
    assert outputs[3].json().get("deleted") is None  # proto3 zero: "deleted":0 is omitted
    assert outputs[4].json()["deleted"] == 1


# Keys whose orders differ by every sort target (key order is a, b, c, d):
#   create c2 a3 d4 b5 → c a d b;  mod d4 a7 c8 b11 → d a c b;  version d1 c2 a3 b4 → d c a b;
#   value d"b" b"m" a"q" c"x" → d b a c.
_SORT_DATA = puts(
    ("s/c", "c1"),
    ("s/a", "a1"),
    ("s/d", "b"),
    ("s/b", "b1"),
    ("s/a", "a2"),
    ("s/a", "q"),
    ("s/c", "x"),
    ("s/b", "b2"),
    ("s/b", "b3"),
    ("s/b", "m"),
)
_SORTS = [
    (target, order)
    for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION")
    for order in ("", "ASCEND", "DESCEND")
]


def _sort_args(target: str, order: str) -> list[str]:
    return ["get", "s/", "--prefix", "--keys-only", f"--sort-by={target}"] + (
        [f"--order={order}"] if order else []
    )


def _check_sorts(outputs: list[StepOutput]) -> None:
    by_step = {cmd: [line for line in o.stdout if line] for cmd, o in _first_by_command(outputs).items()}
    assert by_step[shlex.join(_sort_args("CREATE", "ASCEND"))] == ["s/c", "s/a", "s/d", "s/b"]
    assert by_step[shlex.join(_sort_args("MODIFY", ""))] == ["s/d", "s/a", "s/c", "s/b"]
    assert by_step[shlex.join(_sort_args("VALUE", "DESCEND"))] == ["s/c", "s/a", "s/b", "s/d"]
    assert by_step[shlex.join(_sort_args("VERSION", "DESCEND"))] == ["s/b", "s/a", "s/c", "s/d"]


def _first_by_command(outputs: list[StepOutput]) -> dict[str, StepOutput]:
    return {o.command: o for o in reversed(outputs)}


def _check_compaction(outputs: list[StepOutput]) -> None:
    by_step = _first_by_command(outputs)
    assert by_step["compaction 3"].stdout == ("compacted revision 3",)
    assert by_step["get a --rev=2"].exit_code == 1
    assert by_step["get a --rev=2"].stderr[-1] == COMPACTED
    assert (
        by_step["get a --rev=2"]
        .stderr[0]
        .endswith("code = OutOfRange desc = etcdserver: mvcc: required revision has been compacted")
    )
    assert by_step["get a --rev=3"].stdout == ("a", "2")  # the compact revision itself stays readable
    assert by_step["get a --rev=100"].stderr[-1] == FUTURE
    assert by_step["compaction 100"].stderr[-1] == FUTURE


def _txn_outcome(output: StepOutput) -> str:
    if output.exit_code != 0:
        return output.stderr[-1]
    if output.stdout[-1].startswith("{"):
        return "SUCCESS" if output.json().get("succeeded") else "FAILURE"
    return output.stdout[3]  # after the three prompts of ``txn -i``


def _check_txn(outputs: list[StepOutput]) -> None:
    outcomes = [_txn_outcome(o) for o in outputs if o.command.startswith("txn")]
    duplicate = "Error: etcdserver: duplicate key given in txn request"
    assert outcomes == [
        *("SUCCESS", "FAILURE", "FAILURE", "SUCCESS"),  # value
        *("SUCCESS", "FAILURE", "SUCCESS"),  # version
        *("SUCCESS", "FAILURE", "SUCCESS", "SUCCESS", "FAILURE"),  # create
        *("SUCCESS", "SUCCESS", "SUCCESS", "FAILURE"),  # mod; value of a missing key
        *("SUCCESS", "SUCCESS", "FAILURE", "SUCCESS"),  # multi-op, -w json, no compares
        *(duplicate, duplicate, FUTURE, "SUCCESS"),
    ]
    assert [o.json()["header"]["revision"] for o in outputs if "-w" in o.command] == [12, 12, 13]


SCENARIOS = [
    Scenario(
        "revision-numbering",
        [
            step("get", "foo", "-w", "json"),  # fresh store: revision 1
            step("put", "foo", "bar", "-w", "json"),  # 2
            step("put", "foo", "baz", "-w", "json"),  # 3
            step("del", "nope", "-w", "json"),  # deletes nothing: still 3
            step("del", "foo", "-w", "json"),  # 4
            step("del", "foo", "-w", "json"),  # gone already: still 4
            step("get", "foo", "-w", "json"),
            step("put", "foo", "again", "-w", "json"),  # 5, re-created: version 1, create 5
            step("put", "foo", "more", "-w", "json"),  # 6
        ],
        _check_revisions,
    ),
    Scenario(
        "put-get-single",
        [
            step("put", "a", "1"),
            step("get", "a"),
            step("get", "a", "-w", "json"),
            step("get", "missing"),
            step("get", "missing", "-w", "json"),
            step("put", "a", "2", "--prev-kv"),
            step("put", "a", "3", "--prev-kv", "-w", "json"),
            step("put", "new", "x", "--prev-kv"),
            step("put", "new2", "y", "--prev-kv", "-w", "json"),
            step("get", "a", "--print-value-only"),
            step("put", "empty", ""),
            step("get", "empty", "-w", "json"),
            step("put", "a", "--ignore-value", "-w", "json"),
            step("put", "missing", "--ignore-value"),
            step("get", ""),
        ],
    ),
    Scenario(
        "get-ranges",
        [
            *puts(("key", "0"), ("key/a", "1"), ("key/b", "2"), ("key/c", "3"), ("key/d", "4"), ("kez", "5")),
            step("put", "key0", "6"),
            step("get", "key/", "--prefix"),
            step("get", "key/", "--prefix", "-w", "json"),
            step("get", "key/", "--prefix", "--limit=2"),
            step("get", "key/", "--prefix", "--limit=2", "-w", "json"),  # count 4, more true
            step("get", "key/", "--prefix", "--limit=4", "-w", "json"),  # more false
            step("get", "key/", "--prefix", "--limit=1", "--keys-only", "-w", "json"),
            step("get", "key/", "--prefix", "--keys-only"),
            step("get", "key/", "--prefix", "--print-value-only"),
            step("get", "key/b", "--from-key"),
            step("get", "key/b", "--from-key", "--limit=2", "-w", "json"),
            step("get", "", "--from-key", "--keys-only"),  # everything
            step("get", "key/a", "key/c"),  # [key/a, key/c)
            step("get", "key/a", "key/c", "-w", "json"),
            step("get", "zzz", "--prefix", "-w", "json"),  # nothing
            step("get", "k", "--prefix", "--keys-only", "--limit=3"),
        ],
    ),
    Scenario(
        "get-sort",
        [
            *_SORT_DATA,
            *(step(*_sort_args(target, order)) for target, order in _SORTS),
            step("get", "s/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--limit=2", "-w", "json"),
            step("get", "s/", "--prefix", "--sort-by=VALUE", "--limit=3"),
            step("get", "s/", "--prefix", "--order=DESCEND", "--print-value-only"),
        ],
        _check_sorts,
    ),
    Scenario(
        "get-rev",
        [
            step("put", "a", "1"),  # 2
            step("put", "b", "1"),  # 3
            step("put", "a", "2"),  # 4
            step("del", "a"),  # 5
            step("put", "a", "3"),  # 6
            *(step("get", "a", f"--rev={rev}", "-w", "json") for rev in range(7)),
            step("get", "a", "--rev=2"),
            step("get", "", "--from-key", "--rev=3"),
            step("get", "", "--from-key", "--rev=5", "-w", "json"),
            step("get", "a", "--rev=7"),  # future
            step("get", "a", "--rev=7", "-w", "json"),
        ],
    ),
    Scenario(
        "delete",
        [
            *puts(("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "4"), ("f", "5"), ("g", "6")),
            step("del", "d/a"),  # 1
            step("del", "d/a"),  # 0
            step("del", "missing", "-w", "json"),
            step("del", "d/", "--prefix", "--prev-kv"),
            step("put", "d/x", "7"),
            step("del", "d/", "--prefix", "--prev-kv", "-w", "json"),
            step("del", "f", "--from-key"),  # f and g
            step("get", "", "--from-key"),
            step("del", "e", "--prev-kv", "-w", "json"),
            step("del", "", "--from-key", "-w", "json"),  # nothing left
            step("get", "", "--from-key", "-w", "json"),
        ],
    ),
    Scenario(
        "txn",
        [
            *puts(("t", "v1"), ("t", "v2"), ("u", "x")),  # t: create 2, mod 3, version 2; u: 4
            txn(['value("t") = "v2"'], ["put t v3", "get t"], ["get u"]),  # success, rev 5
            txn(['value("t") = "nope"'], ["put t bad"], ["get t", "get u"]),  # failure, read-only
            txn(['value("t") != "v3"'], ["put t bad"], ["put u y"]),  # failure branch writes
            txn(['value("t") > "v2"', 'value("t") < "v4"'], ["del u"], ["put t bad"]),
            txn(['version("t") = "3"'], ["get t"], []),
            txn(['version("t") > "5"'], ["put t bad"], ["get t"]),
            txn(['version("t") < "5"', 'version("t") != "2"'], ["put v 1"], []),
            txn(['create("t") = "2"'], ["get t"], []),
            txn(['create("t") > "2"'], [], ["get t"]),
            txn(['create("t") < "3"', 'create("t") != "0"'], ["get t"], []),
            txn(['create("missing") = "0"'], ["put missing now"], ["get missing"]),  # "absent" idiom
            txn(['create("missing") = "0"'], ["put missing now"], ["get missing"]),  # now present
            txn(['mod("t") = "5"'], ["put t v4"], ["get t"]),
            txn(['mod("t") < "100"', 'mod("t") > "1"', 'mod("t") != "0"'], ["get t"], []),
            txn(['mod("nothere") = "0"'], ["get nothere"], []),  # missing key: mod 0
            txn(['value("nothere") = ""'], ["put bad 1"], ["get nothere"]),  # value vs missing: false
            txn(['value("t") = "v4"'], ["put w 1", "put x 2", "del t", "get w"], []),  # one revision
            txn(['value("w") = "1"'], ["put w 2", "get w", "del nothing"], [], "-w", "json"),
            txn(['value("w") = "0"'], [], ["get w", "get x"], "-w", "json"),  # read-only: no bump
            txn([], ["put y 1"], []),  # no compares: success
            txn(['value("y") = "1"'], ["put d 1", "put d 2"], []),  # duplicate key
            txn(['value("y") = "1"'], ["del y", "put y 2"], []),  # put inside a delete range
            txn(['value("y") = "1"'], ["get w --rev=100"], []),  # future revision inside a txn
            txn(['value("y") = "1"'], ["get x --prefix", "get w --keys-only", "get a --from-key"], []),
            step("get", "", "--from-key", "-w", "json"),
        ],
        _check_txn,
    ),
    Scenario(
        "compaction",
        [
            step("put", "a", "1"),  # 2
            step("put", "a", "2"),  # 3
            step("put", "b", "1"),  # 4
            step("del", "a"),  # 5
            step("compaction", "3"),
            step("get", "a", "--rev=2"),  # compacted
            step("get", "a", "--rev=2", "-w", "json"),
            step("get", "a", "--rev=3"),  # == compact revision: allowed
            step("get", "a", "--rev=3", "-w", "json"),
            step("get", "", "--from-key", "--rev=4"),
            step("get", "a", "--rev=100"),  # future
            step("get", "a", "--rev=6"),  # current+1: future
            step("compaction", "2"),  # already compacted
            step("compaction", "3"),  # == compact revision: compacted too
            step("compaction", "100"),  # future
            step("compaction", "5", "--physical"),  # current
            step("get", "a", "--rev=4"),
            step("get", "b", "--rev=5", "-w", "json"),
            step("get", "", "--from-key", "-w", "json"),
            step("put", "c", "1", "-w", "json"),  # revisions go on: 6
            txn(['value("c") = "1"'], ["get b --rev=3"], []),  # compacted inside a txn
        ],
        _check_compaction,
    ),
]


# --------------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.etcd
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_on_etcd(
    scenario: Scenario, make_etcd_server: Callable[[], Any], run_scenario: RunScenario
) -> None:
    """The harness itself: reproducible on real etcd and matching what etcd 3.4 is known to answer."""
    first = run_scenario(make_etcd_server().endpoint, scenario.steps)
    second = run_scenario(make_etcd_server().endpoint, scenario.steps)
    assert first == second
    assert any(o.exit_code == 0 and o.stdout for o in first)
    scenario.check(first)


@pytest.fixture(scope="module")
def etcd_outputs() -> dict[str, list[StepOutput]]:
    """Scenario id → its output on a fresh etcd, for the module: the same on every fresh etcd."""
    return {}


@pytest.fixture
def etcd_output(
    scenario: Scenario,
    etcd_outputs: dict[str, list[StepOutput]],
    run_scenario: RunScenario,
    request: pytest.FixtureRequest,
) -> list[StepOutput]:
    """The scenario's output on a fresh etcd, run once per module however many backends compare to it."""
    if scenario.id not in etcd_outputs:
        etcd = request.getfixturevalue("etcd_server")
        etcd_outputs[scenario.id] = run_scenario(etcd.endpoint, scenario.steps)
    return etcd_outputs[scenario.id]


@pytest.mark.etcd
@pytest.mark.kinepy
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_etcdctl_output_matches_etcd(
    scenario: Scenario, etcd_output: list[StepOutput], kinepy_server: Any, run_scenario: RunScenario
) -> None:
    assert run_scenario(kinepy_server.endpoint, scenario.steps) == etcd_output


@pytest.mark.etcd
@pytest.mark.kinepy
@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.id in ("revision-numbering", "compaction")], ids=lambda s: s.id
)
def test_etcdctl_output_matches_etcd_across_kinepy_restart(
    scenario: Scenario, etcd_output: list[StepOutput], kinepy_server: Any, run_scenario: RunScenario
) -> None:
    """Revisions, history and the compact revision survive a SIGTERM and restart on the same database."""
    middle = len(scenario.steps) // 2
    actual = run_scenario(kinepy_server.endpoint, scenario.steps[:middle])
    kinepy_server.restart()
    actual += run_scenario(kinepy_server.endpoint, scenario.steps[middle:])
    assert actual == etcd_output
