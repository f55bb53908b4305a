"""Sliding-window latency, rate and period-jitter statistics (thread-compatible, lock outside)."""

from __future__ import annotations

from collections import deque

import numpy as np

PERCENTILES = (50, 95, 99)


class LatencyWindow:
    """The last ``size`` samples (milliseconds) with percentile summaries."""

    def __init__(self, size: int = 200):
        self.samples: deque[float] = deque(maxlen=size)
        self.total = 0

    def add(self, value_ms: float) -> None:
        """Record one sample."""
        self.samples.append(float(value_ms))
        self.total += 1

    def summary(self) -> dict:
        """{"p50", "p95", "p99", "max", "mean", "count"} over the window; empty dict if none."""
        if not self.samples:
            return {}
        data = np.fromiter(self.samples, dtype=np.float64)
        values = np.percentile(data, PERCENTILES)
        out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}
        out.update(max=float(data.max()), mean=float(data.mean()), count=self.total)
        return out


class RateMeter:
    """Event rate (Hz) over the last ``size`` event times."""

    def __init__(self, size: int = 100):
        self.times: deque[float] = deque(maxlen=size)

    def add(self, t: float) -> None:
        """Record an event at time ``t`` (seconds)."""
        self.times.append(t)

    def rate(self, now: float | None = None) -> float:
        """Events per second; 0 when fewer than two events or the newest is older than the span."""
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        if span <= 0:
            return 0.0
        if now is not None and now - self.times[-1] > span:
            return 0.0
        return (len(self.times) - 1) / span


class PeriodJitter:
    """Deviation of tick intervals from the nominal period, and deadline misses (> 1.5 periods)."""

    def __init__(self, period_s: float, size: int = 200):
        self.period = period_s
        self.deviation = LatencyWindow(size)
        self.misses = 0
        self.last: float | None = None

    def tick(self, t: float) -> None:
        """Record a tick at ``t`` (seconds, monotonic)."""
        if self.last is not None:
            dt = t - self.last
            self.deviation.add(abs(dt - self.period) * 1e3)
            if dt > 1.5 * self.period:
                self.misses += 1
        self.last = t
