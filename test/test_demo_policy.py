"""The synthetic demo world and the shipped demo policy (trained by scripts/train_demo_policy.py).

Inference here mirrors the node: `to_model_input(rgb, 224)` -> `encode_frame` -> `decode` from a
zero state over a window holding that one frame's feature repeated `window_size` times (a still
robot; the node fills its window with consecutive frames' features) -> normalized actions scaled
by [max_linear, max_linear, max_angular] = [0.5, 0.5, 1.0].
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mobile_vla_node.core.preprocess import to_model_input
from mobile_vla_node.demo import synthetic
from mobile_vla_node.model.loader import RANDOM_SEED, ModelSource, load_policy
from mobile_vla_node.model.policy import MobileVLAPolicy
from mobile_vla_node.model.presets import DEMO_POLICY_DIR, preset_config

SCALE = np.array([0.5, 0.5, 1.0])  # max_linear (tiny preset), max_linear, node default max_angular
N_EVAL = 100
# The shipped policy measured 0.0114 m/s|rad/s on these 100 scenes (metrics.json "heldout_100";
# random weights 0.148, always-zero 0.118). The limit leaves ~1.75x headroom for a retrained
# policy (another torch version or CPU changes the float path) while staying far below both.
MAE_LIMIT = 0.02


def velocity_fn(model: MobileVLAPolicy, tokenizer, window: int):
    """``infer(rgb, instruction) -> (3,) velocity`` as the node computes it for a still scene."""

    @torch.inference_mode()
    def infer(rgb: np.ndarray, instruction: str) -> np.ndarray:
        ids = torch.from_numpy(tokenizer.encode(instruction))[None]
        image = torch.tensor(to_model_input(rgb, 224))[None]
        feature = model.encode_frame(image, ids)
        actions, _, _ = model.decode(feature[:, None].expand(1, window, -1),
                                     *model.zero_state(1))
        return actions[0, 0].numpy().astype(np.float64) * SCALE

    return infer


@pytest.fixture(scope="module")
def demo():
    return load_policy(ModelSource(preset="tiny"))


def test_demo_policy_folder_is_complete():
    names = sorted(p.name for p in DEMO_POLICY_DIR.iterdir())
    assert names == ["config.json", "metrics.json", "model.safetensors", "tokenizer.json"]
    assert (DEMO_POLICY_DIR / "model.safetensors").stat().st_size <= 2 * 1024 * 1024
    config = json.loads((DEMO_POLICY_DIR / "config.json").read_text())
    assert config == preset_config("tiny").to_dict()


def test_load_policy_picks_up_the_demo_folder(demo):
    assert str(DEMO_POLICY_DIR / "model.safetensors") in demo.weights
    assert "random" not in demo.weights
    assert demo.config.action_dim == 3 and demo.config.window_size == 4
    ids = demo.tokenizer.encode("go to the red box")
    assert demo.tokenizer.tokenizer.decode(ids.tolist()).endswith("go to the red box")
    assert not demo.model.training


def test_demo_policy_beats_random_and_zero(demo):
    trained = synthetic.evaluate(velocity_fn(demo.model, demo.tokenizer, 4), n=N_EVAL)
    torch.manual_seed(RANDOM_SEED)  # exactly what load_policy builds when there is no checkpoint
    tok = demo.tokenizer
    random_model = MobileVLAPolicy(demo.config, tok.prefix_ids, tok.image_end_id,
                                   tok.special_ids["<pad>"]).eval()
    random = synthetic.evaluate(velocity_fn(random_model, tok, 4), n=N_EVAL)
    zero = synthetic.evaluate(lambda rgb, instruction: np.zeros(3), n=N_EVAL)
    assert trained["n"] == N_EVAL
    assert trained["mae"] < MAE_LIMIT, trained
    assert trained["mae"] < 0.4 * random["mae"], (trained["mae"], random["mae"])
    assert trained["mae"] < 0.4 * zero["mae"], (trained["mae"], zero["mae"])
    # Every command is followed, not just the easy constant ones.
    worst = max(trained["mae_per_instruction"].items(), key=lambda kv: kv[1])
    assert worst[1] < 0.5 * zero["mae_per_instruction"][worst[0]], trained
    metrics = json.loads((DEMO_POLICY_DIR / "metrics.json").read_text())
    assert trained["mae"] == pytest.approx(metrics["heldout_100"]["trained"]["mae"], abs=2e-3)


def test_demo_policy_turns_toward_the_named_box(demo):
    infer = velocity_fn(demo.model, demo.tokenizer, 4)
    boxes = (synthetic.Box("red", -0.6, 0.25), synthetic.Box("blue", 0.6, 0.25))
    to_red = infer(synthetic.render(synthetic.Scene("go to the red box", boxes, 7)),
                   "go to the red box")
    to_blue = infer(synthetic.render(synthetic.Scene("go to the blue box", boxes, 7)),
                    "go to the blue box")
    assert to_red[2] > 0.2 and to_blue[2] < -0.2, (to_red, to_blue)  # target +-0.42
    assert to_red[0] > 0.1 and to_blue[0] > 0.1


# --- synthetic world --------------------------------------------------------------------------


def test_render_is_deterministic_and_sized():
    scene = synthetic.random_scene(np.random.default_rng(3), "go to the green box")
    a, b = synthetic.render(scene), synthetic.render(scene)
    assert a.dtype == np.uint8 and a.shape == (480, 640, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic.render(replace(scene, seed=scene.seed + 1)))
    assert synthetic.render(scene, 320, 200).shape == (200, 320, 3)
    moved = replace(scene, boxes=tuple(replace(bx, x=bx.x + 0.05) for bx in scene.boxes))
    assert not np.array_equal(a, synthetic.render(moved))


def test_render_shows_the_box_where_it_is():
    scene = synthetic.Scene("stop", (synthetic.Box("red", 0.5, 0.4),), 11)
    img = synthetic.render(scene).astype(int)
    redness = img[:, :, 0] - (img[:, :, 1] + img[:, :, 2]) // 2
    cols = np.where((redness > 80).any(axis=0))[0]
    centre = (cols.min() + cols.max()) / 2 / 640 * 2 - 1
    assert abs(centre - 0.5) < 0.1


def test_random_scene_rules():
    rng = np.random.default_rng(0)
    for i in range(300):
        instruction = synthetic.INSTRUCTIONS[i % len(synthetic.INSTRUCTIONS)]
        scene = synthetic.random_scene(rng, instruction)
        colors = [b.color for b in scene.boxes]
        assert 1 <= len(colors) <= 3 and len(set(colors)) == len(colors)
        if instruction in synthetic.GO_TO:
            assert synthetic.GO_TO[instruction] in colors
        assert all(-1 <= b.x <= 1 and 0 < b.size <= 1 for b in scene.boxes)
    a = synthetic.random_scene(np.random.default_rng(5))
    assert a == synthetic.random_scene(np.random.default_rng(5))
    assert set(synthetic.INSTRUCTIONS) >= {"stop", "move left", "turn right", "go to the red box"}


def test_target_rules():
    def go(x, size):
        return synthetic.target_velocity(synthetic.Scene(
            "go to the blue box", (synthetic.Box("red", -x, 0.3), synthetic.Box("blue", x, size))))

    right, left = go(0.5, 0.2), go(-0.5, 0.2)
    assert right[2] < 0 < left[2] and right[1] == 0 == left[1]
    assert go(0.0, 0.15)[0] > go(0.0, 0.4)[0] > 0
    assert go(0.0, 0.65)[0] == 0.0  # close enough: stop
    assert go(0.0, 0.3)[2] == 0.0
    fixed = {"move left": [0, 0.3, 0], "move right": [0, -0.3, 0], "move forward": [0.3, 0, 0],
             "move backward": [-0.3, 0, 0], "turn left": [0, 0, 0.5],
             "turn right": [0, 0, -0.5], "stop": [0, 0, 0]}
    for instruction, expected in fixed.items():
        scene = synthetic.Scene(instruction, (synthetic.Box("green", 0.2, 0.3),))
        assert synthetic.target_velocity(scene).tolist() == expected
    rng = np.random.default_rng(1)
    v = np.array([synthetic.target_velocity(synthetic.random_scene(rng)) for _ in range(300)])
    assert np.abs(v[:, :2]).max() <= 0.4 and np.abs(v[:, 2]).max() <= 0.8
    with pytest.raises(ValueError, match="unknown instruction"):
        synthetic.target_velocity(synthetic.Scene("dance", ()))


def test_demo_timeline_changes_commands_and_drifts_smoothly():
    timeline = synthetic.demo_timeline(12.0, 10.0, seed=0)
    assert len(timeline) == 120
    times = [t for t, _ in timeline]
    assert times == sorted(times) and times[0] == 0.0
    commands = [s.instruction for _, s in timeline]
    changes = sum(a != b for a, b in zip(commands, commands[1:], strict=False))
    assert changes == 4 and len(set(commands)) == 5
    assert any(c in synthetic.GO_TO for c in commands)
    for (_, a), (_, b) in zip(timeline, timeline[1:], strict=False):
        assert a.seed == b.seed
        for ba, bb in zip(a.boxes, b.boxes, strict=True):
            assert ba.color == bb.color
            assert abs(ba.x - bb.x) < 0.05 and abs(ba.size - bb.size) < 0.05
    assert timeline == synthetic.demo_timeline(12.0, 10.0, seed=0)
    for _, scene in timeline:
        if scene.instruction in synthetic.GO_TO:
            assert synthetic.GO_TO[scene.instruction] in [b.color for b in scene.boxes]


def test_evaluate_scores_a_zero_policy_exactly():
    n = 20
    result = synthetic.evaluate(lambda rgb, instruction: np.zeros(3), n=n, seed=99)
    rng = np.random.default_rng(99)
    targets = np.array([synthetic.target_velocity(synthetic.random_scene(
        rng, synthetic.INSTRUCTIONS[i % len(synthetic.INSTRUCTIONS)])) for i in range(n)])
    assert result["n"] == n
    assert result["mae"] == pytest.approx(np.abs(targets).mean())
    assert result["mae_per_axis"] == pytest.approx(np.abs(targets).mean(0).tolist())
    with pytest.raises(ValueError, match="shape"):
        synthetic.evaluate(lambda rgb, instruction: np.zeros(2), n=1)
