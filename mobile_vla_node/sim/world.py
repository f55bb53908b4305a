"""The MuJoCo world: the arena scene (scenes/arena.xml), the holonomic base and its camera.

No ROS here: `World` steps physics at a fixed timestep, applies a body-frame velocity command
through a base controller with speed and acceleration limits (as a real base's firmware or
nav2's velocity_smoother does), renders the front camera and measures contacts and clearance.
`bridge.py` puts it on ROS; the expert and the training script use it directly.

Conventions (REP 103): x forward, y left, yaw counter-clockwise; a Twist is
``[linear_x m/s, linear_y m/s, angular_z rad/s]`` in the robot's frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .suites import OBJECT_KINDS, Episode

SCENE = Path(__file__).resolve().parent / "scenes" / "arena.xml"
ROBOT_RADIUS = 0.2
CHASSIS = "chassis"
EGL_HELP = ("MuJoCo could not create an OpenGL context for off-screen rendering "
            "(MUJOCO_GL={gl}). Install Mesa's EGL (Debian/Ubuntu: sudo apt-get install libegl1 "
            "libegl-mesa0 libgl1-mesa-dri; Fedora: mesa-libEGL) and keep MUJOCO_GL=egl, or "
            "install OSMesa (libosmesa6) and set MUJOCO_GL=osmesa. Error: {err}")


class SimError(RuntimeError):
    """A sim setup problem (rendering unavailable, bad episode, bad parameter)."""


@dataclass(frozen=True)
class BaseLimits:
    """Speed and acceleration limits of the base (per axis, absolute values)."""

    max_linear_x: float = 0.5      # m/s
    max_linear_y: float = 0.5      # m/s
    max_angular_z: float = 1.0     # rad/s
    accel_linear: float = 1.0      # m/s^2
    accel_angular: float = 2.0     # rad/s^2

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SimError(f"base limit {name}={value!r} must be a positive number")

    @property
    def speed(self) -> np.ndarray:
        """Per-axis speed limits."""
        return np.array([self.max_linear_x, self.max_linear_y, self.max_angular_z])

    @property
    def accel(self) -> np.ndarray:
        """Per-axis acceleration limits."""
        return np.array([self.accel_linear, self.accel_linear, self.accel_angular])


def import_mujoco(gl: str | None = None):
    """``mujoco`` with an off-screen GL backend chosen before import (default EGL)."""
    os.environ.setdefault("MUJOCO_GL", gl or "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import mujoco
    except ImportError as exc:
        if exc.name == "mujoco":
            raise SimError("vla_sim needs the mujoco package (Python >= 3.11): .venv/bin/pip "
                           "install mujoco==4.0.1 (it is in requirements.txt)") from exc
        raise SimError(EGL_HELP.format(gl=os.environ.get("MUJOCO_GL"), err=exc)) from exc
    except Exception as exc:  # PyOpenGL raises plain errors when the GL library is missing
        raise SimError(EGL_HELP.format(gl=os.environ.get("MUJOCO_GL"), err=exc)) from exc
    return mujoco


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


class World:
    """One MuJoCo model and data, the base controller, and a camera renderer."""

    def __init__(self, width: int = 320, height: int = 240, limits: BaseLimits | None = None,
                 physics_dt: float = 0.005, render: bool = True):
        if width < 16 or height < 16 or width > 1920 or height > 1080:
            raise SimError(f"camera size {width}x{height} must be within 16x16..1920x1080")
        if not 0.0005 <= physics_dt <= 0.02:
            raise SimError(f"physics_dt={physics_dt!r} must be within 0.0005..0.02 s")
        self.mujoco = mujoco = import_mujoco()
        xml = SCENE.read_text().replace('offwidth="640" offheight="480"',
                                        f'offwidth="{max(640, width)}" '
                                        f'offheight="{max(480, height)}"')
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.model.opt.timestep = physics_dt
        self.data = mujoco.MjData(self.model)
        self.limits = limits or BaseLimits()
        self.width, self.height = width, height
        self.dt = physics_dt
        self.chassis = self.model.geom(CHASSIS).id
        self.object_geoms = {
            self.model.geom(i).name: i for i in range(self.model.ngeom)
            if self.model.geom_contype[i] == 2}
        self._mocap = {kind: self.model.body(body).mocapid[0]
                       for kind, body in self._bodies().items()}
        self.renderer = None
        if render:
            self.renderer = self._make_renderer(width, height)
        self.command = np.zeros(3)
        self.velocity = np.zeros(3)  # the base controller's body-frame setpoint after limits
        self.episode: Episode | None = None

    @staticmethod
    def _bodies() -> dict:
        return {"basket": "basket", "box_red": "box_red", "box_green": "box_green",
                "box_blue": "box_blue", "obstacle_1": "obstacle_1", "obstacle_2": "obstacle_2"}

    def _make_renderer(self, width: int, height: int):
        try:
            return self.mujoco.Renderer(self.model, height, width)
        except Exception as exc:  # mujoco raises plain Exceptions for GL failures
            raise SimError(EGL_HELP.format(gl=os.environ.get("MUJOCO_GL"), err=exc)) from exc

    def close(self) -> None:
        """Release the renderer's GL context."""
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    # -- episode ------------------------------------------------------------------------------
    def reset(self, episode: Episode) -> None:
        """Place the robot and the episode's objects; zero all motion; time 0."""
        m, d = self.model, self.data
        self.mujoco.mj_resetData(m, d)
        for mocap in self._mocap.values():
            d.mocap_pos[mocap] = (0.0, 0.0, -5.0)
        obstacles = iter(("obstacle_1", "obstacle_2"))
        for obj in episode.objects:
            if obj.kind not in OBJECT_KINDS:
                raise SimError(f"unknown object kind {obj.kind!r}; known: {OBJECT_KINDS}")
            body = next(obstacles, None) if obj.kind == "obstacle" else obj.kind
            if body is None:
                raise SimError(f"episode {episode.name!r}: at most 2 obstacles")
            d.mocap_pos[self._mocap[body]] = (obj.x, obj.y, 0.0)
            d.mocap_quat[self._mocap[body]] = _yaw_quat(obj.yaw)
        x, y, yaw = episode.start
        d.qpos[:3] = (x, y, yaw)
        d.qvel[:] = 0.0
        d.ctrl[:] = 0.0
        self.command = np.zeros(3)
        self.velocity = np.zeros(3)
        self.episode = episode
        self.mujoco.mj_forward(m, d)

    # -- state --------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated seconds since `reset`."""
        return float(self.data.time)

    @property
    def pose(self) -> np.ndarray:
        """``[x, y, yaw]`` in the world frame."""
        return np.array(self.data.qpos[:3], dtype=np.float64)

    @property
    def body_velocity(self) -> np.ndarray:
        """Measured ``[vx, vy, wz]`` in the robot's frame."""
        vx, vy, wz = self.data.qvel[:3]
        c, s = math.cos(self.data.qpos[2]), math.sin(self.data.qpos[2])
        return np.array([c * vx + s * vy, -s * vx + c * vy, wz])

    def set_command(self, twist) -> None:
        """The latest body-frame velocity command (a Twist's three values); NaN becomes 0."""
        v = np.asarray(twist, dtype=np.float64).reshape(3)
        self.command = np.where(np.isfinite(v), v, 0.0)

    def step(self, duration: float) -> None:
        """Advance physics by ``duration`` seconds (whole physics steps) under the command."""
        n = max(1, int(round(duration / self.dt)))
        limits = self.limits
        speed, accel = limits.speed, limits.accel * self.dt
        target = np.clip(self.command, -speed, speed)
        for _ in range(n):
            self.velocity += np.clip(target - self.velocity, -accel, accel)
            yaw = self.data.qpos[2]
            c, s = math.cos(yaw), math.sin(yaw)
            vx, vy, wz = self.velocity
            self.data.ctrl[:] = (c * vx - s * vy, s * vx + c * vy, wz)
            self.mujoco.mj_step(self.model, self.data)

    def contacts(self) -> list[str]:
        """Names of the objects the chassis touches now."""
        names = []
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            pair = {int(c.geom1), int(c.geom2)}
            if self.chassis in pair:
                other = (pair - {self.chassis}).pop() if len(pair) == 2 else None
                if other is not None and c.dist <= 0.0:
                    names.append(self.model.geom(other).name)
        return names

    def clearance(self, limit: float = 5.0) -> tuple[float, str]:
        """Smallest gap (m) between the chassis and any placed object or wall, and its name."""
        best, name = limit, ""
        fromto = np.zeros(6)
        for geom_name, gid in self.object_geoms.items():
            if self.model.geom_bodyid[gid] != 0:
                body = self.model.geom_bodyid[gid]
                if self.data.xpos[body][2] < -1.0:  # parked below the floor: not in this episode
                    continue
            dist = self.mujoco.mj_geomDistance(self.model, self.data, self.chassis, gid, limit,
                                               fromto)
            if dist < best:
                best, name = float(dist), geom_name
        return best, name

    def object_position(self, kind: str) -> np.ndarray:
        """``[x, y]`` of a placed object (its body)."""
        body = self.model.body(kind).id
        return np.array(self.data.xpos[body][:2], dtype=np.float64)

    # -- rendering ----------------------------------------------------------------------------
    def render(self, camera: str = "front") -> np.ndarray:
        """The camera's RGB uint8 (height, width, 3) image now."""
        if self.renderer is None:
            raise SimError("this World was created with render=False")
        self.renderer.update_scene(self.data, camera=camera)
        return self.renderer.render()
