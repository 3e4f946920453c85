"""Passthrough to an etcd that serves only TLS and requires client certificates: kinepy reaches it
with the CA, certificate and key named in the endpoint's query, or by kine's --ca-file, --cert-file and
--key-file, and clients talk plain gRPC to kinepy. The etcd listens on a free port of 127.0.0.4 (kinepy takes
an etcd URL on any port, as kine does).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest
import trustme

pytestmark = pytest.mark.etcd

HOST = "127.0.0.4"


def _etcdctl_tls(endpoint: str, certs: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return conftest.run_etcdctl(
        endpoint,
        f"--cacert={certs['ca']}",
        f"--cert={certs['cert']}",
        f"--key={certs['key']}",
        *args,
    )


def test_passthrough_reaches_an_etcd_that_requires_client_certificates(
    tmp_path: Path, make_kinepy_server: Callable[..., conftest.KinepyServer]
) -> None:
    conftest._require_etcd()
    port = conftest_free_port(HOST)
    ca = trustme.CA()
    server_cert = ca.issue_cert(HOST)
    client_cert = ca.issue_cert("kinepy-client")
    certs = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server-key", "cert", "key")}
    ca.cert_pem.write_to_path(str(certs["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(certs["server"]))
    server_cert.private_key_pem.write_to_path(str(certs["server-key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(certs["cert"]))
    client_cert.private_key_pem.write_to_path(str(certs["key"]))

    url = f"https://{HOST}:{port}"
    peer = f"http://{HOST}:{conftest.free_port()}"
    log = (tmp_path / "etcd.log").open("wb")
    etcd = subprocess.Popen(
        [
            conftest.ETCD_BIN,
            "--name=tls",
            f"--data-dir={tmp_path / 'data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=tls={peer}",
            f"--cert-file={certs['server']}",
            f"--key-file={certs['server-key']}",
            f"--trusted-ca-file={certs['ca']}",
            "--client-cert-auth",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while _etcdctl_tls(f"{HOST}:{port}", certs, "endpoint", "health").returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "etcd.log").read_text()[-2000:]
            time.sleep(0.2)
        # Without a client certificate etcd itself refuses: the test proves kinepy presents one.
        refused = conftest.run_etcdctl(
            f"{HOST}:{port}",
            f"--cacert={certs['ca']}",
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "x",
        )
        assert refused.returncode != 0

        query = f"?ca-file={certs['ca']}&cert-file={certs['cert']}&key-file={certs['key']}"
        kinepy = make_kinepy_server(extra_args=["--datastore-endpoint", url + query])
        assert conftest.run_etcdctl(kinepy.endpoint, "put", "through", "tls").stdout.strip() == "OK"
        direct = _etcdctl_tls(f"{HOST}:{port}", certs, "get", "through", "--print-value-only")
        assert direct.stdout.strip() == "tls"
        via = conftest.run_etcdctl(kinepy.endpoint, "get", "through", "--print-value-only")
        assert via.stdout.strip() == "tls"

        kine_flags = [
            f"--ca-file={certs['ca']}",
            f"--cert-file={certs['cert']}",
            f"--key-file={certs['key']}",
        ]
        kine_style = make_kinepy_server(extra_args=["--endpoint", url, *kine_flags])
        via = conftest.run_etcdctl(kine_style.endpoint, "get", "through", "--print-value-only")
        assert via.stdout.strip() == "tls", via.stderr
    finally:
        etcd.terminate()
        etcd.wait(10)
        log.close()


def conftest_free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
