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


# --------------------------------------------------------------------- the control thread's GIL


def test_gil_holding_sleep_keeps_other_python_threads_out():
    import sys
    import threading
    import time

    from mobile_vla_node.ros.control_thread import _gil_holding_sleep

    sleep_until = _gil_holding_sleep()
    if sleep_until is None:
        import pytest

        pytest.skip("no clock_nanosleep through ctypes.PyDLL here (not Linux)")
    # The worker lets the GIL go on every iteration (sleep(0)); with a long switch interval
    # nothing forces this thread to let it go between its statements. So the worker can only
    # count while this thread waits with the GIL released.
    counter, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    worker = threading.Thread(target=spin)
    worker.start()
    try:
        while counter[0] < 10:
            time.sleep(0.001)
        before = counter[0]
        deadline = time.monotonic() + 0.05
        sleep_until(deadline)
        during = counter[0]
        after_sleep = time.monotonic()
        time.sleep(0.02)  # releases the GIL: now the worker counts again
        released = counter[0]
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(old)
    assert during == before            # not one bytecode of the worker while the GIL was held
    assert released > during           # (the worker was alive and waiting for it)
    assert after_sleep >= deadline     # and it slept until the deadline


def test_control_thread_with_gil_lead_ticks_and_says_so():
    import sys
    import time

    import numpy as np

    from mobile_vla_node.ros.control_thread import SWITCH_INTERVAL_S, ControlThread

    published = []
    old = sys.getswitchinterval()
    thread = ControlThread(0.01, lambda: 0.0, lambda stalled: np.ones(3), published.append,
                           use_ros_time=False, stall_timeout_s=lambda: 0.5, gil_lead_s=0.002)
    try:
        thread.start()
        assert sys.getswitchinterval() <= SWITCH_INTERVAL_S
        while len(published) < 5:
            time.sleep(0.01)
        assert thread.finish(zeros=1, spacing_s=0.0)
    finally:
        sys.setswitchinterval(old)
    assert thread.ticks >= 5 and not published[-1].any()
    if thread.gil_lead_s:  # Linux
        assert "GIL taken 2 ms before each tick" in thread.scheduling
    off = ControlThread(0.01, lambda: 0.0, lambda stalled: np.ones(3), published.append,
                        use_ros_time=False, stall_timeout_s=lambda: 0.5, gil_lead_s=0.0)
    assert off.gil_lead_s == 0.0 and off._sleep_holding_gil is None
