"""What keeps the control tick on time: statistics copied under the lock, built outside it."""

from __future__ import annotations

import numpy as np

from mobile_vla_node.core.config import DiagnosticsConfig
from mobile_vla_node.core.diagnostics import NodeStats, build_statuses
from mobile_vla_node.core.timing import latency_summary

CFG = DiagnosticsConfig()
CONTROL = {"command": "go", "stop_reason": None, "ticks": 40, "enabled": True}


def filled_stats(now: float = 100.0) -> NodeStats:
    stats = NodeStats(window=50, control_period_s=0.05)
    rng = np.random.default_rng(0)
    for i in range(60):
        for window in stats.latency.values():
            window.add(float(rng.uniform(1.0, 9.0)))
        stats.image_rate.add(now - (59 - i) / 30.0)
        stats.inference_rate.add(now - (59 - i) / 30.0)
        stats.control_rate.add(now - (59 - i) * 0.05)
        stats.jitter.tick(now - (59 - i) * 0.05 + (0.004 if i == 30 else 0.0))
    stats.counters.update(frames_received=60, steps=60, frames_dropped=2)
    return stats


def as_values(statuses) -> list:
    return [(s.name, s.level, s.message, s.values) for s in statuses]


def test_snapshot_builds_the_same_statuses():
    stats = filled_stats()
    snap = stats.snapshot()
    assert as_values(build_statuses("n", "hw", CFG, snap, {}, [], CONTROL, 100.0)) == \
        as_values(build_statuses("n", "hw", CFG, stats, {}, [], CONTROL, 100.0))


def test_snapshot_is_independent_of_later_updates():
    stats = filled_stats()
    snap = stats.snapshot()
    before = as_values(build_statuses("n", "hw", CFG, snap, {}, [], CONTROL, 100.0))
    for window in stats.latency.values():
        window.add(500.0)
    stats.jitter.tick(100.5)                       # a 0.5 s gap: a deadline miss
    stats.control_rate.add(100.5)
    stats.image_rate.add(100.5)
    stats.counters["frames_received"] += 7
    assert snap.jitter.misses == 0 and stats.jitter.misses == 1
    assert snap.latency["inference"].total == 60 and stats.latency["inference"].total == 61
    assert as_values(build_statuses("n", "hw", CFG, snap, {}, [], CONTROL, 100.0)) == before


def test_latency_summary_skips_none_and_non_finite():
    data = [3.0, None, float("nan"), 1.0, float("inf"), 2.0]
    s = latency_summary(data, (50,), ("max", "min"))
    assert s == {"p50": 2.0, "max": 3.0, "min": 1.0, "count": 3}
    assert latency_summary([None, float("nan")]) == {"count": 0}
