"""Sliding-window latency, rate and period-jitter statistics (thread-compatible, lock outside)."""

from __future__ import annotations

from collections import deque

import numpy as np

PERCENTILES = (50, 95, 99)
STATS = {"min": np.min, "max": np.max, "mean": np.mean, "std": np.std}


def latency_summary(samples, percentiles=PERCENTILES, stats=("max", "mean"),
                    digits: int | None = None) -> dict:
    """The one latency summary: ``p<N>`` per percentile, the ``stats`` asked for and ``count``.

    ``stats`` are names from `STATS` (min, max, mean, std). None and non-finite samples are left
    out; without samples the result is ``{"count": 0}``. ``digits`` rounds the values.
    """
    # One conversion (None -> nan) and one mask: a per-sample np.isfinite call cost ~1 us each,
    # and the node's diagnostics summarize five 200-sample windows per build.
    data = np.array(list(samples), np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return {"count": 0}
    out = {f"p{p}": float(v)
           for p, v in zip(percentiles, np.percentile(data, percentiles), strict=True)}
    out.update({name: float(STATS[name](data)) for name in stats})
    if digits is not None:
        out = {k: round(v, digits) for k, v in out.items()}
    out["count"] = int(data.size)
    return out


class LatencyWindow:
    """The last ``size`` samples (milliseconds) with percentile summaries."""

    def __init__(self, size: int = 200):
        self.samples: deque[float] = deque(maxlen=size)
        self.total = 0

    def add(self, value_ms: float) -> None:
        """Record one sample."""
        self.samples.append(float(value_ms))
        self.total += 1

    def copy(self) -> LatencyWindow:
        """An independent copy (to summarize outside the lock that guards this one)."""
        out = LatencyWindow(self.samples.maxlen)
        out.samples.extend(self.samples)
        out.total = self.total
        return out

    def summary(self) -> dict:
        """{"p50", "p95", "p99", "max", "mean", "count"} over the window; empty dict if none."""
        if not self.samples:
            return {}
        return dict(latency_summary(self.samples), count=self.total)


class RateMeter:
    """Event rate (Hz) over the last ``size`` event times."""

    def __init__(self, size: int = 100):
        self.times: deque[float] = deque(maxlen=size)

    def add(self, t: float) -> None:
        """Record an event at time ``t`` (seconds)."""
        self.times.append(t)

    def copy(self) -> RateMeter:
        """An independent copy."""
        out = RateMeter(self.times.maxlen)
        out.times.extend(self.times)
        return out

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

    def __init__(self, period_s: float, size: int = 200, recent_s: float = 5.0):
        self.period = period_s
        self.deviation = LatencyWindow(size)
        self.misses = 0
        self.recent_misses = RecentEvents(recent_s)
        self.max_gap_s = 0.0
        self.last: float | None = None

    def copy(self) -> PeriodJitter:
        """An independent copy."""
        out = PeriodJitter(self.period, self.deviation.samples.maxlen, self.recent_misses.span)
        out.deviation = self.deviation.copy()
        out.recent_misses = self.recent_misses.copy()
        out.misses, out.max_gap_s, out.last = self.misses, self.max_gap_s, self.last
        return out

    def tick(self, t: float) -> None:
        """Record a tick at ``t`` (seconds, monotonic)."""
        if self.last is not None:
            dt = t - self.last
            self.deviation.add(abs(dt - self.period) * 1e3)
            self.max_gap_s = max(self.max_gap_s, dt)
            if dt > 1.5 * self.period:
                self.misses += 1
                self.recent_misses.add(t)
        self.last = t


class RecentEvents:
    """Events in the last ``span_s`` seconds: a rate and a count that a long window cannot hide."""

    def __init__(self, span_s: float = 2.0):
        self.span = span_s
        self.times: deque[float] = deque()
        self.first: float | None = None

    def copy(self) -> RecentEvents:
        """An independent copy."""
        out = RecentEvents(self.span)
        out.times.extend(self.times)
        out.first = self.first
        return out

    def add(self, t: float) -> None:
        """Record an event at ``t`` (seconds, monotonic)."""
        if self.first is None:
            self.first = t
        self.times.append(t)
        self._trim(t)

    def _trim(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.span:  # window (now - span, now]
            self.times.popleft()

    def count(self, now: float) -> int:
        """Events within the last span."""
        self._trim(now)
        return len(self.times)

    def rate(self, now: float) -> float:
        """Events per second over the last span (or since the first event, if that is shorter)."""
        if self.first is None:
            return 0.0
        n = self.count(now)
        if now - self.first >= self.span:
            return n / self.span
        # Fewer than span seconds since the first event: n events bound n - 1 intervals.
        return (n - 1) / (now - self.first) if now > self.first else 0.0
