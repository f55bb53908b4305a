"""launch/robot.launch.py without a ROS install: loaded against stand-ins of the launch API.

The stand-ins have the Humble signatures (launch 1.0, launch_ros 0.19) of exactly the names the
file imports, so a name or keyword Humble lacks fails here. What they cannot show, a real
``ros2 launch`` run does (the exit codes are in the report of issue 12); the last test runs
the file against the real packages when they are importable.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import fields
from pathlib import Path

import pytest

from mobile_vla_node.core.config import PARAMETERS, TopicConfig

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "robot.launch.py"


class Recorded:
    """Base of the stand-ins: keeps the keyword arguments it was built with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class DeclareLaunchArgument(Recorded):
    def __init__(self, name, *, default_value=None, description=None, choices=None, **kwargs):
        super().__init__(default_value=default_value, description=description, choices=choices,
                         **kwargs)
        self.name = name


class OpaqueFunction(Recorded):
    def __init__(self, *, function, args=None, kwargs=None, **rest):
        super().__init__(**rest)
        self.function = function


class RegisterEventHandler(Recorded):
    def __init__(self, event_handler, **kwargs):
        super().__init__(**kwargs)
        self.event_handler = event_handler


class OnProcessExit(Recorded):
    def __init__(self, *, target_action=None, on_exit, **kwargs):
        super().__init__(target_action=target_action, on_exit=on_exit, **kwargs)


class OnProcessIO(Recorded):
    def __init__(self, *, target_action=None, on_stdin=None, on_stdout=None, on_stderr=None,
                 **kwargs):
        super().__init__(target_action=target_action, on_stdout=on_stdout, on_stderr=on_stderr,
                         **kwargs)


class LaunchConfiguration(Recorded):
    def __init__(self, variable_name, *, default=None):
        super().__init__(default=default)
        self.name = variable_name

    def perform(self, context):
        return context.launch_configurations[self.name]


class Node(Recorded):
    def __init__(self, *, executable, package=None, name=None, namespace=None,
                 exec_name=None, parameters=None, remappings=None, ros_arguments=None,
                 arguments=None, **kwargs):
        super().__init__(executable=executable, package=package, name=name, namespace=namespace,
                         parameters=parameters, remappings=remappings, arguments=arguments,
                         **kwargs)


class ParameterValue(Recorded):
    def __init__(self, value, *, value_type=None):
        super().__init__(value_type=value_type)
        self.value = value


class LaunchDescription(Recorded):
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        super().__init__()
        self.entities = list(initial_entities or [])


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def launch_file(monkeypatch, tmp_path):
    """The launch file imported against the stand-ins (and a fake installed share folder)."""
    share = tmp_path / "share" / "mobile_vla_node"
    stand_ins = {
        "launch": _module("launch", LaunchDescription=LaunchDescription, __path__=[]),
        "launch.actions": _module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                  OpaqueFunction=OpaqueFunction,
                                  RegisterEventHandler=RegisterEventHandler),
        "launch.event_handlers": _module("launch.event_handlers", OnProcessExit=OnProcessExit,
                                         OnProcessIO=OnProcessIO),
        "launch.substitutions": _module("launch.substitutions",
                                        LaunchConfiguration=LaunchConfiguration),
        "launch_ros": _module("launch_ros", __path__=[]),
        "launch_ros.actions": _module("launch_ros.actions", Node=Node),
        "launch_ros.parameter_descriptions": _module("launch_ros.parameter_descriptions",
                                                     ParameterValue=ParameterValue),
        "ament_index_python": _module("ament_index_python", __path__=[]),
        "ament_index_python.packages": _module(
            "ament_index_python.packages",
            get_package_share_directory=lambda package: str(tmp_path / "share" / package)),
    }
    for name, module in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("robot_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SHARE = share
    return module


def _arguments(description):
    return {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}


def _context(module, **values):
    """A launch context whose configurations are the declared defaults plus ``values``."""
    defaults = {name: arg.kwargs["default_value"]
                for name, arg in _arguments(module.generate_launch_description()).items()}
    return types.SimpleNamespace(launch_configurations={**defaults, **values})


def _perform(module, **values):
    """Run the OpaqueFunction as launch would; return (node, stderr handler, exit handler)."""
    description = module.generate_launch_description()
    opaque = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    assert len(opaque) == 1
    entities = opaque[0].function(_context(module, **values))
    nodes = [e for e in entities if isinstance(e, Node)]
    handlers = [e.event_handler for e in entities if isinstance(e, RegisterEventHandler)]
    exits = [h for h in handlers if isinstance(h, OnProcessExit)]
    ios = [h for h in handlers if isinstance(h, OnProcessIO)]
    assert len(nodes) == 1 and len(exits) == 1 and len(ios) == 1
    assert exits[0].kwargs["target_action"] is nodes[0] is ios[0].kwargs["target_action"]
    return nodes[0], ios[0].kwargs["on_stderr"], exits[0].kwargs["on_exit"]


def test_arguments_and_defaults(launch_file):
    args = _arguments(launch_file.generate_launch_description())
    assert args["params_file"].kwargs["default_value"] == str(launch_file.SHARE / "config" /
                                                              "robot.yaml")
    assert args["namespace"].kwargs["default_value"] == ""
    assert args["autostart"].kwargs["default_value"] == "true"
    assert args["autostart"].kwargs["choices"] == ["true", "false"]
    assert args["use_sim_time"].kwargs["default_value"] == "false"
    for name, _ in launch_file.OVERRIDES:
        assert args[name].kwargs["default_value"] == "", name
    assert all(a.kwargs["description"] for a in args.values())


def test_every_override_is_a_node_parameter_and_every_topic_has_one(launch_file):
    overrides = {name for name, _ in launch_file.OVERRIDES}
    assert overrides <= set(PARAMETERS)
    assert "autostart" in PARAMETERS  # use_sim_time is rclpy's own
    topics = {f.name for f in fields(TopicConfig) if f.name.endswith("_topic")}
    # ~/step_timing is node-private: it follows the node name and namespace by itself.
    assert topics - {"timing_topic"} <= overrides


def test_defaults_keep_the_params_file_and_use_no_remappings(launch_file):
    node, _, _ = _perform(launch_file)
    assert node.kwargs["executable"] == "vla_node" and node.kwargs["package"] == "mobile_vla_node"
    assert not node.kwargs["remappings"]  # topics: the node's parameters only
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == str(launch_file.SHARE / "config" / "robot.yaml")
    assert overrides == {"use_sim_time": False, "autostart": True}
    assert node.kwargs["namespace"] == ""
    assert node.kwargs["arguments"] == ["--ros-args", "--log-level", "info"]


def test_topic_backend_namespace_and_autostart_arguments(launch_file):
    node, _, _ = _perform(launch_file, namespace="robot1", cmd_vel_topic="cmd_vel",
                          image_topic="/camera/color/image_raw", backend="null",
                          autostart="false", use_sim_time="True")
    assert node.kwargs["namespace"] == "robot1"
    assert not node.kwargs["remappings"]
    overrides = node.kwargs["parameters"][1]
    assert overrides["autostart"] is False and overrides["use_sim_time"] is True
    # Strings stay strings: "null" must not become YAML null, "true" not a bool.
    assert {k: (v.value, v.kwargs["value_type"]) for k, v in overrides.items()
            if isinstance(v, ParameterValue)} == {
        "cmd_vel_topic": ("cmd_vel", str), "image_topic": ("/camera/color/image_raw", str),
        "backend": ("null", str)}


def test_bad_boolean_argument_is_named(launch_file):
    with pytest.raises(ValueError, match="autostart:='maybe' must be true or false"):
        _perform(launch_file, autostart="maybe")


def test_node_failure_raises_with_its_fatal_line(launch_file):
    _, on_stderr, on_exit = _perform(launch_file)
    running = types.SimpleNamespace(is_shutdown=False)
    on_stderr(types.SimpleNamespace(text=b"[vla_node] loading\n[vla_node] FATAL: BackendError: "
                                         b"backend onnx: ONNX file '/x.onnx' does not exist\n"))
    with pytest.raises(launch_file.NodeFailed) as err:
        on_exit(types.SimpleNamespace(returncode=2), running)
    assert str(err.value) == ("vla_node exited with code 2: BackendError: backend onnx: ONNX "
                              "file '/x.onnx' does not exist")


def test_node_failure_without_fatal_line_still_raises(launch_file):
    _, _, on_exit = _perform(launch_file)
    with pytest.raises(launch_file.NodeFailed, match="exited with code -11: no FATAL line"):
        on_exit(types.SimpleNamespace(returncode=-11), types.SimpleNamespace(is_shutdown=False))


def test_clean_exit_and_exit_during_shutdown_are_not_failures(launch_file):
    _, _, on_exit = _perform(launch_file)
    assert on_exit(types.SimpleNamespace(returncode=0),
                   types.SimpleNamespace(is_shutdown=False)) is None
    # launch is stopping the node (ctrl-c, SIGTERM escalation): its exit code is not news
    assert on_exit(types.SimpleNamespace(returncode=-15),
                   types.SimpleNamespace(is_shutdown=True)) is None


def test_real_launch_description_when_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; runs on a ROS 2 install")
    pytest.importorskip("ament_index_python")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("mobile_vla_node")
    except PackageNotFoundError:
        pytest.skip("mobile_vla_node is not installed in an ament prefix (colcon build)")
    spec = importlib.util.spec_from_file_location("robot_launch_real", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = {a.name for a in module.generate_launch_description().get_launch_arguments()}
    assert {"params_file", "namespace", "autostart", "backend", "cmd_vel_topic"} <= names
