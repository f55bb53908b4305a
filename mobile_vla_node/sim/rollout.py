"""In-process episodes without ROS: the expert (or any ``act(pose)``) drives the world directly.

Used for the expert baseline, for recording episodes (bag + h5) and for the training data of the
sim policy (with noise injection: the executed command is perturbed, the label stays the
expert's). The closed loop through the node lives in `runner.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .episode import EpisodeResult, Judge
from .expert import Expert
from .suites import Episode
from .world import World


class NoiseInjection:
    """DART-style perturbation: an Ornstein-Uhlenbeck offset added to the executed command."""

    def __init__(self, rng: np.random.Generator, sigma=(0.12, 0.08, 0.35), theta: float = 1.0,
                 dt: float = 0.05):
        self.rng, self.sigma, self.theta, self.dt = rng, np.asarray(sigma), theta, dt
        self.state = np.zeros(3)

    def __call__(self, command: np.ndarray) -> np.ndarray:
        """``command`` plus the current noise."""
        self.state += -self.theta * self.state * self.dt + self.sigma * np.sqrt(
            2 * self.theta * self.dt) * self.rng.standard_normal(3)
        return command + self.state


def run_expert(world: World, suite: str, episode: Episode, control_dt: float = 0.05,
               camera_dt: float = 0.1, on_frame: Callable | None = None,
               noise: Callable | None = None, act: Callable | None = None,
               linger_s: float = 0.0) -> EpisodeResult:
    """One episode; ``on_frame(t, rgb, label, executed)`` at the camera rate if given.

    ``act(pose) -> twist`` defaults to the `Expert`; ``noise(cmd) -> cmd`` perturbs what is
    executed (the label passed to ``on_frame`` is the unperturbed command). ``linger_s``: after
    a success, keep recording the (stopped) expert this long (training data for "stay").
    """
    wall = time.perf_counter()
    world.reset(episode)
    judge = Judge(suite, episode)
    act = act or Expert(episode).act
    steps_per_frame = max(1, int(round(camera_dt / control_dt)))
    k, end = 0, None
    while end is None or k < end:
        t = k * control_dt
        label = np.asarray(act(world.pose), dtype=np.float64)
        executed = noise(label) if noise is not None and end is None else label
        if on_frame is not None and k % steps_per_frame == 0:
            on_frame(t, world.render(), label, executed)
        world.set_command(executed)
        world.step(control_dt)
        k += 1
        if end is None and judge.update(world, k * control_dt):
            end = k + (int(round(linger_s / control_dt)) if judge.result.success else 0)
    judge.result.wall_s = round(time.perf_counter() - wall, 3)
    return judge.result


def run_policy(world: World, suite: str, episode: Episode, step: Callable,
               control_dt: float = 0.05, camera_dt: float = 0.1) -> EpisodeResult:
    """One episode driven in-process by ``step(rgb) -> twist`` (no ROS, no node process).

    Timing as in the node under lockstep: a frame rendered at tick ``k`` gives the Twist applied
    from tick ``k + 1`` on (one control period of delay), held until the next frame's Twist.
    A quick check while training; the figures that count come through the node (`runner`).
    """
    wall = time.perf_counter()
    world.reset(episode)
    judge = Judge(suite, episode)
    steps_per_frame = max(1, int(round(camera_dt / control_dt)))
    pending = None
    k = 0
    while True:
        if pending is not None:
            world.set_command(pending)
            pending = None
        if k % steps_per_frame == 0:
            pending = np.asarray(step(world.render()), dtype=np.float64)
        world.step(control_dt)
        k += 1
        if judge.update(world, k * control_dt):
            break
    judge.result.wall_s = round(time.perf_counter() - wall, 3)
    return judge.result
