"""Action-chunk playback: a 2-10 Hz policy driving a faster control loop.

A chunk of N velocities becomes a schedule starting when it arrives: step i is valid from
``t0 + i * period``. The newest chunk replaces the rest of the old one at once; with
``blend_steps`` > 0 its first steps are blended linearly from where the old schedule would
have been. Past the last step the last velocity holds; its age keeps growing, so the safety chain's
``action_timeout_s`` ends it.

``action_mode`` decides what of each inference's chunk is played (`select_actions`):

* ``chunk`` (default): the whole chunk, on the schedule above;
* ``server``: what the team's inference server returns per call (minuum/vla
  Mobile_VLA/inference_server.py, ``MobileVLAInference.decode_action`` and ``predict``): only
  chunk[0] (held until the next inference, or until ``action_timeout_s``), a zero velocity for
  the first inference after a reset (their ``inference_count == 0``; here: after a new command,
  ``reset`` or a failed inference), and linear x/y clipped to +-1.5 m/s. Their fp16 weights are
  not mirrored (the node's ``precision`` parameter decides).
"""

from __future__ import annotations

import math

import numpy as np


class ChunkPlayer:
    """Holds the current chunk schedule and answers "what velocity now, and since when"."""

    def __init__(self, step_period_s: float, blend_steps: int = 0):
        if step_period_s <= 0:
            raise ValueError(f"chunk step period {step_period_s!r} must be > 0")
        self.period = step_period_s
        self.blend_steps = blend_steps
        self.velocities: np.ndarray | None = None
        self.t0 = 0.0

    def clear(self) -> None:
        """Forget the current chunk (new command, reset, e-stop)."""
        self.velocities = None

    def push(self, velocities: np.ndarray, now: float) -> None:
        """Start a new chunk (N, 3) at ``now``, blending from the old one if configured."""
        new = np.array(velocities, dtype=np.float64, copy=True)
        if self.velocities is not None and self.blend_steps > 0:
            k = min(self.blend_steps, len(new))
            for i in range(k):
                old = self._at(now + i * self.period)[0]
                w = (i + 1) / (self.blend_steps + 1)
                new[i] = (1.0 - w) * old + w * new[i]
        self.velocities = new
        self.t0 = now

    def _at(self, now: float) -> tuple[np.ndarray, float]:
        index = math.floor((now - self.t0) / self.period + 1e-9)
        index = min(max(index, 0), len(self.velocities) - 1)
        return self.velocities[index], self.t0 + index * self.period

    def current(self, now: float) -> tuple[np.ndarray, float] | None:
        """(velocity (3,), time that step became valid), or None without a chunk."""
        if self.velocities is None:
            return None
        return self._at(now)


ACTION_MODES = ("chunk", "server")
SERVER_CLIP = 1.5   # m/s on linear x and y: inference_server.py predict(), "4. Clipping"


def select_actions(velocities: np.ndarray, mode: str, first: bool) -> np.ndarray:
    """The velocities (N, 3) of one inference that ``mode`` plays (see the module docstring).

    ``first``: the first inference since the runtime's reset. Non-finite values are kept, so
    the safety chain still stops on them.
    """
    if mode == "chunk":
        return velocities
    if mode != "server":
        raise ValueError(f"action_mode {mode!r} is not one of {list(ACTION_MODES)}")
    out = np.array(velocities[:1], dtype=np.float64, copy=True)
    if first:
        out[:] = 0.0
    linear = out[:, :2]
    out[:, :2] = np.where(np.isfinite(linear), np.clip(linear, -SERVER_CLIP, SERVER_CLIP),
                          linear)
    return out
