"""The one QoS table of the package.

Every publisher and subscriber (node, replay, demo, bench, stress, tests) takes its profile from
here, so two ends can never disagree.

The table is plain data (no rclpy import), so rosbag writers can offer the same profiles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QosSpec:
    """Reliability, durability and history depth of one kind of topic."""

    reliable: bool
    transient_local: bool
    depth: int


# role -> spec. "record" is for tools that must not lose output samples while recording.
QOS = {
    "camera": QosSpec(reliable=False, transient_local=False, depth=1),   # newest frame only
    "command": QosSpec(reliable=True, transient_local=True, depth=1),    # latched instruction
    "enable": QosSpec(reliable=True, transient_local=True, depth=1),     # latched e-stop
    "cmd_vel": QosSpec(reliable=True, transient_local=False, depth=10),
    "diagnostics": QosSpec(reliable=True, transient_local=False, depth=10),
    "timing": QosSpec(reliable=True, transient_local=False, depth=10),
    "record": QosSpec(reliable=True, transient_local=False, depth=100),
    "clock": QosSpec(reliable=False, transient_local=False, depth=1),    # as rclpy reads /clock
    "other": QosSpec(reliable=True, transient_local=False, depth=10),    # any other topic played
}


def profile(role: str):
    """The rclpy ``QoSProfile`` of ``role`` (a key of `QOS`)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    spec = QOS[role]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable
        else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local
        else DurabilityPolicy.VOLATILE)
