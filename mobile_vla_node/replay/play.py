"""``vla_replay play``: publish a bag's node inputs live with rclpy, optionally record outputs."""

from __future__ import annotations

import importlib
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..ros.qos import profile
from . import bagio
from .eval import PRIORITY
from .params import ReplayError, build_config


def _require(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReplayError(f"{module} is not importable ({exc}); {hint}") from exc


def ros_class(msgtype: str):
    """The rclpy message class for 'pkg/msg/Name', or None if that package is not installed."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        return None


@dataclass
class PlayClock:
    """Playback time: bag time of the first played message + (wall elapsed x rate).

    Header stamps are re-stamped to "now" by default because the live node measures transport
    and end-to-end latency as (its clock at receipt - header stamp) and reports them in
    diagnostics: recorded stamps are minutes to months old and would read as huge latencies.
    "Now" is the playback time when /clock is published (the node then runs on it with
    use_sim_time), otherwise the system time (the node's clock). Recorded messages are stamped
    with playback time, so a --record bag lines up with the played bag and with eval's ticks.csv.
    """

    bag_start_ns: int
    rate: float
    wall0: float = 0.0

    def start(self) -> None:
        """Playback time starts now at ``bag_start_ns``."""
        self.wall0 = time.monotonic()

    def now_ns(self) -> int:
        """Current playback time."""
        return self.bag_start_ns + int((time.monotonic() - self.wall0) * self.rate * 1e9)

    def wall_at(self, playback_ns: int) -> float:
        """Monotonic wall time at which ``playback_ns`` is reached."""
        return self.wall0 + (playback_ns - self.bag_start_ns) / 1e9 / self.rate


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_play(args) -> int:
    """Publish a bag's node inputs live; optionally /clock and a recording of the outputs."""
    rclpy = _require("rclpy", "source ROS 2 (apt: ros-humble-rclpy) or pip install ros-rclpy")
    if args.clock is not None:
        _require("rosgraph_msgs.msg", "--clock needs rosgraph_msgs, a dependency of rclpy "
                 "(apt: ros-humble-rosgraph-msgs, pip: ros-rosgraph-msgs)")
    if args.rate <= 0 or (args.clock is not None and args.clock <= 0):
        raise ReplayError(f"--rate {args.rate} and --clock {args.clock} must be > 0")
    bag = Path(args.bag)
    config = build_config(args.params_file, {}, [])
    with bagio.reading(bag) as reader:
        conns, skipped = _play_connections(reader, args, config)
        first_ns, end_ns = reader.start_time, reader.end_time
        recorder = (bagio.BagWriter(args.record, args.record_storage, topics=config.topics)
                    if args.record else None)
        start_ns = first_ns + int(round(args.start_offset * 1e9))
        clock = PlayClock(start_ns, args.rate)
        published: Counter = Counter()
        recorded: Counter = Counter()
        interrupted = False
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        # Our own SIGINT handling: rclpy's would shut the context down before the recording's
        # trailing second; SIGTERM ends the same way.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Ctrl-C even where SIGINT was inherited as ignored (a background job of a script).
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        node = None
        try:
            node = rclpy.create_node("vla_replay_play")
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            publishers = {}
            for c in conns:
                if c.topic not in publishers:
                    role = bagio.qos_role(c.topic, c.msgtype, config.topics)
                    publishers[c.topic] = node.create_publisher(ros_class(c.msgtype), c.topic,
                                                                profile(role))
            clock_pub = None
            if args.clock is not None:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", profile("clock"))
            if recorder is not None:
                recorder.open()
                _record(node, recorder, args.record_topics, config, clock, recorded)
            player = _Player(publishers, clock, clock_pub, args, node, executor, published)
            try:
                _wait_for_peers(node, executor, publishers, args, config, recorder is not None)
                clock.start()
                print(f"playing {bag} at rate {args.rate:g}"
                      + (f", recording {args.record}" if recorder is not None else ""),
                      file=sys.stderr, flush=True)
                loop = 0
                while True:
                    player.play_pass(reader, conns, start_ns,
                                     loop * (end_ns - start_ns + int(0.1e9)))
                    loop += 1
                    if not args.loop:
                        break
            except KeyboardInterrupt:
                interrupted = True
                print("interrupted; stopping", file=sys.stderr)
            try:
                player.spin_until(time.monotonic() + args.tail_s)  # trailing outputs
            except KeyboardInterrupt:
                interrupted = True
        finally:
            if recorder is not None:
                recorder.close()
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    played = ", ".join(f"{t} {n}" for t, n in sorted(published.items()))
    print(f"played {sum(published.values())} messages ({played}) from {bag} at rate "
          f"{args.rate:g}{' (interrupted)' if interrupted else ''}")
    if recorder is not None:
        rec = ", ".join(f"{t} {recorded[t]}" for t in args.record_topics)
        print(f"recorded {sum(recorded.values())} messages ({rec}) to {args.record} "
              f"({args.record_storage}, stamped with playback time)")
    if skipped:
        print(f"not played: {skipped} (use --topics to choose)")
    return 130 if interrupted else 0


def _play_connections(reader, args, config) -> tuple[list, list]:
    """The connections to publish (default: the node's inputs) and the topics left out."""
    table = bagio.topic_table(reader)
    default = {config.topics.image_topic, config.topics.compressed_image_topic,
               config.topics.command_topic, config.topics.enable_topic}
    wanted = set(args.topics) if args.topics else default
    conns = [c for c in reader.connections if c.topic in wanted and ros_class(c.msgtype)]
    missing = sorted(set(args.topics or ()) - {c.topic for c in conns})
    if missing:
        raise ReplayError(f"--topics {missing} not in bag or their message packages are not "
                          f"importable; bag topics: {[f'{t} [{m}]' for t, m, _ in table]}")
    if not conns:
        raise ReplayError(f"none of the node's input topics {sorted(default)} is in bag "
                          f"{str(args.bag)!r}; bag topics: {[t for t, _, _ in table]}; use "
                          "--topics")
    if args.record and set(args.topics or ()) & set(args.record_topics):
        print("warning: playing a topic that is also recorded; the recording mixes both",
              file=sys.stderr)
    played = {c.topic for c in conns}
    return conns, sorted({t for t, _, _ in table} - played)


def _record(node, recorder, topics: list[str], config, clock, recorded: Counter) -> None:
    """Raw subscriptions writing straight into the output bag at playback time."""
    types = {config.topics.cmd_vel_topic: bagio.TWIST, "/diagnostics": bagio.DIAGNOSTICS}
    for topic in topics:
        msgtype = types.get(topic) or _graph_type(node, topic)
        if msgtype is None or ros_class(msgtype) is None:
            raise ReplayError(f"--record-topics {topic!r}: unknown message type (only "
                              f"{sorted(types)} are known before the topic appears)")

        def on_msg(data, topic=topic, msgtype=msgtype):
            if clock.wall0:  # recording starts with playback
                recorder.write_raw(topic, msgtype, clock.now_ns(), data)
                recorded[topic] += 1

        node.create_subscription(ros_class(msgtype), topic, on_msg, profile("record"), raw=True)


def _graph_type(node, topic: str) -> str | None:
    for name, types in node.get_topic_names_and_types():
        if name == topic and types:
            return types[0]
    return None


def _wait_for_peers(node, executor, publishers, args, config, recording: bool) -> None:
    """Up to --wait-for-subscribers s: every input publisher matched (and /cmd_vel published)."""
    if args.wait_for_subscribers <= 0:
        return
    deadline = time.monotonic() + args.wait_for_subscribers
    while time.monotonic() < deadline:
        ready = all(p.get_subscription_count() > 0 for p in publishers.values())
        if recording:
            ready = ready and node.count_publishers(config.topics.cmd_vel_topic) > 0
        if ready:
            end = time.monotonic() + 0.5  # let the matching settle both ways
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            return
        executor.spin_once(timeout_sec=0.05)
    print(f"warning: no subscriber on {sorted(publishers)} after {args.wait_for_subscribers:g} s;"
          " playing anyway", file=sys.stderr)


class _Player:
    """Publishes one pass of the bag at playback time, spinning (recording, /clock) meanwhile."""

    def __init__(self, publishers, clock: PlayClock, clock_pub, args, node, executor,
                 published: Counter):
        from rclpy.serialization import deserialize_message

        self.publishers, self.clock, self.clock_pub = publishers, clock, clock_pub
        self.args, self.node, self.executor, self.published = args, node, executor, published
        self.deserialize = deserialize_message
        self.clock_period = 1.0 / args.clock if args.clock else 0.0
        self.next_clock = 0.0

    def publish_clock(self, ns: int) -> None:
        """One rosgraph_msgs/Clock."""
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(ns // 10**9), int(ns % 10**9)
        self.clock_pub.publish(msg)

    def spin_until(self, wall_target: float) -> None:
        """Serve subscriptions (and publish /clock) until the monotonic time ``wall_target``."""
        while True:
            now = time.monotonic()
            if self.clock_pub is not None and now >= self.next_clock:
                self.publish_clock(self.clock.now_ns())
                self.next_clock = now + self.clock_period
            remaining = wall_target - now
            if remaining <= 0:
                return
            wait = min(remaining, 0.01)
            if self.clock_pub is not None:
                wait = min(wait, max(self.next_clock - now, 0.0))
            self.executor.spin_once(timeout_sec=wait)

    def send(self, conn, raw, playback_ns: int) -> None:
        """Deserialize, re-stamp (unless --keep-stamps) and publish one message."""
        msg = self.deserialize(bytes(raw), ros_class(conn.msgtype))
        if not self.args.keep_stamps and hasattr(msg, "header"):
            ns = (playback_ns if self.clock_pub is not None
                  else self.node.get_clock().now().nanoseconds)
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(ns // 10**9), int(ns % 10**9)
        self.publishers[conn.topic].publish(msg)
        self.published[conn.topic] += 1

    def play_pass(self, reader, conns, start_ns: int, offset: int) -> None:
        """One pass; the newest latched message before --start-offset is sent at the start."""
        latched: dict = {}
        group: list = []

        def flush():
            playback_ns = group[0][1] + offset
            self.spin_until(self.clock.wall_at(playback_ns))
            if self.clock_pub is not None:
                self.publish_clock(playback_ns)
            for conn, _, raw in sorted(group, key=lambda g: _play_priority(g[0])):
                self.send(conn, raw, playback_ns)
            group.clear()

        for conn, t_ns, raw in bagio.iter_messages(reader, conns, self.args.bag):
            if t_ns < start_ns:
                if self.publishers[conn.topic].qos_profile.durability.name == "TRANSIENT_LOCAL":
                    latched[conn.topic] = (conn, raw)
                continue
            for conn0, raw0 in latched.values():
                self.send(conn0, raw0, start_ns + offset)
            latched.clear()
            if group and group[0][1] != t_ns:
                flush()
            group.append((conn, t_ns, raw))
        if group:
            flush()


def _play_priority(conn) -> int:
    if conn.msgtype in bagio.IMAGE_TYPES:
        return PRIORITY["image"]
    return PRIORITY["command"] if conn.msgtype == bagio.STRING else PRIORITY["enable"]
