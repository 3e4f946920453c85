"""A watcher that can be frozen (SIGSTOP) by the test: tests/integration/test_tcp_options.py.

    python frozen_watcher.py ENDPOINT

Watches /frozen/; prints "created", then, when the event for /frozen/final arrives, "final after N" (N
events received) and exits 0; if the stream fails it prints the error and exits 1.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import grpc

from kinepy.proto import rpc_pb2, rpc_pb2_grpc


def main(endpoint: str) -> int:
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        create = rpc_pb2.WatchCreateRequest(key=b"/frozen/", range_end=b"/frozen0")
        yield rpc_pb2.WatchRequest(create_request=create)
        done.wait(300)

    received = 0
    with grpc.insecure_channel(endpoint) as channel:
        try:
            for response in rpc_pb2_grpc.WatchStub(channel).Watch(requests(), timeout=300):
                if response.created:
                    print("created", flush=True)
                for event in response.events:
                    received += 1
                    if event.kv.key == b"/frozen/final":
                        print(f"final after {received}", flush=True)
                        done.set()
                        return 0
        except grpc.RpcError as exc:
            print(f"error {exc.code().name}: {exc.details()} after {received}", flush=True)
        done.set()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
