"""Watch: the same watch scripts, run against a real etcd 3.4.23 and against kinepy, must see the same.

Each parity test is a coroutine ``script(endpoint)`` that drives one fresh server over raw gRPC (or
etcdctl) and returns what it saw, normalised (``cluster_id``, ``member_id`` and ``raft_term`` cleared from
headers); ``on_both`` runs it on etcd, then on kinepy, compares, and returns etcd's answer so each test
can also assert a few facts about it (a broken harness cannot pass by comparing two empty lists).

Scripts stay deterministic: live writes are made one at a time and each waits for its event, so both
servers batch the same way; "nothing else arrived" is proved by a ``WatchProgressRequest`` sent as a
sentinel (it is queued behind every event it covers), never by sleeping.

Where etcd 3.4.23 differs from the contract kinepy keeps (a progress request overtaking events, etcd
#15220, fixed in 3.4.24/3.5.8), the test asserts the contract on kinepy alone and says so.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import conftest
import grpc
import pytest
from google.protobuf import text_format

from kinepy.app import App
from kinepy.config import Config
from kinepy.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.etcd, pytest.mark.kinepy, pytest.mark.kinepy_backends]

WAIT = 10.0  # seconds: the longest any single expected response may take
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
WCR = rpc_pb2.WatchCreateRequest
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# The harness.


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def normalise(resp: rpc_pb2.WatchResponse) -> rpc_pb2.WatchResponse:
    """A copy without the member-specific header fields."""
    out = rpc_pb2.WatchResponse()
    out.CopyFrom(resp)
    out.header.cluster_id = 0
    out.header.member_id = 0
    out.header.raft_term = 0
    return out


def text(resp: rpc_pb2.WatchResponse) -> str:
    return text_format.MessageToString(normalise(resp), as_one_line=True)


def revisions(responses: Sequence[rpc_pb2.WatchResponse]) -> list[int]:
    return [e.kv.mod_revision for r in responses for e in r.events]


class WatchSession:
    """One Watch stream: requests go in through ``create``/``cancel``/``progress``, every response lands
    in a queue read by ``recv`` (a background task reads the stream, so a timed-out wait loses nothing)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
        self._responses: asyncio.Queue[rpc_pb2.WatchResponse | BaseException] = asyncio.Queue()
        self._call = rpc_pb2_grpc.WatchStub(channel).Watch(self._send())
        self._reader = asyncio.create_task(self._read(), name="test-watch-reader")
        self._backlog: collections.deque[rpc_pb2.WatchResponse] = collections.deque()  # skipped by created()

    async def _send(self) -> AsyncIterator[rpc_pb2.WatchRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                self._responses.put_nowait(resp)
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(exc)

    def create(self, key: bytes, range_end: bytes = b"", **fields: Any) -> None:
        self._requests.put_nowait(
            rpc_pb2.WatchRequest(create_request=WCR(key=key, range_end=range_end, **fields))
        )

    def cancel(self, watch_id: int) -> None:
        self._requests.put_nowait(
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
        )

    def progress(self) -> None:
        self._requests.put_nowait(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    async def recv(self, within: float = WAIT) -> rpc_pb2.WatchResponse:
        if self._backlog:
            return self._backlog.popleft()
        return await self._recv_raw(within)

    async def _recv_raw(self, within: float) -> rpc_pb2.WatchResponse:
        async with asyncio.timeout(within):
            item = await self._responses.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def recv_until(
        self, done: Callable[[list[rpc_pb2.WatchResponse]], bool], within: float = WAIT
    ) -> list[rpc_pb2.WatchResponse]:
        """Responses until ``done(all so far)`` holds."""
        got: list[rpc_pb2.WatchResponse] = []
        async with asyncio.timeout(within):
            while not done(got):
                got.append(await self.recv(within=within))
        return got

    async def recv_through_progress(self, within: float = WAIT) -> list[rpc_pb2.WatchResponse]:
        """Send a progress request; every response up to and including its answer (watch_id -1)."""
        self.progress()
        return await self.recv_until(lambda got: bool(got) and is_progress(got[-1], -1), within)

    async def created(self, key: bytes, range_end: bytes = b"", **fields: Any) -> int:
        """Create a watcher and wait for its ``created`` response; its watch_id. Other responses that
        arrive first stay queued for ``recv``."""
        self.create(key, range_end, **fields)
        for resp in self._backlog:
            if resp.created:
                self._backlog.remove(resp)
                break
        else:
            while not (resp := await self._recv_raw(WAIT)).created:
                self._backlog.append(resp)
        assert not resp.canceled, text(resp)
        return resp.watch_id

    def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()


def is_progress(resp: rpc_pb2.WatchResponse, watch_id: int) -> bool:
    """etcd's ``IsProgressNotify``, for one watch_id."""
    return (
        resp.watch_id == watch_id
        and not resp.events
        and not resp.created
        and not resp.canceled
        and resp.compact_revision == 0
        and resp.header.revision != 0
    )


class Client:
    """KV calls and watch streams on one ``grpc.aio`` channel."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(
            endpoint,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self._sessions: list[WatchSession] = []

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self._sessions:
            session.close()
        await self.channel.close()

    def watch(self) -> WatchSession:
        session = WatchSession(self.channel)
        self._sessions.append(session)
        return session

    async def put(self, key: bytes, value: bytes = b"v", **fields: Any) -> int:
        resp: rpc_pb2.PutResponse = await self.kv.Put(
            rpc_pb2.PutRequest(key=key, value=value, **fields), timeout=WAIT
        )
        return resp.header.revision

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        resp: rpc_pb2.DeleteRangeResponse = await self.kv.DeleteRange(
            rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end), timeout=WAIT
        )
        return resp.header.revision

    async def txn(
        self, *ops: rpc_pb2.RequestOp, compare: Sequence[rpc_pb2.Compare] = ()
    ) -> rpc_pb2.TxnResponse:
        resp: rpc_pb2.TxnResponse = await self.kv.Txn(
            rpc_pb2.TxnRequest(compare=compare, success=ops), timeout=WAIT
        )
        return resp

    async def compact(self, revision: int) -> None:
        await self.kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=True), timeout=WAIT)


def put_op(key: bytes, value: bytes = b"v") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


def delete_op(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


async def on_both(
    etcd: conftest.EtcdServer, kinepy: conftest.KinepyServer, script: Callable[[Client], Awaitable[T]]
) -> T:
    """Run ``script`` on etcd, then on kinepy; they must return the same; etcd's answer."""
    async with Client(etcd.endpoint) as client:
        expected = await script(client)
    async with Client(kinepy.endpoint) as client:
        got = await script(client)
    assert got == expected
    return expected


# --------------------------------------------------------------------------------------------------
# etcdctl watch.


async def _etcdctl_watch_script(endpoint: str) -> tuple[list[Any], list[str]]:
    """Writes under ``w/`` while ``etcdctl watch --rev=2 --prefix --prev-kv w/`` runs (once with
    ``-w json``, once in the simple format); what each printed, with ids and hosts normalised."""
    async with Client(endpoint) as client:
        await client.put(b"w/a", b"1")  # 2
        await client.put(b"w/b", b"2")  # 3
        await client.put(b"other", b"x")  # 4: outside the prefix
        procs = [
            await asyncio.create_subprocess_exec(
                conftest.ETCDCTL_BIN,
                f"--endpoints={endpoint}",
                *fmt,
                "watch",
                "--rev=2",
                "--prefix",
                "--prev-kv",
                "w/",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "ETCDCTL_API": "3"},
            )
            for fmt in (("-w", "json"), ())
        ]
        json_out, simple_out = procs[0].stdout, procs[1].stdout
        assert json_out is not None and simple_out is not None
        json_lines: list[Any] = []
        simple_lines: list[str] = []

        async def json_line() -> None:
            async with asyncio.timeout(WAIT):
                line = await json_out.readline()
            assert line, "etcdctl watch -w json ended"
            json_lines.append(json.loads(line))

        async def simple_until(last: str) -> None:
            async with asyncio.timeout(WAIT):
                while True:
                    line = (await simple_out.readline()).decode()
                    assert line, "etcdctl watch ended"
                    simple_lines.append(line.rstrip("\n"))
                    if simple_lines[-1] == last:
                        return

        try:
            await json_line()  # the catch-up: revisions 2 and 3, one response
            await simple_until("2")
            steps: list[Callable[[], Awaitable[object]]] = [
                lambda: client.put(b"w/a", b"3"),  # 5: update
                lambda: client.delete(b"w/b"),  # 7: delete
                lambda: client.txn(put_op(b"w/c", b"4"), put_op(b"w/d", b"5"), delete_op(b"w/a")),  # 9
                lambda: client.put(b"w/b", b"6"),  # 11: re-create
            ]
            lasts = ["3", "2", "5", "6"]  # the last line each step prints in the simple format
            for write, last in zip(steps, lasts, strict=True):
                await write()
                await client.put(b"other", b"y")  # 6, 8, 10, 12: never shows
                await json_line()
                await simple_until(last)
        finally:
            for proc in procs:
                proc.kill()
                await proc.wait()
    for doc in json_lines:
        doc["Header"] = {"revision": doc["Header"]["revision"]}
    return json_lines, simple_lines


async def test_etcdctl_watch_sees_every_event_like_etcd(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    expected = await _etcdctl_watch_script(etcd_server.endpoint)
    got = await _etcdctl_watch_script(kinepy_server.endpoint)
    assert got == expected
    json_lines, simple_lines = expected
    assert [d["Header"]["revision"] for d in json_lines] == [4, 5, 7, 9, 11]
    mods = [[e["kv"]["mod_revision"] for e in d["Events"]] for d in json_lines]
    assert mods == [[2, 3], [5], [7], [9, 9, 9], [11]]
    assert json_lines[2]["Events"][0]["prev_kv"]["value"] == base64.b64encode(b"2").decode()
    assert simple_lines[:3] == ["PUT", "w/a", "1"]


# --------------------------------------------------------------------------------------------------
# Creating watchers.


async def test_created_replies_come_in_request_order_with_ids_from_zero(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    async def script(client: Client) -> list[str]:
        await client.put(b"k")
        session = client.watch()
        for key in (b"a", b"b", b"c"):  # sent back to back: replies must come in this order
            session.create(key)
        session.create(b"d", watch_id=7)  # client-chosen
        session.create(b"e", watch_id=7)  # duplicate
        session.create(b"f")  # the next free server-chosen id
        session.create(b"b", b"a")  # empty range
        session.create(b"h", watch_id=3)  # a client-chosen id the server would pick next
        session.create(b"i")
        got = [await session.recv() for _ in range(9)]
        return [text(r) for r in got]

    out = await on_both(etcd_server, kinepy_server, script)
    # proto3 text leaves out the zero watch_id of the first watcher.
    assert out[:4] == [
        f"header {{ revision: 2 }} {f'watch_id: {i} ' if i else ''}created: true" for i in (0, 1, 2, 7)
    ]
    assert "mvcc: duplicate watch ID provided on the WatchStream" in out[4]
    assert "watch_id: -1" in out[4]
    assert "mvcc: watcher range is empty" in out[6]


async def test_negative_start_revision_is_refused(kinepy_server: conftest.KinepyServer) -> None:
    """kinepy only: etcd 3.4.23 accepts a negative start_revision as a normal watcher; later etcd (and
    the contract) refuse it with the prefixed compacted text."""
    async with Client(kinepy_server.endpoint) as client:
        session = client.watch()
        session.create(b"g", start_revision=-1)
        resp = await session.recv()
    assert (resp.watch_id, resp.created, resp.canceled, resp.cancel_reason) == (
        -1,
        True,
        True,
        "etcdserver: mvcc: required revision has been compacted",
    )


async def test_start_revisions_past_zero_and_future(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    """Past: inclusive replay, then live, with no gap and no duplicate; 0: live only; future: waits."""

    async def script(client: Client) -> dict[str, list[str]]:
        for i in range(5):
            await client.put(b"k", b"%d" % i)  # revisions 2..6
        session = client.watch()
        ids = {
            "past": await session.created(b"k", start_revision=3),
            "zero": await session.created(b"k"),
            "future": await session.created(b"k", start_revision=9),
            "all": await session.created(b"k", start_revision=1),
        }
        seen: dict[int, list[rpc_pb2.WatchResponse]] = {i: [] for i in ids.values()}

        async def until_revision(watch_id: int, revision: int) -> None:
            while not revisions(seen[watch_id]) or revisions(seen[watch_id])[-1] < revision:
                resp = await session.recv()
                seen[resp.watch_id].append(resp)

        await until_revision(ids["past"], 6)
        await until_revision(ids["all"], 6)
        for i in range(4):  # 7..10, one at a time
            rev = await client.put(b"k", b"live%d" % i)
            await until_revision(ids["all"], rev)
            await until_revision(ids["past"], rev)
            await until_revision(ids["zero"], rev)
            if rev >= 9:
                await until_revision(ids["future"], rev)
        for resp in await session.recv_through_progress():
            seen.setdefault(resp.watch_id, []).append(resp)
        return {name: [text(r) for r in seen[i]] for name, i in ids.items()} | {
            "revisions": [str(revisions(seen[i])) for i in ids.values()]
        }

    out = await on_both(etcd_server, kinepy_server, script)
    assert out["revisions"] == [
        str(list(range(3, 11))),
        str([7, 8, 9, 10]),
        str([9, 10]),
        str(list(range(2, 11))),
    ]


async def test_prev_kv_and_filters(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    async def script(client: Client) -> list[str]:
        session = client.watch()
        main = await session.created(b"p/", prefix_end(b"p/"), prev_kv=True)
        await session.created(b"p/", prefix_end(b"p/"), filters=[WCR.NOPUT], prev_kv=True)
        await session.created(b"p/", prefix_end(b"p/"), filters=[WCR.NODELETE])
        await session.created(b"p/", prefix_end(b"p/"), filters=[WCR.NOPUT, WCR.NODELETE])
        got: list[rpc_pb2.WatchResponse] = []

        def reached(rev: int) -> Callable[[list[rpc_pb2.WatchResponse]], bool]:
            return lambda got: any(r.watch_id == main and revisions([r]) == [rev] for r in got)

        writes: list[Callable[[], Awaitable[int]]] = [
            lambda: client.put(b"p/a", b"1"),
            lambda: client.put(b"p/a", b"2"),
            lambda: client.delete(b"p/a"),
            lambda: client.put(b"p/a", b"3"),
            lambda: client.delete(b"p/", prefix_end(b"p/")),
        ]
        for write in writes:
            rev = await write()
            got += await session.recv_until(reached(rev))
        got += await session.recv_through_progress()
        # Order between watchers of one revision is the server's business; order per watcher is not.
        return sorted(
            (text(r) for r in got),
            key=lambda t: int(t.split("watch_id: ")[1].split()[0]) if "watch_id" in t else 0,
        )

    out = await on_both(etcd_server, kinepy_server, script)
    assert sum("prev_kv" in line for line in out) == 3 + 2  # main: put 2, delete, delete; NOPUT: both deletes
    assert not any("watch_id: 3" in line for line in out)  # both filters: never a response


async def test_txn_revision_arrives_in_one_response(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    async def script(client: Client) -> list[str]:
        await client.put(b"t/z")
        session = client.watch()
        await session.created(b"t/", prefix_end(b"t/"), prev_kv=True)
        await client.txn(put_op(b"t/b", b"1"), put_op(b"t/a", b"2"), delete_op(b"t/z"), put_op(b"t/c", b"3"))
        return [text(r) for r in await session.recv_through_progress()]

    out = await on_both(etcd_server, kinepy_server, script)
    assert len(out) == 2 and out[0].count("mod_revision: 3") == 4


async def test_cancel_and_unknown_id(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    async def script(client: Client) -> list[str]:
        session = client.watch()
        await session.created(b"x")  # stays, so the progress sentinel has a watcher to answer for
        doomed = await session.created(b"y")
        session.cancel(doomed)
        session.cancel(42)  # unknown: no reply, so the next response is the progress answer
        got = await session.recv_through_progress()
        await client.put(b"y")  # the cancelled watcher sees nothing
        await client.put(b"x")
        got += await session.recv_until(lambda g: bool(g) and bool(g[-1].events))
        return [text(r) for r in got]

    out = await on_both(etcd_server, kinepy_server, script)
    assert out == [
        "header { revision: 1 } watch_id: 1 canceled: true",
        "header { revision: 1 } watch_id: -1",
        'header { revision: 3 } events { kv { key: "x" create_revision: 3 mod_revision: 3 version: 1 value: "v" } }',  # noqa: E501
    ]


# --------------------------------------------------------------------------------------------------
# Compaction.


async def test_watch_from_a_compacted_revision_is_cancelled(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    async def script(client: Client) -> list[str]:
        for i in range(4):
            await client.put(b"c", b"%d" % i)  # 2..5
        await client.compact(4)
        session = client.watch()
        session.create(b"c", start_revision=3)
        got = await session.recv_until(lambda g: bool(g) and g[-1].canceled)
        at_compact = await session.created(b"c", start_revision=4, prev_kv=True)
        got += await session.recv_until(lambda g: revisions(g) == [4, 5])
        assert all(r.watch_id == at_compact for r in got[-1:])
        return [text(r) for r in got]

    out = await on_both(etcd_server, kinepy_server, script)
    assert out[0] == "header { revision: 5 } created: true"  # watch_id 0
    assert out[1] == "header { } canceled: true compact_revision: 4"
    # prev_kv of the event at 4 would be at revision 3, which is compacted: silently absent.
    assert "prev_kv" not in out[2].split("mod_revision: 5")[0]


# --------------------------------------------------------------------------------------------------
# Progress.


async def test_progress_request_never_overtakes_events(kinepy_server: conftest.KinepyServer) -> None:
    """kinepy only: etcd 3.4.23 answers a progress request at once, ahead of queued events (#15220)."""
    async with Client(kinepy_server.endpoint) as client:
        for i in range(30):
            await client.txn(*(put_op(b"b/%03d" % j, b"%d" % i) for j in range(100)))  # 2..31
        # An unsynced watcher (catch-up from revision 1) and a synced one, on one stream.
        session = client.watch()
        await session.created(b"b/", prefix_end(b"b/"), start_revision=1)
        await session.created(b"b/", prefix_end(b"b/"))
        session.progress()  # answered once both are synced (maybe coalesced with the next one)
        burst = await asyncio.gather(*(client.put(b"b/%03d" % (i % 100), b"burst") for i in range(200)))
        last = max(burst)
        session.progress()  # sent after every write was acknowledged: its answer covers them all
        got = await session.recv_until(
            lambda g: any(is_progress(r, -1) and r.header.revision >= last for r in g)
        )
    progress = [i for i, r in enumerate(got) if is_progress(r, -1)]
    for watch_id in (0, 1):
        revs = revisions([r for r in got if r.watch_id == watch_id])
        assert revs == sorted(revs)
        assert (
            len([e for r in got if r.watch_id == watch_id for e in r.events])
            == (3000 if watch_id == 0 else 0) + 200
        )
    # Bookmarkable: a progress notification comes after every event at or below its revision.
    for index in progress:
        mark = got[index].header.revision
        later = [rev for r in got[index + 1 :] for rev in revisions([r])]
        assert all(rev > mark for rev in later), (mark, later[:5])
    assert got[progress[-1]].header.revision >= last


async def test_progress_notify_on_an_idle_watcher(kinepy_datastore_endpoint: str) -> None:
    """kinepy only (etcd's interval is 10 min in 3.4): an idle progress_notify watcher gets empty
    responses at the current revision; a watcher without the flag gets none."""
    config = Config(
        listen_address="127.0.0.1:0",
        datastore_endpoint=kinepy_datastore_endpoint,
        watch_progress_notify_interval=0.2,
    )
    async with App(config) as app, Client(app.endpoint) as client:
        rev = await client.put(b"n")
        quiet = client.watch()
        quiet_id = await quiet.created(b"n")
        session = client.watch()
        watch_id = await session.created(b"n", progress_notify=True)
        notes = [await session.recv(within=3.0) for _ in range(3)]
        assert all(is_progress(r, watch_id) and r.header.revision == rev for r in notes), [
            text(r) for r in notes
        ]
        rev = await client.put(b"n", b"again")
        after = await session.recv_until(lambda g: bool(g) and is_progress(g[-1], watch_id), within=3.0)
        assert revisions(after) == [rev] and after[-1].header.revision == rev
        # The quiet watcher got nothing but its event: its next response answers the sentinel.
        got = await quiet.recv_through_progress()
        assert [(r.watch_id, revisions([r])) for r in got] == [(quiet_id, [rev]), (-1, [])]


# --------------------------------------------------------------------------------------------------
# Fragments.


async def test_fragmented_responses(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    """One txn overwrites three ~0.45 MiB values (a txn of three 1 MiB values would exceed etcd's 1.5 MiB
    request limit); with prev_kv its watch response is ~2.7 MiB, over etcd's fragment threshold
    (MaxRequestBytes + 512 KiB of gRPC overhead = 2 MiB): [2 events, fragment], [1 event]."""
    big = 450 * 1024

    async def script(client: Client) -> list[tuple[bool, list[int], list[str]]]:
        keys = [b"f/a", b"f/b", b"f/c"]
        session = client.watch()
        await session.created(b"f/", prefix_end(b"f/"), prev_kv=True, fragment=True)
        whole = client.watch()
        await whole.created(b"f/", prefix_end(b"f/"), prev_kv=True)
        for n in (1, 2):
            await client.txn(*(put_op(k, bytes([n]) * big) for k in keys))
        got = await session.recv_until(lambda g: len(revisions(g)) == 6)
        got_whole = await whole.recv_until(lambda g: len(revisions(g)) == 6)
        assert [len(r.events) for r in got_whole] == [3, 3]
        assert not any(r.fragment for r in got_whole)
        return [(r.fragment, revisions([r]), [e.kv.key.decode() for e in r.events]) for r in got]

    out = await on_both(etcd_server, kinepy_server, script)
    assert out == [
        (False, [2, 2, 2], ["f/a", "f/b", "f/c"]),
        (True, [3, 3], ["f/a", "f/b"]),
        (False, [3], ["f/c"]),
    ]


# --------------------------------------------------------------------------------------------------
# kube-apiserver.


def _cmp_mod(key: bytes, revision: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=revision
    )


async def test_kube_apiserver_watch_pattern(
    etcd_server: conftest.EtcdServer, kinepy_server: conftest.KinepyServer
) -> None:
    """Watch(prefix, start=rev+1, prev_kv, progress_notify) while Create / GuaranteedUpdate / Delete txns
    run: creates are PUTs with create_revision == mod_revision, every other event carries prev_kv."""
    prefix = b"/registry/pods/"

    async def script(client: Client) -> list[str]:
        await client.put(prefix + b"ns/old", b"old")
        listed = await client.kv.Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=500)
        )
        session = client.watch()
        await session.created(
            prefix,
            prefix_end(prefix),
            start_revision=listed.header.revision + 1,
            prev_kv=True,
            progress_notify=True,
        )
        failure = [rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=prefix + b"ns/a"))]
        key = prefix + b"ns/a"
        created = await client.kv.Txn(
            rpc_pb2.TxnRequest(compare=[_cmp_mod(key, 0)], success=[put_op(key, b"v1")]), timeout=WAIT
        )
        rev = created.header.revision
        for n in (2, 3):
            resp = await client.kv.Txn(
                rpc_pb2.TxnRequest(
                    compare=[_cmp_mod(key, rev)], success=[put_op(key, b"v%d" % n)], failure=failure
                )
            )
            assert resp.succeeded
            rev = resp.header.revision
        stale = await client.kv.Txn(
            rpc_pb2.TxnRequest(compare=[_cmp_mod(key, 2)], success=[put_op(key, b"lost")], failure=failure)
        )
        assert not stale.succeeded
        for k, r in ((key, rev), (prefix + b"ns/old", 2)):
            resp = await client.kv.Txn(
                rpc_pb2.TxnRequest(
                    compare=[_cmp_mod(k, r)],
                    success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k))],
                    failure=failure,
                )
            )
            assert resp.succeeded
        got = await session.recv_through_progress()
        events = [e for r in got for e in r.events]
        assert len(events) == 5
        for event in events:
            is_create = event.type == PUT and event.kv.create_revision == event.kv.mod_revision
            assert is_create != event.HasField("prev_kv"), event
        return [text(r) for r in got]

    await on_both(etcd_server, kinepy_server, script)
