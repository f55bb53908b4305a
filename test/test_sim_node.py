"""vla_sim closed loop: the node, in its own process over DDS, drives the simulated robot.

Lockstep on /clock at real_time_factor 0.5: the sim policy reaches the target; a camera dropout
stops the robot (image_stale) and the robot finishes after the frames return; an e-stop stops it
and it finishes after the enable. One node process serves the three episodes.
"""

from dataclasses import replace

import numpy as np
import pytest

import mobile_vla_node.sim  # noqa: F401 - sets MUJOCO_GL=egl before mujoco is imported

pytest.importorskip("mujoco", reason="vla_sim needs mujoco (requirements.txt, Python >= 3.11)")

from mobile_vla_node.sim import suites  # noqa: E402
from mobile_vla_node.sim.runner import (  # noqa: E402
    ClosedLoop,
    NodeProcess,
    SimConfig,
    node_params,
    policy,
    sim_env,
)
from mobile_vla_node.sim.world import World  # noqa: E402

EPISODE = "green_00"  # a demo-suite episode; every one is in reach of the sim policy


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from mobile_vla_node.sim.bridge import SimBridge

    cfg = SimConfig(real_time_factor=0.5, sync_timeout_s=120.0)
    env = sim_env()  # this test run's domain (conftest), loopback only
    workdir = tmp_path_factory.mktemp("sim")
    pol = policy("sim")
    node = NodeProcess(node_params(cfg, pol.backend, pol.model_path), workdir, env)
    world = World(cfg.width, cfg.height, cfg.limits)
    bridge = SimBridge()
    closed = ClosedLoop(bridge, world, cfg, node)
    try:
        closed.start(timeout=240.0)
        yield closed
    finally:
        code = node.stop()
        world.close()
        bridge.close()
        assert code == 0, node.tail()


def _episode():
    return next(e for e in suites.load("demo").episodes if e.name == EPISODE)


def _speeds(result) -> np.ndarray:
    """(t, speed m/s) between consecutive control periods of the trajectory."""
    traj = np.array([p[:3] for p in result.trajectory])
    v = np.linalg.norm(np.diff(traj[:, 1:3], axis=0), axis=1) / np.diff(traj[:, 0])
    return np.column_stack([traj[1:, 0], v])


def test_sim_policy_through_the_node_reaches_the_target(loop):
    loop.cfg = replace(loop.cfg, dropout=None, estop=None)
    r = loop.run("demo", _episode())
    assert r.outcome == "success", r.as_dict(trajectory=False)
    assert r.collisions == 0
    assert r.node["steps"] > 10 and r.node["ticks"] > 2 * 10
    # a frame drives the robot from the next control period: end-to-end 1 period in sim time
    assert r.node["end_to_end_ms"]["p50"] == pytest.approx(1e3 * loop.cfg.control_dt, abs=1.0)


def test_camera_dropout_stops_the_robot_then_it_finishes(loop):
    start, length = 1.5, 3.0
    loop.cfg = replace(loop.cfg, dropout=(start, length), estop=None)
    r = loop.run("demo", _episode())
    speeds = _speeds(r)
    moving_before = speeds[(speeds[:, 0] > 0.8) & (speeds[:, 0] <= start)]
    assert moving_before[:, 1].max() > 0.1  # it was driving when the camera went dark
    # image_timeout_s (0.5 s) later the node publishes zeros; the base brakes at 1 m/s^2
    still = speeds[(speeds[:, 0] >= start + 0.5 + 0.6) & (speeds[:, 0] <= start + length)]
    assert len(still) > 10 and still[:, 1].max() < 0.02, still
    assert r.node["stops_by_cause"].get("image_stale", 0) >= 1
    assert r.outcome == "success", r.as_dict(trajectory=False)  # frames back: it finishes


def test_estop_mid_episode_stops_then_finishes(loop):
    start, length = 1.5, 2.0
    loop.cfg = replace(loop.cfg, dropout=None, estop=(start, length))
    r = loop.run("demo", _episode())
    speeds = _speeds(r)
    still = speeds[(speeds[:, 0] >= start + 0.6) & (speeds[:, 0] <= start + length)]
    assert len(still) > 10 and still[:, 1].max() < 0.02, still
    assert r.node["stops_by_cause"].get("disabled", 0) >= 1, r.node
    assert [e["event"] for e in r.events] == ["estop", "enable"]
    assert r.outcome == "success", r.as_dict(trajectory=False)
