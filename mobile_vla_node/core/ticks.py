"""When the control loop ticks, and whether ROS time can be trusted (ROS-free, no threads).

`TickSchedule`: fixed-rate deadlines on one clock. A late tick is never made up with a burst:
the schedule skips the missed deadlines, keeps its phase and counts them.

`ClockGuard`: compares how far ROS time and the steady clock moved between two ticks. ROS time
running backwards (any amount) or running ahead of the steady clock by more than a threshold is a
jump; the caller stops the robot until fresh input arrives (`ControlLoop.on_clock_jump`). (ROS
time that does not move at all, a paused ``/clock``, is handled by the control thread's schedule.)
"""

from __future__ import annotations

import math


class TickSchedule:
    """Deadlines ``start + k * period`` on one clock."""

    def __init__(self, period_s: float, start: float):
        if period_s <= 0:
            raise ValueError(f"tick period {period_s!r} must be > 0")
        self.period = period_s
        self.next = start + period_s
        self.skipped = 0

    def due(self, now: float) -> bool:
        """True once ``now`` reached the next deadline."""
        return now >= self.next

    def wait_s(self, now: float) -> float:
        """Seconds until the next deadline (0 if it has passed)."""
        return max(self.next - now, 0.0)

    def advance(self, now: float) -> int:
        """Move to the next deadline after a tick at ``now``.

        Returns how many deadlines were skipped because the tick came late.
        """
        self.next += self.period
        if now >= self.next:
            missed = math.floor((now - self.next) / self.period) + 1
            self.next += missed * self.period
            self.skipped += missed
            return missed
        return 0

    def restart(self, now: float) -> None:
        """Start again from ``now`` (after a clock jump)."""
        self.next = now + self.period


class ClockGuard:
    """Detects ROS-time jumps against a steady (monotonic) clock."""

    def __init__(self, jump_threshold_s: float = 1.0):
        self.jump_threshold_s = jump_threshold_s
        self.last_ros: float | None = None
        self.last_steady: float | None = None
        self.jumps = 0

    def check(self, ros_now: float, steady_now: float) -> str | None:
        """A description of the jump since the last call, or None."""
        jump = None
        if self.last_ros is not None:
            d_ros = ros_now - self.last_ros
            d_steady = steady_now - self.last_steady
            if d_ros < 0:
                jump = f"ROS time jumped back {-d_ros:.3f} s"
            elif d_ros - d_steady > self.jump_threshold_s:
                jump = (f"ROS time jumped ahead {d_ros:.3f} s in {d_steady:.3f} s of steady "
                        "time")
        self.last_ros, self.last_steady = ros_now, steady_now
        if jump:
            self.jumps += 1
        return jump
