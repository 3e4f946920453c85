"""Drive a server with python-etcd3 and print what it answered, as JSON.

Usage: ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python etcd3_script.py 127.0.0.1:PORT``

Run in its own process: etcd3 0.12's generated modules need the pure-Python protobuf runtime, and they
register etcd's proto files in the global descriptor pool, which would clash with kinepy's own (semantics
doc §10.1, §10.2). Expects a fresh server (revision 1, no keys). Prints one JSON list of ``[step, result]``;
a failed call's result is ``{"error": {"type", "code", "details"}}``. Run-specific values (member ids, raft
index and term, database size, the version string) are reduced to their shape here, so the output of two
servers can be compared as is.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import etcd3
import grpc
from etcd3 import etcdrpc


def kv(value: bytes | None, meta: Any) -> dict[str, Any] | None:
    if meta is None:
        return None
    return {
        "key": meta.key.decode(),
        "value": None if value is None else value.decode(),
        "create_revision": meta.create_revision,
        "mod_revision": meta.mod_revision,
        "version": meta.version,
        "lease": meta.lease_id,
    }


def raw_kv(item: Any) -> dict[str, Any]:
    return {
        "key": item.key.decode(),
        "value": item.value.decode(),
        "create_revision": item.create_revision,
        "mod_revision": item.mod_revision,
        "version": item.version,
        "lease": item.lease,
    }


def range_response(resp: Any) -> dict[str, Any]:
    return {
        "revision": resp.header.revision,
        "kvs": [raw_kv(item) for item in resp.kvs],
        "more": resp.more,
        "count": resp.count,
    }


def error(exc: BaseException) -> dict[str, Any]:
    """The gRPC code and text; for an error etcd3 translated (and stripped of its text), also its type."""
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    info: dict[str, Any] = {} if rpc is exc else {"type": type(exc).__name__}
    if isinstance(rpc, grpc.Call):
        info["code"] = rpc.code().name
        info["details"] = rpc.details()
    return {"error": info}


def main(endpoint: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=10)
    tx = client.transactions
    steps: list[list[Any]] = []

    def step(name: str, call: Callable[[], Any]) -> None:
        try:
            result = call()
        except Exception as exc:
            result = error(exc)
        steps.append([name, result])

    def raw_range(**fields: Any) -> dict[str, Any]:
        return range_response(client.kvstub.Range(etcdrpc.RangeRequest(**fields), client.timeout))

    def status() -> dict[str, Any]:
        st = client.status()
        raw = client.maintenancestub.Status(etcdrpc.StatusRequest(), client.timeout)
        return {
            "version_is_semver": bool(re.fullmatch(r"\d+\.\d+\.\d+", st.version)),
            "db_size_positive": st.db_size > 0,
            "leader_is_a_member": st.leader is not None,
            "leader_client_urls": list(st.leader.client_urls) if st.leader else None,
            "members": len(list(client.members)),
            "revision": raw.header.revision,
        }

    def txn(compare: list[Any], success: list[Any], failure: list[Any]) -> dict[str, Any]:
        succeeded, responses = client.transaction(compare=compare, success=success, failure=failure)
        out: list[Any] = []
        for resp in responses:
            if isinstance(resp, list):  # a range: [(value, KVMetadata)]
                out.append([kv(value, meta) for value, meta in resp])
            else:
                out.append(resp.WhichOneof("response"))
        return {"succeeded": succeeded, "responses": out}

    step("status fresh", status)
    step("get missing", lambda: kv(*client.get("a")))
    step("put a", lambda: client.put("a", "1").header.revision)
    step("get a", lambda: kv(*client.get("a")))
    step("put a prev_kv", lambda: raw_kv(client.put("a", "2", prev_kv=True).prev_kv))
    step("put new prev_kv", lambda: client.put("b", "x", prev_kv=True).HasField("prev_kv"))

    def put_revision(key: str, value: str) -> Callable[[], Any]:
        return lambda: client.put(key, value).header.revision

    for key, value in [("p/1", "one"), ("p/2", "two"), ("p/3", "three"), ("p/2", "deux"), ("q", "out")]:
        step(f"put {key}={value}", put_revision(key, value))
    step("get_prefix", lambda: [kv(v, m) for v, m in client.get_prefix("p/")])
    step(
        "get_prefix mod descend",
        lambda: [kv(v, m) for v, m in client.get_prefix("p/", sort_order="descend", sort_target="mod")],
    )
    step("get_prefix value", lambda: [kv(v, m) for v, m in client.get_prefix("p/", sort_target="value")])
    step("get_prefix keys_only", lambda: [m.key.decode() for _, m in client.get_prefix("p/", keys_only=True)])
    step("get_range", lambda: [kv(v, m) for v, m in client.get_range("a", "p/3")])
    step("get_all", lambda: [m.key.decode() for _, m in client.get_all()])
    step("range count_only", lambda: raw_range(key=b"p/", range_end=b"p0", count_only=True))
    step("range limit", lambda: raw_range(key=b"p/", range_end=b"p0", limit=2))
    step("range at revision 3", lambda: raw_range(key=b"a", revision=3))
    step("range future revision", lambda: raw_range(key=b"a", revision=1000))
    step("range empty key", lambda: raw_range(key=b""))
    step("txn value == → put", lambda: txn([tx.value("a") == "2"], [tx.put("a", "3")], [tx.get("a")]))
    step("txn value == → else get", lambda: txn([tx.value("a") == "2"], [tx.put("a", "4")], [tx.get("a")]))
    step(
        "txn version/create/mod",
        lambda: txn(
            [tx.version("a") == 3, tx.create("a") == 2, tx.mod("a") > 3, tx.mod("a") < 100],
            [tx.put("c", "made"), tx.get("c"), tx.delete("q")],
            [],
        ),
    )
    step("txn create == 0 on missing", lambda: txn([tx.create("zz") == 0], [tx.get("zz")], [tx.get("a")]))
    step("txn value != ", lambda: txn([tx.value("a") != "3"], [tx.put("a", "x")], [tx.get("a")]))
    step("txn duplicate put", lambda: txn([], [tx.put("d", "1"), tx.put("d", "2")], []))
    step("get after txns", lambda: raw_range(key=b"\0", range_end=b"\0"))
    step("delete a", lambda: client.delete("a"))
    step("delete missing", lambda: client.delete("a"))
    step("delete_prefix", lambda: (lambda r: [r.header.revision, r.deleted])(client.delete_prefix("p/")))
    step(
        "delete_prefix nothing",
        lambda: (lambda r: [r.header.revision, r.deleted])(client.delete_prefix("p/")),
    )
    step("compact 4", lambda: client.compact(4))
    step("range compacted revision", lambda: raw_range(key=b"a", revision=3))
    step("range at compact revision", lambda: raw_range(key=b"a", revision=4))
    step("compact again", lambda: client.compact(4))
    step("status after", status)
    client.close()
    print(json.dumps(steps, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
