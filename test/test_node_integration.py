"""The node as its own process over real DDS: actions, staleness, e-stop, bad input, stop
phrases, diagnostics, live parameters and zeros on shutdown.

Every assertion waits for an event (the first zero after a stop, the first motion after a
restart) instead of counting on a wall-clock window, so a loaded 2-core machine slows these tests
down but cannot fail them. Rates and latencies are targets of `vla_stress`, not of these tests.
Each test starts from the same state (`fresh`): enabled, the reference command, limits reset.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ros_harness import (
    FRAME,
    Probe,
    expected_twist,
    other_domain,
    rgb_image_msg,
    start_node,
    stop_process,
    wait_for_log,
)

RATE_HZ = 20.0
IMAGE_TIMEOUT = 0.5
COMMAND = "go to the red box"
LIMITS = {"max_linear_x": 0.5, "max_linear_y": 0.5, "max_angular_z": 1.0}
PARAMS = {
    "control_rate_hz": RATE_HZ, "image_timeout_s": IMAGE_TIMEOUT, "action_timeout_s": 1.0,
    # No acceleration limit here so the published Twist equals the core's clamped action
    # exactly; the limiter has its own unit tests.
    "max_accel_x": 0.0, "max_accel_y": 0.0, "max_accel_z": 0.0,
    "diagnostics_period_s": 0.25, "jitter_warn_ms": 1000.0, "inference_warn_ms": 5000.0,
    "inference_error_ms": 10000.0, **LIMITS,
}
EVENT_TIMEOUT = 60.0  # generous: only reached when something is broken


class Camera:
    """Publishes FRAME at 10 Hz with fresh stamps in a thread until stopped."""

    def __init__(self, probe, frame=FRAME):
        self.probe, self.frame = probe, frame
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.probe.image_pub.publish(rgb_image_msg(self.frame, self.probe.now()))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.stopped_at = time.monotonic()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(PARAMS, log_path=log)
    probe = Probe()
    try:
        assert probe.wait_active(), log.read_text()
        # The state before any input, for test_zeros_and_no_data_before_any_input (recorded
        # here, so that test does not depend on running first). The control status may first
        # report the rate dip of the loading phase (the last 2 s).
        assert probe.wait_for(lambda: control_message(probe) == "stopped: no_command",
                              timeout=EVENT_TIMEOUT), probe.latest_diagnostics()
        t0 = time.monotonic()
        assert probe.wait_for(lambda: len(probe.twists_since(t0)) >= 5, timeout=EVENT_TIMEOUT)
        probe.initial = (probe.latest_diagnostics(), probe.twists_since(t0))
        yield proc, probe, log
    finally:
        probe.close()
        stop_process(proc)


@pytest.fixture
def fresh(system):
    """The shared node in the reference state, whatever the previous test did."""
    proc, probe, log = system
    assert proc.poll() is None, log.read_text()[-3000:]
    assert all(r.successful for r in _set_params(probe, **LIMITS))
    probe.enable(True)
    probe.command(COMMAND)
    return proc, probe, log


def is_zero(twist) -> bool:
    return twist[1] == twist[2] == twist[3] == 0.0


def moving(probe, t0):
    return any(not is_zero(t) for t in probe.twists_since(t0))


def wait_moving(probe, t0=None):
    """Drive with fresh frames until a non-zero Twist arrives (after ``t0``)."""
    t0 = time.monotonic() if t0 is None else t0
    with Camera(probe):
        assert probe.wait_for(lambda: moving(probe, t0), timeout=EVENT_TIMEOUT), \
            probe.latest_diagnostics().get("vla_node: control")


def first_zero_after(probe, t0):
    """Wait for the first zero Twist received after ``t0``; return its receipt time."""
    assert probe.wait_for(lambda: any(is_zero(t) for t in probe.twists_since(t0)),
                          timeout=EVENT_TIMEOUT)
    return next(t[0] for t in probe.twists_since(t0) if is_zero(t))


def assert_stays_stopped(probe, t_zero, seconds=1.0):
    """After the first zero, every Twist is zero (while the stop condition holds)."""
    n = len(probe.twists_since(t_zero))
    assert probe.wait_for(lambda: len(probe.twists_since(t_zero)) >= n + int(seconds * RATE_HZ),
                          timeout=EVENT_TIMEOUT)
    assert not moving(probe, t_zero)


def control_message(probe):
    return probe.latest_diagnostics()["vla_node: control"].message


def values_of(probe, status):
    return {kv.key: kv.value for kv in probe.latest_diagnostics()[f"vla_node: {status}"].values}


def _set_params(probe, **values):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = probe.node.create_client(SetParameters, "/vla_node/set_parameters")
    assert client.wait_for_service(timeout_sec=30)
    request = SetParameters.Request(
        parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    future = client.call_async(request)
    assert probe.wait_for(future.done, timeout=30)
    return future.result().results


def test_zeros_and_no_data_before_any_input(system):
    proc, probe, _ = system
    diag, twists = probe.initial
    assert diag["vla_node: inference"].level == b"\x02"
    assert diag["vla_node: inference"].message == "no data yet"
    assert diag["vla_node: inputs"].message == "no data yet"
    assert diag["vla_node: control"].message == "stopped: no_command"
    assert all(s.hardware_id for s in diag.values())
    # Without input the node still publishes, and only zeros.
    assert len(twists) >= 5 and all(is_zero(t) for t in twists)


def test_actions_match_core(fresh):
    proc, probe, _ = fresh
    expected = expected_twist(FRAME, COMMAND)
    assert np.abs(expected).max() > 1e-3, "the policy should move for this scene"
    with Camera(probe):
        # Once the history window is full of this frame, the node publishes what the core
        # computes, to float precision.
        assert probe.wait_for(lambda: probe.twists and np.allclose(
            probe.twists[-1][1:], expected, atol=1e-5), timeout=EVENT_TIMEOUT), \
            (probe.twists[-1], expected)


def test_zero_after_images_stop(fresh):
    proc, probe, _ = fresh
    wait_moving(probe)
    with Camera(probe) as camera:
        assert probe.wait_for(lambda: moving(probe, time.monotonic() - 0.2), timeout=30)
    t_zero = first_zero_after(probe, camera.stopped_at)
    assert_stays_stopped(probe, t_zero)
    assert probe.wait_for(lambda: control_message(probe) == "stopped: image_stale", timeout=10)


def test_estop_topic_and_service(fresh):
    from std_srvs.srv import SetBool

    proc, probe, _ = fresh
    wait_moving(probe)
    with Camera(probe):
        t_stop = time.monotonic()
        probe.enable(False)
        assert_stays_stopped(probe, first_zero_after(probe, t_stop))
        probe.enable(True)
        assert probe.wait_for(lambda: moving(probe, time.monotonic() - 0.2), EVENT_TIMEOUT)
        client = probe.node.create_client(SetBool, "/vla_node/enable")
        assert client.wait_for_service(timeout_sec=30)
        t_srv = time.monotonic()
        future = client.call_async(SetBool.Request(data=False))
        assert probe.wait_for(future.done, timeout=30) and future.result().success
        assert_stays_stopped(probe, first_zero_after(probe, t_srv))
        future = client.call_async(SetBool.Request(data=True))
        assert probe.wait_for(future.done, timeout=30) and future.result().success


def malformed_messages(probe):
    bad = []
    for change in ({"step": 10}, {"encoding": "weird16"}, {"height": 0}, {"width": 100000},
                   {"data": b"\x00" * 17}, {"encoding": "yuv422", "width": 319, "step": 638}):
        msg = rgb_image_msg(FRAME, probe.now())
        for key, value in change.items():
            setattr(msg, key, value)
        if change.get("encoding") == "yuv422":
            msg.data = b"\x80" * (msg.step * msg.height)
        bad.append(msg)
    return bad


def test_malformed_flood_is_counted_and_stops_robot(fresh):
    proc, probe, _ = fresh
    wait_moving(probe)
    bad = malformed_messages(probe)
    before = int(values_of(probe, "inputs")["malformed_images"])
    t_flood = time.monotonic()
    for i in range(300):
        probe.image_pub.publish(bad[i % len(bad)])
        time.sleep(0.005)
    assert proc.poll() is None
    t_zero = first_zero_after(probe, t_flood)
    assert not moving(probe, t_zero)
    assert probe.wait_for(lambda: int(values_of(probe, "inputs")["malformed_images"]) > before,
                          timeout=30)
    # Counted as malformed input, never as an inference failure (odd-width yuv422 included).
    assert values_of(probe, "inference")["inference_errors"] == "0"
    wait_moving(probe)


def test_diagnostics_levels_and_values_while_running(fresh):
    proc, probe, _ = fresh
    wait_moving(probe)
    with Camera(probe):
        assert probe.wait_for(lambda: values_of(probe, "control")["safety_state"] == "moving",
                              timeout=EVENT_TIMEOUT)
        diag = probe.latest_diagnostics()
    messages = {n: s.message for n, s in diag.items()}
    assert diag["vla_node: inference"].level == b"\x00", messages
    assert diag["vla_node: inputs"].level == b"\x00", messages
    # Moving: control is OK, or WARN for timing only (deadline misses or a rate dip in the last
    # seconds are reported truthfully when this 2-core machine is loaded), never ERROR.
    control = diag["vla_node: control"]
    assert control.level == b"\x00" or (
        control.level == b"\x01" and any(w in control.message for w in
                                         ("deadline misses", "control rate", "jitter"))), messages
    values = {kv.key: kv.value for s in diag.values() for kv in s.values}
    for key in ("backend", "device", "precision", "provider", "inference_p99_ms",
                "preprocess_p95_ms", "transport_p50_ms", "end_to_end_p99_ms", "image_rate_hz",
                "control_rate_hz", "jitter_p99_ms", "frames_dropped", "deadline_misses",
                "deadline_misses_recent", "safety_state", "last_stop_reason", "lifecycle_state",
                "clock_jumps"):
        assert key in values, key
    assert values["backend"] == "torch" and values["lifecycle_state"] == "active"
    assert float(values["end_to_end_p99_ms"]) > 0
    assert probe.timings and len(probe.timings[-1]) == 4


def test_live_parameters_validated(fresh):
    proc, probe, _ = fresh
    (bad,) = _set_params(probe, max_linear_x=-1.0)
    assert not bad.successful and "max_linear_x" in bad.reason
    (ro,) = _set_params(probe, backend="onnx")
    assert not ro.successful
    results = _set_params(probe, max_linear_x=0.01, max_linear_y=0.01, max_angular_z=0.01)
    assert all(r.successful for r in results)
    t0 = time.monotonic()
    wait_moving(probe, t0)
    twists = probe.twists_since(t0)
    assert max(max(abs(x), abs(y), abs(z)) for _, x, y, z in twists) <= 0.01 + 1e-9


def test_bad_command_is_rejected_and_stops(fresh):
    proc, probe, _ = fresh
    wait_moving(probe)
    with Camera(probe):
        for text in ("x" * 5000, "🚀🚀🚀", "   "):
            t0 = time.monotonic()
            probe.command(text)
            assert_stays_stopped(probe, first_zero_after(probe, t0), seconds=0.5)
            assert values_of(probe, "inputs")["command"] == ""
        assert int(values_of(probe, "inputs")["rejected_commands"]) >= 3
        t1 = time.monotonic()
        probe.command(COMMAND)
        assert probe.wait_for(lambda: moving(probe, t1), timeout=EVENT_TIMEOUT)


@pytest.mark.parametrize("phrase", ["stop", "Please STOP now.", "do not move", "정지", "멈춰"])
def test_stop_phrases_stop_without_inference(fresh, phrase):
    proc, probe, _ = fresh
    wait_moving(probe)
    with Camera(probe):
        t0 = time.monotonic()
        probe.command(phrase)
        assert_stays_stopped(probe, first_zero_after(probe, t0))
        assert probe.wait_for(lambda: control_message(probe) == "stopped: stop_command", 10)
        # From a diagnostics snapshot taken after the stop: frames keep coming, steps do not.
        steps = int(values_of(probe, "inference")["steps"])
        frames = int(values_of(probe, "inputs")["frames_received"])
        assert probe.wait_for(lambda: int(values_of(probe, "inputs")["frames_received"]) >=
                              frames + 5, timeout=EVENT_TIMEOUT)
        assert int(values_of(probe, "inference")["steps"]) == steps


def test_zeros_on_shutdown(tmp_path):
    """Its own node, in its own domain: SIGINT while driving ends in zeros, exit code 0."""
    domain = other_domain()
    # Long timeouts: once moving, nothing but the shutdown stops it, so the first zero after the
    # signal is the shutdown's (a loaded machine can take seconds per inference step).
    params = {**PARAMS, "image_timeout_s": 60.0, "action_timeout_s": 60.0}
    proc = start_node(params, log_path=tmp_path / "node.log", domain=domain)
    probe = Probe("shutdown_probe", domain=domain)
    try:
        assert wait_for_log(tmp_path / "node.log", "active:", proc=proc), \
            (tmp_path / "node.log").read_text()
        probe.command(COMMAND)
        with Camera(probe):
            assert probe.wait_for(lambda: moving(probe, 0.0), timeout=EVENT_TIMEOUT)
            t_signal = time.monotonic()
            code = stop_process(proc)
        assert code == 0, (tmp_path / "node.log").read_text()[-2000:]
        t_zero = first_zero_after(probe, t_signal)
        assert probe.wait_for(lambda: probe.twists and is_zero(probe.twists[-1]), timeout=5)
        assert not moving(probe, t_zero), "a non-zero Twist after the first shutdown zero"
    finally:
        probe.close()
        stop_process(proc)
