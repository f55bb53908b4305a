"""InputRules: the input handling shared by the node and replay."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mobile_vla_node.backends import create_backend
from mobile_vla_node.core.config import ActionConfig, BackendConfig, ControlConfig, SafetyConfig
from mobile_vla_node.core.control import ChunkMeta, ControlLoop
from mobile_vla_node.core.inputs import InputRules
from mobile_vla_node.core.runtime import PolicyRuntime, StepResult


@pytest.fixture()
def rules():
    backend = create_backend(BackendConfig(backend="null"))
    backend.load()
    runtime = PolicyRuntime(backend, ActionConfig())
    control = ControlLoop(ControlConfig(), SafetyConfig(), 0.1)
    return InputRules(runtime, control)


def raw(width=4, height=2, step=None, data_len=None):
    step = width * 3 if step is None else step
    return SimpleNamespace(encoding="rgb8", height=height, width=width, step=step,
                           data=b"\x00" * (step * height if data_len is None else data_len))


def result(value=0.1):
    return StepResult(np.full((1, 3), value), np.zeros((1, 3)), 1.0, 2.0)


def test_command_outcomes_and_history(rules):
    assert rules.command("move left") == "accepted"
    rules.runtime.history.append(np.zeros(rules.runtime.spec.feature_dim, np.float32))
    assert rules.command("  move left ") == "unchanged"
    assert len(rules.runtime.history) == 1  # a republished command keeps the window
    assert rules.command("") == "rejected"
    assert rules.runtime.command is None and not rules.control.has_command
    assert rules.counters["rejected_commands"] == 1
    assert rules.last_input_error.startswith("command rejected")


def test_rejected_command_keeps_an_unrelated_image_fault(rules):
    rules.bad_image(ValueError("bad frame"))
    rules.command("x" * 10000)
    assert rules.control.fault == "bad_image"


def test_receive_image_validates_and_refreshes_the_clock(rules):
    assert rules.receive_image(raw(), now=5.0)
    assert rules.control.image_time == 5.0 and rules.counters["frames_received"] == 1
    assert not rules.receive_image(raw(data_len=7), now=6.0)
    assert rules.control.image_time == 5.0
    assert rules.control.fault == "bad_image" and rules.counters["malformed_images"] == 1
    assert "7 bytes" in rules.last_input_error
    compressed = SimpleNamespace(format="jpeg", data=b"")
    assert not rules.receive_image(compressed, now=7.0)


def test_step_done_clears_faults_and_counts(rules):
    rules.inference_failed(RuntimeError("boom"))
    assert rules.control.fault == "inference_error" and "boom" in rules.last_error
    meta = ChunkMeta(1.0)
    assert rules.step_done(result(), now=2.0, meta=meta)
    assert rules.control.fault is None and rules.counters["steps"] == 1
    assert rules.control.player.current(2.0)[0][0] == pytest.approx(0.1)
    assert not rules.step_done(None, now=2.1, meta=None)
    assert rules.counters["discarded_steps"] == 1
    rules.step_done(result(np.nan), now=2.2, meta=meta)
    assert rules.counters["non_finite_actions"] == 1


def test_enable(rules):
    rules.step_done(result(), now=1.0, meta=ChunkMeta(1.0))
    rules.enable(False)
    assert not rules.control.enabled and rules.control.player.current(1.0) is None


def test_stop_phrase_stops_without_inference_and_unchanged_repeats_are_free(rules):
    assert rules.command("go to the red box") == "accepted"
    generation = rules.runtime.generation
    for _ in range(100):
        assert rules.command("go to the red box") == "unchanged"
    assert rules.runtime.generation == generation  # history kept, nothing re-tokenized
    assert rules.command("Stop!") == "stopped"
    assert rules.runtime.command is None and rules.control.stop_command
    assert rules.counters["stop_commands"] == 1
    assert rules.command("Stop!") == "unchanged"
    assert rules.counters["stop_commands"] == 1
    assert rules.command("go to the red box") == "accepted"
    assert not rules.control.stop_command


def test_non_instructions_are_rejected_and_counted(rules):
    for text in ("🚀🚀🚀", "bad\ufffdutf8"):
        assert rules.command(text) == "rejected"
    assert rules.counters["rejected_commands"] == 2
    assert "command rejected" in rules.last_input_error


def test_inference_failure_clears_the_history(rules):
    assert rules.command("go to the red box") == "accepted"
    rules.runtime.history.append(np.zeros(rules.runtime.spec.feature_dim, np.float32))
    generation = rules.runtime.generation
    rules.inference_failed(RuntimeError("server lost"))
    assert len(rules.runtime.history) == 0 and rules.runtime.generation == generation + 1
    assert rules.runtime.command == "go to the red box"  # the command itself is kept
