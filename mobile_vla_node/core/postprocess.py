"""Normalized policy actions -> velocities (m/s, rad/s) on the Twist axes.

Order, per action: clip to [-1, 1] -> map action dims to Twist axes -> scale (``max_linear`` on
linear axes, ``max_angular`` on yaw) -> ``action_gain`` -> per-axis ``action_sign`` ->
``deadzone``.
Non-finite values pass through unchanged so the safety chain sees (and stops on) them.
"""

from __future__ import annotations

import numpy as np

from .config import TWIST_AXES, ActionConfig

DEFAULT_AXES = {2: ("linear_x", "linear_y"), 3: ("linear_x", "linear_y", "angular_z")}


class ActionPostprocessor:
    """Applies the team's post-processing to a chunk of normalized actions."""

    def __init__(self, action: ActionConfig, action_dim: int, model_max_linear: float):
        axes = action.axes() or DEFAULT_AXES.get(action_dim)
        if axes is None or len(axes) != action_dim:
            raise ValueError(f"action_axes={action.action_axes!r} must name {action_dim} "
                             f"axes for this model (action_dim={action_dim})")
        self.columns = [TWIST_AXES.index(a) for a in axes]
        self.action_dim = action_dim
        self.model_max_linear = model_max_linear
        self.update(action)

    def update(self, action: ActionConfig) -> None:
        """Take new live-tunable values (gain, deadzone, ...)."""
        max_linear = action.max_linear or self.model_max_linear
        self.scale = np.array([max_linear, max_linear, action.max_angular]) * action.action_gain
        self.sign = np.asarray(action.action_sign, dtype=np.float64)
        self.deadzone = action.deadzone

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        """(chunk, action_dim) normalized -> (chunk, 3) [linear_x, linear_y, angular_z]."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"expected actions of shape (chunk, {self.action_dim}), "
                             f"got {actions.shape}")
        out = np.zeros((actions.shape[0], 3))
        # Clip finite values only: an infinite action must reach the safety chain's finite gate.
        out[:, self.columns] = np.where(np.isfinite(actions), np.clip(actions, -1.0, 1.0),
                                        actions)
        out = out * self.scale * self.sign
        with np.errstate(invalid="ignore"):
            out[np.abs(out) < self.deadzone] = 0.0  # NaN compares False: kept
        return out
