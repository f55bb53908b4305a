"""Equivalence in the node: backend onnx publishes the torch backend's actions (issue: ONNX)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from ros_harness import FRAME, REPO, Probe, expected_twist, ros_env, start_node, stop_process

COMMAND = "go to the red box"
EXPORT_ATOL = 1e-4  # vla_export's fp32 parity tolerance


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    run = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.cli", "onnx",
                          "--preset", "tiny", "--output", str(out)], cwd=REPO, env=ros_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_node_with_onnx_backend_matches_torch(onnx_model, tmp_path):
    params = {"backend": "onnx", "model_path": str(onnx_model), "control_rate_hz": 20.0,
              "max_accel_x": 0.0, "max_accel_y": 0.0, "max_accel_z": 0.0,
              "diagnostics_period_s": 0.25}
    proc = start_node(params, log_path=tmp_path / "node.log")
    probe = Probe("onnx_probe")
    try:
        assert probe.wait_for(lambda: len(probe.twists) > 5, timeout=90), \
            (tmp_path / "node.log").read_text()
        probe.command(COMMAND)
        probe.publish_frames(FRAME, seconds=3.0)
        t0 = time.monotonic()
        probe.publish_frames(FRAME, seconds=1.0)
        twists = probe.twists_since(t0)
        expected = expected_twist(FRAME, COMMAND)  # the torch backend through the same core
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(twists[-1][1:], expected, atol=EXPORT_ATOL)
        values = {kv.key: kv.value for kv in
                  probe.latest_diagnostics()["vla_node: inference"].values}
        assert values["backend"] == "onnx"
        assert values["provider"].startswith("CPUExecutionProvider")
    finally:
        probe.close()
        assert stop_process(proc) == 0
