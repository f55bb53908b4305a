"""The control loop's state machine: chunk playback feeding the safety chain on every tick.

Plain object (no threads, no ROS): the node calls it under its one lock; replay calls it directly
with bag time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .chunks import ChunkPlayer
from .config import ControlConfig, SafetyConfig
from .safety import SafetyChain, SafetyContext, SafetyOutput


@dataclass
class ChunkMeta:
    """Where a chunk came from, for end-to-end latency (image stamp -> first Twist using it)."""

    image_stamp: float
    transport_ms: float = float("nan")
    preprocess_ms: float = float("nan")
    inference_ms: float = float("nan")


@dataclass
class TickResult:
    """The Twist of one tick and, on the first tick that uses a new chunk, that chunk's meta."""

    twist: np.ndarray
    stop_reason: str | None
    first_use: ChunkMeta | None = None


@dataclass
class ControlLoop:
    """Enable/command/image/fault state, the chunk player and the safety chain."""

    control: ControlConfig
    safety: SafetyConfig
    step_period_s: float
    enabled: bool = True
    fault: str | None = None
    has_command: bool = False
    active: bool = True
    stop_command: bool = False
    clock_fault: str | None = None
    image_time: float | None = None
    stop_counts: Counter = field(default_factory=Counter)
    last_stop_reason: str | None = None
    last: TickResult | None = None

    def __post_init__(self):
        self.enabled = self.control.start_enabled
        self.player = ChunkPlayer(self.control.chunk_step_period_s or self.step_period_s,
                                  self.control.chunk_blend_steps)
        self.chain = SafetyChain(self.safety, self.control.image_timeout_s,
                                 self.control.action_timeout_s)
        self._pending_meta: ChunkMeta | None = None
        self.clock_jumps = 0
        self.last_clock_jump = ""
        self._need_image = self._need_chunk = False

    def configure(self, control: ControlConfig, safety: SafetyConfig) -> None:
        """Apply live-tuned limits and timeouts."""
        self.control, self.safety = control, safety
        self.chain.configure(safety, control.image_timeout_s, control.action_timeout_s)

    def set_enabled(self, enabled: bool) -> None:
        """Enable or e-stop; an e-stop also drops the current chunk."""
        self.enabled = bool(enabled)
        if not self.enabled:
            self.player.clear()

    def set_active(self, active: bool) -> None:
        """Lifecycle activate/deactivate: inactive publishes zeros and drops the chunk."""
        self.active = bool(active)
        if not self.active:
            self.player.clear()

    def on_command(self, active: bool, stop: bool = False) -> None:
        """A new or cleared command, or a stop phrase: the old actions must not play any more."""
        self.has_command = active
        self.stop_command = stop
        self.player.clear()
        self._pending_meta = None

    def on_clock_jump(self, description: str) -> None:
        """ROS time jumped: forget the chunk and the image time; stop until both are new again."""
        self.clock_fault = "clock_jump"
        self.last_clock_jump = description
        self.clock_jumps += 1
        self.image_time = None
        self.player.clear()
        self._pending_meta = None
        self._need_image = self._need_chunk = True

    def on_image(self, t: float) -> None:
        """A well-formed image arrived at node time ``t``."""
        self.image_time = t
        self._need_image = False

    def on_chunk(self, velocities: np.ndarray, now: float, meta: ChunkMeta) -> None:
        """A new chunk of velocities (N, 3) is ready at ``now``."""
        self.player.push(velocities, now)
        self._pending_meta = meta
        # A chunk counts on the new time line only once an image arrived after the jump.
        self._need_chunk = self._need_image
        if not (self._need_image or self._need_chunk):
            self.clock_fault = None

    def tick(self, now: float, stop: str | None = None) -> TickResult:
        """Compute the Twist for time ``now``; ``stop`` forces a zero with that reason."""
        if stop:
            self.chain.limiter.reset(now)
            out = SafetyOutput(np.zeros(3), stop)
        else:
            current = self.player.current(now)
            action, action_time = current if current is not None else (None, None)
            out = self.chain.apply(SafetyContext(
                now=now, enabled=self.enabled, fault=self.fault, has_command=self.has_command,
                active=self.active, stop_command=self.stop_command,
                clock_fault=self.clock_fault, image_time=self.image_time, action=action,
                action_time=action_time))
        if out.stop_reason and (self.last is None or self.last.stop_reason != out.stop_reason):
            self.stop_counts[out.stop_reason] += 1
        if out.stop_reason:
            self.last_stop_reason = out.stop_reason
        first_use = None
        if out.stop_reason is None and self._pending_meta is not None:
            first_use, self._pending_meta = self._pending_meta, None
        self.last = TickResult(out.twist, out.stop_reason, first_use)
        return self.last
