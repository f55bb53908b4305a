"""`vla_bench --mode node`: the real node in its own process, fed over DDS by this process.

The node (``python -m mobile_vla_node.ros.main``) runs with the chosen backend (``null`` for
overhead alone) and receives 640x480 frames at a fixed rate from a publisher here: rgb8 (the
default) or bgr8 ``sensor_msgs/Image``, or JPEG ``sensor_msgs/CompressedImage`` on the compressed
topic (``--image-encoding``). Two sources of figures, kept apart in the output:

* the node's own ``~/step_timing`` per step: transport (image stamp -> node callback), preprocess
  (decode + resize), inference, end-to-end (stamp -> first Twist using that step). Here
  ``overhead = transport + preprocess`` per step and ``scheduling = end_to_end - transport -
  preprocess - inference`` (worker wake-up plus the wait for the next control tick, which alone is
  uniform in [0, period), mean period/2);
* control-timer jitter: ``node_diagnostics`` is the node's ``jitter_p99_ms`` (its tick times,
  from /diagnostics); ``twist_listener`` is |interval - period| of /cmd_vel at a Twist-only
  subscriber in its own process (a base controller's view): from the middleware's reception
  stamps (the sample's arrival, before that subscriber's executor: the figure the Twist arrival
  target is judged on) and from its callback times, with the arrival split into ``publish`` (the
  node's DDS writer stamps of each Twist) and ``delivery_ms`` (reception - writer stamp);
  ``twist_listener_realtime`` is a second one with SCHED_FIFO at the control thread's priority
  (a real-time base controller); ``bare_timer`` is a bare timer process's own jitter in the same
  run (the machine's floor). These listeners (``--twist-listeners both|normal|realtime``) are the
  only /cmd_vel subscribers the bench starts: every reader adds a cross-process wake-up to
  each of the node's publishes (one reader: 0.22 ms per publish, four: 0.63 ms, on this 2-core
  VM; docs/BENCHMARKS.md), so the apparatus subscribes no more than a robot does (a base
  controller and a recorder);
* a bare baseline in the same run (`bench.probe`): a plain rclpy subscriber in its own process
  receives the same frames; its transport p99 is what DDS plus a Python callback cost here, and
  ``overhead_ratio`` = the node's overhead p99 / that transport p99.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..core.config import ControlConfig
from ..ros.process import dds_profile_in_use, loopback_env, stop_node
from ..ros.qos import profile
from .analysis import summarize
from .child import PROMPT as COMMAND
from .environment import vm_hwm_mb

WIDTH, HEIGHT = 640, 480
# --image-encoding: raw frames on the camera topic, JPEG on its compressed topic
IMAGE_ENCODINGS = ("rgb8", "bgr8", "jpeg")
RAW_TOPIC, COMPRESSED_TOPIC = "/camera/image_raw", "/camera/image_raw/compressed"
JPEG_QUALITY = 90
N_FRAMES = 4
DIAG_PERIOD_S = 0.25
TIMING_TOPIC = "/vla_node/step_timing"
INFERENCE_STATUS = "vla_node: inference"
CONTROL_STATUS = "vla_node: control"
INPUTS_STATUS = "vla_node: inputs"
CONTROL_PRIORITY_DEFAULT = ControlConfig().control_thread_priority


def node_active(statuses: dict) -> bool:
    """The node's diagnostics say it has loaded and is active (lifecycle_state "active").

    A node without the lifecycle_state value is active once its inference status is there.
    """
    state = statuses.get(CONTROL_STATUS, {}).get("lifecycle_state")
    if state:
        return state == "active"
    return INFERENCE_STATUS in statuses


def node_params(job: dict, rate_hz: float, window: int) -> dict:
    """The node's ``-p`` parameters for one run."""
    params = {"backend": job["backend"], "model_preset": job["preset"],
              "device": job["device"], "precision": job["precision"],
              "control_rate_hz": float(rate_hz), "diagnostics_period_s": DIAG_PERIOD_S,
              "latency_window": int(window), "warmup_iters": 1}
    if job.get("model_path"):
        params["model_path"] = job["model_path"]
    if job["device"].startswith("cuda"):
        params["providers"] = "[CUDAExecutionProvider,CPUExecutionProvider]"
        params["allow_provider_fallback"] = True
    if job.get("image_encoding") == "jpeg":
        params["image_transport"] = "compressed"
    params.update(job.get("extra_params") or {})
    return params


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the node when the bench process dies (runs in the child)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_node(params: dict, log_path: Path, env: dict) -> subprocess.Popen:
    """Start ``python -m mobile_vla_node.ros.main --ros-args -p name:=value ...``."""
    args = [sys.executable, "-m", "mobile_vla_node.ros.main", "--ros-args"]
    for name, value in params.items():
        value = str(value).lower() if isinstance(value, bool) else value
        args += ["-p", f"{name}:={value}"]
    with open(log_path, "w") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


class Driver:
    """The bench process's rclpy side: image/command publishers and output recorders."""

    def __init__(self, encoding: str = "rgb8"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray, String

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("vla_bench_driver", context=self.context)
        self.encoding = encoding
        if encoding == "jpeg":
            from sensor_msgs.msg import CompressedImage

            self.image_pub = self.node.create_publisher(CompressedImage, COMPRESSED_TOPIC,
                                                        profile("camera"))
        else:
            self.image_pub = self.node.create_publisher(Image, RAW_TOPIC, profile("camera"))
        self.command_pub = self.node.create_publisher(String, "/vla/command", profile("command"))
        self.lock = threading.Lock()
        self.timings: list[tuple[float, list]] = []
        self.diags: list[tuple[float, dict]] = []
        self.node.create_subscription(Float64MultiArray, TIMING_TOPIC, self._on_timing,
                                      profile("record"))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                      profile("diagnostics"))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context was shut down while spinning
                return

    def _on_timing(self, msg) -> None:
        now = time.perf_counter()
        with self.lock:
            self.timings.append((now, list(msg.data)))

    def _on_diag(self, msg) -> None:
        now = time.perf_counter()
        statuses = {s.name: {kv.key: kv.value for kv in s.values} | {"_message": s.message}
                    for s in msg.status}
        with self.lock:
            self.diags.append((now, statuses))

    def image_messages(self, rng: np.random.Generator) -> list:
        """A few distinct 640x480 frames, built once (only the stamp changes per send).

        rgb8 / bgr8: random pixels. jpeg: smooth random scenes (random 40x30 pixels upscaled
        bicubically, so the JPEG is the size of a camera's, not of noise) at quality 90.
        """
        from sensor_msgs.msg import CompressedImage, Image

        msgs = []
        for _ in range(N_FRAMES):
            if self.encoding == "jpeg":
                import cv2

                small = rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
                frame = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
                ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                msg = CompressedImage(format="jpeg", data=jpeg.tobytes())
            else:
                msg = Image()
                msg.height, msg.width, msg.step = HEIGHT, WIDTH, WIDTH * 3
                msg.encoding = self.encoding
                msg.data = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8).tobytes()
            msgs.append(msg)
        return msgs

    def latest_diag(self, before: float | None = None) -> dict:
        """Newest diagnostics (received before ``before``, perf_counter) or {}."""
        with self.lock:
            rows = [d for t, d in self.diags if before is None or t <= before]
        return rows[-1] if rows else {}

    def wait_for(self, predicate, timeout: float, proc=None, what: str = "") -> None:
        """Poll until ``predicate()``; raise naming ``what`` on timeout or node exit."""
        end = time.monotonic() + timeout
        while not predicate():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the node exited (code {proc.returncode}) while waiting "
                                   f"for {what}")
            if time.monotonic() > end:
                raise TimeoutError(f"no {what} within {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Shut this process's ROS context down."""
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


def _num(values: dict, key: str) -> float | None:
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return None


class Probe:
    """A baseline process: start it, wait until it prints ``ready``, collect its JSON record.

    ``bench.probe`` (the bare subscriber, the default) or ``bench.timer_probe`` (the bare timer).
    """

    def __init__(self, env: dict, encoding: str = "rgb8", argv: list[str] | None = None,
                 module: str = "probe"):
        if argv is None:   # the bare subscriber: the camera topic, no /cmd_vel
            image_topic, kind = ((COMPRESSED_TOPIC, "compressed") if encoding == "jpeg"
                                 else (RAW_TOPIC, "raw"))
            argv = [image_topic, "-", kind]
        self.what = ("the bare timer" if module != "probe" else
                     "a Twist listener" if argv[0] == "-" else "the bare subscriber")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"mobile_vla_node.bench.{module}", *argv],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self._ready = threading.Event()
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self._ready.set()
            else:
                self._lines.append(line)

    def ready(self) -> bool:
        """It is set up (a Twist listener: a Twist from the node arrived)."""
        if self.proc.poll() is not None and not self._ready.is_set():
            raise RuntimeError(f"{self.what} exited (code {self.proc.returncode})")
        return self._ready.is_set()

    def collect(self, timeout: float = 15.0) -> dict:
        """Close its stdin and read its record."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5.0)
        for line in reversed(self._lines):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.what} wrote no record (exit {self.proc.returncode})")

    def close(self) -> None:
        """Stop it if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def publish_frames(driver: Driver, msgs: list, rate_hz: float, total: int, warmup: int):
    """Publish ``total`` frames at ``rate_hz`` with absolute deadlines.

    Returns (t_start, t_end, mono_start, mono_end): the measured window (from the first frame
    after the warm-up to the end) on ``perf_counter`` (this process's records) and on
    ``time.monotonic`` (the bare subscriber's records).
    """
    period = 1.0 / rate_hz
    t_start = mono_start = None
    deadline = time.perf_counter()
    for i in range(total):
        msg = msgs[i % len(msgs)]
        if i == warmup:
            t_start, mono_start = time.perf_counter(), time.monotonic()
        msg.header.stamp = driver.node.get_clock().now().to_msg()
        driver.image_pub.publish(msg)
        deadline += period
        time.sleep(max(0.0, deadline - time.perf_counter()))
    return t_start, time.perf_counter(), mono_start, time.monotonic()


def interval_jitter(times_s, period_ms: float, source: str, count_key: str = "twists") -> dict:
    """|interval - period| of a series of times (s): deviation, intervals, misses, count."""
    times = np.asarray(times_s, np.float64)
    intervals = np.diff(times) * 1e3
    return {"source": source, "deviation_ms": summarize(np.abs(intervals - period_ms)),
            "interval_ms": summarize(intervals),
            "misses_over_1_5_periods": int(np.sum(intervals > 1.5 * period_ms)),
            count_key: int(times.size)}


def bare_figures(record: dict, mono_start: float, mono_end: float,
                 node_overhead_p99: float | None) -> dict:
    """The bare subscriber's transport in the measured window, and the node's ratio to it."""
    transport = [t for mono, _stamp, t in record["frames"]
                 if mono_start <= mono <= mono_end + 0.5]
    bare = summarize(transport)
    bare_p99 = bare.get("p99")
    return {
        "bare_transport": {
            "source": "a plain rclpy subscriber in its own process, same frames (bench.probe)",
            "frames": len(transport), "transport_ms": bare},
        "overhead_ratio": (node_overhead_p99 / bare_p99
                           if node_overhead_p99 is not None and bare_p99 else None)}


def listener_figures(record: dict, mono_start: float, mono_end: float, rate_hz: float) -> dict:
    """A Twist-only listener's /cmd_vel jitter in the measured window: reception and callback."""
    period_ms = 1e3 / rate_hz
    twists = [t for t in record["twists"] if mono_start <= t <= mono_end]
    return {
        "source": "a Twist-only subscriber in its own process (no camera frames, as a base "
                  "controller): reception stamps, and callback times",
        "scheduling": record.get("scheduling", "normal"),
        "reception": _reception_jitter(record.get("twists_received", []), mono_start,
                                       mono_end, period_ms),
        "callback": interval_jitter(twists, period_ms,
                                    "/cmd_vel arrival times at the listener (DDS + a plain "
                                    "executor)")}


def timer_figures(record: dict, mono_start: float, mono_end: float, rate_hz: float) -> dict:
    """The bare timer's |interval - period| in the measured window: this machine's floor."""
    ticks = [t for t in record.get("ticks", []) if mono_start <= t <= mono_end]
    return interval_jitter(ticks, 1e3 / rate_hz,
                           "a 50-line Python timer loop in its own process, the node's "
                           "scheduling, same run (bench.timer_probe)", "ticks") | {
        "scheduling": record.get("scheduling", "")}


def _reception_jitter(received: list, mono_start: float, mono_end: float,
                      period_ms: float) -> dict:
    """|interval - period| of the middleware's reception stamps of /cmd_vel at a listener.

    Fast DDS stamps a sample when its receive thread takes it from the transport, before the
    subscriber's Python runs: arrival over the network stack, free of the measuring executor.
    Where the sample also carries its writer's stamp (``source_timestamp``, taken by the node's
    DDS writer at publish), the arrival jitter is split in two: ``publish`` (the same intervals
    at the node's writer) and ``delivery_ms`` (reception - source per Twist: DDS plus the wait
    of the subscriber's receive thread for a CPU). Both stamps are this host's real-time clock.
    """
    rows = [r for r in received if mono_start <= r[0] <= mono_end]
    source = ("/cmd_vel reception stamps of the middleware at the listener "
              "(MessageInfo received_timestamp, before its executor)")
    if len(rows) < 3:
        return {"source": source, "deviation_ms": {}, "twists": len(rows),
                "note": "no reception stamps (rclpy without MessageInfo callbacks)"}
    result = interval_jitter([r[1] for r in rows], period_ms, source)
    if all(len(r) > 2 and r[2] for r in rows):
        sent = np.array([r[2] for r in rows])
        result["publish"] = interval_jitter(
            sent, period_ms, "/cmd_vel write times at the node (MessageInfo source_timestamp)")
        result["delivery_ms"] = summarize((np.array([r[1] for r in rows]) - sent) * 1e3)
    return result


def analyse(driver: Driver, t_start: float, t_end: float, rate_hz: float) -> dict:
    """Per-step stages, the node's own jitter and counters for [t_start, t_end]."""
    period_ms = 1e3 / rate_hz
    with driver.lock:
        timings = [d for t, d in driver.timings if t_start <= t <= t_end + 0.5]
    arr = np.array(timings, np.float64).reshape(-1, 4)
    transport, preprocess, inference, e2e = (arr[:, i] for i in range(4))
    stages = {"transport": transport, "preprocess": preprocess, "inference": inference,
              "scheduling": e2e - transport - preprocess - inference,
              "overhead": transport + preprocess, "worker": preprocess + inference,
              "end_to_end": e2e}
    diag = driver.latest_diag(before=t_end + DIAG_PERIOD_S)
    control = diag.get(CONTROL_STATUS, {})
    inference_values = diag.get(INFERENCE_STATUS, {})
    inputs = diag.get(INPUTS_STATUS, {})
    return {
        "steps": int(arr.shape[0]),
        "stages_ms": {k: summarize(v) for k, v in stages.items()},
        "samples_ms": {k: [float(x) for x in v] for k, v in stages.items()},
        "tick_wait_expected_mean_ms": period_ms / 2,
        "jitter": {
            "node_diagnostics": {
                "source": "node /diagnostics (its control-timer callback times)",
                "jitter_p99_ms": _num(control, "jitter_p99_ms"),
                "jitter_max_ms": _num(control, "jitter_max_ms"),
                "deadline_misses": _num(control, "deadline_misses"),
                "control_rate_hz": _num(control, "control_rate_hz")}},
        "node_counters": {k: _num(inputs, k) for k in ("frames_received", "frames_dropped",
                                                       "image_rate_hz")},
        "backend_info": {k: inference_values.get(k) for k in ("backend", "device", "precision",
                                                               "provider", "model")},
        "backend_warnings": inference_values.get("backend_warnings", ""),
    }


def run_node(job: dict, rate_hz: float, image_rate_hz: float, workdir: Path,
             startup_timeout: float = 300.0) -> dict:
    """Start the node, feed ``warmup + iters`` frames, collect its figures, stop it."""
    import psutil

    duration = job["iters"] / image_rate_hz
    window = max(10, int(duration * rate_hz))
    params = node_params(job, rate_hz, window)
    # Loopback DDS and the shipped large-image Fast DDS profile, for the node and (applied to
    # os.environ before rclpy.init) this process; variables the user set win. Domain 1..100
    # stays clear of Linux ephemeral ports.
    env = loopback_env(1 + os.getpid() % 100)
    log_path = workdir / f"node_{job['backend']}_{rate_hz:g}hz.log"
    proc = start_node(params, log_path, env)
    encoding = job.get("image_encoding", "rgb8")
    probe = Probe(env, encoding)
    priority = str(params.get("control_thread_priority", CONTROL_PRIORITY_DEFAULT))
    timer = Probe(env, argv=[f"{rate_hz:g}", priority], module="timer_probe")
    # Twist-only listeners (a base controller's view): normal scheduling, and SCHED_FIFO at the
    # control thread's priority, as a real-time base controller runs (where it is granted).
    which = job.get("twist_listeners", "both")
    listeners = {key: Probe(env, argv=["-", "/cmd_vel", "raw", *extra])
                 for key, extra, kind in (("twist_listener", [], "normal"),
                                          ("twist_listener_realtime", [priority], "realtime"))
                 if which in ("both", kind)}
    driver = Driver(encoding)
    try:
        t0 = time.perf_counter()
        driver.wait_for(lambda: node_active(driver.latest_diag()), startup_timeout, proc,
                        "the node to load, warm up and activate")
        startup_s = time.perf_counter() - t0
        driver.wait_for(lambda: probe.ready() and timer.ready()
                        and all(who.ready() for who in listeners.values())
                        and driver.image_pub.get_subscription_count() >= 2,
                        30.0, proc, "the bare subscriber to match the node and the camera")
        from std_msgs.msg import String

        driver.command_pub.publish(String(data=COMMAND))
        driver.wait_for(lambda: driver.latest_diag().get(INPUTS_STATUS, {}).get("command")
                        == COMMAND, 10.0, proc, "the command to reach the node")
        msgs = driver.image_messages(np.random.default_rng(job["seed"]))
        node_proc = psutil.Process(proc.pid)
        cpu0 = node_proc.cpu_times()
        t_start, t_end, mono_start, mono_end = publish_frames(
            driver, msgs, image_rate_hz, job["warmup"] + job["iters"], job["warmup"])
        cpu1 = node_proc.cpu_times()
        time.sleep(2 * DIAG_PERIOD_S + 0.2)
        result = analyse(driver, t_start, t_end, rate_hz)
        result.update(bare_figures(probe.collect(), mono_start, mono_end,
                                   result["stages_ms"]["overhead"].get("p99")))
        for key, who in listeners.items():
            result["jitter"][key] = listener_figures(who.collect(), mono_start, mono_end,
                                                     rate_hz)
        result["jitter"]["bare_timer"] = timer_figures(timer.collect(), mono_start, mono_end,
                                                       rate_hz)
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        received = result["node_counters"]["frames_received"]
        result.update({
            "delivered_fraction": (received / (job["warmup"] + job["iters"])
                                   if received is not None else None),
            "control_rate_hz": rate_hz, "image_rate_hz": image_rate_hz,
            "image_encoding": encoding,
            "frames_sent": job["warmup"] + job["iters"], "measured_s": t_end - t_start,
            "node_startup_s": startup_s, "node_params": params,
            "ros_domain_id": env["ROS_DOMAIN_ID"],
            "dds_profile": (dds_profile_in_use(env)["file"]  # the variable Fast DDS reads here
                            or "none (Fast DDS defaults)"),
            "node_cpu_percent_of_one_core": 100.0 * busy / max(t_end - t_start, 1e-9),
            "node_peak_rss_mb": vm_hwm_mb(proc.pid), "node_log": str(log_path)})
        if result["steps"] == 0:
            raise RuntimeError(f"the node produced no step timings in {t_end - t_start:.1f} s; "
                               f"see {log_path}")
        return result
    except Exception as exc:
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"node mode ({job['backend']}, {rate_hz:g} Hz): {exc}\n--- node log "
                           f"tail ---\n{tail}") from exc
    finally:
        probe.close()
        timer.close()
        for who in listeners.values():
            who.close()
        driver.close()
        stop_node(proc, timeout=15.0)
