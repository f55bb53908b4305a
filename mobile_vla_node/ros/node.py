"""The rclpy shell: parameters, QoS, subscriptions, timers and publishers around the ROS-free core.

Threads: subscriptions only store the newest frame and wake the inference worker (a plain thread,
off the executor); the control timer and the diagnostics timer have their own callback groups on a
MultiThreadedExecutor; shared state is guarded by one lock. Every exit path publishes a zero Twist.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger

from ..backends import BackendError, create_backend
from ..core.config import PARAMETERS, ConfigError, NodeConfig
from ..core.control import ChunkMeta, ControlLoop
from ..core.diagnostics import NodeStats, build_statuses
from ..core.inputs import InputRules
from ..core.preprocess import ImageError, decode_message
from ..core.runtime import PolicyRuntime
from ..model.checkpoint import CheckpointError

LEVELS = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                        reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
TIMING_LABELS = ("transport_ms", "preprocess_ms", "inference_ms", "end_to_end_ms")
STARTUP_ERRORS = (ConfigError, BackendError, CheckpointError, FileNotFoundError, ValueError)


def _descriptor(name: str, spec: dict) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec["doc"], read_only=not spec["live"])
    if spec["choices"]:
        desc.additional_constraints = f"one of {list(spec['choices'])}"
    default = spec["default"]
    if isinstance(default, float):
        # Accept 1 as well as 1.0 from YAML; range checks happen in the config dataclasses.
        desc.dynamic_typing = True
        if spec["lo"] is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec["lo"]),
                                                            to_value=float(spec["hi"]))]
    elif isinstance(default, int) and not isinstance(default, bool) and spec["lo"] is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec["lo"]), to_value=int(spec["hi"]))]
    elif isinstance(default, list) and default and isinstance(default[0], float):
        desc.dynamic_typing = True
    return desc


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class VlaNode(Node):
    """Camera + command in, Twist out at a fixed rate, diagnostics on /diagnostics."""

    def __init__(self, **kwargs):
        super().__init__("vla_node", **kwargs)
        for name, spec in PARAMETERS.items():
            self.declare_parameter(name, spec["default"], _descriptor(name, spec))
        self.config = NodeConfig.from_params(
            {name: self.get_parameter(name).value for name in PARAMETERS})
        cfg = self.config
        self.get_logger().info(f"loading backend {cfg.backend.backend!r} "
                               f"(preset {cfg.backend.model_preset!r}, device "
                               f"{cfg.backend.device!r})")
        self.backend = create_backend(cfg.backend)
        self.backend.load()
        t0 = time.perf_counter()
        self.backend.warmup(cfg.backend.warmup_iters)
        info = self.backend.describe()
        self.get_logger().info(
            f"backend ready: {info.name} on {info.device}, {info.precision}, provider "
            f"{info.provider}; weights: {info.model}; warm-up {time.perf_counter() - t0:.2f} s")
        for warning in info.warnings:
            self.get_logger().warning(warning)

        self._lock = threading.Lock()
        self.runtime = PolicyRuntime(self.backend, cfg.action, cfg.control.max_command_chars)
        self.control = ControlLoop(cfg.control, cfg.safety, self.backend.spec.chunk_step_period_s)
        period = 1.0 / cfg.control.control_rate_hz
        self.stats = NodeStats(cfg.diagnostics.latency_window, period)
        self.inputs = InputRules(self.runtime, self.control, self.stats.counters)
        self._pending = None
        self._ticks = 0
        self._wake = threading.Event()
        self._stop = threading.Event()

        topics = cfg.topics
        self.cmd_pub = self.create_publisher(Twist, topics.cmd_vel_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timing_pub = self.create_publisher(Float64MultiArray, topics.timing_topic, 10)
        input_group = MutuallyExclusiveCallbackGroup()
        if topics.image_transport == "compressed":
            self.create_subscription(CompressedImage, topics.compressed_image_topic,
                                     self._on_image, CAMERA_QOS, callback_group=input_group)
        else:
            self.create_subscription(Image, topics.image_topic, self._on_image, CAMERA_QOS,
                                     callback_group=input_group)
        self.create_subscription(String, topics.command_topic, self._on_command, LATCHED_QOS,
                                 callback_group=input_group)
        self.create_subscription(Bool, topics.enable_topic, self._on_enable_msg, LATCHED_QOS,
                                 callback_group=input_group)
        self.create_service(SetBool, "~/enable", self._on_enable_srv,
                            callback_group=input_group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=input_group)
        self.create_timer(period, self._on_tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(cfg.diagnostics.diagnostics_period_s, self._on_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._worker_loop, name="vla_inference",
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(f"publishing {topics.cmd_vel_topic} at "
                               f"{cfg.control.control_rate_hz:g} Hz")

    # -- clock -------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs ------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        now = self._now()
        stamp = _stamp_s(msg.header.stamp)
        transport_ms = (now - stamp) * 1e3 if stamp > 0 else float("nan")
        with self._lock:
            if not self.inputs.receive_image(msg, now):
                error = self.inputs.last_input_error
            else:
                error = None
                self.stats.image_rate.add(time.monotonic())
                if stamp > 0:
                    self.stats.latency["transport"].add(transport_ms)
                if self._pending is not None:
                    self.stats.counters["frames_dropped"] += 1
                self._pending = (msg, stamp, transport_ms)
        if error:
            self.get_logger().warning(f"malformed image: {error}", throttle_duration_sec=2.0)
            return
        self._wake.set()

    def _on_command(self, msg: String) -> None:
        with self._lock:
            outcome = self.inputs.command(msg.data)
            error = self.inputs.last_input_error
        if outcome == "accepted":
            self.get_logger().info(f"command: {self.runtime.command!r}")
        elif outcome == "rejected":
            self.get_logger().warning(f"{error}; stopped until a valid command arrives")

    def _set_enabled(self, enabled: bool, source: str) -> None:
        with self._lock:
            self.inputs.enable(enabled)
        self.get_logger().info(f"{'enabled' if enabled else 'DISABLED (e-stop)'} by {source}")

    def _on_enable_msg(self, msg: Bool) -> None:
        self._set_enabled(msg.data, "topic")

    def _on_enable_srv(self, request, response):
        self._set_enabled(request.data, "service")
        response.success, response.message = True, "enabled" if request.data else "disabled"
        return response

    def _on_reset(self, request, response):
        self.runtime.reset()
        with self._lock:
            self.control.player.clear()
        response.success, response.message = True, "history cleared"
        return response

    # -- inference worker (off the executor) -------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.1):
                continue
            self._wake.clear()
            with self._lock:
                item, self._pending = self._pending, None
            if item is not None:
                self._process(*item)

    def _process(self, msg, stamp: float, transport_ms: float) -> None:
        t0 = time.perf_counter()
        try:
            rgb = decode_message(msg)
            decode_ms = (time.perf_counter() - t0) * 1e3
            result = self.runtime.step(rgb)
        except ImageError as exc:
            with self._lock:
                self.inputs.bad_image(exc)
            self.get_logger().warning(f"malformed image: {exc}", throttle_duration_sec=2.0)
            return
        except Exception as exc:  # a backend failure must stop the robot, not the node
            with self._lock:
                self.inputs.inference_failed(exc)
            self.get_logger().error(f"inference failed: {self.inputs.last_error}",
                                    throttle_duration_sec=2.0)
            return
        now = self._now()
        with self._lock:
            meta = None
            if result is not None:
                meta = ChunkMeta(stamp, transport_ms, decode_ms + result.preprocess_ms,
                                 result.inference_ms)
            if self.inputs.step_done(result, now, meta):
                self.stats.inference_rate.add(time.monotonic())
                self.stats.latency["preprocess"].add(meta.preprocess_ms)
                self.stats.latency["inference"].add(meta.inference_ms)

    # -- control -----------------------------------------------------------------------------
    def _on_tick(self) -> None:
        now, mono = self._now(), time.monotonic()
        with self._lock:
            result = self.control.tick(now)
            self._ticks += 1
            self.stats.jitter.tick(mono)
            self.stats.control_rate.add(mono)
            meta = result.first_use
            e2e_ms = (now - meta.image_stamp) * 1e3 if meta and meta.image_stamp > 0 else None
            if e2e_ms is not None:
                self.stats.latency["end_to_end"].add(e2e_ms)
        self.cmd_pub.publish(self._twist(result.twist))
        if meta is not None:
            timing = Float64MultiArray()
            timing.layout.dim = [MultiArrayDimension(label=",".join(TIMING_LABELS),
                                                     size=len(TIMING_LABELS), stride=1)]
            timing.data = [meta.transport_ms, meta.preprocess_ms, meta.inference_ms,
                           e2e_ms if e2e_ms is not None else float("nan")]
            self.timing_pub.publish(timing)

    @staticmethod
    def _twist(v) -> Twist:
        msg = Twist()
        msg.linear.x, msg.linear.y, msg.angular.z = (float(x) for x in v)
        return msg

    def publish_zero(self) -> None:
        """Publish a zero Twist (shutdown, fatal errors)."""
        self.cmd_pub.publish(Twist())

    # -- diagnostics -------------------------------------------------------------------------
    def _on_diagnostics(self) -> None:
        cfg = self.config
        info = self.backend.describe()
        with self._lock:
            last = self.control.last
            control = {
                "fault": self.control.fault, "command": self.runtime.command,
                "stop_reason": last.stop_reason if last else None,
                "last_stop_reason": self.control.last_stop_reason,
                "stop_counts": dict(self.control.stop_counts), "enabled": self.control.enabled,
                "ticks": self._ticks, "last_error": self.inputs.last_error,
                "last_input_error": self.inputs.last_input_error,
                "twist": ", ".join(f"{x:.3f}" for x in last.twist) if last else "",
            }
            statuses = build_statuses(self.get_name(), cfg.diagnostics.hardware_id or info.device,
                                      cfg.diagnostics, self.stats, info.as_values(),
                                      info.warnings, control, time.monotonic())
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        for s in statuses:
            array.status.append(DiagnosticStatus(
                level=LEVELS[s.level], name=s.name, message=s.message, hardware_id=s.hardware_id,
                values=[KeyValue(key=k, value=str(v)) for k, v in s.values.items()]))
        self.diag_pub.publish(array)

    # -- live parameters ---------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = self.config.with_params(changes)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = new
        with self._lock:
            self.control.configure(new.control, new.safety)
            self.runtime.post.update(new.action)
        self.get_logger().info(f"parameters updated: {changes}")
        return SetParametersResult(successful=True)

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self) -> bool:
        """Publish zeros, then stop the worker; False if it is still inside an inference step.

        The zeros go out first: a slow step (seconds for the full-size model on a CPU) must not
        delay them. The wait is bounded by the measured inference p99 (at most 30 s).
        """
        self._stop.set()
        self._wake.set()
        for _ in range(3):
            self.publish_zero()
            time.sleep(0.02)
        p99_ms = self.stats.latency["inference"].summary().get("p99", 0.0)
        self._worker.join(timeout=min(2.0 + 2e-3 * p99_ms, 30.0))
        if self._worker.is_alive():
            self.get_logger().warning("inference step still running at shutdown")
            return False
        self.backend.close()
        return True


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args=None) -> int:
    """Entry point of ``vla_node``: init, spin, publish zeros, destroy, shutdown."""
    from rclpy.signals import SignalHandlerOptions

    # Our own signal handling: rclpy's would shut the context down before the final zero Twist.
    # SIGINT is restored explicitly: a background job of a non-interactive shell inherits it
    # as ignored.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    node = None
    code = 0
    clean = True
    try:
        node = VlaNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        # Short slices, so a signal is handled even when no callback is due (e.g. use_sim_time
        # with /clock paused: timers never wake the executor).
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except STARTUP_ERRORS as exc:
        # One clear line instead of a traceback; nothing has moved the robot yet.
        print(f"[vla_node] FATAL: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if node is not None:
            clean = node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    if not clean:
        # The worker is inside a native inference call; tearing the interpreter down under it
        # aborts in C++. The zero Twist is already out, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
