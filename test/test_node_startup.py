"""Start-up paths: params file as the launch file passes it, fatal errors, compressed
transport. Each test runs its own node process (the launch file: test_launch_file.py;
use_sim_time: test_node_time.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from ros_harness import REPO, Probe, ros_env, start_node, stop_process


def test_params_files_as_launch_passes_them(tmp_path):
    """`ros2 launch ... cmd_vel_topic:=/robot/cmd_vel` runs: vla_node --ros-args --log-level info
    --params-file robot.yaml --params-file <launch arguments as parameters> (no remappings)."""
    from geometry_msgs.msg import Twist

    overrides = tmp_path / "launch_params.yaml"
    overrides.write_text("/**:\n  ros__parameters:\n    cmd_vel_topic: /robot/cmd_vel\n"
                         "    autostart: true\n    use_sim_time: false\n")
    proc = start_node(extra_args=["--log-level", "info",
                                  "--params-file", str(REPO / "config" / "robot.yaml"),
                                  "--params-file", str(overrides)],
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
        assert probe.wait_active(), (tmp_path / "node.log").read_text()
        probe.command("move left")
        t0 = time.monotonic()

        def moving():
            return any(abs(x) + abs(y) + abs(z) > 0 for _, x, y, z in probe.twists_since(t0))

        while not moving() and time.monotonic() < t0 + 60:  # events, not a time window
            msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
            msg.header.stamp = probe.now()
            pub.publish(msg)
            time.sleep(0.1)
        assert moving()
        assert probe.wait_for(lambda: probe.latest_diagnostics()["vla_node: inference"].message
                              != "no data yet", timeout=30)
        values = {kv.key: kv.value for kv in probe.latest_diagnostics()["vla_node: inputs"].values}
        assert int(values["frames_received"]) >= 1 and values["malformed_images"] == "0"
    finally:
        probe.close()
        stop_process(proc)
