"""Launch the VLA node on the robot: `ros2 launch mobile_vla_node robot.launch.py`.

Examples:
  ros2 launch mobile_vla_node robot.launch.py backend:=onnx model_path:=/models/policy.onnx
  ros2 launch mobile_vla_node robot.launch.py backend:=tensorrt model_path:=/models/policy.engine \
      device:=cuda image_topic:=/camera/color/image_raw

"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

# Node parameters that a launch argument may override; empty means "keep the params file value".
OVERRIDES = (
    ("backend", "inference backend: torch, onnx or tensorrt"),
    ("model_preset", "policy preset (tiny, small, mobile-vla-kosmos2, ...)"),
    ("model_path", "checkpoint/folder (torch), .onnx (onnx) or .engine (tensorrt)"),
    ("device", "cpu, cuda or cuda:N"),
)
# Topic remappings: (default topic, launch argument, description).
REMAPS = (
    ("/camera/image_raw", "image_topic", "camera topic"),
    ("/camera/image_raw/compressed", "compressed_image_topic", "compressed camera topic"),
    ("/vla/command", "command_topic", "instruction topic"),
    ("/cmd_vel", "cmd_vel_topic", "velocity output topic"),
    ("/vla/enable", "enable_topic", "enable / e-stop topic"),
)


def _node(context):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {name: value(name) for name, _ in OVERRIDES if value(name)}
    overrides["use_sim_time"] = value("use_sim_time").lower() == "true"
    return [Node(
        package="mobile_vla_node",
        executable="vla_node",
        name="vla_node",
        output="screen",
        emulate_tty=True,
        parameters=[value("params_file"), overrides],
        remappings=[(topic, value(arg)) for topic, arg, _ in REMAPS],
        arguments=["--ros-args", "--log-level", value("log_level")],
    )]


def generate_launch_description():
    """Declare the arguments (defaults: the installed params file), then the node."""
    default_params = os.path.join(get_package_share_directory("mobile_vla_node"), "config",
                                  "robot.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="full path to the node's parameter YAML"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (rosbag replay with --clock)"),
        DeclareLaunchArgument("log_level", default_value="info", description="node log level"),
        *[DeclareLaunchArgument(name, default_value="",
                                description=f"{doc} (empty: params file value)")
          for name, doc in OVERRIDES],
        *[DeclareLaunchArgument(arg, default_value=topic, description=f"{doc} (remapped)")
          for topic, arg, doc in REMAPS],
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
