"""vla_replay play against the live node (separate processes): the recording matches eval.

The node runs with use_sim_time on the player's /clock at PLAY_RATE (see there). Tolerances: the
live node infers after the image arrives (transport + inference, tens of ms on
CPU, more on a loaded CI runner) and its 20 Hz timer is not aligned with eval's bag-time ticks,
so the same chunk starts up to ~1 tick plus the inference latency later than in eval, and a slow
step may drop a camera frame (the node keeps only the newest one), which changes the history
window. Between command changes the synthetic scene drifts slowly (target velocity changes at
<= ~0.3 m/s per s), so outside the first 0.5 s after each command change a ~100 ms shift moves the
output by ~0.03. Hence: per-segment medians within 0.03 per axis, and >= 85 % of the live
/cmd_vel messages within 0.05 (max over axes) of eval's tick at the same bag time.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mobile_vla_node.core.config import NodeConfig
from mobile_vla_node.replay import bagio
from mobile_vla_node.replay.eval import run_eval
from mobile_vla_node.replay.sample import make_sample
from mobile_vla_node.ros.process import dds_env, stop_node

try:
    import rclpy  # noqa: F401

    HAVE_RCLPY = True
except ImportError:
    HAVE_RCLPY = False

pytestmark = pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy is not importable (no ROS 2)")
# Sim time at a quarter of wall speed: the node runs on /clock, so a loaded machine's inference
# delay (measured up to 1.6 s wall at load 10-13) shrinks fourfold in bag time, and frames (5 fps
# in bag time) arrive 0.8 s apart in wall time, so they are rarely dropped.
PLAY_RATE = 0.25
SETTLE_S = 0.5
SEGMENT_TOL = 0.03
TICK_TOL = 0.05
TICK_FRACTION = 0.85


def ros_env() -> dict:
    env = dds_env()  # this distribution's loopback/profile variables only (docs/DISTROS.md)
    env.update(ROS_DOMAIN_ID=os.environ["VLA_TEST_OTHER_DOMAIN"], PYTHONUNBUFFERED="1")
    env.pop("ROS_STATIC_PEERS", None)
    return env


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    stop_node(proc, timeout)


def recorded(path) -> dict:
    with bagio.reading(path) as reader:
        out: dict = {}
        for conn, t, raw in bagio.iter_messages(reader, reader.connections, path):
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def control_values(diag_msg) -> dict | None:
    for status in diag_msg.status:
        if status.name == "vla_node: control":
            return {kv.key: kv.value for kv in status.values}
    return None


def wait_until_driving_ready(domain: int, timeout: float = 120.0) -> bool:
    """Wait for the node's diagnostics to show it loaded and active (waiting for a command)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from mobile_vla_node.ros.qos import profile

    ready = []

    def on_diag(msg):
        values = control_values(msg)
        if values and values.get("stop_reason") not in ("unconfigured", "inactive", "", None):
            ready.append(values)

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("estop_test_probe", context=context)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, profile("diagnostics"))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout
    try:
        while not ready and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    return bool(ready)


def test_play_enable_false_in_bag_stops_live_node(tmp_path):
    """A recorded e-stop (/vla/enable false) played by vla_replay reaches the node and stops it.

    play publishes /vla/enable with the node's own profile (reliable, transient local); with a
    volatile publisher the pair is incompatible and the message never arrives.
    """
    from mobile_vla_node.demo import synthetic
    from mobile_vla_node.ros.process import node_argv

    scene = synthetic.Scene("move forward", (synthetic.Box("red", -0.5, 0.3),), 1)
    bag, rec = tmp_path / "estop", tmp_path / "live"
    t0, step = 1_700_000_000 * 10**9, 200_000_000
    with bagio.BagWriter(bag) as w:
        w.write("/vla/command", bagio.STRING, t0, bagio.string_msg("move forward"))
        w.write("/vla/enable", bagio.BOOL, t0, bagio.bool_msg(True))
        for i in range(35):  # 7 s of frames at 5 fps; e-stop at 3 s, frames keep coming
            t = t0 + i * step
            msgtype, msg = bagio.frame_message(synthetic.render(scene), "rgb8", t)
            w.write("/camera/image_raw", msgtype, t, msg)
            if i == 15:
                w.write("/vla/enable", bagio.BOOL, t, bagio.bool_msg(False))
    env = ros_env()
    node_log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(node_argv({"backend": "torch", "model_preset": "tiny",
                                       "warmup_iters": 1}),
                            env=env, stdout=node_log, stderr=subprocess.STDOUT)
    try:
        assert wait_until_driving_ready(int(env["ROS_DOMAIN_ID"])), \
            (tmp_path / "node.log").read_text()[-3000:]
        play = subprocess.run(
            [sys.executable, "-m", "mobile_vla_node.replay.cli", "play", str(bag), "--record",
             str(rec), "--wait-for-subscribers", "90", "--rate", str(PLAY_RATE), "--clock"],
            env=env, capture_output=True, text=True, timeout=150)
    finally:
        stop(node)
        node_log.close()
    assert play.returncode == 0, play.stdout + play.stderr
    assert "/vla/enable 2" in play.stdout, play.stdout
    live = recorded(rec)
    # The recorder stamps each message when its callback runs, and one executor serves /cmd_vel
    # and /diagnostics in wait-set order, not arrival order: across the two topics the stamps
    # may interleave by a few ms (more on a loaded runner). Within one topic the order holds.
    # So: the node's own diagnostics say when it stopped (the first one with stop_reason
    # "disabled"; "enabled" may read False one tick earlier, before the tick that applies it),
    # each diagnostic from then on reports the e-stop and a zero Twist, and the /cmd_vel
    # sequence is moving, then zeros to the end.
    diags = [(t, control_values(m)) for t, m in live["/diagnostics"]]
    diags = [(t, v) for t, v in diags if v]
    stopped_at = next((t for t, v in diags if v["stop_reason"] == "disabled"), None)
    assert stopped_at is not None, (tmp_path / "node.log").read_text()[-3000:]
    after = [v for t, v in diags if t >= stopped_at]
    assert all(v["stop_reason"] == "disabled" and v["enabled"] == "False"
               and v["twist"] == "0.000, 0.000, 0.000" for v in after), after
    twists = [(t, bagio.twist_values(m)) for t, m in live["/cmd_vel"]]
    moving = [i for i, (_, v) in enumerate(twists) if v != (0.0, 0.0, 0.0)]
    assert moving and max(abs(twists[i][1][0]) for i in moving) > 0.1  # the policy drove
    # zeros from the last moving Twist to the end: >= 10 of them (at 20 Hz over the 4 s of bag
    # after the e-stop), and the last moving one within a tick or two of the node's report
    # (0.5 s allows for the recorder's stamping order; without the e-stop the node would keep
    # driving for those 4 s, since frames keep coming).
    assert len(twists) - 1 - moving[-1] >= 10, twists[moving[-1]:]
    assert twists[moving[-1]][0] < stopped_at + 500_000_000, (twists[moving[-1]][0], stopped_at)


def test_play_to_live_node_matches_eval(tmp_path):
    bag = tmp_path / "sample"
    make_sample(bag, "mcap", duration=5.0, fps=5.0, encoding="rgb8")  # 2 commands
    env = ros_env()
    rec, rec_loop = tmp_path / "live", tmp_path / "live_loop"
    node_log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(
        [sys.executable, "-m", "mobile_vla_node.ros.main", "--ros-args", "-p", "backend:=torch",
         "-p", "model_preset:=tiny", "-p", "warmup_iters:=1", "-p", "use_sim_time:=true"],
        env=env, stdout=node_log, stderr=subprocess.STDOUT)
    loop = None
    try:
        # eval while the node starts up
        summary = run_eval(bag, tmp_path / "eval", NodeConfig.from_params({"warmup_iters": 0}),
                           plot=False, log=lambda s: None)
        assert wait_until_driving_ready(int(env["ROS_DOMAIN_ID"])), \
            (tmp_path / "node.log").read_text()[-3000:]
        play = subprocess.run(
            [sys.executable, "-m", "mobile_vla_node.replay.cli", "play", str(bag), "--record",
             str(rec), "--wait-for-subscribers", "90", "--rate", str(PLAY_RATE), "--clock"],
            env=env, capture_output=True, text=True, timeout=150)
        assert play.returncode == 0, play.stdout + play.stderr
        assert f"/camera/image_raw {summary['counts']['images']}, /vla/command 2" in play.stdout
        assert "not played: ['/cmd_vel']" in play.stdout  # the reference never reaches the robot

        # --loop until Ctrl-C: exits 130 and still closes the recording.
        loop = subprocess.Popen(
            [sys.executable, "-m", "mobile_vla_node.replay.cli", "play", str(bag), "--loop",
             "--rate", "2", "--record", str(rec_loop), "--wait-for-subscribers", "30"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # "playing ...": playback and recording have started. Other lines may come first (a
        # middleware's warnings, e.g. a deprecated variable on Jazzy): read up to that line.
        head = []
        for line in loop.stdout:
            head.append(line)
            if line.startswith("playing "):
                break
        assert head and head[-1].startswith("playing "), "".join(head)
        time.sleep(3.0)  # > one pass of the bag at rate 2
        loop.send_signal(signal.SIGINT)
        loop_out, _ = loop.communicate(timeout=30)
        loop_out = "".join(head) + loop_out
        assert loop.returncode == 130, loop_out
        assert "(interrupted)" in loop_out and "Traceback" not in loop_out
    finally:
        stop(node)
        if loop is not None:
            stop(loop)
        node_log.close()
    log = (tmp_path / "node.log").read_text()
    assert "command: 'turn left'" in log, log
    with open(tmp_path / "eval" / "ticks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    t_eval = np.array([float(r["t"]) for r in rows])
    axes = ("linear_x", "linear_y", "angular_z")
    p_eval = np.array([[float(r[f"pred_{a}"]) for a in axes] for r in rows])

    assert len(recorded(rec_loop).get("/cmd_vel", [])) > 20
    live = recorded(rec)
    assert len(live.get("/diagnostics", [])) >= 3
    start = summary["start_time_ns"]
    t_live = np.array([(t - start) / 1e9 for t, _ in live["/cmd_vel"]])
    p_live = np.array([bagio.twist_values(m) for _, m in live["/cmd_vel"]])
    # ~20 Hz over the 4.8 s of the bag plus the 1 s tail
    assert 95 <= len(t_live) <= 135, len(t_live)

    changes = [c["t"] for c in summary["command_changes"]]
    assert len(changes) == 2 and changes[0] == 0.0
    bounds = changes + [t_eval[-1] + 1e-9]
    compared = np.zeros(len(t_live), bool)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        in_eval = (t_eval >= a + SETTLE_S) & (t_eval < b)
        in_live = (t_live >= a + SETTLE_S) & (t_live < b)
        assert in_live.sum() >= 25, (a, in_live.sum())
        diff = np.abs(np.median(p_live[in_live], 0) - np.median(p_eval[in_eval], 0))
        assert diff.max() <= SEGMENT_TOL, (a, np.median(p_live[in_live], 0),
                                           np.median(p_eval[in_eval], 0))
        compared |= in_live
    # the compared outputs are not all zero (a silent node would fail here)
    assert np.abs(p_eval[t_eval >= SETTLE_S]).max() > TICK_TOL
    nearest = np.clip(np.searchsorted(t_eval, t_live[compared] - 0.025), 0, len(t_eval) - 1)
    err = np.abs(p_live[compared] - p_eval[nearest]).max(1)
    assert (err <= TICK_TOL).mean() >= TICK_FRACTION, np.sort(err)[-10:]
