"""vla_sim without ROS: suites, the base's limits, the expert, recording, the EGL error.

(MuJoCo needs Python >= 3.11; on this machine's dev venv it is installed and nothing here skips.)
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mobile_vla_node.sim  # noqa: F401,E402 - sets MUJOCO_GL=egl before mujoco is imported

pytest.importorskip("mujoco", reason="vla_sim needs mujoco (requirements.txt, Python >= 3.11)")

from mobile_vla_node.sim import suites  # noqa: E402
from mobile_vla_node.sim.expert import plan  # noqa: E402
from mobile_vla_node.sim.rollout import run_expert  # noqa: E402
from mobile_vla_node.sim.world import BaseLimits, SimError, World  # noqa: E402


@pytest.fixture(scope="module")
def world():
    w = World(160, 120)
    yield w
    w.close()


def test_shipped_suites_load_and_match_their_generator():
    for name, (per_group, seed) in suites.SHIPPED.items():
        suite = suites.load(name)
        fresh = suites.parse(suites.generate(name, per_group, seed), name)
        assert [e.name for e in suite.episodes] == [e.name for e in fresh.episodes]
        assert suite.episodes == fresh.episodes
    team = suites.load("team")
    assert {t for e in team.episodes for t in e.tags} >= {"0box", "1box", "2box", "left",
                                                           "right"}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["episodes"][0].pop("instruction"), "instruction"),
    (lambda d: d["episodes"][0].update(target="box_red"), "target"),
    (lambda d: d["episodes"][0]["objects"].append({"kind": "chair", "x": 1, "y": 1}), "kind"),
    (lambda d: d["episodes"][0].update(time_limit_s=0.1), "time_limit_s"),
    (lambda d: d["episodes"][0].update(start=[0, 0]), "start"),
])
def test_bad_suite_is_refused_naming_the_key(edit, message):
    data = suites.generate("team", 1, 0)
    edit(data)
    with pytest.raises(suites.SuiteError, match=message):
        suites.parse(data, "bad.yaml")


def test_unknown_suite_lists_the_shipped_ones():
    with pytest.raises(suites.SuiteError, match="team"):
        suites.load("nope")


def test_base_respects_speed_and_acceleration_limits(world):
    limits = BaseLimits(max_linear_x=0.4, max_linear_y=0.3, max_angular_z=0.8,
                        accel_linear=1.0, accel_angular=2.0)
    w = World(64, 48, limits, render=False)
    ep = suites.load("demo").episodes[0]
    w.reset(ep)
    w.set_command([5.0, -5.0, 5.0])
    w.step(0.1)  # 0.1 s at 1 m/s^2: at most 0.1 m/s
    v = w.body_velocity
    assert v[0] <= 0.1 + 0.01 and v[1] >= -0.1 - 0.01 and v[2] <= 0.2 + 0.02
    w.step(2.0)
    v = w.body_velocity
    assert v[0] == pytest.approx(0.4, abs=0.02)
    assert v[1] == pytest.approx(-0.3, abs=0.02)
    assert v[2] == pytest.approx(0.8, abs=0.03)
    with pytest.raises(SimError, match="accel_linear"):
        BaseLimits(accel_linear=0.0)


def test_expert_plans_around_the_boxes_and_reaches_the_basket(world):
    team = suites.load("team")
    ep = next(e for e in team.episodes if e.name.startswith("2box"))
    path = plan(ep)
    assert len(path) >= 2  # a detour: at least one waypoint besides the basket
    r = run_expert(world, "team", ep)
    assert r.outcome == "success", r.as_dict(trajectory=False)
    assert r.collisions == 0 and r.min_clearance_m > 0.0
    assert r.final_distance_m <= ep.success_radius


def test_collision_and_timeout_are_failures(world):
    ep = suites.load("demo").episodes[0]
    target = ep.target_object
    ahead = np.array([target.x, target.y]) - np.array(ep.start[:2])

    def ram(pose):  # straight into the target box
        yaw = pose[2]
        d = ahead / np.linalg.norm(ahead) * 0.4
        return np.array([np.cos(yaw) * d[0] + np.sin(yaw) * d[1],
                         -np.sin(yaw) * d[0] + np.cos(yaw) * d[1], 0.0])

    r = run_expert(world, "demo", ep, act=ram)
    assert r.outcome == "collision" and r.collided_with == [ep.target]
    r = run_expert(world, "demo", ep, act=lambda pose: np.zeros(3))
    assert r.outcome == "timeout" and r.time_s >= ep.time_limit_s


def test_expert_records_a_bag_and_team_layout_h5(tmp_path, world):
    from mobile_vla_node.replay import convert_h5
    from mobile_vla_node.replay.frames import open_bag
    from mobile_vla_node.sim.record import record_expert

    suite = suites.load("demo")
    results = record_expert(suite, world, tmp_path / "bag", tmp_path / "h5",
                            episodes=suite.episodes[:1], log=lambda *a: None)
    assert results[0].success
    h5 = sorted((tmp_path / "h5").glob("*.h5"))
    assert len(h5) == 1
    import h5py

    with h5py.File(h5[0], "r") as f:
        ep = convert_h5.read_episode(f, h5[0], None)
        assert ep.instruction == suite.episodes[0].instruction
        assert f["images"].shape[1:] == (120, 160, 3)
        assert np.abs(f["actions"][:, 0]).max() > 0.1
    report = convert_h5.convert_h5(h5, tmp_path / "from_h5", log=lambda *a: None)
    assert report["episodes"][0]["frames"] == ep.frames
    reader = open_bag(tmp_path / "bag")
    reader.open()
    try:
        topics = {c.topic: c.msgcount for c in reader.connections}
    finally:
        reader.close()
    assert topics["/camera/image_raw"] == ep.frames
    assert topics["/vla/command"] == 1 and topics["/clock"] > ep.frames


def test_missing_opengl_names_the_package_to_install():
    """OSMesa is not installed here: asking for it must fail with the install hint."""
    code = textwrap.dedent("""
        from mobile_vla_node.sim.world import World, SimError
        try:
            World(64, 48)
        except SimError as exc:
            print("SIMERROR", exc)
    """)
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    text = out.stdout + out.stderr
    if "SIMERROR" not in text:
        pytest.fail(f"OSMesa rendering did not fail as expected here:\n{text[-2000:]}")
    assert "libegl" in text and "libosmesa6" in text
