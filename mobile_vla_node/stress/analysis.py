"""Pure analysis of what the stress recorder saw: Twist timing, shutdown order, RSS, diagnostics.

No ROS and no processes here: plain lists of ``(monotonic_s, linear_x, linear_y, angular_z)``
Twists, ``(monotonic_s, rss_mb, cpu_s)`` samples and diagnostics snapshots in, dicts out.
"""

from __future__ import annotations

import math

LATE_FACTOR = 1.5     # an interval longer than this many periods is a late tick
MAX_GAP_PERIODS = 3   # target: no interval longer than this many periods
WORST_GAPS = 5        # how many of the longest gaps to locate in the window


def is_zero(twist) -> bool:
    """True if a recorded Twist ``(t, x, y, z)`` commands no motion at all."""
    return twist[1] == 0.0 and twist[2] == 0.0 and twist[3] == 0.0


def timing(times, period_s: float, t0: float | None = None, t1: float | None = None) -> dict:
    """Rate, gaps and late ticks of Twist arrival times within ``[t0, t1]``.

    The rate is Twists per second of the window (not of first-to-last Twist), so a node that
    goes silent at the end of the window is charged for it. The gaps include the stretch from
    ``t0`` to the first Twist and from the last Twist to ``t1``, for the same reason. A tick is
    late when an interval exceeds ``LATE_FACTOR`` periods; ``late_ticks`` counts such intervals
    and ``missing_ticks`` the periods they swallowed beyond the first.
    """
    times = sorted(times)
    if t0 is None:
        t0 = times[0] if times else 0.0
    if t1 is None:
        t1 = times[-1] if times else t0
    inside = [t for t in times if t0 <= t <= t1]
    span = max(t1 - t0, 0.0)
    edges = [t0, *inside, t1] if span > 0 else inside
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    late = [g for g in gaps if g > LATE_FACTOR * period_s]
    expected = span / period_s if period_s > 0 else 0.0
    out = {
        "window_s": round(span, 3),
        "twists": len(inside),
        "expected_ticks": round(expected, 1),
        "rate_hz": round(len(inside) / span, 3) if span > 0 else None,
        "max_gap_ms": round(max(gaps) * 1e3, 1) if gaps else None,
        "max_gap_periods": round(max(gaps) / period_s, 2) if gaps and period_s else None,
        "late_ticks": len(late),
        "late_fraction": round(len(late) / len(gaps), 4) if gaps else None,
        "late_per_min": round(len(late) / span * 60.0, 2) if span > 0 else None,
        "missing_ticks": int(sum(max(round(g / period_s) - 1, 0) for g in late)),
        "gaps_over_3_periods": sum(1 for g in gaps if g > MAX_GAP_PERIODS * period_s),
    }
    if gaps:
        # Where the worst gaps were: [seconds from t0 to the gap's start, gap ms], worst first.
        worst = sorted(range(len(gaps)), key=lambda i: -gaps[i])[:WORST_GAPS]
        out["worst_gaps"] = [[round(edges[i] - t0, 3), round(gaps[i] * 1e3, 1)] for i in worst]
        ordered = sorted(gaps)
        out["gap_p99_ms"] = round(ordered[min(len(ordered) - 1,
                                              int(math.ceil(0.99 * len(ordered))) - 1)] * 1e3, 1)
    return out


def worst_second(times, t0: float, t1: float) -> int | None:
    """Fewest Twists received in any whole second of ``[t0, t1]`` (None if shorter than 1 s)."""
    n = int(t1 - t0)
    if n < 1:
        return None
    counts = [0] * n
    for t in times:
        k = int(t - t0)
        if 0 <= k < n and t >= t0:
            counts[k] += 1
    return min(counts)


def after_first_zero(twists, t_signal: float) -> dict:
    """Shutdown order: the Twists received at or after ``t_signal`` (the first signal sent).

    ``first_zero_s`` is the delay to the first all-zero Twist, ``nonzero_after_zero`` the motion
    Twists received after it (the target is none), and ``last_zero`` whether the last Twist
    received at all (before or after the signal) was zero.
    """
    after = sorted((t for t in twists if t[0] >= t_signal), key=lambda t: t[0])
    first = next((i for i, t in enumerate(after) if is_zero(t)), None)
    nonzero = [t for t in after[first + 1:] if not is_zero(t)] if first is not None else []
    last = max(twists, key=lambda t: t[0]) if twists else None
    return {
        "twists_after_signal": len(after),
        "first_zero_s": round(after[first][0] - t_signal, 4) if first is not None else None,
        "nonzero_after_zero": len(nonzero),
        "nonzero_after_zero_max": (round(max(max(abs(v) for v in t[1:]) for t in nonzero), 4)
                                   if nonzero else 0.0),
        "last_zero": bool(last is not None and is_zero(last)),
        "last_twist": list(last[1:]) if last is not None else None,
    }


def first_zero_after(twists, t_last_frame: float) -> dict:
    """Stop latency: from the last frame sent to the first zero Twist received after it."""
    before = [t for t in twists if t[0] < t_last_frame]
    moving = bool(before) and not is_zero(max(before, key=lambda t: t[0]))
    zero = next((t for t in sorted(twists, key=lambda t: t[0])
                 if t[0] >= t_last_frame and is_zero(t)), None)
    return {"moving_at_last_frame": moving,
            "first_zero_ms": round((zero[0] - t_last_frame) * 1e3, 1) if zero else None,
            "nonzero_after_last_frame": sum(1 for t in twists if t[0] >= t_last_frame
                                            and (zero is None or t[0] < zero[0])
                                            and not is_zero(t))}


def rss_summary(samples, t0: float, t1: float, settle_s: float = 0.0) -> dict:
    """RSS (MB) and CPU% of the node over ``[t0, t1]``; ``samples`` are (t, rss_mb, cpu_s).

    ``before`` is the last sample at or before ``t0``; ``after`` the last at or before ``t1``
    (``settle_s`` documents how long after the load it was taken). CPU% is process CPU time over
    wall time between those two samples (100 % = one core).
    """
    inside = [s for s in samples if t0 <= s[0] <= t1]
    head = [s for s in samples if s[0] <= t0]
    first = head[-1] if head else (inside[0] if inside else None)
    last = inside[-1] if inside else None
    out: dict = {"samples": len(inside)}
    if first is None or last is None:
        return out
    out["before_mb"] = round(first[1], 1)
    out["after_mb"] = round(last[1], 1)
    out["peak_mb"] = round(max(s[1] for s in [first, *inside]), 1)
    out["change_pct"] = round((last[1] - first[1]) / first[1] * 100.0, 2) if first[1] else None
    out["settle_s"] = settle_s
    if last[0] > first[0]:
        out["cpu_pct"] = round((last[2] - first[2]) / (last[0] - first[0]) * 100.0, 1)
    return out


def rss_series(samples, t_origin: float, step_s: float = 1.0) -> list:
    """RSS over time, thinned to about one point per ``step_s``: ``[[t_rel_s, rss_mb], ...]``."""
    out, next_t = [], None
    for t, rss, _cpu in samples:
        if next_t is None or t >= next_t:
            out.append([round(t - t_origin, 2), round(rss, 1)])
            next_t = t + step_s
    return out


def diag_value(snapshot: dict | None, status: str, key: str):
    """One value of one status of a diagnostics snapshot (``{name: {level, message, values}}``)."""
    if not snapshot:
        return None
    return snapshot.get(status, {}).get("values", {}).get(key)


def diagnostics_summary(first: dict | None, last: dict | None,
                        prefix: str = "vla_node") -> dict:
    """What /diagnostics said at the end of a window, and counters as differences over it."""
    control, inputs = f"{prefix}: control", f"{prefix}: inputs"

    def delta(status, key):
        a, b = diag_value(first, status, key), diag_value(last, status, key)
        try:
            return int(b) - int(a or 0) if b is not None else None
        except ValueError:
            return None

    level = last.get(control, {}).get("level") if last else None
    return {
        "control_rate_hz": _num(diag_value(last, control, "control_rate_hz")),
        "jitter_p99_ms": _num(diag_value(last, control, "jitter_p99_ms")),
        "deadline_misses": _num(diag_value(last, control, "deadline_misses")),
        "deadline_misses_in_window": delta(control, "deadline_misses"),
        "control_level": level,
        "control_level_name": {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}.get(level),
        "control_message": last.get(control, {}).get("message") if last else None,
        "malformed_images_in_window": delta(inputs, "malformed_images"),
        "rejected_commands_in_window": delta(inputs, "rejected_commands"),
        "frames_dropped_in_window": delta(inputs, "frames_dropped"),
    }


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def publish_summary(times, nominal_hz: float) -> dict:
    """Achieved rate and worst interval of one of our own publishers (is the load real?)."""
    times = sorted(times)
    out = {"nominal_hz": nominal_hz, "published": len(times)}
    if len(times) > 1:
        span = times[-1] - times[0]
        out["achieved_hz"] = round((len(times) - 1) / span, 2) if span > 0 else None
        intervals = [b - a for a, b in zip(times, times[1:], strict=False)]
        out["max_interval_ms"] = round(max(intervals) * 1e3, 1)
    return out


def windows(times, period_s: float, t0: float, t1: float, window_s: float = 60.0) -> list:
    """`timing` of each consecutive ``window_s`` of ``[t0, t1]`` (soak: rate per minute).

    Windows are half-open (a Twist on a border counts in the later one); a last partial window
    shorter than half of ``window_s`` is left out (too short to rate).
    Each entry has ``index`` and ``start_s`` (seconds from ``t0``) besides `timing`'s keys.
    """
    if window_s <= 0:
        raise ValueError(f"window_s {window_s!r} must be > 0")
    times = sorted(times)
    out, k = [], 0
    while True:
        a = t0 + k * window_s
        b = min(a + window_s, t1)
        if b - a < 0.5 * window_s or a >= t1:
            break
        last = b >= t1
        w = timing([t for t in times if a <= t and (t < b or (last and t <= b))], period_s, a, b)
        w.pop("worst_gaps", None)
        out.append({"index": k, "start_s": round(a - t0, 3), **w})
        k += 1
    return out


def rss_growth(samples, t_from: float, t_to: float, edge_s: float = 30.0) -> dict:
    """RSS growth over ``[t_from, t_to]`` (soak: after the warm-up), robust to single samples.

    ``start_mb``/``end_mb`` are medians of the samples in the first and last ``edge_s`` of the
    window (at most a quarter of it each); ``growth_pct`` is end against start.
    ``slope_mb_per_min`` is the least-squares slope of all samples in the window,
    ``projected_mb_per_h`` that slope times 60.
    """
    inside = [(t, rss) for t, rss, *_ in samples if t_from <= t <= t_to]
    out: dict = {"samples": len(inside), "window_s": round(max(t_to - t_from, 0.0), 1)}
    if len(inside) < 2:
        return out
    edge = min(edge_s, (t_to - t_from) / 4.0)

    def median(values):
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    head = [r for t, r in inside if t <= t_from + edge] or [inside[0][1]]
    tail = [r for t, r in inside if t >= t_to - edge] or [inside[-1][1]]
    start, end = median(head), median(tail)
    n = len(inside)
    mt = sum(t for t, _ in inside) / n
    mr = sum(r for _, r in inside) / n
    var = sum((t - mt) ** 2 for t, _ in inside)
    slope = sum((t - mt) * (r - mr) for t, r in inside) / var if var > 0 else 0.0
    out.update({
        "edge_s": round(edge, 1),
        "start_mb": round(start, 1),
        "end_mb": round(end, 1),
        "peak_mb": round(max(r for _, r in inside), 1),
        "growth_pct": round((end - start) / start * 100.0, 2) if start else None,
        "slope_mb_per_min": round(slope * 60.0, 3),
        "projected_mb_per_h": round(slope * 3600.0, 1),
    })
    return out
