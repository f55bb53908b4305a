"""Time that can jump, over real DDS: ``use_sim_time`` with ``/clock`` paused, stepped and jumping.

The node ticks on ROS time under ``use_sim_time``, publishes zeros at the steady rate while
``/clock`` does not move (zeros never go silent), and stops on a jump, backwards or forwards,
until fresh input arrives. Assertions wait for events (a Twist per sim period, the first zero
after a jump), never on wall-clock windows.
"""

from __future__ import annotations

import threading
import time

import pytest
from ros_harness import FRAME, Probe, rgb_image_msg, start_node, stop_process, wait_for_log

EVENT_TIMEOUT = 60.0
COMMAND = "go to the red box"


def sim_time(t: float):
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(round(t * 1e9), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def is_zero(t) -> bool:
    return t[1] == t[2] == t[3] == 0.0


def moving_since(probe, t0) -> bool:
    return any(not is_zero(t) for t in probe.twists_since(t0))


def control_values(probe) -> dict:
    status = probe.latest_diagnostics().get("vla_node: control")
    return {kv.key: kv.value for kv in status.values} if status else {}


@pytest.fixture
def sim_node(tmp_path):
    """A factory: start the node with use_sim_time and extra parameters, plus a /clock probe."""
    from rosgraph_msgs.msg import Clock

    started = []

    def start(**params):
        log = tmp_path / "node.log"
        proc = start_node({"use_sim_time": True, "diagnostics_period_s": 0.25,
                           "max_accel_x": 0.0, "max_accel_y": 0.0, "max_accel_z": 0.0, **params},
                          log_path=log)
        probe = Probe("time_probe")
        probe.clock_pub = probe.node.create_publisher(Clock, "/clock", 10)
        started.append((proc, probe))
        assert wait_for_log(log, "active:", proc=proc, timeout=180), log.read_text()
        return proc, probe, log

    yield start
    for proc, probe in started:
        probe.close()
        stop_process(proc)


class SimWorld:
    """/clock at 100 Hz tracking wall time from ``base``, camera at 10 Hz stamped in sim time."""

    def __init__(self, probe, base: float = 1000.0):
        self.probe, self.base, self.t0 = probe, base, time.monotonic()
        self.camera = threading.Event()
        self.camera.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.base + time.monotonic() - self.t0

    def jump(self, seconds: float) -> None:
        self.base += seconds

    def _run(self):
        from rosgraph_msgs.msg import Clock

        last_frame = 0.0
        while not self._stop.is_set():
            sim = self.now()
            self.probe.clock_pub.publish(Clock(clock=sim_time(sim)))
            if self.camera.is_set() and time.monotonic() - last_frame >= 0.1:
                self.probe.image_pub.publish(rgb_image_msg(FRAME, sim_time(sim)))
                last_frame = time.monotonic()
            self._stop.wait(0.01)

    def close(self):
        self._stop.set()
        self._thread.join()


def test_zeros_while_clock_is_paused_and_one_twist_per_sim_period(sim_node):
    from rosgraph_msgs.msg import Clock

    rate, timeout = 10.0, 5.0
    proc, probe, log = sim_node(control_rate_hz=rate, image_timeout_s=timeout)
    # No /clock at all: zeros at the steady rate, never silence.
    t0 = time.monotonic()
    assert probe.wait_for(lambda: len(probe.twists_since(t0)) >= 10, timeout=EVENT_TIMEOUT)
    assert not moving_since(probe, t0)
    assert probe.wait_for(lambda: control_values(probe).get("stop_reason") == "clock_stalled",
                          timeout=EVENT_TIMEOUT), control_values(probe)
    # Step sim time one period at a time, in two /clock messages, waiting for each Twist.
    periods, sim = 30, 100.0
    probe.clock_pub.publish(Clock(clock=sim_time(sim)))
    assert probe.wait_for(lambda: control_values(probe).get("stop_reason") == "no_command",
                          timeout=EVENT_TIMEOUT), control_values(probe)
    start = len(probe.twists)
    for k in range(periods):
        for _ in range(2):
            sim += 0.5 / rate
            probe.clock_pub.publish(Clock(clock=sim_time(sim)))
            time.sleep(0.01)
        assert probe.wait_for(lambda k=k: len(probe.twists) - start >= k + 1, EVENT_TIMEOUT)
    # /clock pauses (shorter than the stall timeout): no Twist without sim time moving.
    settled = len(probe.twists)
    time.sleep(1.0)
    ticks = len(probe.twists) - start
    assert periods <= ticks <= periods + 1, ticks
    assert len(probe.twists) == settled
    assert stop_process(proc) == 0, log.read_text()[-2000:]


@pytest.mark.parametrize("jump_s", [-10.0, 10.0])
def test_clock_jump_stops_the_robot_until_fresh_input(sim_node, jump_s):
    proc, probe, log = sim_node(control_rate_hz=20.0, image_timeout_s=0.5, action_timeout_s=1.0)
    world = SimWorld(probe)
    try:
        probe.command(COMMAND)
        assert probe.wait_for(lambda: moving_since(probe, 0.0), timeout=EVENT_TIMEOUT)
        # The camera stops at the moment time jumps: the robot must stop, not drive on the
        # "fresh-looking" frame for the 10 s the clock went back.
        world.camera.clear()
        t_jump = time.monotonic()
        world.jump(jump_s)
        assert probe.wait_for(lambda: any(is_zero(t) for t in probe.twists_since(t_jump)),
                              timeout=EVENT_TIMEOUT)
        t_zero = next(t[0] for t in probe.twists_since(t_jump) if is_zero(t))
        n = len(probe.twists)
        assert probe.wait_for(lambda: len(probe.twists) >= n + 20, timeout=EVENT_TIMEOUT)
        assert not moving_since(probe, t_zero)
        assert probe.wait_for(lambda: int(control_values(probe).get("clock_jumps", 0)) >= 1,
                              timeout=EVENT_TIMEOUT), control_values(probe)
        # Fresh frames on the new time line: the robot drives again.
        t_back = time.monotonic()
        world.camera.set()
        assert probe.wait_for(lambda: moving_since(probe, t_back), timeout=EVENT_TIMEOUT)
    finally:
        world.close()
