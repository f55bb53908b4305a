"""The sim's ROS side: /clock, the camera, the command, the e-stop, and what the node answers.

`SimBridge` is one rclpy node in the sim process (the node under test runs in its own process).
It publishes ``/clock`` (sim time), ``/camera/image_raw`` (``sensor_msgs/Image``, rgb8, stamped
with sim time, frame id ``camera_front``), ``/vla/command`` and ``/vla/enable``; it subscribes
``/cmd_vel``, ``/diagnostics`` and the node's ``~/step_timing``, and calls ``~/reset``. All
callbacks only record; the episode loop (`runner`) waits on them.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..ros.qos import profile

FRAME_ID = "camera_front"
NODE_NAME = "vla_node"


def _level(value) -> int:
    return int.from_bytes(value, "little") if isinstance(value, bytes) else int(value)


class SimBridge:
    """Publishers, subscriptions and a spin thread; thread-safe counters to wait on."""

    def __init__(self, node_name: str = NODE_NAME):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, Float64MultiArray, String
        from std_srvs.srv import Trigger

        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node("vla_sim")
        n = self.node
        self.clock_pub = n.create_publisher(Clock, "/clock", profile("clock"))
        self.image_pub = n.create_publisher(Image, "/camera/image_raw", profile("camera"))
        self.command_pub = n.create_publisher(String, "/vla/command", profile("command"))
        self.enable_pub = n.create_publisher(Bool, "/vla/enable", profile("enable"))
        self.cond = threading.Condition()
        self.twist_count = 0
        self.twist = np.zeros(3)
        self.diag_count = 0
        self.diagnostics: dict = {}
        self.timings: list = []  # [transport, preprocess, inference, end_to_end] ms per step
        n.create_subscription(Twist, "/cmd_vel", self._on_twist, profile("record"))
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                              profile("diagnostics"))
        n.create_subscription(Float64MultiArray, f"/{node_name}/step_timing", self._on_timing,
                              profile("timing"))
        self.reset_client = n.create_client(Trigger, f"/{node_name}/reset")
        self._msgs = {"Clock": Clock, "Image": Image, "String": String, "Bool": Bool,
                      "Trigger": Trigger}
        self._running = True
        self._spin = threading.Thread(target=self._spin_loop, name="vla_sim_spin", daemon=True)
        self._spin.start()

    def _spin_loop(self) -> None:
        import rclpy

        while self._running and rclpy.ok():
            rclpy.spin_once(self.node, timeout_sec=0.05)

    # -- callbacks ----------------------------------------------------------------------------
    def _on_twist(self, msg) -> None:
        with self.cond:
            self.twist = np.array([msg.linear.x, msg.linear.y, msg.angular.z])
            self.twist_count += 1
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        statuses = {s.name: {kv.key: kv.value for kv in s.values} | {
            "_level": _level(s.level), "_message": s.message} for s in msg.status}
        with self.cond:
            self.diagnostics = statuses
            self.diag_count += 1
            self.cond.notify_all()

    def _on_timing(self, msg) -> None:
        with self.cond:
            self.timings.append(list(msg.data))

    # -- reading ------------------------------------------------------------------------------
    def diag_value(self, status: str, key: str, default=None):
        """One value of the newest diagnostics (status name without the node prefix)."""
        with self.cond:
            return self.diagnostics.get(f"{NODE_NAME}: {status}", {}).get(key, default)

    def steps(self) -> int:
        """Inference steps the node reported in its newest diagnostics (-1: none yet)."""
        value = self.diag_value("inference", "steps")
        try:
            return int(value)
        except (TypeError, ValueError):
            return -1

    def wait(self, predicate, timeout: float) -> bool:
        """Wait (wall time) until ``predicate()`` holds under the lock."""
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
        return True

    # -- publishing ---------------------------------------------------------------------------
    def publish_clock(self, t_ns: int) -> None:
        """``/clock`` = ``t_ns``."""
        msg = self._msgs["Clock"]()
        msg.clock.sec, msg.clock.nanosec = int(t_ns // 10**9), int(t_ns % 10**9)
        self.clock_pub.publish(msg)

    def image_msg(self, rgb: np.ndarray, stamp_ns: int):
        """An rgb8 ``sensor_msgs/Image`` stamped ``stamp_ns`` (sim time)."""
        msg = self._msgs["Image"]()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp_ns // 10**9), int(
            stamp_ns % 10**9)
        msg.header.frame_id = FRAME_ID
        msg.height, msg.width = rgb.shape[:2]
        msg.encoding, msg.step = "rgb8", rgb.shape[1] * 3
        msg.data = rgb.tobytes()
        return msg

    def publish_image(self, msg) -> None:
        """Publish a prepared image message."""
        self.image_pub.publish(msg)

    def publish_command(self, text: str) -> None:
        """Latched instruction."""
        self.command_pub.publish(self._msgs["String"](data=text))

    def publish_enable(self, enabled: bool) -> None:
        """Latched enable (false = e-stop)."""
        self.enable_pub.publish(self._msgs["Bool"](data=bool(enabled)))

    def reset_history(self, timeout: float = 10.0) -> bool:
        """Call the node's ``~/reset`` (clears the observation history)."""
        if not self.reset_client.wait_for_service(timeout_sec=timeout):
            return False
        future = self.reset_client.call_async(self._msgs["Trigger"].Request())
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.005)
        return future.done() and future.result() is not None and future.result().success

    def close(self) -> None:
        """Stop spinning and destroy the node (the context stays for the caller)."""
        self._running = False
        self._spin.join(timeout=2.0)
        self.node.destroy_node()
