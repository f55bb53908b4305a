"""The load side of `vla_stress`: publisher processes and CPU hogs.

Streams: camera, command, /clock and a malformed flood. Each stream runs in its own process with
its own rclpy context, so one stream's Python (GIL, serialization) never delays another's, and
reports the rate it really achieved.

Everything here is started through ``multiprocessing``'s *spawn* context: the stress process
itself never imports rclpy.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

COMMAND = "move forward"
SIM_START_S = 1000.0  # sim time at the start of a /clock stream


@dataclass
class StreamSpec:
    """One publisher process: what it publishes and how often."""

    name: str
    kind: str                   # camera | command | clock | flood
    rate_hz: float              # 0 for command: publish once (latched) and stay alive
    width: int = 640
    height: int = 480
    text: str = COMMAND
    sim_time: bool = False      # camera: stamp frames with /clock time (use_sim_time)
    jump_s: float = 0.0         # clock: added to sim time once the jump event is set
    topics: dict = field(default_factory=lambda: {
        "image": "/camera/image_raw", "command": "/vla/command", "clock": "/clock"})


class Stream:
    """Handle of a publisher process: ``go()`` starts publishing, ``stop()`` ends it."""

    def __init__(self, ctx, spec: StreamSpec, jump_event=None, stopped_event=None):
        self.spec = spec
        self.go_event, self.stop_event = ctx.Event(), ctx.Event()
        self.ready_event = ctx.Event()
        self.results = ctx.Queue()
        self.result: dict | None = None
        self.process = ctx.Process(
            target=stream_main, name=f"stress-{spec.name}", daemon=True,
            args=(spec, self.ready_event, self.go_event, self.stop_event, self.results,
                  jump_event, stopped_event))
        self.process.start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the process has its publisher and messages built."""
        return self.ready_event.wait(timeout)

    def go(self) -> float:
        """Start publishing now; returns the monotonic time."""
        self.go_event.set()
        return time.monotonic()

    def stop(self, timeout: float = 15.0) -> dict:
        """Stop publishing and collect the stream's report (achieved rate, counts)."""
        import queue

        if self.result is not None:
            return self.result
        self.stop_event.set()
        self.go_event.set()  # a stream that never started must still exit
        try:
            self.result = self.results.get(timeout=timeout)
        except queue.Empty:
            self.result = {"name": self.spec.name, "error": "no report (process hung)"}
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5.0)
        return self.result


def _spin_forever() -> None:
    while True:  # a pure-Python busy loop: holds one core, like another process on the robot
        pass


class CpuHogs:
    """``n`` busy processes (pure Python spin loops, niceness unchanged = 0)."""

    def __init__(self, ctx, n: int):
        self.procs = [ctx.Process(target=_spin_forever, name=f"stress-hog-{i}", daemon=True)
                      for i in range(n)]
        for p in self.procs:
            p.start()

    def describe(self) -> dict:
        """How many hogs run, and at which niceness."""
        import psutil

        nice = []
        for p in self.procs:
            try:
                nice.append(psutil.Process(p.pid).nice())
            except psutil.Error:
                pass
        return {"count": len(self.procs), "nice": nice}

    def pause(self) -> None:
        """SIGSTOP the hogs (during a node start-up only, to keep runs quick)."""
        self._signal("suspend")

    def resume(self) -> None:
        """SIGCONT the hogs."""
        self._signal("resume")

    def _signal(self, action: str) -> None:
        import psutil

        for p in self.procs:
            try:
                getattr(psutil.Process(p.pid), action)()
            except psutil.Error:
                pass

    def stop(self) -> None:
        """Terminate every hog."""
        self.resume()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(timeout=5.0)


# -- messages ----------------------------------------------------------------------------------
def camera_frame(width: int, height: int):
    """A synthetic scene where "move forward" is the right answer, rendered at any size."""
    import numpy as np

    try:
        try:
            from ..demo import synthetic
        except ImportError:  # before the layout change
            from .. import synthetic
        scene = synthetic.random_scene(np.random.default_rng(3), COMMAND)
        return synthetic.render(scene, width, height)
    except Exception:  # the demo world moved or changed: any textured frame will do
        rng = np.random.default_rng(3)
        return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def image_msg(width: int, height: int, encoding: str, step: int, data: bytes):
    """A sensor_msgs/Image with the given raw fields (valid or not)."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.width, msg.height, msg.encoding, msg.step = width, height, encoding, step
    msg.data = data
    return msg


def malformed_frames(width: int = 640, height: int = 480) -> list:
    """(label, Image) pairs a broken driver or a hostile publisher could send."""
    row = width * 3
    good = bytes(row * height)
    return [
        ("step_too_small", image_msg(width, height, "rgb8", row - 1, bytes((row - 1) * height))),
        ("size_mismatch", image_msg(width, height, "rgb8", row, good[:-1000])),
        ("unknown_encoding", image_msg(width, height, "foo8", row, good)),
        ("corrupt_empty_data", image_msg(width, height, "rgb8", row, b"")),
        ("huge_dims_tiny_data", image_msg(100000, 100000, "rgb8", 300000, bytes(64))),
        ("zero_size", image_msg(0, 0, "rgb8", 0, b"")),
        ("yuv422_odd_width", image_msg(width + 1, height, "yuv422", (width + 1) * 2,
                                       bytes((width + 1) * 2 * height))),
        ("1080p_wrong_step", image_msg(1920, 1080, "rgb8", 1920 * 3 + 7, bytes(1920 * 3 * 1080))),
    ]


MALFORMED_COMMANDS = [
    ("empty", ""),
    ("whitespace", " \t\n "),
    ("huge", "go to the red box " * 6000),
    ("invalid_utf8_ish", "Ã¯Â»Â¿go Ã\x83Â© \ufffd\ufffd \x1b[2J\x07\x00tail"),
    ("emoji", "🚀🚀🚀"),
]


# -- the process ---------------------------------------------------------------------------------
def stream_main(spec: StreamSpec, ready, go, stop, results, jump_event=None,
                stopped_event=None) -> None:
    """Process entry: build the publisher and messages, wait for ``go``, publish until ``stop``.

    Puts one report on ``results``: publish times summary, skipped slots, per-variant counts.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .analysis import publish_summary

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    params = []
    if spec.sim_time:
        from rclpy.parameter import Parameter

        params = [Parameter("use_sim_time", Parameter.Type.BOOL, True)]
    node = rclpy.create_node(f"vla_stress_{spec.name.replace('-', '_')}", context=ctx,
                             parameter_overrides=params)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinning = threading.Event()
    spinning.set()

    def spin():
        while spinning.is_set() and ctx.ok():
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:
                return

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    report = {"name": spec.name, "kind": spec.kind, "pid": os.getpid()}
    try:
        publish = _make_publisher(spec, node, report, jump_event)
        ready.set()
        go.wait()
        if spec.sim_time:  # stamps must come from /clock: wait for the first one
            end = time.monotonic() + 30.0
            while node.get_clock().now().nanoseconds == 0 and time.monotonic() < end \
                    and not stop.is_set():
                time.sleep(0.01)
        times = _run_schedule(spec, stop, publish, report, jump_event)
        report["last_publish_t"] = times[-1] if times else None
        report["first_publish_t"] = times[0] if times else None
        if stopped_event is not None:
            stopped_event.set()
        report.update(publish_summary(times, spec.rate_hz))
    except Exception as exc:  # report instead of dying silently: the scenario must know
        report["error"] = f"{type(exc).__name__}: {exc}"
        ready.set()
        if stopped_event is not None:
            stopped_event.set()
    results.put(report)
    # Stay alive a little while (transient-local command samples), then tear down.
    spinning.clear()
    spinner.join(timeout=2.0)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _run_schedule(spec, stop, publish, report, jump_event) -> list:
    """Call ``publish(i)`` on an absolute schedule; skip slots rather than burst after a stall."""
    times: list = []
    if spec.rate_hz <= 0:  # latched command: once, then idle until stopped
        publish(0)
        times.append(time.monotonic())
        stop.wait()
        return times
    period = 1.0 / spec.rate_hz
    skipped = 0
    next_t = time.monotonic()
    i = 0
    while not stop.is_set():
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
            if stop.is_set():
                break
        publish(i)
        times.append(time.monotonic())
        i += 1
        next_t += period
        behind = time.monotonic() - next_t
        if behind > period:
            missed = int(behind / period)
            skipped += missed
            next_t += missed * period
    report["skipped_slots"] = skipped
    if jump_event is not None:
        report["jumped"] = jump_event.is_set()
    return times


def _make_publisher(spec: StreamSpec, node, report: dict, jump_event=None):
    """The per-kind publish(i) closure."""
    from ..ros.qos import profile

    if spec.kind == "camera":
        return _camera(spec, node, profile)
    if spec.kind == "command":
        from std_msgs.msg import String

        pub = node.create_publisher(String, spec.topics["command"], profile("command"))
        msg = String(data=spec.text)
        return lambda i: pub.publish(msg)
    if spec.kind == "clock":
        return _clock(spec, node, report, jump_event)
    if spec.kind == "flood":
        return _flood(spec, node, profile, report)
    raise ValueError(f"unknown stream kind {spec.kind!r}")


def _camera(spec, node, profile):
    from sensor_msgs.msg import Image

    pub = node.create_publisher(Image, spec.topics["image"], profile("camera"))
    frame = camera_frame(spec.width, spec.height)
    msg = image_msg(spec.width, spec.height, "rgb8", spec.width * 3, frame.tobytes())
    msg.header.frame_id = "camera"
    clock = node.get_clock()

    def publish(i):
        msg.header.stamp = clock.now().to_msg()
        pub.publish(msg)
    return publish


def _clock(spec, node, report, jump_event):
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    # Not in the QoS table: the node never subscribes to /clock itself, rclpy's TimeSource does
    # (best effort); a reliable publisher matches it, as Gazebo's does.
    pub = node.create_publisher(Clock, spec.topics["clock"],
                                QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    state = {"t0": None, "offset": 0.0}
    jump = spec.jump_s

    def publish(i):
        now = time.monotonic()
        if state["t0"] is None:
            state["t0"] = now
        if jump and not state["offset"] and jump_event is not None and jump_event.is_set():
            state["offset"] = jump
            report["jump_at_t"] = now
        sim = SIM_START_S + (now - state["t0"]) + state["offset"]
        sec = int(sim)
        pub.publish(Clock(clock=Time(sec=sec, nanosec=int((sim - sec) * 1e9))))
    return publish


def _flood(spec, node, profile, report):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    image_pub = node.create_publisher(Image, spec.topics["image"], profile("camera"))
    command_pub = node.create_publisher(String, spec.topics["command"], profile("command"))
    frames = malformed_frames(spec.width, spec.height)
    commands = [(label, String(data=text)) for label, text in MALFORMED_COMMANDS]
    good = String(data=spec.text)
    counts = report.setdefault("sent", {})
    clock = node.get_clock()

    def publish(i):
        label, msg = frames[i % len(frames)]
        msg.header.stamp = clock.now().to_msg()
        image_pub.publish(msg)
        counts[label] = counts.get(label, 0) + 1
        if i % 4 == 1:  # 5 Hz at 20 Hz: a bad command, then the good one again
            label, cmd = commands[(i // 4) % len(commands)]
            try:
                command_pub.publish(cmd)
                counts[f"command_{label}"] = counts.get(f"command_{label}", 0) + 1
            except Exception as exc:  # rclpy refused to serialize it
                counts[f"command_{label}_unpublishable"] = counts.get(
                    f"command_{label}_unpublishable", 0) + 1
                report["last_publish_error"] = f"{type(exc).__name__}: {exc}"
        elif i % 4 == 2:
            command_pub.publish(good)
            counts["command_good"] = counts.get("command_good", 0) + 1
    return publish
