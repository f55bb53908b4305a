"""vla_replay offline: make-sample, from-h5 and eval (storage formats, encodings, determinism)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_vla_node.core.config import NodeConfig
from mobile_vla_node.model.presets import DEMO_POLICY_DIR
from mobile_vla_node.replay import bagio
from mobile_vla_node.replay.cli import main
from mobile_vla_node.replay.convert_h5 import convert_h5
from mobile_vla_node.replay.eval import run_eval
from mobile_vla_node.replay.sample import make_sample

SMALL = dict(duration=1.0, fps=5.0, width=128, height=96)  # 5 frames, 1 command
FAST = NodeConfig.from_params({"warmup_iters": 0})


@pytest.fixture(scope="module")
def backend():
    """One loaded tiny torch backend shared by the in-process evals of this module."""
    from mobile_vla_node.backends import create_backend

    b = create_backend(FAST.backend)
    b.load()
    yield b
    b.close()


def read_bag(path) -> list[tuple[str, str, int, object]]:
    with bagio.reading(path) as reader:
        return [(c.topic, c.msgtype, t, reader.deserialize(raw, c.msgtype))
                for c, t, raw in bagio.iter_messages(reader, reader.connections, path)]


def ticks(out: Path) -> list[dict]:
    with open(out / "ticks.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_storages_and_encodings_evaluate(tmp_path, backend):
    csvs = {}
    for storage in bagio.STORAGES:
        for enc in bagio.RAW_ENCODINGS + bagio.COMPRESSED_FORMATS:
            bag = tmp_path / f"{storage}_{enc}"
            make_sample(bag, storage, encoding=enc, **SMALL)
            suffix = ".mcap" if storage == "mcap" else ".db3"
            assert list(bag.glob(f"*{suffix}")), f"{storage} bag has no {suffix} file"
            out = tmp_path / f"eval_{storage}_{enc}"
            summary = run_eval(bag, out, FAST, plot=False, backend=backend, log=lambda s: None)
            c = summary["counts"]
            assert (c["images"], c["steps"], c["bad_images"], c["commands"]) == (5, 5, 0, 1), enc
            # 5 frames 0.2 s apart: ticks at 0, 0.05, ..., 0.8 s
            assert c["ticks"] == 17
            rows = ticks(out)
            assert rows[-1]["t"] == "0.8000" and rows[0]["command"] == "go to the red box"
            assert all(r["ref_linear_x"] != "" for r in rows)
            assert summary["topics"]["image"] == ("/camera/image_raw/compressed"
                                                  if enc in ("jpeg", "png") else
                                                  "/camera/image_raw")
            csvs[storage, enc] = (out / "ticks.csv").read_bytes()
    for enc in bagio.RAW_ENCODINGS + bagio.COMPRESSED_FORMATS:
        assert csvs["mcap", enc] == csvs["sqlite3", enc], f"mcap and sqlite3 differ for {enc}"
    # rgb8, bgr8 and png carry the same pixels: the decoded frames and the results are identical.
    assert csvs["mcap", "rgb8"] == csvs["mcap", "bgr8"] == csvs["mcap", "png"]
    assert csvs["mcap", "rgb8"] != csvs["mcap", "mono8"]


def test_decoded_frames_match_render(tmp_path):
    from mobile_vla_node.demo import synthetic
    from mobile_vla_node.replay.frames import iter_frames

    timeline = synthetic.demo_timeline(SMALL["duration"], SMALL["fps"])
    expected = synthetic.render(timeline[3][1], SMALL["width"], SMALL["height"])
    for enc in ("bgr8", "png", "jpeg", "mono8"):
        bag = tmp_path / enc
        make_sample(bag, "sqlite3", encoding=enc, **SMALL)
        frame = list(iter_frames(bag))[3]
        diff = np.abs(frame.astype(int) - expected.astype(int))
        if enc in ("bgr8", "png"):
            assert diff.max() == 0, enc
        elif enc == "jpeg":
            assert diff.mean() < 4.0
        else:
            gray = frame[:, :, 0].astype(int)
            assert np.array_equal(frame[:, :, 1], frame[:, :, 0]) and gray.std() > 5


def test_eval_cli_is_deterministic(tmp_path, capsys):
    bag = tmp_path / "bag"
    make_sample(bag, "mcap", encoding="jpeg", **SMALL)
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main(["eval", str(bag), "--out", str(out), "--param", "warmup_iters=0"]) == 0
        outs.append(out)
    printed = capsys.readouterr()
    assert (outs[0] / "ticks.csv").read_bytes() == (outs[1] / "ticks.csv").read_bytes()
    assert "MAE  [linear_x linear_y angular_z]" in printed.out
    assert "\r" not in printed.err  # no progress line when stderr is not a terminal
    for out in outs:
        assert (out / "plot.png").stat().st_size > 10_000
        summary = json.loads((out / "summary.json").read_text())
        assert summary["latency_ms"]["inference"]["count"] == 5
        m = summary["metrics"]
        assert m["n"] == 17 and len(m["mae"]) == 3 and len(m["rmse"]) == 3
        # MAE recomputed from the CSV agrees with the summary
        rows = ticks(out)
        pred = np.array([[float(r[f"pred_{a}"]) for a in ("linear_x", "linear_y", "angular_z")]
                         for r in rows])
        ref = np.array([[float(r[f"ref_{a}"]) for a in ("linear_x", "linear_y", "angular_z")]
                        for r in rows])
        np.testing.assert_allclose(np.abs(pred - ref).mean(0), m["mae"], atol=1e-5)
        np.testing.assert_allclose(np.abs(ref).mean(0), m["zero_baseline_mae"], atol=1e-5)


@pytest.mark.skipif(not (DEMO_POLICY_DIR / "model.safetensors").is_file(),
                    reason="the shipped demo policy (model/demo_policy/model.safetensors) is not "
                           "trained yet; the tiny preset would use random weights")
def test_demo_policy_beats_zero_baseline(tmp_path, backend):
    bag = tmp_path / "sample"
    make_sample(bag, "mcap", duration=10.0, fps=5.0, encoding="rgb8")
    summary = run_eval(bag, tmp_path / "eval", FAST, plot=False, backend=backend,
                       log=lambda s: None)
    m = summary["metrics"]
    assert summary["counts"]["commands"] == 4 and m["n"] == summary["counts"]["ticks"]
    # Calibrated on a policy trained with scripts/train_demo_policy.py (defaults): mean MAE 0.073
    # vs 0.148 for zero velocity; linear_x 0.078 vs 0.227; direction agreement x 0.99, yaw 0.67.
    assert m["mae_mean"] < 0.10, m
    assert m["mae_mean"] < 0.7 * m["zero_baseline_mae_mean"], m
    assert m["mae"][0] < 0.5 * m["zero_baseline_mae"][0], m
    assert m["direction_agreement"][0] >= 0.9 and m["direction_agreement"][2] >= 0.55, m


def write_episode(path: Path, frames: int = 6, instruction: str | None = "go to the red box",
                  drop: str | None = None, images_dtype=np.uint8) -> np.ndarray:
    """A small episode in the team's format: BGR images, actions, event types, attributes."""
    import h5py

    rng = np.random.default_rng(len(str(path)))
    images = rng.integers(0, 255, (frames, 72, 128, 3)).astype(images_dtype)
    actions = np.zeros((frames, 3), np.float32)
    actions[1:, 0] = 1.15
    actions[2:4, 2] = 1.15
    events = ["episode_start"] + ["start_action"] * (frames - 1)
    with h5py.File(path, "w") as f:
        data = {"images": images, "actions": actions,
                "action_event_types": np.array(events, dtype=h5py.string_dtype())}
        for key, value in data.items():
            if key != drop:
                f.create_dataset(key, data=value)
        if instruction:
            f.attrs["language_instruction"] = instruction
        f.attrs.update(episode_name=path.stem, total_duration=frames * 0.4,
                       num_frames=frames, action_chunk_size=8)
    return images


def test_from_h5_converts_and_evaluates(tmp_path, backend, capsys):
    a = write_episode(tmp_path / "ep_a.h5")
    b = write_episode(tmp_path / "ep_b.h5", frames=4, instruction=None)
    bag = tmp_path / "episodes"
    code = main(["from-h5", str(tmp_path / "ep_a.h5"), str(tmp_path / "ep_b.h5"), "--out",
                 str(bag), "--storage", "sqlite3", "--instruction", "move forward"])
    assert code == 0
    assert "2 episodes" in capsys.readouterr().out
    msgs = read_bag(bag)
    images = [m for m in msgs if m[0] == "/camera/image_raw"]
    twists = [m for m in msgs if m[0] == "/cmd_vel"]
    commands = [m for m in msgs if m[0] == "/vla/command"]
    assert len(images) == 10 and len(twists) == 12 and len(commands) == 2
    t0 = images[0][2]
    hold, gap = 400_000_000, 2_000_000_000
    assert [m[2] - t0 for m in images[:6]] == [i * hold for i in range(6)]
    assert images[6][2] - t0 == 6 * hold + gap  # second episode after its end Twist and the gap
    assert commands[0][2] == t0 and commands[0][3].data == "move forward"
    first = images[0][3]
    assert (first.encoding, first.height, first.width) == ("bgr8", 72, 128)
    assert np.array_equal(first.data.reshape(72, 128, 3), a[0])
    assert np.array_equal(images[6][3].data.reshape(72, 128, 3), b[0])
    assert bagio.twist_values(twists[1][3]) == pytest.approx((1.15, 0.0, 0.0))
    assert bagio.twist_values(twists[6][3]) == (0.0, 0.0, 0.0)  # end of episode a
    assert twists[6][2] - t0 == 6 * hold

    summary = run_eval(bag, tmp_path / "eval", FAST, plot=True, backend=backend,
                       log=lambda s: None)
    assert summary["counts"]["images"] == 10 and summary["counts"]["steps"] == 10
    assert summary["stops"]["events"].get("image_stale") == 1  # the 2 s gap between episodes
    rows = ticks(tmp_path / "eval")
    assert {r["command"] for r in rows} == {"move forward"}
    assert (tmp_path / "eval" / "plot.png").is_file()


def test_from_h5_jpeg_and_file_instruction(tmp_path):
    write_episode(tmp_path / "ep.h5", frames=3)
    bag = tmp_path / "bag"
    convert_h5([tmp_path / "ep.h5"], bag, hold_s=0.25, compress="jpeg", log=lambda s: None)
    msgs = read_bag(bag)
    assert [m[3].data for m in msgs if m[0] == "/vla/command"] == ["go to the red box"]
    imgs = [m for m in msgs if m[0] == "/camera/image_raw/compressed"]
    assert len(imgs) == 3 and imgs[1][2] - imgs[0][2] == 250_000_000
    assert "jpeg" in imgs[0][3].format


@pytest.mark.parametrize("case, expected", [
    ("missing", "ep.h5: dataset 'actions' is missing"),
    ("dtype", "ep.h5: dataset 'images' must be uint8 (T, H, W, 3) BGR, got float32"),
    ("length", "ep.h5: dataset 'actions' has 5 rows but 'images' has 6 frames"),
    ("notfound", "h5 file"),
])
def test_from_h5_errors(tmp_path, capsys, case, expected):
    import h5py

    path = tmp_path / "ep.h5"
    if case == "missing":
        write_episode(path, drop="actions")
    elif case == "dtype":
        write_episode(path, images_dtype=np.float32)
    elif case == "length":
        write_episode(path)
        with h5py.File(path, "a") as f:
            del f["actions"]
            f.create_dataset("actions", data=np.zeros((5, 3), np.float32))
    code = main(["from-h5", str(path if case != "notfound" else tmp_path / "nope.h5"),
                 "--out", str(tmp_path / "bag")])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize("storage", bagio.STORAGES)
def test_truncated_bag_fails_clearly(tmp_path, capsys, storage):
    bag = tmp_path / "bag"
    make_sample(bag, storage, encoding="rgb8", **SMALL)
    data = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    for target in (bag, data):
        code = main(["eval", str(target), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2
        assert "damaged, truncated or not a rosbag2 bag" in err, err
        assert str(target) in err and "Traceback" not in err


def test_missing_bag_command_and_params(tmp_path, capsys, backend):
    assert main(["eval", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err

    bag = tmp_path / "nocmd"
    with bagio.BagWriter(bag, "mcap") as w:
        for i in range(4):
            t = 10**18 + i * 10**8
            msgtype, msg = bagio.frame_message(np.full((32, 32, 3), 40 * i, np.uint8), "rgb8", t)
            w.write("/camera/image_raw", msgtype, t, msg)
    assert main(["eval", str(bag), "--out", str(tmp_path / "o")]) == 2
    assert "pass --command TEXT" in capsys.readouterr().err

    params = tmp_path / "robot.yaml"
    params.write_text("/**:\n  ros__parameters:\n    control_rate_hz: 10\n    warmup_iters: 0\n")
    out = tmp_path / "cmd"
    assert main(["eval", str(bag), "--out", str(out), "--command", "turn left",
                 "--params-file", str(params), "--no-plot"]) == 0
    rows = ticks(out)
    assert [r["t"] for r in rows] == ["0.0000", "0.1000", "0.2000", "0.3000"]
    assert rows[0]["command"] == "turn left" and rows[0]["ref_linear_x"] == ""
    assert "no reference Twist" in capsys.readouterr().out

    params.write_text("/**:\n  ros__parameters:\n    control_rate: 10\n")
    assert main(["eval", str(bag), "--out", str(out), "--params-file", str(params)]) == 2
    assert "unknown parameters ['control_rate']" in capsys.readouterr().err


def test_bad_image_is_a_fault_like_in_the_node(tmp_path, backend):
    bag = tmp_path / "bad"
    with bagio.BagWriter(bag, "sqlite3") as w:
        w.write("/vla/command", bagio.STRING, 10**18, bagio.string_msg("move left"))
        for i in range(6):
            t = 10**18 + i * 10**8
            msg = bagio.raw_image_msg(np.full((32, 32, 3), 30 * i, np.uint8), "rgb8", t)
            if i == 3:
                msg.step = 10  # malformed: step < width * 3
            w.write("/camera/image_raw", bagio.IMAGE, t, msg)
    summary = run_eval(bag, tmp_path / "out", FAST, plot=False, backend=backend,
                       log=lambda s: None)
    assert summary["counts"]["bad_images"] == 1 and summary["counts"]["steps"] == 5
    reasons = [r["stop_reason"] for r in ticks(tmp_path / "out")]
    # the bad frame at 0.3 s stops the robot until the next good frame at 0.4 s
    assert reasons[6:8] == ["bad_image", "bad_image"] and reasons[8] == ""
    assert summary["stops"]["events"] == {"bad_image": 1}


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "mobile_vla_node.replay.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for cmd in ("eval", "play", "from-h5", "make-sample"):
        assert cmd in res.stdout


def test_existing_output_bag_is_not_overwritten(tmp_path, capsys):
    bag = tmp_path / "bag"
    make_sample(bag, "mcap", **SMALL)
    before = sorted(p.name for p in bag.iterdir())
    assert main(["make-sample", "--out", str(bag)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in bag.iterdir()) == before
    shutil.rmtree(bag)


def test_bag_offers_the_profiles_of_the_one_qos_table(tmp_path):
    """Written bags offer each topic's `ros.qos.QOS` profile; play publishes with the same."""
    from rosbags.interfaces import QosDurability, QosReliability

    from mobile_vla_node.ros.qos import QOS, profile

    bag = tmp_path / "qos"
    with bagio.BagWriter(bag) as w:
        w.write("/vla/enable", bagio.BOOL, 1, bagio.bool_msg(False))
        w.write("/vla/command", bagio.STRING, 1, bagio.string_msg("turn left"))
        w.write("/cmd_vel", bagio.TWIST, 1, bagio.twist_msg((0.0, 0.0, 0.0)))
        msgtype, msg = bagio.frame_message(np.zeros((4, 4, 3), np.uint8), "rgb8", 1)
        w.write("/camera/image_raw", msgtype, 1, msg)
        w.write("/other", bagio.STRING, 1, bagio.string_msg("x"))
    roles = {}
    with bagio.reading(bag) as reader:
        for conn in reader.connections:
            role = roles[conn.topic] = bagio.qos_role(conn.topic, conn.msgtype)
            offered, spec = conn.ext.offered_qos_profiles[0], QOS[role]
            assert offered.depth == spec.depth
            assert (offered.reliability == QosReliability.RELIABLE) == spec.reliable
            assert (offered.durability == QosDurability.TRANSIENT_LOCAL) == spec.transient_local
    assert roles == {"/vla/enable": "enable", "/vla/command": "command", "/cmd_vel": "cmd_vel",
                     "/camera/image_raw": "camera", "/other": "other"}
    # the e-stop is latched on both ends (a volatile publisher would never reach the node)
    assert QOS["enable"].reliable and QOS["enable"].transient_local
    rclpy_qos = pytest.importorskip("rclpy.qos")
    assert profile("enable").durability == rclpy_qos.DurabilityPolicy.TRANSIENT_LOCAL
