"""Metric labels and the `--metrics-address` forms."""

from __future__ import annotations

import pytest

from kinepy.errors import ConfigError
from kinepy.metrics.interceptor import method_label
from kinepy.metrics.listener import parse_metrics_address


def test_method_label() -> None:
    assert method_label("/etcdserverpb.KV/Range") == "KV/Range"
    assert method_label("/grpc.health.v1.Health/Check") == "Health/Check"


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":9090", ("127.0.0.1", 9090)),  # loopback, not kine's every interface
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),
        ("[::]:9090", ("::", 9090)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_metrics_address_forms(address: str, parsed: tuple[str, int]) -> None:
    assert parse_metrics_address(address) == parsed


@pytest.mark.parametrize("address", ["9090", "localhost", "host:port", "h:70000"])
def test_bad_metrics_address_names_the_form(address: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_metrics_address(address)
