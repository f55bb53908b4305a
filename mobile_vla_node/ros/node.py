"""The rclpy shell: a managed (lifecycle) node around the ROS-free core.

Lifecycle (as nav2 nodes): ``configure`` loads and warms the backend (the slow part) and starts the
inference worker; ``activate`` lets policy Twists out; ``deactivate`` stops them (zeros keep
going out); ``cleanup``/``shutdown`` release the model. With ``autostart`` (default) the node
configures and activates itself.

Threads, and why (issue #10 measured what an executor-driven timer suffers on 2 shared cores):

* **control** (`ControlThread`): its own deadlines, the only publisher of ``/cmd_vel``; zeros in
  every state but active, and from construction to the last shutdown zero.
* **executor** (main thread, single-threaded): subscriptions that only validate and store the
  newest input, services, parameters, the diagnostics timer, lifecycle services, ``/clock``.
* **inference worker** (plain thread): decode -> step -> chunk, newest frame only.

Shared state is guarded by one small lock; no callback ever holds it across inference.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger

from ..backends import BackendError, create_backend
from ..core import gc_pauses
from ..core.commands import CommandFilter
from ..core.config import PARAMETERS, ConfigError, NodeConfig
from ..core.control import ChunkMeta, ControlLoop
from ..core.diagnostics import NodeStats, build_statuses
from ..core.inputs import InputRules
from ..core.pipeline import BAD_IMAGE, INFERENCE_ERROR, FramePipeline
from ..core.runtime import PolicyRuntime
from ..core.ticks import ClockGuard
from ..model.errors import CheckpointError
from .control_thread import ControlThread, name_thread
from .parameters import declare_parameters, parameter_values, plain
from .qos import LATCHED_INPUTS, InputGate, profile

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
# Jazzy and newer pass rclpy's MessageInfo to a callback that takes two arguments; Humble never.
CALLBACKS_GET_INFO = hasattr(Subscription, "CallbackType")

LEVELS = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}
TIMING_LABELS = ("transport_ms", "preprocess_ms", "inference_ms", "end_to_end_ms")
STARTUP_ERRORS = (ConfigError, BackendError, CheckpointError, FileNotFoundError, ValueError)
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _twist(v) -> Twist:
    msg = Twist()
    msg.linear.x, msg.linear.y, msg.angular.z = (float(x) for x in v)
    return msg


class VlaNode(LifecycleNode):
    """Camera + command in, Twist out at a fixed rate, diagnostics on /diagnostics."""

    def __init__(self, **kwargs):
        super().__init__("vla_node", **kwargs)
        declare_parameters(self, PARAMETERS)
        # Validated now: a bad value is fatal before anything is loaded.
        self.config = NodeConfig.from_params(parameter_values(self, PARAMETERS))
        cfg = self.config
        self.lifecycle = "unconfigured"
        self.startup_error: str | None = None
        self._lock = threading.Lock()
        self.backend = self.runtime = self.control = self.inputs = self.pipeline = None
        self._worker: threading.Thread | None = None
        self._worker_stop = threading.Event()
        self._wake = threading.Event()
        self._pending = None
        self._ticks = 0
        self._last_result = None
        self._timing_out = None  # the step timing of the last tick, sent after its Twist
        self._held_command: str | None = None  # latched inputs received before configure
        self._held_enable: bool | None = None
        period = 1.0 / cfg.control.control_rate_hz
        self.stats = NodeStats(cfg.diagnostics.latency_window, period)
        self.guard = ClockGuard(cfg.control.time_jump_threshold_s)
        self.gc_pauses = gc_pauses.GcPauses()
        self.gc_pauses.install()
        self.command_filter = CommandFilter(cfg.control.stop_phrases,
                                            cfg.control.allowed_instructions)

        topics = cfg.topics
        self.cmd_pub = self.create_publisher(Twist, topics.cmd_vel_topic, profile("cmd_vel"))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                              profile("diagnostics"))
        self.timing_pub = self.create_publisher(Float64MultiArray, topics.timing_topic,
                                                profile("timing"))
        self.incompatible_qos: dict = {}  # topic -> (publishers, last policy name)
        self._incompatible_seen: set = set()  # topics whose incompatible writer the graph showed
        self._reader_qos: dict = {}  # topic -> the QoS of the reader that reports it
        self.input_gates: dict = {}
        self.input_topics: dict = {}  # role -> resolved topic name ("enable": diagnostics)
        image_type, image_topic = ((CompressedImage, topics.compressed_image_topic)
                                   if topics.image_transport == "compressed"
                                   else (Image, topics.image_topic))
        self._subscribe(image_type, image_topic, self._on_image, profile("camera"), True)
        self._subscribe_input("command", String, topics.command_topic, self._on_command)
        self._subscribe_input("enable", Bool, topics.enable_topic, self._on_enable_msg)
        self.create_service(SetBool, "~/enable", self._on_enable_srv)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # Steady clock: diagnostics keep coming when /clock is paused (use_sim_time).
        self.create_timer(cfg.diagnostics.diagnostics_period_s, self._on_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.use_ros_time = use_ros_time = bool(self.get_parameter("use_sim_time").value)
        self.control_thread = ControlThread(
            period, self._now, self._tick, self._publish_twist, use_ros_time,
            lambda: self.config.control.image_timeout_s, self._on_tick_error,
            cfg.control.control_thread_priority, cfg.control.control_gil_lead_ms * 1e-3)
        if use_ros_time:
            from rclpy.clock import JumpThreshold
            from rclpy.duration import Duration

            # Every /clock update wakes the control loop (the handle must stay referenced).
            self._jump_handle = self.get_clock().create_jump_callback(
                JumpThreshold(min_forward=Duration(nanoseconds=1),
                              min_backward=Duration(nanoseconds=-1), on_clock_change=True),
                post_callback=self.control_thread.notify_clock)
        self.control_thread.start()
        self.get_logger().info(f"publishing {self.cmd_pub.topic_name} at "
                               f"{cfg.control.control_rate_hz:g} Hz "
                               f"({'ROS' if use_ros_time else 'steady'} clock); zeros until "
                               "active")

    # -- subscriptions -----------------------------------------------------------------------
    def _subscribe_input(self, role: str, msg_type, topic: str, handler) -> None:
        """A live and a latched reader of one input topic, each message applied once (qos.py)."""
        gate = self.input_gates[role] = InputGate()
        live_role, latched_role = LATCHED_INPUTS[role]
        # Live reader first: the executor takes ready readers in creation order, so when both
        # copies of a message are ready in one wake, Humble's gate (no message info) applies the
        # live copy and drops the latched one instead of applying both.
        for latched, qos_role in ((False, live_role), (True, latched_role)):
            # A volatile writer is incompatible with the latched reader by design; only a writer
            # that the live reader cannot match either (best effort) is a problem.
            sub = self._subscribe(msg_type, topic, self._gated(gate, latched, handler),
                                  profile(qos_role), report=not latched)
            if not latched:
                self.input_topics[role] = sub.topic_name

    def _gated(self, gate: InputGate, latched: bool, handler):
        def deliver(msg, info):
            if gate.admit(latched, info):  # executor thread only: no lock
                handler(msg)

        if CALLBACKS_GET_INFO:  # rclpy passes MessageInfo to a two-argument callback
            return deliver
        return lambda msg: deliver(msg, None)

    def _subscribe(self, msg_type, topic: str, callback, qos, report: bool):
        """A subscription; its incompatible publishers go to diagnostics and one warning.

        Without ``report`` they are ignored quietly (rclpy would otherwise log each one).
        """
        resolved = []  # the subscription's full topic name, known once it exists

        def on_incompatible(event):
            if not report:
                return
            from rclpy.qos import qos_policy_name_from_kind

            policy = qos_policy_name_from_kind(event.last_policy_kind)
            name = resolved[0] if resolved else topic
            with self._lock:
                self.incompatible_qos[name] = (event.total_count, policy)
            self.get_logger().warning(
                f"a publisher on {name} offers QoS incompatible with this node's reader "
                f"({policy}); its messages do not arrive")

        sub = self.create_subscription(
            msg_type, topic, callback, qos,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=on_incompatible))
        resolved.append(sub.topic_name)
        if report:
            self._reader_qos[sub.topic_name] = qos
        return sub

    def _refresh_incompatible(self) -> None:
        """Count the incompatible publishers still in the graph; forget a topic's once they left.

        DDS reports an incompatible writer when it appears, never when it goes. A topic is
        forgotten only after the graph has shown its incompatible writer once (the event can
        come before the graph knows the writer).
        """
        from rclpy.qos import QoSCompatibility, qos_check_compatible

        with self._lock:
            topics = list(self.incompatible_qos)
        for topic in topics:
            qos = self._reader_qos[topic]
            count = sum(1 for pub in self.get_publishers_info_by_topic(topic)
                        if qos_check_compatible(pub.qos_profile, qos)[0] ==
                        QoSCompatibility.ERROR)
            with self._lock:
                if count:
                    self._incompatible_seen.add(topic)
                    self.incompatible_qos[topic] = (count, self.incompatible_qos[topic][1])
                elif topic in self._incompatible_seen:
                    self._incompatible_seen.discard(topic)
                    del self.incompatible_qos[topic]

    # -- clock -------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _stats_now(self) -> float:
        """Time base of rates and jitter: the clock that schedules the ticks."""
        return self._now() if self.use_ros_time else time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        """Load and warm the backend, start the inference worker."""
        cfg = self.config
        self.get_logger().info(f"loading backend {cfg.backend.backend!r} "
                               f"(preset {cfg.backend.model_preset!r}, device "
                               f"{cfg.backend.device!r})")
        try:
            with gc_pauses.loading():  # no 100+ ms collection pauses now or later
                backend = create_backend(cfg.backend)
                backend.load()
                t0 = time.perf_counter()
                backend.warmup(cfg.backend.warmup_iters)
        except Exception as exc:  # reported as one line; the node stays unconfigured (zeros)
            self.startup_error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, STARTUP_ERRORS):
                import traceback

                traceback.print_exc()
            self.get_logger().error(f"configure failed: {self.startup_error}")
            return FAILURE
        info = backend.describe()
        self.get_logger().info(
            f"backend ready: {info.name} on {info.device}, {info.precision}, provider "
            f"{info.provider}; weights: {info.model}; warm-up {time.perf_counter() - t0:.2f} s")
        for warning in info.warnings:
            self.get_logger().warning(warning)
        runtime = PolicyRuntime(backend, cfg.action, cfg.control.max_command_chars)
        layout_warning = runtime.layout_warning()
        if layout_warning:
            self.get_logger().warning(layout_warning)
        control = ControlLoop(cfg.control, cfg.safety, backend.spec.chunk_step_period_s)
        control.set_active(False)
        with self._lock:
            self.backend, self.runtime, self.control = backend, runtime, control
            self.inputs = InputRules(runtime, control, self.stats.counters, self.command_filter)
            self.pipeline = FramePipeline(self.inputs, self._lock, on_step=self._on_step)
            held_command, held_enable = self._held_command, self._held_enable
        if held_enable is not None:
            self._set_enabled(held_enable, "topic (before configure)")
        if held_command is not None:
            self._apply_command(held_command)
        self._worker_stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="vla_inference",
                                        daemon=True)
        self._worker.start()
        self.lifecycle = "inactive"
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Let policy Twists out (the safety chain still decides every tick)."""
        with self._lock:
            self.control.set_active(True)
            self.lifecycle = "active"
        self.get_logger().info(f"active: policy Twists on {self.cmd_pub.topic_name}")
        return SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Zeros from the next tick on, and they keep going out."""
        with self._lock:
            self.control.set_active(False)
            self.lifecycle = "inactive"
        self.control_thread.publish_now(np.zeros(3))
        self.get_logger().info("inactive: publishing zeros")
        return SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Release the model (back to unconfigured; zeros keep going out)."""
        self.release()
        return SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Release the model; the process then exits (see `main`)."""
        self.release()
        self.lifecycle = "finalized"
        if self.shutdown_request is not None:
            self.shutdown_request.request()
        return SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        """A transition raised: release what was loaded, stay stopped."""
        self.release()
        return SUCCESS

    shutdown_request = None  # set by main(): the process-wide ShutdownRequest

    def release(self, join_timeout_s: float | None = None) -> bool:
        """Stop the worker (bounded by the measured inference p99) and close the backend.

        Returns False if the worker is still inside an inference step: the backend is then left
        open, because closing it under a native call can abort the process.
        """
        with self._lock:
            if self.control is not None:
                self.control.set_active(False)
            self.lifecycle = "unconfigured"
        self._worker_stop.set()
        self._wake.set()
        if self._worker is not None:
            if join_timeout_s is None:
                p99_ms = self.stats.latency["inference"].summary().get("p99", 0.0)
                join_timeout_s = min(2.0 + 2e-3 * p99_ms, 30.0)
            self._worker.join(timeout=join_timeout_s)
            if self._worker.is_alive():
                self.get_logger().warning("inference step still running at shutdown")
                return False
        with self._lock:
            backend = self.backend
            self.backend = self.runtime = self.control = self.inputs = self.pipeline = None
            self._worker = None
        if backend is not None:
            backend.close()
            gc_pauses.unfreeze()
        return True

    # -- inputs (executor thread: validate, store, return) -----------------------------------
    def _on_image(self, msg) -> None:
        stamp = _stamp_s(msg.header.stamp)
        with self._lock:
            if self.inputs is None:
                return
            now = self._now()
            if not self.inputs.receive_image(msg, now):
                error = self.inputs.last_input_error
            else:
                error = None
                self.stats.image_rate.add(self._stats_now())
                transport_ms = (now - stamp) * 1e3 if stamp > 0 else float("nan")
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
        self._apply_command(msg.data)

    def _apply_command(self, text: str) -> None:
        with self._lock:
            if self.inputs is None:
                self._held_command = text
                return
            outcome = self.inputs.command(text)
            error = self.inputs.last_input_error
            command = self.runtime.command
        if outcome == "accepted":
            self.get_logger().info(f"command: {command!r}")
        elif outcome == "stopped":
            self.get_logger().info(f"{error}: stopped without inference")
        elif outcome == "rejected":
            self.get_logger().warning(f"{error}; stopped until a valid command arrives",
                                      throttle_duration_sec=1.0)

    def _set_enabled(self, enabled: bool, source: str) -> None:
        with self._lock:
            if self.inputs is None:
                self._held_enable = enabled
            else:
                self.inputs.enable(enabled)
        self.get_logger().info(f"{'enabled' if enabled else 'DISABLED (e-stop)'} by {source}")

    def _on_enable_msg(self, msg: Bool) -> None:
        self._set_enabled(msg.data, "topic")

    def _on_enable_srv(self, request, response):
        self._set_enabled(request.data, "service")
        response.success, response.message = True, "enabled" if request.data else "disabled"
        return response

    def _on_reset(self, request, response):
        with self._lock:
            if self.runtime is None:
                response.success, response.message = False, "not configured"
                return response
            runtime, control = self.runtime, self.control
            control.player.clear()
        runtime.reset()
        response.success, response.message = True, "history cleared"
        return response

    # -- inference worker (off the executor) -------------------------------------------------
    def _worker_loop(self) -> None:
        name_thread("vla_inference")
        while not self._worker_stop.is_set():
            if not self._wake.wait(timeout=0.1):
                continue
            self._wake.clear()
            with self._lock:
                item, self._pending = self._pending, None
                pipeline = self.pipeline
            if item is None or pipeline is None or self._worker_stop.is_set():
                continue
            msg, stamp, transport_ms = item
            outcome = pipeline.process(msg, stamp, self._now, transport_ms)
            if outcome.status == BAD_IMAGE:
                self.get_logger().warning(f"malformed image: {outcome.error}",
                                          throttle_duration_sec=2.0)
            elif outcome.status == INFERENCE_ERROR:
                self.get_logger().error(f"inference failed: {outcome.error}",
                                        throttle_duration_sec=2.0)

    def _on_step(self, meta: ChunkMeta) -> None:
        """A step reached the control loop (called under the lock)."""
        self.stats.inference_rate.add(self._stats_now())
        self.stats.latency["preprocess"].add(meta.preprocess_ms)
        self.stats.latency["inference"].add(meta.inference_ms)

    # -- control (control thread) ------------------------------------------------------------
    def _tick(self, stalled: bool) -> np.ndarray:
        with self._lock:
            now, mono = self._now(), time.monotonic()
            jump = self.guard.check(now, mono) if not stalled else None
            late = None
            self._ticks += 1
            if not stalled:
                # Rate and jitter on the clock that schedules the ticks (ROS time under
                # use_sim_time); stall ticks are a stop of their own, reported as such.
                tick_time = self._stats_now()
                last_tick = self.stats.jitter.last
                self.stats.jitter.tick(tick_time)
                self.stats.control_rate.add(tick_time)
                if last_tick is not None and tick_time - last_tick > 3 * self.stats.jitter.period:
                    late = (tick_time - last_tick, self.gc_pauses.max_ms)
            control = self.control
            if control is None:
                self._last_result = None
                return np.zeros(3)
            if jump:
                control.on_clock_jump(jump)
            result = control.tick(now, "clock_stalled" if stalled else None)
            self._last_result = result
            meta = result.first_use
            e2e_ms = (now - meta.image_stamp) * 1e3 if meta and meta.image_stamp > 0 else None
            if e2e_ms is not None:
                self.stats.latency["end_to_end"].add(e2e_ms)
        if jump:
            self.get_logger().warning(f"{jump}: stopped until fresh input")
        if late is not None:
            self.get_logger().warning(f"control tick {late[0] * 1e3:.0f} ms after the previous "
                                      f"one (longest GC pause so far {late[1]:.1f} ms)",
                                      throttle_duration_sec=1.0)
        if meta is not None:
            timing = Float64MultiArray()
            timing.layout.dim = [MultiArrayDimension(label=",".join(TIMING_LABELS),
                                                     size=len(TIMING_LABELS), stride=1)]
            timing.data = [meta.transport_ms, meta.preprocess_ms, meta.inference_ms,
                           e2e_ms if e2e_ms is not None else float("nan")]
            self._timing_out = timing  # published right after this tick's Twist
        return result.twist

    def _publish_twist(self, v) -> None:
        self.cmd_pub.publish(_twist(v))
        # The Twist is what the deadline is for; the step's timing message follows it.
        timing, self._timing_out = self._timing_out, None
        if timing is not None:
            self.timing_pub.publish(timing)

    def _on_tick_error(self, exc: Exception) -> None:
        self.get_logger().error(f"control tick failed ({type(exc).__name__}: {exc}); "
                                "published zero", throttle_duration_sec=2.0)

    def publish_zeros(self) -> bool:
        """Final zeros: the control thread publishes nothing after them (see ControlThread)."""
        return self.control_thread.finish()

    # -- diagnostics -------------------------------------------------------------------------
    def _on_diagnostics(self) -> None:
        cfg = self.config
        self._refresh_incompatible()
        with self._lock:
            backend, control, last = self.backend, self.control, self._last_result
            info = backend.describe() if backend is not None else None
            if control is None:
                reason = "unconfigured" if self.lifecycle != "finalized" else "finalized"
                if self.startup_error:
                    reason = f"configure failed: {self.startup_error}"
            else:
                reason = last.stop_reason if last else None
            control_values = {
                "lifecycle": self.lifecycle, "stop_reason": reason, "ticks": self._ticks,
                "clock_jumps": self.guard.jumps,
                "gc_pause_max_ms": round(self.gc_pauses.max_ms, 1),
                "control_thread": self.control_thread.scheduling,
                "gc_collections": self.gc_pauses.count,
                "command": self.runtime.command if self.runtime else None,
                "instruction_blind": self.runtime.instruction_note() if self.runtime else "",
                "enabled": control.enabled if control else None,
                "twist": ", ".join(f"{x:.3f}" for x in last.twist) if last else "",
                "incompatible_qos": dict(self.incompatible_qos),
                "duplicate_inputs": sum(g.duplicates for g in self.input_gates.values()),
                "enable_topic": self.input_topics.get("enable"),
            }
            if control is not None:
                control_values.update(
                    fault=control.fault, last_stop_reason=control.last_stop_reason,
                    stop_counts=dict(control.stop_counts), last_clock_jump=control.last_clock_jump,
                    last_error=self.inputs.last_error,
                    last_input_error=self.inputs.last_input_error)
            values = info.as_values() if info else {"backend": cfg.backend.backend,
                                                    "state": self.lifecycle}
            stats, now = self.stats.snapshot(), self._stats_now()
        # Built outside the lock: percentiles of every window take ~1 ms, and the control tick
        # takes the same lock.
        statuses = build_statuses(self.get_name(), cfg.diagnostics.hardware_id or
                                  (info.device if info else cfg.backend.device),
                                  cfg.diagnostics, stats, values,
                                  info.warnings if info else [], control_values, now)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        for s in statuses:
            array.status.append(DiagnosticStatus(
                level=LEVELS[s.level], name=s.name, message=s.message, hardware_id=s.hardware_id,
                values=[KeyValue(key=k, value=str(v)) for k, v in s.values.items()]))
        self.diag_pub.publish(array)

    # -- live parameters ---------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: plain(p.value, isinstance(PARAMETERS[p.name]["default"], list))
                   for p in params if p.name in PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = self.config.with_params(changes)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = new
        with self._lock:
            self.command_filter.configure(new.control.stop_phrases,
                                          new.control.allowed_instructions)
            self.guard.jump_threshold_s = new.control.time_jump_threshold_s
            if self.control is not None:
                self.control.configure(new.control, new.safety)
                self.runtime.post.update(new.action)
        self.get_logger().info(f"parameters updated: {changes}")
        return SetParametersResult(successful=True)
