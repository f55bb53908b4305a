"""Node on backend triton over DDS: server dies -> zeros and ERROR; server back -> motion.

A real ``tritonserver`` (``make triton-env``) serves the tiny demo policy on localhost; the node
runs as its own process with ``backend:=triton``; a probe publishes camera frames and a command
and records /cmd_vel and /diagnostics. Run it in a domain of its own, e.g. ``ROS_DOMAIN_ID=53``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ros_harness import FRAME, Probe, expected_twist, start_node, stop_process

from mobile_vla_node.export.triton_local_server import DEFAULT_ENV, LocalTriton

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in requirements.txt")
pytestmark = pytest.mark.skipif(
    not (DEFAULT_ENV / ".installed").exists(),
    reason=f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env` "
           "(`make test` builds it first)")
COMMAND = "go to the red box"
ERROR = b"\x02"


def inference_status(probe):
    status = probe.latest_diagnostics().get("vla_node: inference")
    if status is None:
        return None, "", {}
    return status.level, status.message, {kv.key: kv.value for kv in status.values}


def moving_since(probe, t0):
    return any(np.abs(t[1:]).max() > 1e-3 for t in probe.twists_since(t0))


def test_server_loss_stops_the_robot_and_motion_resumes(tmp_path):
    from mobile_vla_node.export.triton_repo import main

    repo = tmp_path / "repo"
    assert main(["--preset", "tiny", "--output", str(repo), "--instance-kind", "cpu"]) == 0
    srv = LocalTriton(repo, tmp_path / "server").start().wait_ready()
    params = {"backend": "triton", "triton_url": srv.url, "triton_timeout_ms": 500.0,
              "triton_reconnect_max_s": 0.5, "control_rate_hz": 20.0, "max_accel_x": 0.0,
              "max_accel_y": 0.0, "max_accel_z": 0.0, "diagnostics_period_s": 0.25}
    log = tmp_path / "node.log"
    proc = start_node(params, log_path=log)
    probe = Probe("triton_probe")
    stop = threading.Event()

    def camera():
        while not stop.is_set():
            probe.publish_frames(FRAME, seconds=0.5)

    feeder = threading.Thread(target=camera, daemon=True)
    try:
        assert probe.wait_for(lambda: len(probe.twists) > 5, timeout=120), log.read_text()
        probe.command(COMMAND)
        feeder.start()
        assert probe.wait_for(lambda: moving_since(probe, 0.0), timeout=60), log.read_text()
        # The same actions as the torch backend through the same core (fp32 export parity).
        expected = expected_twist(FRAME, COMMAND)
        assert np.abs(expected).max() > 1e-3
        assert probe.wait_for(lambda: np.abs(np.array(probe.twists[-1][1:]) - expected).max()
                              < 1e-4, timeout=30), (probe.twists[-1], expected)
        assert probe.wait_for(lambda: inference_status(probe)[0] not in (None, ERROR),
                              timeout=30), inference_status(probe)[1]
        level, _, values = inference_status(probe)
        assert values["backend"] == "triton" and values["provider"].startswith("triton 2.")
        assert values["triton_state"] == "connected"

        killed = time.monotonic()
        srv.kill()
        # The next step fails (connection refused or deadline): fault -> zero Twist, ERROR.
        assert probe.wait_for(lambda: inference_status(probe)[1].startswith("inference failing"),
                              timeout=30)
        level, message, values = inference_status(probe)
        assert level == ERROR and values["triton_state"].startswith("failing")
        stopped = time.monotonic()
        assert probe.wait_for(lambda: len(probe.twists_since(stopped)) > 10, timeout=10)
        assert all(np.abs(t[1:]).max() == 0.0 for t in probe.twists_since(stopped))
        assert any(np.abs(t[1:]).max() == 0.0 for t in probe.twists_since(killed))

        srv.start().wait_ready()
        restarted = time.monotonic()
        assert probe.wait_for(lambda: moving_since(probe, restarted), timeout=60), \
            log.read_text()[-3000:]
        assert probe.wait_for(lambda: inference_status(probe)[2].get("triton_state") ==
                              "connected", timeout=10)
        assert int(inference_status(probe)[2]["triton_recoveries"]) >= 1
        assert proc.poll() is None  # the node never died
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(timeout=5)
        probe.close()
        code = stop_process(proc)
        srv.stop()
    assert code == 0
