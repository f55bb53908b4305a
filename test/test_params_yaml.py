"""config/robot.yaml is exactly what the generator makes from core/config.py, and it parses.

When a parameter is added to core/config.py, the first test fails until `make robot-yaml`
regenerates the file.
"""

import math
from pathlib import Path

import pytest
import yaml

from mobile_vla_node.core.config import PARAMETERS, NodeConfig
from mobile_vla_node.ros import params_yaml

ROBOT_YAML = Path(__file__).resolve().parents[1] / "config" / "robot.yaml"


def loaded(text: str) -> dict:
    """The ``/**: ros__parameters`` mapping of a parameters file, read by PyYAML."""
    data = yaml.safe_load(text)
    assert list(data) == ["/**"] and list(data["/**"]) == ["ros__parameters"]
    return data["/**"]["ros__parameters"]


def test_committed_robot_yaml_is_the_generator_output():
    assert ROBOT_YAML.read_text() == params_yaml.render(), (
        "config/robot.yaml is stale: run `make robot-yaml`")


def test_every_parameter_with_its_default_and_type():
    params = loaded(params_yaml.render())
    for name, meta in PARAMETERS.items():
        default = meta["default"]
        if isinstance(default, list) and not default:
            assert name not in params  # commented out: rcl cannot type an empty list
            continue
        assert params[name] == default, name
        assert type(params[name]) is type(default), name
    assert set(params) <= set(PARAMETERS)
    NodeConfig.from_params(params)  # the file is a valid configuration


def test_each_parameter_has_its_description_as_a_comment():
    lines = params_yaml.render().splitlines()
    for name, meta in PARAMETERS.items():
        at = next(i for i, line in enumerate(lines)
                  if line.strip().startswith((f"{name}:", f"# {name}:")))
        assert lines[at - 1].strip().startswith(f"# {meta['doc']}"), name
        assert lines[at - 1].endswith("[live]") == bool(meta["live"]), name


@pytest.mark.parametrize("value, text", [
    (True, "true"), (3, "3"), (0.5, "0.5"), (1e-05, "1.0e-05"), (1e6, "1000000.0"),
    ("a \"b\"", '"a \\"b\\""'), ("", '""'), ([1.0, -1.0], "[1.0, -1.0]"),
    (["정지", "stop"], '["정지", "stop"]'),
])
def test_values_keep_their_type(value, text):
    assert params_yaml.yaml_value(value) == text
    back = yaml.safe_load(f"v: {text}")["v"]
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.isfinite(back)


def test_main_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "robot.yaml"
    assert params_yaml.main(["--output", str(out), "--check"]) == 1
    assert params_yaml.main(["--output", str(out)]) == 0
    assert out.read_text() == params_yaml.render()
    assert params_yaml.main(["--output", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("control_rate_hz: 20.0", "control_rate_hz: 30.0"))
    assert params_yaml.main(["--output", str(out), "--check"]) == 1
    assert "make robot-yaml" in capsys.readouterr().err


def test_rcl_parser_reads_the_defaults(tmp_path):
    """The node's own parser (rcl_yaml_param_parser via --params-file) gives the same values."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node

    path = tmp_path / "robot.yaml"
    path.write_text(params_yaml.render())
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        node = Node("vla_node", namespace="/robot1", context=context,
                    automatically_declare_parameters_from_overrides=True)
        try:
            got = {p.name: p.value for p in node.get_parameters(
                [n for n in PARAMETERS if node.has_parameter(n)])}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    expected = {n: m["default"] for n, m in PARAMETERS.items()
                if not (isinstance(m["default"], list) and not m["default"])}
    assert set(got) == set(expected)
    for name, value in expected.items():
        value_got = list(got[name]) if isinstance(value, list) else got[name]
        assert value_got == value, name
        assert type(got[name] if not isinstance(value, list) else value_got) is type(value), name
