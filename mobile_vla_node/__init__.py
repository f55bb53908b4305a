"""ROS 2 inference node for RoboVLMs-style vision-language-action policies."""

__version__ = "0.1.0"
