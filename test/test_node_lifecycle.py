"""The managed (lifecycle) node over real DDS, driven the way nav2's lifecycle manager drives it:
``autostart: false``, then configure -> activate -> deactivate -> activate -> cleanup -> shutdown
through the standard ``~/change_state`` service. Zeros in every state but active; diagnostics name
the state; the shutdown transition ends the process with exit code 0."""

from __future__ import annotations

import threading
import time

import pytest
from ros_harness import FRAME, Probe, rgb_image_msg, start_node, stop_process, wait_for_log

EVENT_TIMEOUT = 120.0


def is_zero(t) -> bool:
    return t[1] == t[2] == t[3] == 0.0


@pytest.fixture
def managed(tmp_path):
    log = tmp_path / "node.log"
    proc = start_node({"autostart": False, "diagnostics_period_s": 0.25}, log_path=log)
    probe = Probe("lifecycle_probe")
    stop = threading.Event()

    def camera():
        while not stop.is_set():
            probe.image_pub.publish(rgb_image_msg(FRAME, probe.now()))
            stop.wait(0.1)

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    try:
        yield proc, probe, log
    finally:
        stop.set()
        thread.join()
        probe.close()
        stop_process(proc)


def change_state(probe, transition_id: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    client = probe.node.create_client(ChangeState, "/vla_node/change_state")
    assert client.wait_for_service(timeout_sec=60)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    assert probe.wait_for(future.done, timeout=EVENT_TIMEOUT)
    return future.result().success


def lifecycle_state(probe) -> str:
    status = probe.latest_diagnostics().get("vla_node: control")
    values = {kv.key: kv.value for kv in status.values} if status else {}
    return values.get("lifecycle_state", "")


def zeros_only_for(probe, n: int = 10) -> bool:
    t0 = time.monotonic()
    assert probe.wait_for(lambda: len(probe.twists_since(t0)) >= n, timeout=EVENT_TIMEOUT)
    return all(is_zero(t) for t in probe.twists_since(t0))


def moves(probe) -> bool:
    t0 = time.monotonic()
    return probe.wait_for(lambda: any(not is_zero(t) for t in probe.twists_since(t0)),
                          timeout=EVENT_TIMEOUT)


def test_transitions_publish_zeros_outside_active(managed):
    from lifecycle_msgs.msg import Transition

    proc, probe, log = managed
    probe.command("go to the red box")
    assert wait_for_log(log, "zeros until active", proc=proc), log.read_text()
    assert probe.wait_for(lambda: lifecycle_state(probe) == "unconfigured", EVENT_TIMEOUT)
    assert zeros_only_for(probe)  # unconfigured: no model, zeros

    assert change_state(probe, Transition.TRANSITION_CONFIGURE)
    assert probe.wait_for(lambda: lifecycle_state(probe) == "inactive", EVENT_TIMEOUT)
    assert zeros_only_for(probe)  # inactive: the latched command is held, still zeros

    assert change_state(probe, Transition.TRANSITION_ACTIVATE)
    assert moves(probe)
    assert lifecycle_state(probe) == "active" or probe.wait_for(
        lambda: lifecycle_state(probe) == "active", EVENT_TIMEOUT)

    assert change_state(probe, Transition.TRANSITION_DEACTIVATE)
    assert zeros_only_for(probe)  # every Twist after the transition returned is zero
    assert change_state(probe, Transition.TRANSITION_ACTIVATE)
    assert moves(probe)

    assert change_state(probe, Transition.TRANSITION_DEACTIVATE)
    assert change_state(probe, Transition.TRANSITION_CLEANUP)
    assert probe.wait_for(lambda: lifecycle_state(probe) == "unconfigured", EVENT_TIMEOUT)
    assert zeros_only_for(probe)

    assert change_state(probe, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert proc.wait(timeout=EVENT_TIMEOUT) == 0, log.read_text()[-2000:]
    assert probe.wait_for(lambda: probe.twists and is_zero(probe.twists[-1]), timeout=10)
