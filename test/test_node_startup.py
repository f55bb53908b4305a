"""Start-up paths: params file as the launch file passes it, launch description, fatal errors,
compressed transport. Each test runs its own node process (use_sim_time: test_node_time.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

import numpy as np
import pytest
from ros_harness import REPO, Probe, ros_env, start_node, stop_process

from mobile_vla_node.core.config import PARAMETERS, TopicConfig

LAUNCH_FILE = REPO / "launch" / "robot.launch.py"


def _wait_twists(probe, n=5, timeout=90):
    return probe.wait_for(lambda: len(probe.twists) >= n, timeout=timeout)


def test_params_file_and_remap_as_launch_does(tmp_path):
    """`ros2 launch` runs: vla_node --ros-args --params-file robot.yaml --log-level info -r ..."""
    from geometry_msgs.msg import Twist

    proc = start_node(extra_args=["--params-file", str(REPO / "config" / "robot.yaml"),
                                  "--log-level", "info", "-r", "/cmd_vel:=/robot/cmd_vel"],
                      log_path=tmp_path / "node.log")
    probe = Probe("launch_probe")
    got = []
    probe.node.create_subscription(Twist, "/robot/cmd_vel", got.append, 10)
    try:
        log = (tmp_path / "node.log")
        assert probe.wait_for(lambda: len(got) >= 5, timeout=90), log.read_text()
        assert probe.wait_for(lambda: len(probe.latest_diagnostics()) == 3, timeout=10)
    finally:
        probe.close()
        assert stop_process(proc) == 0


def test_launch_file_matches_node_parameters_and_topics():
    """The launch file's overrides are node parameters and its remaps are the default topics."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    consts = {t.id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
              and t.id in ("OVERRIDES", "REMAPS")}
    assert {name for name, _ in consts["OVERRIDES"]} <= set(PARAMETERS)
    defaults = TopicConfig()
    node_topics = {defaults.image_topic, defaults.compressed_image_topic, defaults.command_topic,
                   defaults.cmd_vel_topic, defaults.enable_topic}
    assert {topic for topic, _, _ in consts["REMAPS"]} == node_topics


def test_launch_description_loads():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; "
                                             "runs on a ROS 2 install")
    import importlib.util

    spec = importlib.util.spec_from_file_location("robot_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert {"params_file", "backend", "model_path", "device", "use_sim_time",
            "log_level"} <= names


@pytest.mark.parametrize("params, expected", [
    ({"backend": "nope"}, "backend='nope' is not one of"),
    ({"model_path": "/nonexistent/policy.ckpt"}, "does not exist"),
    ({"device": "cuda:x"}, "device='cuda:x'"),
    ({"backend": "tensorrt", "model_path": "/tmp/none.engine"}, "tensorrt"),
])
def test_startup_errors_are_one_clear_line(params, expected):
    args = [sys.executable, "-m", "mobile_vla_node.ros.main", "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    out = subprocess.run(args, cwd=REPO, env=ros_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "FATAL" in out.stderr and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_compressed_transport(tmp_path):
    import cv2
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    proc = start_node({"image_transport": "compressed", "control_rate_hz": 20.0},
                      log_path=tmp_path / "node.log")
    probe = Probe("compressed_probe")
    pub = probe.node.create_publisher(CompressedImage, "/camera/image_raw/compressed",
                                      QoSProfile(depth=1,
                                                 reliability=ReliabilityPolicy.BEST_EFFORT))
    frame = np.full((240, 320, 3), 120, np.uint8)
    frame[60:180, 40:120] = (30, 30, 220)
    ok, jpeg = cv2.imencode(".jpg", frame)
    try:
        assert _wait_twists(probe), (tmp_path / "node.log").read_text()
        probe.command("move left")
        t0 = time.monotonic()
        end = t0 + 3.0
        while time.monotonic() < end:
            msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
            msg.header.stamp = probe.now()
            pub.publish(msg)
            time.sleep(0.1)
        values = {kv.key: kv.value for kv in probe.latest_diagnostics()["vla_node: inputs"].values}
        assert int(values["frames_received"]) > 10 and values["malformed_images"] == "0"
        assert probe.latest_diagnostics()["vla_node: inference"].message != "no data yet"
        assert any(abs(x) + abs(y) + abs(z) > 0 for _, x, y, z in probe.twists_since(t0))
    finally:
        probe.close()
        stop_process(proc)
