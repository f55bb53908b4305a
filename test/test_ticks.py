import threading
import time

import numpy as np
import pytest

from mobile_vla_node.core.ticks import ClockGuard, TickSchedule
from mobile_vla_node.ros.control_thread import ControlThread


def test_schedule_keeps_phase_and_counts_skipped_deadlines():
    s = TickSchedule(0.05, 10.0)
    assert not s.due(10.04) and s.due(10.05)
    assert s.advance(10.05) == 0 and s.next == pytest.approx(10.10)
    # A tick 120 ms late: two deadlines skipped, no burst, same phase.
    assert s.advance(10.22) == 2
    assert s.next == pytest.approx(10.25) and s.skipped == 2
    assert s.wait_s(10.24) == pytest.approx(0.01)
    s.restart(3.0)
    assert s.next == pytest.approx(3.05)


def test_guard_jumps():
    g = ClockGuard(jump_threshold_s=1.0)
    assert g.check(100.0, 0.0) is None
    assert g.check(100.05, 0.05) is None
    assert "back 10.000" in g.check(90.05, 0.10)
    assert g.check(90.10, 0.15) is None
    assert "ahead" in g.check(101.5, 0.20)          # +1.4 s of ROS time in 50 ms
    assert g.check(106.5, 5.20) is None              # sim time keeping pace with steady time
    assert g.jumps == 2
    assert g.check(106.5, 5.7) is None               # ROS time standing still is no jump


def test_control_thread_finish_publishes_nothing_after_the_zeros():
    published, lock = [], threading.Lock()

    def publish(v):
        with lock:
            published.append(np.array(v))

    def tick(stalled):
        time.sleep(0.003)  # a tick in progress while finish() runs
        return np.array([0.3, 0.0, 0.1])

    thread = ControlThread(0.005, lambda: 0.0, tick, publish, use_ros_time=False,
                           stall_timeout_s=lambda: 0.5)
    thread.start()
    while len(published) < 5:
        time.sleep(0.005)
    assert thread.finish(zeros=3, spacing_s=0.0)
    time.sleep(0.05)
    with lock:
        tail = published[-3:]
        first_zero = next(i for i, v in enumerate(published) if not v.any())
        assert all(not v.any() for v in published[first_zero:])
    assert len(tail) == 3 and not np.any(tail)


def test_control_thread_turns_a_failing_tick_into_a_zero():
    published, errors = [], []

    def tick(stalled):
        raise RuntimeError("bug")

    thread = ControlThread(0.005, lambda: 0.0, tick, published.append, use_ros_time=False,
                           stall_timeout_s=lambda: 0.5, on_error=errors.append)
    thread.start()
    while len(published) < 3:
        time.sleep(0.005)
    thread.finish(zeros=0)
    assert errors and all(not np.any(v) for v in published)


def test_control_thread_ros_time_stall_gives_zeros_at_the_steady_rate():
    calls = []
    thread = ControlThread(0.01, lambda: 0.0, lambda stalled: calls.append(stalled) or
                           np.zeros(3), lambda v: None, use_ros_time=True,
                           stall_timeout_s=lambda: 0.05)
    thread.start()
    while len(calls) < 5:
        time.sleep(0.01)
    thread.finish(zeros=0)
    assert all(calls)  # ROS time never started: every tick is a stall tick


def test_realtime_scheduling_is_optional():
    from mobile_vla_node.ros.control_thread import set_realtime

    assert set_realtime(0).startswith("normal")
    got = []
    t = threading.Thread(target=lambda: got.append(set_realtime(5)))
    t.start()
    t.join()
    # Either granted (root, CAP_SYS_NICE) or refused with the reason; never an exception.
    assert got[0] == "SCHED_FIFO 5" or got[0].startswith("normal (SCHED_FIFO 5 refused")


def test_gc_loading_freezes_and_restores_automatic_collection():
    import gc

    from mobile_vla_node.core import gc_pauses

    assert gc.isenabled()
    before = gc.get_freeze_count()
    with gc_pauses.loading():
        assert not gc.isenabled()
        keep = [[i] for i in range(1000)]  # noqa: F841 - tracked objects made while loading
    assert gc.isenabled() and gc.get_freeze_count() >= before + 1000
    gc_pauses.unfreeze()
    assert gc.get_freeze_count() == 0
    pauses = gc_pauses.GcPauses()
    pauses.install()
    gc.collect()
    pauses.uninstall()
    assert pauses.count >= 1 and pauses.max_ms >= 0.0


def test_shutdown_request_records_signals_and_ignores_later_ones():
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from mobile_vla_node.ros.shutdown import ShutdownRequest\n"
        "r = ShutdownRequest(); r.install()\n"
        "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.05)\n"
        "assert r.is_set() and r.signals == [signal.SIGINT, signal.SIGTERM], r.signals\n"
        "r.ignore_further()\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
        "print('alive')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "alive" in out.stdout, out.stderr
