"""Judging an episode (success, collision, timeout, leaving the arena) and its metrics.

`Judge.update` is called once per control period with the world; it accumulates path length,
minimum clearance and contacts, and decides the outcome. The same judge serves the in-process
expert runs and the closed-loop runs through the node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .suites import Episode

OUTCOMES = ("success", "collision", "timeout", "left_arena", "error")


@dataclass
class EpisodeResult:
    """What happened in one episode (JSON-ready with `as_dict`)."""

    suite: str
    name: str
    instruction: str
    outcome: str = "running"
    success: bool = False
    time_s: float = 0.0
    time_to_goal_s: float | None = None
    path_length_m: float = 0.0
    collisions: int = 0
    collided_with: list = field(default_factory=list)
    min_clearance_m: float = math.inf
    min_clearance_to: str = ""
    final_distance_m: float = math.nan
    final_pose: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)   # [t, x, y, yaw] per control period
    node: dict = field(default_factory=dict)          # control rate, latency, zeros by cause
    events: list = field(default_factory=list)        # e-stop, dropout, ...
    wall_s: float = 0.0

    def as_dict(self, trajectory: bool = True) -> dict:
        """JSON-ready (inf/nan as None)."""
        out = asdict(self)
        if not trajectory:
            out.pop("trajectory")
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


class Judge:
    """Outcome and metrics of one episode, updated every control period."""

    def __init__(self, suite: str, episode: Episode):
        self.episode = episode
        target = episode.target_object
        self.goal = np.array([target.x, target.y])
        self.result = EpisodeResult(suite, episode.name, episode.instruction)
        self._last = np.array(episode.start[:2], dtype=np.float64)

    def distance(self, pose) -> float:
        """Robot centre to target centre (m)."""
        return float(np.linalg.norm(np.asarray(pose[:2]) - self.goal))

    def update(self, world, t: float) -> str | None:
        """Record the world's state at episode time ``t``; the outcome once decided, else None."""
        ep, r = self.episode, self.result
        pose = world.pose
        r.path_length_m += float(np.linalg.norm(pose[:2] - self._last))
        self._last = pose[:2].copy()
        r.trajectory.append([round(t, 3), *(round(float(v), 4) for v in pose)])
        gap, name = world.clearance()
        if gap < r.min_clearance_m:
            r.min_clearance_m, r.min_clearance_to = gap, name
        r.time_s = t
        r.final_pose = [round(float(v), 4) for v in pose]
        r.final_distance_m = self.distance(pose)
        touching = world.contacts()
        if touching:
            r.collisions += 1
            r.collided_with = sorted(set(r.collided_with) | set(touching))
            return self._finish("collision")
        x0, x1, y0, y1 = ep.arena
        if not (x0 <= pose[0] <= x1 and y0 <= pose[1] <= y1):
            return self._finish("left_arena")
        v = world.body_velocity
        stopped = math.hypot(v[0], v[1]) <= ep.stop_speed and abs(v[2]) <= ep.stop_yaw_rate
        if r.final_distance_m <= ep.success_radius and stopped and t > 0.5:
            r.time_to_goal_s = round(t, 3)
            return self._finish("success")
        if t >= ep.time_limit_s:
            return self._finish("timeout")
        return None

    def _finish(self, outcome: str) -> str:
        self.result.outcome = outcome
        self.result.success = outcome == "success"
        return outcome

    def fail(self, outcome: str, why: str) -> None:
        """End the episode with an outcome that is not the world's (e.g. the node died)."""
        self.result.events.append({"t": self.result.time_s, "event": outcome, "detail": why})
        self._finish(outcome)
