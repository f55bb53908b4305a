"""NodeConfig: defaults, kinds, ranges, cross-field rules, live flags and config/robot.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mobile_vla_node.core.config import (
    PARAMETERS,
    SECTIONS,
    ActionConfig,
    BackendConfig,
    ConfigError,
    ControlConfig,
    DiagnosticsConfig,
    NodeConfig,
    SafetyConfig,
    TopicConfig,
)

ROBOT_YAML = Path(__file__).resolve().parents[1] / "config" / "robot.yaml"

LIVE = {
    # speed / acceleration limits
    "max_linear_x", "max_linear_y", "max_angular_z", "max_accel_x", "max_accel_y", "max_accel_z",
    # timeouts
    "image_timeout_s", "action_timeout_s",
    # gain / deadzone
    "action_gain", "deadzone",
    # diagnostic thresholds
    "inference_warn_ms", "inference_error_ms", "jitter_warn_ms", "input_rate_warn_hz",
    # which instructions drive, and the clock-jump threshold
    "stop_phrases", "allowed_instructions", "time_jump_threshold_s",
}


def test_defaults_are_valid_and_match_the_table():
    cfg = NodeConfig.from_params({})
    assert cfg == NodeConfig()
    params = cfg.to_params()
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        assert value == PARAMETERS[name]["default"], name
    assert cfg.backend.backend == "torch" and cfg.backend.device == "cpu"
    # Relative defaults: a namespace applies; in the root namespace they are the usual names.
    assert cfg.topics.image_topic == "camera/image_raw"
    assert cfg.topics.cmd_vel_topic == "cmd_vel"
    assert cfg.topics.timing_topic == "~/step_timing"
    root = cfg.topics.absolute()
    assert (root.image_topic, root.compressed_image_topic, root.command_topic,
            root.cmd_vel_topic, root.enable_topic, root.timing_topic) == (
        "/camera/image_raw", "/camera/image_raw/compressed", "/vla/command", "/cmd_vel",
        "/vla/enable", "~/step_timing")
    assert cfg.control.control_rate_hz == 20.0
    assert cfg.action.action_sign == [1.0, 1.0, 1.0]


def test_topic_names_resolve_like_ros():
    topics = TopicConfig(cmd_vel_topic="cmd_vel", image_topic="/camera/color/image_raw")
    robot = topics.absolute("/robot1")
    assert robot.cmd_vel_topic == "/robot1/cmd_vel"
    assert robot.image_topic == "/camera/color/image_raw"  # absolute: stays global
    assert robot.timing_topic == "~/step_timing"  # node-private: the node resolves it
    assert topics.absolute("/robot1/").command_topic == "/robot1/vla/command"


def test_every_parameter_belongs_to_exactly_one_section():
    names = [f for section in SECTIONS.values() for f in section.__dataclass_fields__]
    assert len(names) == len(set(names)) == len(PARAMETERS)


def test_ints_are_accepted_for_floats_and_become_floats():
    cfg = NodeConfig.from_params({"control_rate_hz": 30, "max_linear_x": 1,
                                  "action_sign": [-1, 1, 1], "inference_error_ms": 1000})
    assert cfg.control.control_rate_hz == 30.0
    assert type(cfg.control.control_rate_hz) is float
    assert type(cfg.safety.max_linear_x) is float
    assert cfg.action.action_sign == [-1.0, 1.0, 1.0]
    assert all(type(v) is float for v in cfg.action.action_sign)
    assert cfg.diagnostics.inference_error_ms == 1000.0


@pytest.mark.parametrize("name, value, words", [
    # ranges
    ("control_rate_hz", 0.5, ["below", "1.0"]),
    ("control_rate_hz", 5000.0, ["above", "1000.0"]),
    ("max_linear_x", -0.1, ["below", "0.0"]),
    ("max_accel_y", 101.0, ["above", "100.0"]),
    ("warmup_iters", -1, ["below", "0"]),
    ("latency_window", 5, ["below", "10"]),
    ("image_timeout_s", math.inf, ["finite"]),
    ("action_gain", math.nan, ["finite"]),
    # choices
    ("backend", "tflite", ["not one of", "torch", "onnx", "tensorrt", "null"]),
    ("precision", "fp8", ["not one of", "int8"]),
    ("image_transport", "theora", ["not one of", "compressed"]),
    ("channel_order", "rgba", ["not one of", "bgr"]),
    ("graph_optimization_level", "max", ["not one of", "extended"]),
    ("engine_rebuild", "always", ["not one of", "auto"]),
    # kinds
    ("warmup_iters", 1.5, ["same kind"]),
    ("warmup_iters", "3", ["same kind"]),
    ("control_rate_hz", "20", ["same kind"]),
    ("control_rate_hz", True, ["same kind"]),
    ("strict_loading", 1, ["same kind"]),
    ("strict_loading", "true", ["same kind"]),
    ("model_path", 3, ["same kind"]),
    ("providers", "CPUExecutionProvider", ["same kind"]),
    ("action_sign", 1.0, ["same kind"]),
    # formats and cross-field rules
    ("device", "gpu", ["cpu, cuda or cuda:N"]),
    ("device", "cuda:", ["cpu, cuda or cuda:N"]),
    ("device", "cuda:x", ["cpu, cuda or cuda:N"]),
    ("device", "CUDA", ["cpu, cuda or cuda:N"]),
    ("providers", [], ["provider names"]),
    ("providers", ["CPUExecutionProvider", ""], ["provider names"]),
    ("action_sign", [1.0, 1.0], ["3 values", "1 or -1"]),
    ("action_sign", [1.0, 2.0, 1.0], ["3 values", "1 or -1"]),
    ("action_sign", [1.0, 0.0, -1.0], ["3 values", "1 or -1"]),
    ("action_axes", "linear_x,forward", ["distinct", "angular_z"]),
    ("action_axes", "linear_x,linear_x", ["distinct"]),
    ("cmd_vel_topic", "", ["not a topic name"]),
    ("image_topic", "/camera/image raw", ["not a topic name"]),
])
def test_bad_values_raise_naming_parameter_and_value(name, value, words):
    with pytest.raises(ConfigError) as err:
        NodeConfig.from_params({name: value})
    text = str(err.value)
    assert f"{name}=" in text
    assert repr(value) in text or str(value) in text
    for word in words:
        assert word in text, text


def test_inference_error_below_warn_is_rejected():
    with pytest.raises(ConfigError, match=r"inference_error_ms=50\.0 is below "
                                          r"inference_warn_ms=100\.0"):
        NodeConfig.from_params({"inference_error_ms": 50.0})
    # Equal is allowed (no WARN band) and so is raising both together.
    assert NodeConfig.from_params({"inference_error_ms": 100.0}).diagnostics.inference_error_ms \
        == 100.0
    cfg = NodeConfig.from_params({"inference_warn_ms": 600.0, "inference_error_ms": 900.0})
    d = cfg.diagnostics
    assert (d.inference_warn_ms, d.inference_error_ms) == (600.0, 900.0)


def test_unknown_parameters_are_named():
    with pytest.raises(ConfigError, match=r"unknown parameters \['max_speed', 'zz_top'\]"):
        NodeConfig.from_params({"max_speed": 1.0, "zz_top": 2, "max_linear_x": 0.3})


def test_good_device_forms():
    assert BackendConfig(device="cuda").device == "cuda"
    assert BackendConfig(device="cuda:1").device == "cuda:1"


def test_sections_validate_on_direct_construction():
    with pytest.raises(ConfigError, match="max_angular_z"):
        SafetyConfig(max_angular_z=25.0)
    with pytest.raises(ConfigError, match="chunk_blend_steps"):
        ControlConfig(chunk_blend_steps=101)
    with pytest.raises(ConfigError, match="jitter_warn_ms"):
        DiagnosticsConfig(jitter_warn_ms=-1.0)
    with pytest.raises(ConfigError, match="timing_topic"):
        TopicConfig(timing_topic="")


def test_action_axes_parsing():
    assert ActionConfig().axes() == ()
    assert ActionConfig(action_axes=" linear_x , angular_z ").axes() == ("linear_x", "angular_z")
    assert ActionConfig(action_axes="angular_z,linear_y,linear_x").axes() == (
        "angular_z", "linear_y", "linear_x")


def test_with_params_returns_a_validated_copy():
    base = NodeConfig()
    tuned = base.with_params({"max_linear_x": 0.2, "deadzone": 0.05, "image_timeout_s": 2})
    assert tuned.safety.max_linear_x == 0.2
    assert tuned.action.deadzone == 0.05
    assert tuned.control.image_timeout_s == 2.0
    # everything else is kept, the original is unchanged
    assert tuned.safety.max_linear_y == base.safety.max_linear_y
    assert tuned.backend == base.backend
    assert base.safety.max_linear_x == 0.5
    # changes accumulate on a non-default config
    again = tuned.with_params({"action_gain": 2.0})
    assert again.safety.max_linear_x == 0.2 and again.action.action_gain == 2.0
    with pytest.raises(ConfigError, match="max_linear_x=-1.0"):
        tuned.with_params({"max_linear_x": -1.0})
    with pytest.raises(ConfigError, match="inference_error_ms"):
        tuned.with_params({"inference_warn_ms": 1000.0})
    with pytest.raises(ConfigError, match="unknown parameters"):
        tuned.with_params({"nope": 1})


def test_replace_section():
    cfg = NodeConfig().replace_section("safety", max_accel_x=0.0)
    assert cfg.safety.max_accel_x == 0.0
    assert cfg.safety.max_accel_y == 1.0
    with pytest.raises(ConfigError):
        NodeConfig().replace_section("safety", max_accel_x=-2.0)


def test_robot_yaml_has_exactly_the_parameters_and_builds():
    data = yaml.safe_load(ROBOT_YAML.read_text())
    assert list(data) == ["/**"]
    params = data["/**"]["ros__parameters"]
    # An empty list has no ROS parameter type, so those are written as comments only.
    empty = {name for name, meta in PARAMETERS.items() if meta["default"] == []}
    assert empty == {"allowed_instructions", "image_mean", "image_std"}
    assert set(params) == set(PARAMETERS) - empty, (sorted(set(params) - set(PARAMETERS)),
                                                    sorted(set(PARAMETERS) - set(params)))
    assert all(f"# {name}: []" in ROBOT_YAML.read_text() for name in empty)
    cfg = NodeConfig.from_params(params)
    assert isinstance(cfg, NodeConfig)
    assert cfg.to_params().keys() == set(params) | empty


def test_live_parameters_are_only_limits_timeouts_gain_deadzone_and_thresholds():
    live = {name for name, meta in PARAMETERS.items() if meta["live"]}
    assert live == LIVE
    for structural in ("backend", "model_preset", "model_path", "device", "precision",
                       "control_rate_hz", "image_topic", "cmd_vel_topic", "chunk_step_period_s",
                       "action_sign", "action_axes", "max_linear", "max_angular",
                       "latency_window", "diagnostics_period_s", "providers"):
        assert PARAMETERS[structural]["live"] is False, structural


def test_parameter_table_metadata():
    for name, meta in PARAMETERS.items():
        assert meta["doc"], name
        if meta["lo"] is not None and meta["hi"] is not None:
            assert meta["lo"] <= meta["default"] <= meta["hi"], name
        if meta["choices"]:
            assert meta["default"] in meta["choices"], name
