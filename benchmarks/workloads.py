"""The workloads and the sizes they run at.

A `Workload` names a loadgen function (`kind`), its parameters, and the `Dataset` it runs on. Targets are
started fresh per dataset, the dataset is preloaded (not measured), then its workloads run one after the
other, every target interleaved. Prefixes are per workload and repeat, so creates never collide.

Sizes (see README.md for the figures each one implies):

    smoke   a few tenths of a second per run, one repeat, tiny datasets: checks that nothing is broken
            (CI), not timing
    full    4 s per run, 3 repeats (median reported), lists of 10k and 100k keys: ~15 min for 3 targets
    scale   opt-in: page latency with 1k, 100k and 1M keys stored, and compaction of 1M superseded
            revisions while a writer runs (its longest stall); ~1 h on a 2-core machine
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KIB = 1024


@dataclass(frozen=True)
class Dataset:
    """Keys loaded into a fresh target before its workloads run: (prefix, keys, value size, rounds)."""

    name: str
    preload: tuple[tuple[str, int, int, int], ...] = ()


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # a loadgen.WORKLOADS key
    dataset: Dataset
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    unit: str = "ops"  # what one operation is, for the table ("pages", "events", …)
    timeout: float = 600.0
    precompact: bool = True  # compact the target to its current revision first (kube-apiserver does)
    driver: str = "loadgen"  # who runs it: the suite's load generator, or etcd's `benchmark` (etcd_tool.py)


@dataclass(frozen=True)
class Size:
    name: str
    seconds: float
    repeats: int
    list_keys: tuple[int, int]
    hot_keys: int  # keys for the update and mixed workloads
    watchers: tuple[int, int]
    watch_rate: int  # puts per second while watching
    scale_keys: tuple[int, ...] = ()
    compact_keys: int = 0
    compact_rounds: int = 0


SIZES = {
    "smoke": Size(
        "smoke",
        0.3,
        1,
        (200, 1000),
        100,
        (1, 10),
        50,
        scale_keys=(100, 1000),
        compact_keys=100,
        compact_rounds=5,
    ),
    "full": Size("full", 4.0, 3, (10_000, 100_000), 1000, (1, 100), 100),
    "scale": Size(
        "scale",
        4.0,
        1,
        (10_000, 100_000),
        1000,
        (1, 100),
        100,
        scale_keys=(1000, 100_000, 1_000_000),
        compact_keys=1000,
        compact_rounds=1000,
    ),
}


def _k(n: int) -> str:
    return (
        f"{n // 1_000_000}m"
        if n >= 1_000_000 and n % 1_000_000 == 0
        else (f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))
    )


def workloads(size: Size, *, scale: bool = False) -> list[Workload]:
    """The suite at `size`; with `scale`, the 1M-key scale runs (not part of `all` unless size is scale)."""
    s = size.seconds
    empty = Dataset("empty")
    small, large = size.list_keys
    hot = Dataset(
        "hot-keys",
        (
            ("/registry/bench/update/", size.hot_keys, KIB, 1),
            ("/registry/bench/mixed/", size.hot_keys, KIB, 1),
        ),
    )
    lists = Dataset(
        "lists",
        (
            (f"/registry/bench/list{_k(small)}/", small, KIB, 1),
            (f"/registry/bench/list{_k(large)}/", large, KIB, 1),
        ),
    )
    out = [
        Workload(
            "put-seq",
            "put_seq",
            empty,
            {"value_size": 256, "seconds": s},
            "sequential Put, 1 client, 256 B values on fresh keys",
        ),
        *(
            Workload(
                f"create-{n}",
                "create",
                empty,
                {"value_size": KIB, "concurrency": n, "seconds": s},
                f"kube create txn (mod_revision = 0 → put), {n} in flight, 1 KiB",
            )
            for n in (16, 64, 256)
        ),
        Workload(
            f"update-{size.hot_keys}",
            "update",
            hot,
            {"prefix": "/registry/bench/update/", "value_size": KIB, "concurrency": 64, "seconds": s},
            f"kube update txn (mod = X → put, else get) on {size.hot_keys} keys, 64 in flight",
        ),
        *(
            Workload(
                f"list-{_k(n)}",
                "list_pages",
                lists,
                {"prefix": f"/registry/bench/list{_k(n)}/", "limit": 500, "expect_keys": n, "seconds": s},
                f"paginated list of {n} keys of 1 KiB, limit 500, revision pinned; 1 op = 1 page",
                "pages",
            )
            for n in (small, large)
        ),
        *(
            Workload(
                f"count-{_k(n)}",
                "count",
                lists,
                {"prefix": f"/registry/bench/list{_k(n)}/", "expect_keys": n, "seconds": s},
                f"count_only range over the {n}-key prefix, 1 client",
            )
            for n in (small, large)
        ),
        *(
            Workload(
                f"watch-{w}",
                "watch_latency",
                empty,
                {"watchers": w, "rate": size.watch_rate, "value_size": 256, "seconds": s},
                f"{w} watcher(s) on a prefix, {size.watch_rate} puts/s; latency put sent → event received",
                "events",
            )
            for w in size.watchers
        ),
        Workload(
            "lease-churn",
            "lease_churn",
            empty,
            {"ttl": 60, "concurrency": 16, "seconds": s},
            "LeaseGrant + one KeepAlive + LeaseRevoke, 16 in flight; 1 op = the three",
        ),
        Workload(
            "mixed",
            "mixed",
            hot,
            {
                "prefix": "/registry/bench/mixed/",
                "value_size": KIB,
                "concurrency": 64,
                "read_fraction": 0.7,
                "list_limit": 100,
                "seconds": s,
            },
            "70 % reads (9/10 get, 1/10 list page of 100), 30 % writes (4/5 update, 1/5 create), "
            "64 in flight",
        ),
    ]
    if scale:
        for n in size.scale_keys:
            ds = Dataset(f"scale-{_k(n)}", ((f"/registry/bench/scale{_k(n)}/", n, 256, 1),))
            out.append(
                Workload(
                    f"scale-list-{_k(n)}",
                    "list_pages",
                    ds,
                    {
                        "prefix": f"/registry/bench/scale{_k(n)}/",
                        "limit": 500,
                        "expect_keys": n,
                        "seconds": s,
                    },
                    f"page latency of a paginated list (limit 500) with {n} keys of 256 B stored",
                    "pages",
                    timeout=3600,
                )
            )
        revisions = size.compact_keys * size.compact_rounds
        ds = Dataset(
            "compaction", (("/registry/bench/compact/", size.compact_keys, 256, size.compact_rounds),)
        )
        out.append(
            Workload(
                f"compact-{_k(revisions)}",
                "compact_during_writes",
                ds,
                {"prefix": "/registry/bench/compact/", "value_size": 256, "batches": 10},
                f"compact {revisions} superseded revisions in 10 Compact calls while 1 writer puts; "
                "latencies are the writer's",
                "writes",
                timeout=3600,
                precompact=False,
            )
        )
    return out


def select(size_name: str, names: str) -> list[Workload]:
    """Workloads by comma-separated `names` ("all" = the suite; at size scale, all includes the scale
    runs; "scale" = only the scale runs)."""
    size = SIZES[size_name]
    every = workloads(size, scale=True)
    base = {w.name for w in workloads(size)}
    if names == "all":
        # smoke includes the (tiny) scale runs too, so CI exercises their code.
        return every if size_name in ("scale", "smoke") else [w for w in every if w.name in base]
    if names == "scale":
        return [w for w in every if w.name not in base]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    by_name = {w.name: w for w in every}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]
