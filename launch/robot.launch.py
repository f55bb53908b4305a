"""Launch the VLA node on the robot: `ros2 launch mobile_vla_node robot.launch.py`.

Examples::

  ros2 launch mobile_vla_node robot.launch.py backend:=onnx model_path:=/models/policy.onnx
  ros2 launch mobile_vla_node robot.launch.py backend:=tensorrt model_path:=/models/policy.engine \
      device:=cuda image_topic:=/camera/color/image_raw namespace:=robot1

Every argument but ``params_file``, ``namespace`` and ``log_level`` sets the node parameter of
the same name; left empty, the params file's value stays (``autostart`` and ``use_sim_time``
always apply). Topics are changed this one way (no remappings), so ``ros2 param get`` shows the
topic the node really uses.
With ``autostart`` (default true) the lifecycle node configures and activates itself. If the
node exits with a non-zero code (a fatal start-up error: it prints one ``FATAL`` line),
launch logs why and ``ros2 launch`` exits non-zero, so a supervisor sees the failure.

Runs on Humble and newer (launch >= 1.0, launch_ros >= 0.19).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

PACKAGE = "mobile_vla_node"
# Node parameters a launch argument may set: (name, description). Empty: params file value.
OVERRIDES = (
    ("backend", "inference backend: torch, onnx, tensorrt, triton or null"),
    ("model_preset", "policy preset (tiny, small, mobile-vla-kosmos2, ...)"),
    ("model_path", "checkpoint/folder (torch), .onnx (onnx) or .engine (tensorrt)"),
    ("model_config", "the team's JSON training config beside a RoboVLMs checkpoint"),
    ("backbone_path", "local Kosmos-2 folder (weights + tokenizer)"),
    ("tokenizer_path", "the Kosmos-2 tokenizer (tokenizer.json or folder) for the team's "
                       "checkpoints"),
    ("token_layout", "auto, robovlms_kosmos, robovlms_patched or package"),
    ("action_mode", "chunk (chunk playback) or server (their inference server's chunk[0])"),
    ("device", "cpu, cuda or cuda:N"),
    ("image_topic", "sensor_msgs/Image camera topic"),
    ("compressed_image_topic", "sensor_msgs/CompressedImage camera topic"),
    ("command_topic", "std_msgs/String instruction topic"),
    ("cmd_vel_topic", "geometry_msgs/Twist output topic"),
    ("enable_topic", "std_msgs/Bool enable / e-stop topic"),
)
BOOLEANS = {"true": True, "false": False}


class NodeFailed(RuntimeError):
    """The node exited with a non-zero code while launch was not shutting down."""


def _bool(name: str, text: str) -> bool:
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"launch argument {name}:={text!r} must be true or false") from None


def node_parameters(values: dict) -> list:
    """The node's ``parameters`` list from performed launch arguments (no ROS needed)."""
    overrides = {name: ParameterValue(values[name], value_type=str)
                 for name, _ in OVERRIDES if values[name]}
    overrides["use_sim_time"] = _bool("use_sim_time", values["use_sim_time"])
    overrides["autostart"] = _bool("autostart", values["autostart"])
    return [values["params_file"], overrides]


def exit_reason(returncode: int, fatal_lines: list) -> str:
    """One line about a node that exited with ``returncode``: its own FATAL line if it gave one."""
    reason = fatal_lines[-1] if fatal_lines else "no FATAL line; see its output above"
    return f"vla_node exited with code {returncode}: {reason}"


def _launch_node(context):
    values = {name: LaunchConfiguration(name).perform(context)
              for name in ("params_file", "namespace", "log_level", "use_sim_time", "autostart",
                           *(name for name, _ in OVERRIDES))}
    node = Node(
        package=PACKAGE,
        executable="vla_node",
        name="vla_node",
        namespace=values["namespace"],
        output="screen",
        emulate_tty=True,
        parameters=node_parameters(values),
        arguments=["--ros-args", "--log-level", values["log_level"]],
    )
    fatal_lines = []

    def on_stderr(event):
        for line in event.text.decode(errors="replace").splitlines():
            if "FATAL:" in line:
                fatal_lines.append(line.split("FATAL:", 1)[1].strip())

    def on_exit(event, exit_context):
        if event.returncode == 0 or exit_context.is_shutdown:
            return None  # a clean stop, or launch itself is stopping the node
        # An exception raised here is how launch's return code becomes non-zero: LaunchService
        # logs "Caught exception in launch ...: <message>", shuts down and returns 1.
        raise NodeFailed(exit_reason(event.returncode, fatal_lines))

    return [
        RegisterEventHandler(OnProcessIO(target_action=node, on_stderr=on_stderr)),
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit)),
        node,
    ]


def generate_launch_description():
    """Declare the arguments (defaults: the installed params file), then the node."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "robot.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="full path to the node's parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="node namespace: the node, its services and its "
                                          "relative topic names (the defaults: cmd_vel, "
                                          "camera/image_raw, ...) follow it; /absolute names "
                                          "stay global"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the lifecycle node at start "
                                          "(false: wait for a lifecycle manager)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              choices=["true", "false"],
                              description="use /clock (rosbag replay with --clock)"),
        DeclareLaunchArgument("log_level", default_value="info", description="node log level"),
        *[DeclareLaunchArgument(name, default_value="",
                                description=f"{doc} (empty: params file value)")
          for name, doc in OVERRIDES],
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_launch_node)])
