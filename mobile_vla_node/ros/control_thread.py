"""The control loop's own thread: the one place that publishes ``/cmd_vel``.

Why a thread and not an rclpy timer: an rclpy timer runs only when the executor gets to it, and
on a loaded 2-core machine a flood of input callbacks (an unchanged command at 100 Hz, 1080p
frames, ``/clock`` at 100 Hz, malformed messages) kept the executor busy for up to 1.4 s
(measured, issue #10). This thread sleeps on its own deadlines and needs nothing from the executor
except, under ``use_sim_time``, the ``/clock`` updates that define time itself.

* Steady mode (``use_sim_time`` false): a tick every period on the monotonic clock.
* ROS-time mode (``use_sim_time`` true): a tick every period of ROS time, woken by the clock's jump
  callback on each ``/clock`` update. If ROS time does not move for longer than the stall timeout
  (``/clock`` paused or never started), zeros go out every steady period instead: zeros never go
  silent.

Every tick, ROS time is checked against the steady clock (`core.ticks.ClockGuard`); a jump is
handed to the tick function, which stops the robot until fresh input arrives.

A tick computes and publishes under one lock with an "allowed" flag: `finish` takes the lock,
clears the flag and sends the final zeros, so no policy Twist can follow them whatever state the
tick is in; `publish_now` (the zero of a deactivate) is ordered with the ticks the same way.

The GIL (issue 19, measured with py-spy and a per-tick trace): a thread woken at its deadline
still needs the interpreter lock, and the node's other threads hold it (the executor converting a
921 kB frame, the worker's decode, the diagnostics build). CPython makes a waiting thread wait
``sys.getswitchinterval()`` (5 ms by default) before it asks the holder to let go, which was the
5 ms p99 jitter. So the control thread

* lowers the switch interval to `SWITCH_INTERVAL_S` for the process (a waiting thread asks after
  0.1 ms; 0.5 ms gave node jitter p99 1.2-2.7 ms in `vla_bench --mode node`, 0.1 ms 0.2-1.1 ms,
  same machine and hour, node CPU unchanged: docs/BENCHMARKS.md), and
* in steady mode takes the GIL ``gil_lead_s`` before each deadline and sleeps out the rest of it
  in C *holding* the GIL (``clock_nanosleep`` through ``ctypes.PyDLL``, which does not release
  it): at the deadline nothing of the node's Python can be in the way. Other threads lose at most
  ``gil_lead_s`` of Python time per period (native work such as inference or a resize, which
  releases the GIL, goes on); 0 turns it off, and off Linux it is off.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from ..core.ticks import TickSchedule

ZERO = np.zeros(3)
# The process-wide GIL switch interval while a control thread runs (CPython default 5 ms).
SWITCH_INTERVAL_S = 1e-4
_CLOCK_MONOTONIC, _TIMER_ABSTIME, _EINTR = 1, 1, 4
PR_SET_NAME = 15


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _gil_holding_sleep() -> Callable[[float], None] | None:
    """``sleep_until(monotonic_s)`` that keeps the GIL, or None where it cannot be had."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.PyDLL("libc.so.6")  # PyDLL: calls keep the GIL
        nanosleep = libc.clock_nanosleep
    except (OSError, AttributeError):
        return None
    nanosleep.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec),
                          ctypes.c_void_p]
    nanosleep.restype = ctypes.c_int

    def sleep_until(deadline: float) -> None:
        # time.monotonic() is CLOCK_MONOTONIC on Linux: an absolute wake-up on the same clock.
        sec = int(deadline)
        ts = _Timespec(sec, int((deadline - sec) * 1e9))
        while nanosleep(_CLOCK_MONOTONIC, _TIMER_ABSTIME, ctypes.byref(ts), None) == _EINTR:
            pass

    return sleep_until


def name_thread(name: str) -> None:
    """Give the calling thread its name in the OS (``top -H``, ``ps -L``, perf; Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_realtime(priority: int) -> str:
    """SCHED_FIFO at ``priority`` for the calling thread (Linux); what it got, as text.

    Without the privilege (CAP_SYS_NICE or an rtprio limit) the thread keeps normal scheduling:
    the node still runs, and diagnostics say so.
    """
    if priority <= 0:
        return "normal (control_thread_priority 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as exc:
        return f"normal (SCHED_FIFO {priority} refused: {exc})"
    return f"SCHED_FIFO {priority}"


class ControlThread:
    """Calls ``tick(stalled) -> twist`` at a fixed rate and publishes it with ``publish``.

    The tick function reads the clocks itself, under the node's lock, so that an input stamped
    under the same lock can never look newer than the tick that judges it.
    """

    def __init__(self, period_s: float, ros_now: Callable[[], float],
                 tick: Callable[[bool], np.ndarray], publish: Callable[[np.ndarray], None],
                 use_ros_time: bool, stall_timeout_s: Callable[[], float],
                 on_error: Callable[[Exception], None] | None = None, priority: int = 0,
                 gil_lead_s: float = 0.0):
        self.period = period_s
        self.ros_now = ros_now
        self.tick = tick
        self.publish = publish
        self.use_ros_time = use_ros_time
        self.stall_timeout_s = stall_timeout_s
        self.on_error = on_error
        self.priority = priority
        self._sleep_holding_gil = _gil_holding_sleep() if gil_lead_s > 0 else None
        self.gil_lead_s = gil_lead_s if self._sleep_holding_gil is not None else 0.0
        self.scheduling = "not started"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._publish_lock = threading.Lock()
        self._allowed = True
        self.ticks = 0
        self.thread = threading.Thread(target=self._run, name="vla_control", daemon=True)

    def start(self) -> None:
        """Start ticking (and lower the process's GIL switch interval, see the module doc)."""
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.thread.start()

    def notify_clock(self, *_args) -> None:
        """ROS time changed (jump-callback signature): wake the loop in ROS-time mode."""
        self._wake.set()

    def finish(self, zeros: int = 3, spacing_s: float = 0.02, join_timeout_s: float = 2.0) -> bool:
        """Stop for good: no Twist from a tick after this, then ``zeros`` zero Twists.

        Returns whether the thread ended within ``join_timeout_s``. The zeros go out either way,
        and nothing is published after them: the flag is cleared under the publish lock.
        """
        self._stop.set()
        self._wake.set()
        with self._publish_lock:
            self._allowed = False
        if self.thread.is_alive():
            self.thread.join(timeout=join_timeout_s)
        for i in range(zeros):
            if i:
                time.sleep(spacing_s)
            self.publish(ZERO.copy())
        return not self.thread.is_alive()

    def publish_now(self, twist: np.ndarray) -> None:
        """Publish outside the schedule (a zero on deactivate), ordered with the ticks."""
        with self._publish_lock:
            if self._allowed:
                self.publish(twist)

    def _emit(self, stalled: bool) -> None:
        # Computing and publishing under one lock: a state change (deactivate, shutdown) that
        # publishes through `publish_now` or `finish` comes entirely before or after a tick.
        with self._publish_lock:
            if not self._allowed:
                return
            try:
                twist = self.tick(stalled)
            except Exception as exc:  # a bug in a tick must stop the robot, not the loop
                twist = ZERO.copy()
                if self.on_error is not None:
                    self.on_error(exc)
            self.publish(twist)
            self.ticks += 1

    def _run(self) -> None:
        name_thread("vla_control")
        scheduling = set_realtime(self.priority)
        if self.gil_lead_s > 0 and not self.use_ros_time:
            scheduling += f", GIL taken {self.gil_lead_s * 1e3:g} ms before each tick"
        self.scheduling = scheduling
        if self.use_ros_time:
            self._run_ros_time()
        else:
            self._run_steady()

    def _run_steady(self) -> None:
        schedule = TickSchedule(self.period, time.monotonic())
        lead = self.gil_lead_s
        while not self._stop.is_set():
            wait = schedule.wait_s(time.monotonic())
            if wait > lead:
                self._stop.wait(wait - lead)  # releases the GIL
                continue
            if wait > 0:  # the GIL is ours now: keep it until the deadline
                self._sleep_holding_gil(schedule.next)
            schedule.advance(time.monotonic())
            self._emit(False)

    def _run_ros_time(self) -> None:
        schedule: TickSchedule | None = None
        stall_schedule = TickSchedule(self.period, time.monotonic())
        last_ros, last_advance = 0.0, time.monotonic()
        while not self._stop.is_set():
            steady, ros = time.monotonic(), self.ros_now()
            if ros != last_ros:
                last_ros, last_advance = ros, steady
            if ros > 0 and (schedule is None or ros < schedule.next - 2 * self.period):
                schedule = TickSchedule(self.period, ros - self.period)  # new or jumped back
            stalled = ros <= 0 or steady - last_advance > self.stall_timeout_s()
            if stalled:
                if stall_schedule.due(steady):
                    stall_schedule.advance(steady)
                    self._emit(True)
                wait = stall_schedule.wait_s(time.monotonic())
            else:
                if schedule.due(ros):
                    schedule.advance(ros)
                    stall_schedule.restart(steady)
                    self._emit(False)
                wait = self.period
            self._wake.wait(max(wait, 1e-3))
            self._wake.clear()
