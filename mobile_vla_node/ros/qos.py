"""The one QoS table of the package.

Every publisher and subscriber (node, replay, demo, bench, stress, tests) takes its profile from
here, so two ends can never disagree.

The table is plain data (no rclpy import), so rosbag writers can offer the same profiles.

Commands and the e-stop must arrive from any ordinary publisher. A DDS reader cannot serve both
kinds of writer: a transient-local reader does not match a volatile writer (``ros2 topic pub``
and most nodes publish volatile), and a volatile reader gets no latched history. So the node reads
each of these topics twice (`LATCHED_INPUTS`): a volatile reader that matches every reliable
writer, and a transient-local one for the sample a latching publisher held before the node
started. Our own publishers (``"command"``, ``"enable"``) latch: a transient-local writer matches
both readers. A message that reaches both readers is applied once (`InputGate`; on Humble,
whose callbacks get no message info, with the caveats given there).
"""

from __future__ import annotations

from collections import OrderedDict
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
    # The node's two readers of /vla/command and /vla/enable (module docstring). Depth 10: a
    # reader that kept only the newest sample could skip one its twin still delivers, and that
    # older sample would then arrive after the newer one.
    "input_live": QosSpec(reliable=True, transient_local=False, depth=10),
    "input_latched": QosSpec(reliable=True, transient_local=True, depth=10),
}
# Input roles read by a live and a latched reader: role -> (live role, latched role).
LATCHED_INPUTS = {"command": ("input_live", "input_latched"),
                  "enable": ("input_live", "input_latched")}


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


class InputGate:
    """Lets each message of one input topic through once, whichever of its two readers has it.

    A message from a transient-local writer reaches both the live and the latched reader. With
    rclpy's message info (Jazzy and newer pass it to a two-argument callback) a message is
    known by its writer's stamp and sequence number (and writer id where rclpy gives it): the
    first copy passes, the second is dropped. Each reader delivers in order and neither skips
    (depth 10), so "first copy wins" keeps every writer's order. A latched delivery older
    (source stamp) than the newest message applied is dropped too: another writer's history
    must not undo a newer message, such as an e-stop that arrived first. Live deliveries are
    never judged by stamp (another machine's clock may lag): they pass in arrival order, as
    with a single reader.

    Humble's rclpy gives callbacks no message info. Then the latched reader serves only the
    start-up state: its first message passes if the live reader has delivered nothing yet, and
    it is ignored after that (every later message of a latching writer reaches the live reader
    too). The node creates the live reader first, so when both copies of a message are ready in
    one executor wake the live one is taken and the latched one dropped. What that misses on
    Humble: a second latched history; a latching publisher that starts after the node and
    publishes before discovery has matched it; and when the latched copy of such a publisher's
    first message is taken in an earlier wake than its live copy, both are applied (the same
    value twice: only an enable-service call between the two would be undone).
    """

    def __init__(self, remember: int = 256):
        self._remember = remember
        self._seen: OrderedDict = OrderedDict()
        self._live_seen = False
        self._latched_used = False
        self._newest = 0  # source stamp of the newest message applied (message info only)
        self.duplicates = 0

    def admit(self, latched: bool, info) -> bool:
        """True if this delivery should be applied (``info``: rclpy's MessageInfo or None)."""
        key = message_key(info)
        if key is not None:
            if key in self._seen:
                self.duplicates += 1
                return False
            stamp = key[2]
            if latched and stamp < self._newest:
                # Not remembered: its live copy, if one comes, passes like any live message.
                return False
            self._newest = max(self._newest, stamp)
            self._seen[key] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return True
        if not latched:
            self._live_seen = True
            return True
        if self._live_seen or self._latched_used:
            self.duplicates += 1
            return False
        self._latched_used = True
        return True


def message_key(info) -> tuple | None:
    """A message's identity from rclpy's MessageInfo (a dict), or None without one."""
    if not info:
        return None
    stamp = info.get("source_timestamp")
    if not stamp:
        return None
    gid = info.get("publisher_gid")
    if isinstance(gid, dict):  # {"implementation_identifier": ..., "data": [...]}
        gid = tuple(gid.get("data") or ())
    return (gid, info.get("publication_sequence_number"), stamp)
