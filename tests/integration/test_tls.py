"""TLS on the listener, with certificates made by trustme: etcdctl over https works; with
--trusted-ca-file a client without a certificate is refused, without it none is needed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest
from certificates import Certificates, make_certificates

# Each test waits out etcdctl's dial timeout for the clients kinepy must refuse (5-15 s).
pytestmark = pytest.mark.slow


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def _etcdctl(server: conftest.KinepyServer, *args: str) -> subprocess.CompletedProcess[str]:
    return conftest.run_etcdctl(
        f"https://{server.endpoint}", "--dial-timeout=3s", "--command-timeout=5s", *args, timeout=30
    )


def test_client_certificate_required_with_trusted_ca_file(
    make_kinepy_server: Callable[..., conftest.KinepyServer], certificates: Certificates
) -> None:
    c = certificates
    server = make_kinepy_server(
        extra_args=[
            "--server-cert-file",
            str(c.server_cert),
            "--server-key-file",
            str(c.server_key),
            "--trusted-ca-file",
            str(c.ca),
        ]
    )
    with_cert = [f"--cacert={c.ca}", f"--cert={c.client_cert}", f"--key={c.client_key}"]
    put = _etcdctl(server, *with_cert, "put", "secure", "yes")
    assert put.returncode == 0, put.stderr
    got = _etcdctl(server, *with_cert, "get", "secure", "--print-value-only")
    assert got.returncode == 0 and got.stdout.strip() == "yes", got.stderr

    without_cert = _etcdctl(server, f"--cacert={c.ca}", "get", "secure")
    assert without_cert.returncode != 0 and "yes" not in without_cert.stdout

    untrusted = [f"--cacert={c.ca}", f"--cert={c.other_client_cert}", f"--key={c.other_client_key}"]
    stranger = _etcdctl(server, *untrusted, "get", "secure")
    assert stranger.returncode != 0 and "yes" not in stranger.stdout

    plaintext = conftest.run_etcdctl(server.endpoint, "--dial-timeout=3s", "get", "secure", timeout=30)
    assert plaintext.returncode != 0


def test_tls_without_client_auth_needs_no_client_certificate(
    make_kinepy_server: Callable[..., conftest.KinepyServer], certificates: Certificates
) -> None:
    c = certificates
    server = make_kinepy_server(
        extra_args=["--server-cert-file", str(c.server_cert), "--server-key-file", str(c.server_key)]
    )
    put = _etcdctl(server, f"--cacert={c.ca}", "put", "open", "door")
    assert put.returncode == 0, put.stderr
    got = _etcdctl(server, f"--cacert={c.ca}", "get", "open", "--print-value-only")
    assert got.returncode == 0 and got.stdout.strip() == "door", got.stderr
    # A client that does not trust kinepy's CA refuses the server.
    unverified = _etcdctl(server, "get", "open")
    assert unverified.returncode != 0
