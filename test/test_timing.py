"""Latency percentiles, rate meter and period jitter."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core.timing import LatencyWindow, PeriodJitter, RateMeter


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    data = rng.lognormal(3.0, 0.5, 150)
    window = LatencyWindow(200)
    for v in data:
        window.add(v)
    s = window.summary()
    assert set(s) == {"p50", "p95", "p99", "max", "mean", "count"}
    for p in (50, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(data, p), rel=1e-12)
    assert s["max"] == pytest.approx(data.max())
    assert s["mean"] == pytest.approx(data.mean())
    assert s["count"] == 150


def test_known_values():
    window = LatencyWindow(100)
    for v in range(1, 101):
        window.add(v)
    s = window.summary()
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert s["max"] == 100.0 and s["mean"] == pytest.approx(50.5)


def test_window_size_is_respected():
    window = LatencyWindow(10)
    for v in range(1, 26):
        window.add(float(v))
    kept = np.arange(16, 26, dtype=float)
    s = window.summary()
    assert list(window.samples) == list(kept)
    assert s["p50"] == pytest.approx(np.percentile(kept, 50))
    assert s["p99"] == pytest.approx(np.percentile(kept, 99))
    assert s["max"] == 25.0 and s["mean"] == pytest.approx(20.5)
    assert s["count"] == 25          # total samples seen, not the window length


def test_empty_summary():
    assert LatencyWindow().summary() == {}


def test_rate_meter_values():
    meter = RateMeter()
    assert meter.rate() == 0.0
    meter.add(5.0)
    assert meter.rate() == 0.0                      # one event: no rate
    for i in range(1, 31):
        meter.add(5.0 + i / 15.0)                   # 15 Hz
    assert meter.rate() == pytest.approx(15.0)
    assert meter.rate(now=7.0) == pytest.approx(15.0)


def test_rate_meter_window_and_staleness():
    meter = RateMeter(size=5)
    for i in range(20):
        meter.add(i * 0.1)                          # 10 Hz
    for i in range(1, 5):
        meter.add(1.9 + i * 0.05)                   # then 20 Hz: the window holds these only
    assert len(meter.times) == 5
    assert meter.rate() == pytest.approx(20.0, rel=1e-9)
    last = meter.times[-1]
    span = last - meter.times[0]
    assert meter.rate(now=last + span * 0.9) == pytest.approx(20.0)
    assert meter.rate(now=last + span * 1.1) == 0.0  # newest event older than the span: stale


def test_rate_meter_zero_span():
    meter = RateMeter()
    meter.add(1.0)
    meter.add(1.0)
    assert meter.rate() == 0.0


def test_period_jitter_deviation_and_misses():
    jitter = PeriodJitter(0.05)
    for t in (0.0, 0.05, 0.11, 0.16, 0.30, 0.35, 0.46):
        jitter.tick(t)
    # intervals 50, 60, 50, 140, 50, 110 ms -> deviations 0, 10, 0, 90, 0, 60 ms
    devs = np.array(jitter.deviation.samples)
    np.testing.assert_allclose(devs, [0, 10, 0, 90, 0, 60], atol=1e-9)
    assert jitter.misses == 2                       # 140 and 110 ms > 75 ms
    s = jitter.deviation.summary()
    assert s["max"] == pytest.approx(90.0)
    assert s["p50"] == pytest.approx(np.percentile([0, 10, 0, 90, 0, 60], 50))
    assert s["count"] == 6


def test_period_jitter_early_ticks_count_as_deviation_not_misses_and_window():
    jitter = PeriodJitter(0.1, size=3)
    for t in (0.0, 0.02, 0.16, 0.30, 0.46):
        jitter.tick(t)
    # intervals 20, 140, 140, 160 ms -> deviations 80, 40, 40, 60; only 160 > 150 is a miss;
    # the window keeps the last 3
    assert jitter.misses == 1
    np.testing.assert_allclose(list(jitter.deviation.samples), [40, 40, 60], atol=1e-6)
    assert jitter.deviation.total == 4
