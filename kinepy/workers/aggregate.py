"""One set of metrics from every worker's: what `--metrics-address` serves with `--workers N`.

The supervisor scrapes each worker over its control socket (`control.py`) when it is scraped itself,
and merges the answers sample by sample (same name, same labels): counters, histograms and gauges add
up (calls, commits, watchers, CPU seconds and resident memory of all workers), except the figures
that are one number for the whole server: the revisions and `process_max_fds` take the largest,
`*_created` and `process_start_time_seconds` the earliest.

Why scraping and not prometheus_client's multiprocess mode: that mode aggregates only values the
processes write to memory-mapped files as they change; kinepy's watch and revision figures are read
from the live store at scrape time (`metrics/registry.py`), `process_*` figures are not collected
at all in that mode, and the files of a crashed worker must be cleaned up by hand. A scrape asks the
workers as they are, and a worker that does not answer is left out of that scrape.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

LARGEST = frozenset({"kinepy_revision", "kinepy_compact_revision", "process_max_fds"})
EARLIEST = frozenset({"process_start_time_seconds"})


def _combine(name: str, old: float, new: float) -> float:
    if name in LARGEST:
        return max(old, new)
    if name in EARLIEST or name.endswith("_created"):
        return min(old, new)
    return old + new


def merge(expositions: Iterable[str]) -> list[Metric]:
    """The metric families of every exposition (Prometheus text format), merged."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = merged.get(key)
                merged[key] = sample.value if old is None else _combine(sample.name, old, sample.value)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())
