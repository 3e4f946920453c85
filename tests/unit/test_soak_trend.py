"""benchmarks/soak.py's verdict: a fitted slope with its 95% interval, not a single sample."""

from __future__ import annotations

import random

from benchmarks.soak import trend, verdict


def test_a_steady_noisy_series_is_bounded() -> None:
    rng = random.Random(1)
    fitted = trend([(60.0 * i, 100_000 + rng.uniform(-5_000, 5_000)) for i in range(60)])
    assert fitted is not None
    assert not fitted.grows("rss_kib")
    assert fitted.low_per_hour <= fitted.slope_per_hour <= fitted.high_per_hour


def test_a_steady_climb_grows() -> None:
    rng = random.Random(2)
    fitted = trend([(60.0 * i, 100_000 + 1_000 * i + rng.uniform(-3_000, 3_000)) for i in range(60)])
    assert fitted is not None and fitted.grows("rss_kib")
    assert fitted.low_per_hour > 0


def test_one_high_sample_is_not_growth() -> None:
    points = [(60.0 * i, 100.0) for i in range(30)]
    points[-1] = (points[-1][0], 400.0)
    fitted = trend(points)
    assert fitted is not None and not fitted.grows("history_rows")


def test_a_few_more_descriptors_are_noise() -> None:
    fitted = trend([(60.0 * i, 50.0 + i // 10) for i in range(40)])  # 50 -> 53
    assert fitted is not None and fitted.low_per_hour > 0
    assert not fitted.grows("fds")


def test_the_warm_up_is_left_out() -> None:
    samples = [
        {"t": 60.0 * i, "rss_kib": 50_000.0 + min(i, 10) * 10_000, "fds": 40.0, "threads": 9.0,
         "history_rows": 1000.0, "db_bytes": 1e6}
        for i in range(60)
    ]  # fmt: skip
    judged = verdict(samples, seconds=3600)
    assert not judged["rss_kib"]["grows"]
    assert judged["fds"]["slope_per_hour"] == 0
