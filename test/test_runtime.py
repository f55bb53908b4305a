"""PolicyRuntime: tokenize once per command, encode each frame once, history window, discards."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mobile_vla_node.backends import BackendInfo, InferenceBackend, ModelSpec
from mobile_vla_node.backends.torch_backend import TorchBackend
from mobile_vla_node.core.config import ActionConfig, BackendConfig
from mobile_vla_node.core.postprocess import ActionPostprocessor
from mobile_vla_node.core.runtime import PolicyRuntime, StepResult
from mobile_vla_node.model.presets import DEFAULT_PROMPT
from mobile_vla_node.model.tokenizer import CommandError, PromptTokenizer, builtin_tokenizer

COMMAND = "go to the red box"
OTHER = "turn left"
SPEC = ModelSpec(preset="fake", image_size=8, feature_dim=4, window_size=3, chunk=2,
                 action_dim=3, max_linear=0.5, chunk_step_period_s=0.1)
ACTIONS = np.array([[0.5, -0.5, 1.0], [2.0, 0.0, -0.2]], np.float32)


class CountingTokenizer(PromptTokenizer):
    """The real prompt tokenizer, counting `encode` calls."""

    def __init__(self):
        super().__init__(builtin_tokenizer(), DEFAULT_PROMPT)
        self.calls: list[str] = []

    def encode(self, instruction, **kwargs):
        self.calls.append(instruction)
        return super().encode(instruction, **kwargs)


class FakeBackend(InferenceBackend):
    """Feature = the frame's (constant) pixel value; records every encode/infer call."""

    name = "fake"

    def __init__(self, spec: ModelSpec = SPEC):
        super().__init__(config=None)
        self._spec = spec
        self.encoded: list[np.ndarray] = []
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.during_infer = None
        self.delay_s = 0.0

    def load(self):
        self.spec = self._spec
        self.tokenizer = CountingTokenizer()
        self.info = BackendInfo(self.name, "cpu", "fp32")

    def encode(self, image, text_ids):
        self.encoded.append(image.copy())
        return np.full(self.spec.feature_dim, float(image[0, 0, 0]), np.float32)

    def decode(self, features):
        return ACTIONS[: self.spec.chunk, : self.spec.action_dim].copy()

    def infer(self, image, text_ids, history):
        self.calls.append((image.copy(), text_ids.copy(), np.array(history, copy=True)))
        if self.during_infer is not None:
            self.during_infer()
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().infer(image, text_ids, history)


def frame(value: int, shape=(6, 10)) -> np.ndarray:
    """A constant frame (resizing keeps its value, so the fake feature identifies it)."""
    return np.full((*shape, 3), value, np.uint8)


@pytest.fixture
def fake():
    backend = FakeBackend()
    backend.load()
    return backend


@pytest.fixture
def runtime(fake):
    return PolicyRuntime(fake, ActionConfig())


def history_values(call) -> list[float]:
    """Frame values whose features were in the history of one infer call, oldest first."""
    history = call[2]
    assert history.dtype == np.float32 and history.shape[1:] == (SPEC.feature_dim,)
    return [float(row[0]) for row in history]


def test_no_command_no_step(runtime, fake):
    assert runtime.step(frame(10)) is None
    assert fake.calls == [] and fake.encoded == []


def test_instruction_is_tokenized_once_per_command(runtime, fake):
    runtime.set_command(COMMAND)
    expected = fake.tokenizer.encode(COMMAND)
    fake.tokenizer.calls.clear()
    for v in range(5):
        assert runtime.step(frame(10 + v)) is not None
    assert fake.tokenizer.calls == []
    assert all(np.array_equal(call[1], expected) for call in fake.calls)
    runtime.set_command(OTHER)
    runtime.step(frame(50))
    runtime.step(frame(51))
    assert fake.tokenizer.calls == [OTHER]
    np.testing.assert_array_equal(fake.calls[-1][1], fake.tokenizer.encode(OTHER))


def test_each_frame_encoded_once_and_history_in_order(runtime, fake):
    runtime.set_command(COMMAND)
    values = [10, 20, 30, 40, 50, 60]
    for v in values:
        runtime.step(frame(v))
    assert len(fake.encoded) == len(values) == len(fake.calls)
    assert [int(img[0, 0, 0]) for img in fake.encoded] == values
    assert all(img.shape == (8, 8, 3) for img in fake.encoded)
    # window_size 3 -> at most 2 previous features, oldest first
    assert [history_values(c) for c in fake.calls] == [
        [], [10.0], [10.0, 20.0], [20.0, 30.0], [30.0, 40.0], [40.0, 50.0]]


def test_new_command_reset_and_clear_empty_the_history(runtime, fake):
    runtime.set_command(COMMAND)
    runtime.step(frame(1))
    runtime.step(frame(2))
    runtime.set_command(OTHER)
    runtime.step(frame(3))
    assert history_values(fake.calls[-1]) == []
    runtime.step(frame(4))
    assert history_values(fake.calls[-1]) == [3.0]
    calls_before = len(fake.tokenizer.calls)
    runtime.reset()
    assert runtime.command == OTHER
    runtime.step(frame(5))
    assert history_values(fake.calls[-1]) == []
    assert len(fake.tokenizer.calls) == calls_before          # reset keeps the ids
    runtime.clear_command()
    assert runtime.command is None
    n = len(fake.calls)
    assert runtime.step(frame(6)) is None
    assert len(fake.calls) == n                                # nothing ran
    runtime.set_command(COMMAND)
    runtime.step(frame(7))
    assert history_values(fake.calls[-1]) == []


@pytest.mark.parametrize("action", ["set_command", "clear_command", "reset"])
def test_a_step_started_under_an_older_command_is_discarded(runtime, fake, action):
    runtime.set_command(COMMAND)
    runtime.step(frame(1))
    runtime.step(frame(2))

    def change():
        fake.during_infer = None
        if action == "set_command":
            runtime.set_command(OTHER)
        else:
            getattr(runtime, action)()

    fake.during_infer = change
    assert runtime.step(frame(3)) is None
    assert list(runtime.history) == []               # frame 3's feature was not kept
    result = runtime.step(frame(4))
    if action == "clear_command":
        assert result is None
    else:
        assert result is not None
        assert history_values(fake.calls[-1]) == []
        expected = fake.tokenizer.encode(OTHER if action == "set_command" else COMMAND)
        np.testing.assert_array_equal(fake.calls[-1][1], expected)


def test_too_long_and_empty_commands_raise_and_keep_the_old_command(fake):
    runtime = PolicyRuntime(fake, ActionConfig(), max_command_chars=12)
    runtime.set_command(OTHER)
    runtime.step(frame(1))
    with pytest.raises(CommandError, match=r"17 characters \(limit 12\)"):
        runtime.set_command(COMMAND)
    for empty in ("", "   "):
        with pytest.raises(CommandError, match="empty"):
            runtime.set_command(empty)
    assert runtime.command == OTHER
    runtime.step(frame(2))
    assert history_values(fake.calls[-1]) == [1.0]   # history survived the rejected commands
    long_tokens = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, max_tokens=8)
    fake.tokenizer = long_tokens
    with pytest.raises(CommandError, match=r"ids \(limit 8\)"):
        runtime.set_command("go to red")          # 6 template ids + 3


def test_command_is_stripped(runtime):
    runtime.set_command("  go to the red box \n")
    assert runtime.command == COMMAND


def test_step_result_velocities_actions_and_timings(runtime, fake):
    runtime.set_command(COMMAND)
    fake.delay_s = 0.03
    result = runtime.step(frame(9, shape=(480, 640)))
    assert isinstance(result, StepResult)
    np.testing.assert_array_equal(result.actions, ACTIONS)
    # default ActionConfig: model max_linear 0.5 on x/y, max_angular 1.0 on yaw, clip to [-1, 1]
    np.testing.assert_allclose(result.velocities, [[0.25, -0.25, 1.0], [0.5, 0.0, -0.2]],
                               atol=1e-7)
    assert result.inference_ms >= 29.0
    assert 0.0 <= result.preprocess_ms < result.inference_ms


def test_channel_order_and_resize_are_applied(fake):
    runtime = PolicyRuntime(fake, ActionConfig(channel_order="bgr"))
    runtime.set_command(COMMAND)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    runtime.step(rgb)
    image = fake.encoded[-1]
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image[0, 0], [30, 20, 10])
    np.testing.assert_array_equal(runtime.prepare(rgb), image)


def test_window_size_one_never_keeps_history():
    backend = FakeBackend(ModelSpec("fake", 8, 4, 1, 1, 2, 1.0, 0.1))
    backend.load()
    runtime = PolicyRuntime(backend, ActionConfig())
    runtime.set_command(COMMAND)
    for v in (1, 2, 3):
        result = runtime.step(frame(v))
        assert result.velocities.shape == (1, 3)
        assert result.velocities[0, 2] == 0.0          # action_dim 2: no yaw
    assert [history_values(c) for c in backend.calls] == [[], [], []]


def test_custom_action_axes_must_fit_the_model(fake):
    with pytest.raises(ValueError, match="action_dim=3"):
        PolicyRuntime(fake, ActionConfig(action_axes="linear_x,linear_y"))


# -- the real tiny model: cached runtime == recomputed window -----------------------------------

@pytest.fixture(scope="module")
def tiny():
    backend = TorchBackend(BackendConfig())
    backend.load()
    # Large random weights so the actions clearly depend on every frame of the window, whatever
    # weights (random or the shipped demo policy) the preset came with.
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in backend.model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        backend.model.action_token.copy_(torch.randn(backend.model.feature_dim, generator=gen))
    return backend


def test_cached_runtime_equals_recomputed_window(tiny):
    spec = tiny.spec
    runtime = PolicyRuntime(tiny, ActionConfig())
    runtime.set_command(COMMAND)
    ids = torch.from_numpy(tiny.tokenizer.encode(COMMAND))[None]
    rng = np.random.default_rng(8)
    frames = [rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(6)]
    prepared, outputs = [], []
    for rgb in frames:
        result = runtime.step(rgb)
        prepared.append(runtime.prepare(rgb))
        window = np.stack(prepared[-spec.window_size:])
        with torch.inference_mode():
            expected = tiny.model(torch.from_numpy(window)[None], ids)[0].numpy()
        assert result.actions.shape == (spec.chunk, spec.action_dim)
        np.testing.assert_allclose(result.actions, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.velocities, runtime.post(expected), atol=1e-5)
        outputs.append(result.actions)
        assert len(runtime.history) == min(len(prepared), spec.window_size - 1)
    # the check means something: the actions change from step to step
    assert min(np.abs(a - b).max() for a, b in zip(outputs[:-1], outputs[1:], strict=True)) > 1e-3

    # a new command restarts the window at one frame
    runtime.set_command(OTHER)
    result = runtime.step(frames[0])
    other_ids = torch.from_numpy(tiny.tokenizer.encode(OTHER))[None]
    with torch.inference_mode():
        single = torch.from_numpy(prepared[0].copy())[None, None]
        expected = tiny.model(single, other_ids)[0].numpy()
    np.testing.assert_allclose(result.actions, expected, atol=1e-5, rtol=0)


def test_velocities_follow_the_postprocessor(tiny):
    cfg = ActionConfig(action_sign=[-1.0, 1.0, 1.0], max_angular=2.0, action_gain=0.5)
    runtime = PolicyRuntime(tiny, cfg)
    runtime.set_command(COMMAND)
    result = runtime.step(np.full((32, 32, 3), 128, np.uint8))
    post = ActionPostprocessor(cfg, tiny.spec.action_dim, tiny.spec.max_linear)
    np.testing.assert_allclose(result.velocities, post(result.actions), atol=1e-12)


def test_max_command_chars_above_512_is_honoured(fake):
    runtime = PolicyRuntime(fake, ActionConfig(), max_command_chars=1000)
    text = "go " * 200                                 # 600 characters, 206 ids
    runtime.set_command(text)
    assert runtime.command == text.strip()


def test_action_mode_server_plays_chunk0_after_a_zero_first_frame(fake):
    """Their server's per-call output; the first inference after a command or reset is zero."""
    server = PolicyRuntime(fake, ActionConfig(action_mode="server"))
    chunked = PolicyRuntime(fake, ActionConfig())
    server.set_command(COMMAND)
    chunked.set_command(COMMAND)
    first = server.step(frame(1))
    assert first.velocities.shape == (1, 3) and not first.velocities.any()
    assert first.actions.shape == (2, 3)            # the raw chunk is still reported
    full = chunked.step(frame(1)).velocities
    second = server.step(frame(2)).velocities
    np.testing.assert_array_equal(second, full[:1])
    server.reset()
    assert not server.step(frame(3)).velocities.any()
    assert server.step(frame(4)).velocities.any()
    server.set_command(OTHER)
    assert not server.step(frame(5)).velocities.any()
