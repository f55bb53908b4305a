"""The safety chain applied on every control tick.

Gates, in priority order, each a small unit returning a stop reason or None: lifecycle active ->
enable (e-stop) -> clock jump -> input/inference fault -> command present (and not a stop
phrase) -> image fresh -> action present and fresh -> action finite. A time stamp from the future
(the clock ran backwards) is never fresh. Any stop publishes an immediate zero and resets the
acceleration limiter, so motion resumes from zero under the limit. Otherwise the action is
clamped per axis, then acceleration-limited per axis (linear.y included: this is an omni base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SafetyConfig

ZERO = np.zeros(3)
# Times are read under the caller's lock, so on a monotonic clock an input is never newer than the
# tick; anything newer than this means the clock jumped back.
FUTURE_TOLERANCE_S = 1e-3


@dataclass
class SafetyContext:
    """What one control tick knows (times in seconds on the node clock)."""

    now: float
    enabled: bool = True
    fault: str | None = None
    has_command: bool = False
    active: bool = True
    stop_command: bool = False
    clock_fault: str | None = None
    image_time: float | None = None
    action: np.ndarray | None = None
    action_time: float | None = None


@dataclass
class SafetyOutput:
    """The Twist to publish as [linear_x, linear_y, angular_z] and why it is zero, if it is."""

    twist: np.ndarray
    stop_reason: str | None

    @property
    def state(self) -> str:
        """"moving" or "stopped"."""
        return "stopped" if self.stop_reason else "moving"


def lifecycle_gate(ctx: SafetyContext) -> str | None:
    """Stop unless the (lifecycle) node is active."""
    return None if ctx.active else "inactive"


def clock_gate(ctx: SafetyContext) -> str | None:
    """Stop after a clock jump until fresh input arrives on the new time line."""
    return ctx.clock_fault


def enable_gate(ctx: SafetyContext) -> str | None:
    """Stop while disabled (e-stop topic or service)."""
    return None if ctx.enabled else "disabled"


def fault_gate(ctx: SafetyContext) -> str | None:
    """Stop while the newest input or inference was bad."""
    return ctx.fault


def command_gate(ctx: SafetyContext) -> str | None:
    """Stop without an instruction, or on a stop phrase ("stop", "halt", ...)."""
    if ctx.stop_command:
        return "stop_command"
    return None if ctx.has_command else "no_command"


def age_reason(age: float, timeout: float, what: str) -> str | None:
    """"<what>_stale" when older than ``timeout``, "<what>_from_future" when newer than now."""
    if age < -FUTURE_TOLERANCE_S:
        return f"{what}_from_future"
    return f"{what}_stale" if age > timeout else None


class ImageFreshnessGate:
    """Stop when the newest image is older than ``timeout``."""

    def __init__(self, timeout: float):
        self.timeout = timeout

    def __call__(self, ctx: SafetyContext) -> str | None:
        """Reason or None."""
        if ctx.image_time is None:
            return "no_image"
        return age_reason(ctx.now - ctx.image_time, self.timeout, "image")


class ActionFreshnessGate:
    """Stop when there is no action or the current action step is older than ``timeout``."""

    def __init__(self, timeout: float):
        self.timeout = timeout

    def __call__(self, ctx: SafetyContext) -> str | None:
        """Reason or None."""
        if ctx.action is None or ctx.action_time is None:
            return "no_action"
        return age_reason(ctx.now - ctx.action_time, self.timeout, "action")


def finite_gate(ctx: SafetyContext) -> str | None:
    """Stop on NaN/inf actions."""
    return None if np.all(np.isfinite(ctx.action)) else "non_finite"


def clamp(v: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Per-axis symmetric clamp."""
    return np.clip(v, -limits, limits)


class AccelLimiter:
    """Per-axis rate limit on velocity changes; 0 in ``max_accel`` disables an axis's limit."""

    def __init__(self, max_accel: np.ndarray):
        self.max_accel = np.asarray(max_accel, dtype=np.float64)
        self.last = ZERO.copy()
        self.last_time: float | None = None

    def reset(self, now: float | None = None) -> None:
        """Record a stop: the next velocity ramps up from zero."""
        self.last = ZERO.copy()
        self.last_time = now

    def __call__(self, v: np.ndarray, now: float) -> np.ndarray:
        """Limit ``v`` against the previous output."""
        if self.last_time is None:
            self.last_time = now
        dt = max(now - self.last_time, 0.0)
        step = np.where(self.max_accel > 0, self.max_accel * dt, np.inf)
        out = self.last + np.clip(v - self.last, -step, step)
        self.last, self.last_time = out, now
        return out


class SafetyChain:
    """Gates, clamp and acceleration limit, configured from SafetyConfig and the timeouts."""

    def __init__(self, safety: SafetyConfig, image_timeout_s: float, action_timeout_s: float):
        self.image_gate = ImageFreshnessGate(image_timeout_s)
        self.action_gate = ActionFreshnessGate(action_timeout_s)
        self.limiter = AccelLimiter(np.zeros(3))
        self.gates = (lifecycle_gate, enable_gate, clock_gate, fault_gate, command_gate,
                      self.image_gate, self.action_gate, finite_gate)
        self.configure(safety, image_timeout_s, action_timeout_s)

    def configure(self, safety: SafetyConfig, image_timeout_s: float,
                  action_timeout_s: float) -> None:
        """Apply (live-tuned) limits and timeouts."""
        self.limits = np.array([safety.max_linear_x, safety.max_linear_y, safety.max_angular_z])
        self.limiter.max_accel = np.array([safety.max_accel_x, safety.max_accel_y,
                                           safety.max_accel_z])
        self.image_gate.timeout = image_timeout_s
        self.action_gate.timeout = action_timeout_s

    def apply(self, ctx: SafetyContext) -> SafetyOutput:
        """The Twist for this tick."""
        for gate in self.gates:
            reason = gate(ctx)
            if reason:
                self.limiter.reset(ctx.now)
                return SafetyOutput(ZERO.copy(), reason)
        v = clamp(np.asarray(ctx.action, dtype=np.float64), self.limits)
        return SafetyOutput(self.limiter(v, ctx.now), None)
