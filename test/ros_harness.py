"""Helpers for tests that talk to the node over real DDS: start it as a process, probe topics."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def other_domain() -> int:
    """This run's second domain (test/conftest.py), for a node that must not see the module's
    shared node."""
    return int(os.environ["VLA_TEST_OTHER_DOMAIN"])


def ros_env(domain: int | None = None) -> dict:
    """Environment for a child ROS process on loopback in this run's domain."""
    from mobile_vla_node.ros.process import dds_env

    env = dds_env()  # this distribution's loopback/profile variables only (docs/DISTROS.md)
    env["PYTHONUNBUFFERED"] = "1"
    if domain is not None:
        env["ROS_DOMAIN_ID"] = str(domain)
    return env


def start_node(params: dict | None = None, extra_args=(), log_path: Path | None = None,
               domain: int | None = None):
    """Start the node process with ``-p name:=value`` parameters."""
    from mobile_vla_node.ros.process import node_argv

    args = node_argv(params, extra_args)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(args, cwd=REPO, env=ros_env(domain), stdout=out,
                            stderr=subprocess.STDOUT)


def stop_process(proc, timeout: float = 10.0) -> int:
    """SIGINT (zeros, then exit), kill if it hangs; return the exit code."""
    from mobile_vla_node.ros.process import stop_node

    return stop_node(proc, timeout)


def rgb_image_msg(frame: np.ndarray, stamp, encoding: str = "rgb8"):
    """A sensor_msgs/Image from an RGB frame (converted to ``encoding``)."""
    from sensor_msgs.msg import Image

    if encoding == "bgr8":
        frame = frame[:, :, ::-1]
    elif encoding == "mono8":
        frame = frame[:, :, :1]
    frame = np.ascontiguousarray(frame)
    msg = Image()
    msg.header.stamp = stamp
    msg.height, msg.width = frame.shape[:2]
    msg.encoding = encoding
    msg.step = frame.shape[1] * frame.shape[2]
    msg.data = frame.tobytes()
    return msg


class Probe:
    """A test-side rclpy node in a background executor: publishes inputs, records outputs."""

    def __init__(self, name: str = "probe", domain: int | None = None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, Float64MultiArray, String

        from mobile_vla_node.ros.qos import profile

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.image_pub = self.node.create_publisher(Image, "/camera/image_raw", profile("camera"))
        self.command_pub = self.node.create_publisher(String, "/vla/command", profile("command"))
        self.enable_pub = self.node.create_publisher(Bool, "/vla/enable", profile("enable"))
        self.lock = threading.Lock()
        self.twists: list = []
        self.diagnostics: list = []
        self.timings: list = []
        self.node.create_subscription(Twist, "/cmd_vel", self._on_twist, profile("record"))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                      profile("diagnostics"))
        self.node.create_subscription(Float64MultiArray, "/vla_node/step_timing",
                                      lambda m: self._append(self.timings, list(m.data)),
                                      profile("record"))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down while spinning
                return

    def _append(self, target, item):
        with self.lock:
            target.append(item)

    def _on_twist(self, msg):
        self._append(self.twists, (time.monotonic(), msg.linear.x, msg.linear.y, msg.angular.z))

    def _on_diag(self, msg):
        self._append(self.diagnostics, {s.name: s for s in msg.status})

    def now(self):
        """Current time as a builtin_interfaces/Time."""
        return self.node.get_clock().now().to_msg()

    def command(self, text: str) -> None:
        """Publish an instruction."""
        from std_msgs.msg import String

        self.command_pub.publish(String(data=text))

    def enable(self, value: bool) -> None:
        """Publish on the enable topic."""
        from std_msgs.msg import Bool

        self.enable_pub.publish(Bool(data=value))

    def publish_frames(self, frame: np.ndarray, seconds: float, rate_hz: float = 10.0,
                       encoding: str = "rgb8") -> None:
        """Publish the same frame at ``rate_hz`` for ``seconds`` (fresh stamps)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.image_pub.publish(rgb_image_msg(frame, self.now(), encoding))
            time.sleep(1.0 / rate_hz)

    def twists_since(self, t0: float) -> list:
        """Twists received after monotonic time ``t0``."""
        with self.lock:
            return [t for t in self.twists if t[0] >= t0]

    def wait_for(self, predicate, timeout: float, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until true or timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    def wait_active(self, timeout: float = 120.0) -> bool:
        """Wait until the node's diagnostics report the lifecycle state "active"."""
        def active():
            control = self.latest_diagnostics().get("vla_node: control")
            return control is not None and any(
                kv.key == "lifecycle_state" and kv.value == "active" for kv in control.values)
        return self.wait_for(active, timeout=timeout, interval=0.1)

    def latest_diagnostics(self) -> dict:
        """The newest DiagnosticArray as {name: status} (empty if none)."""
        with self.lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}

    def close(self) -> None:
        """Shut the probe's context down."""
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


def wait_for_log(path: Path, text: str, timeout: float = 120.0, proc=None) -> bool:
    """Wait until ``text`` appears in a node's log file (e.g. "publishing" = ready)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def make_frame() -> np.ndarray:
    rng = np.random.default_rng(7)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:] = (90, 90, 90)
    frame[80:200, 180:260] = (220, 30, 30)  # a red box right of centre
    return np.clip(frame + rng.integers(0, 20, frame.shape), 0, 255).astype(np.uint8)


FRAME = make_frame()


def expected_twist(frame: np.ndarray, command: str) -> np.ndarray:
    """What the core computes for this frame repeated until the history window is full."""
    from mobile_vla_node.backends import create_backend
    from mobile_vla_node.core.config import ActionConfig, BackendConfig, SafetyConfig
    from mobile_vla_node.core.runtime import PolicyRuntime

    backend = create_backend(BackendConfig())
    backend.load()
    runtime = PolicyRuntime(backend, ActionConfig())
    runtime.set_command(command)
    for _ in range(backend.spec.window_size + 1):
        result = runtime.step(frame)
    s = SafetyConfig()
    limits = np.array([s.max_linear_x, s.max_linear_y, s.max_angular_z])
    return np.clip(result.velocities[0], -limits, limits)
