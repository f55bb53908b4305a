"""Policy outputs -> velocities (m/s, rad/s) on the Twist axes.

Regression heads, per action: clip to [-1, 1] -> map action dims to Twist axes -> de-normalize
(``max_linear`` on linear axes: the parameter, else the model config's action scale, e.g. 1.15
for RoboVLMs H5 training that clamped +-1.15 m/s to [-1, 1], 2.0 for a dataset that divided by
2; ``max_angular`` on yaw) -> ``action_gain`` -> per-axis ``action_sign`` -> ``deadzone``.

Classification heads: per chunk step, the class with the largest logit -> its row [vx, vy, wz]
of the velocity table (the ``class_velocities`` parameter, else the model config's) ->
``action_gain`` -> ``action_sign`` -> ``deadzone``. A step with a non-finite logit becomes NaN.

Non-finite values pass through unchanged so the safety chain sees (and stops on) them.
"""

from __future__ import annotations

import numpy as np

from .config import TWIST_AXES, ActionConfig

DEFAULT_AXES = {2: ("linear_x", "linear_y"), 3: ("linear_x", "linear_y", "angular_z")}


class ActionPostprocessor:
    """Applies the team's post-processing to a chunk of normalized actions or class logits."""

    def __init__(self, action: ActionConfig, action_dim: int, model_max_linear: float,
                 head: str = "regression", class_velocities=()):
        self.head = head
        if head == "classification":
            table = action.class_table() or [list(r) for r in class_velocities]
            if not table:
                raise ValueError("classification head without a velocity table: set the "
                                 "class_velocities parameter ('vx,vy,wz; ...' per class)")
            if len(table) != action_dim:
                raise ValueError(f"class_velocities has {len(table)} rows but the model has "
                                 f"{action_dim} classes")
            self.table = np.asarray(table, dtype=np.float64)
            self.action_dim = action_dim
            self.model_max_linear = model_max_linear
            self.update(action)
            return
        axes = action.axes() or DEFAULT_AXES.get(action_dim)
        if axes is None or len(axes) != action_dim:
            raise ValueError(f"action_axes={action.action_axes!r} must name {action_dim} "
                             f"axes for this model (action_dim={action_dim})")
        self.columns = [TWIST_AXES.index(a) for a in axes]
        self.action_dim = action_dim
        self.model_max_linear = model_max_linear
        self.update(action)

    @classmethod
    def for_spec(cls, action: ActionConfig, spec) -> ActionPostprocessor:
        """The post-processor for a backend's `ModelSpec` (head, table, action scale)."""
        head = getattr(spec, "head", "regression")
        width = spec.num_classes if head == "classification" else spec.action_dim
        return cls(action, width, spec.max_linear, head, getattr(spec, "class_velocities", ()))

    def update(self, action: ActionConfig) -> None:
        """Take new live-tunable values (gain, deadzone, ...)."""
        max_linear = action.max_linear or self.model_max_linear
        self.scale = np.array([max_linear, max_linear, action.max_angular]) * action.action_gain
        self.sign = np.asarray(action.action_sign, dtype=np.float64)
        self.gain_sign = action.action_gain * self.sign
        self.deadzone = action.deadzone

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        """(chunk, action_dim | num_classes) -> (chunk, 3) [linear_x, linear_y, angular_z]."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"expected actions of shape (chunk, {self.action_dim}), "
                             f"got {actions.shape}")
        if self.head == "classification":
            return self._classes(actions)
        out = np.zeros((actions.shape[0], 3))
        # Clip finite values only: an infinite action must reach the safety chain's finite gate.
        out[:, self.columns] = np.where(np.isfinite(actions), np.clip(actions, -1.0, 1.0),
                                        actions)
        out = out * self.scale * self.sign
        with np.errstate(invalid="ignore"):
            out[np.abs(out) < self.deadzone] = 0.0  # NaN compares False: kept
        return out

    def _classes(self, logits: np.ndarray) -> np.ndarray:
        finite = np.isfinite(logits).all(axis=1)
        classes = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=1)
        out = self.table[classes] * self.gain_sign
        out[~finite] = np.nan
        with np.errstate(invalid="ignore"):
            out[np.abs(out) < self.deadzone] = 0.0
        return out

    def classes(self, logits: np.ndarray) -> np.ndarray:
        """The chosen class per chunk step (for diagnostics and tests)."""
        return np.argmax(np.asarray(logits), axis=1)
