"""Which PostgreSQL servers a backend tries: the endpoint's hosts, or libpq's `?host=`/`?port=` lists."""

from __future__ import annotations

import pytest

from kinepy.backends.sql.postgres import addresses
from kinepy.endpoint import parse_endpoint
from kinepy.errors import BackendError
from kinepy.specs import PostgresSpec


def _spec(endpoint: str) -> PostgresSpec:
    spec = parse_endpoint(endpoint)
    assert isinstance(spec, PostgresSpec)
    return spec


@pytest.mark.parametrize(
    ("endpoint", "hosts", "ports", "expected"),
    [
        ("postgres://h/db", None, None, [("h", 5432)]),
        ("postgres://h1:6,h2,[::1]:7/db", None, None, [("h1", 6), ("h2", 5432), ("::1", 7)]),
        ("postgres://h/db", "/run/postgresql", None, [("/run/postgresql", 5432)]),
        ("postgres:///db", "a,b", "1,2", [("a", 1), ("b", 2)]),
        ("postgres:///db", "a,b", "9", [("a", 9), ("b", 9)]),
        ("postgres://h:5/db", None, "6", [("h", 6)]),
    ],
)
def test_the_hosts_tried_in_order(
    endpoint: str, hosts: str | None, ports: str | None, expected: list[tuple[str, int]]
) -> None:
    assert addresses(_spec(endpoint), hosts, ports) == expected


def test_a_port_list_that_does_not_match_the_hosts_is_refused() -> None:
    with pytest.raises(BackendError, match="2 hosts but 3 ports"):
        addresses(_spec("postgres:///db"), "a,b", "1,2,3")
