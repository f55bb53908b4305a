"""Node statistics and the diagnostic statuses built from them (ROS-free).

Three statuses, one per concern, named "<node>: inference", "<node>: inputs", "<node>: control".
Each starts in ERROR "no data yet" and gets its level from the configured thresholds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .config import DiagnosticsConfig
from .timing import LatencyWindow, PeriodJitter, RateMeter, RecentEvents

OK, WARN, ERROR = 0, 1, 2
# Stops that are the operator's choice or normal start-up, not faults.
BENIGN_STOPS = ("disabled", "no_command", "no_action", "inactive", "stop_command", "unconfigured",
                "finalized")
# The control rate as diagnostics judge it: ticks over this many recent seconds.
RECENT_RATE_S = 2.0
STAGES = ("transport", "preprocess", "inference", "end_to_end")


@dataclass
class Status:
    """One DiagnosticStatus worth of data."""

    name: str
    level: int
    message: str
    hardware_id: str
    values: dict


@dataclass
class NodeStats:
    """Latency windows, rates and counters the node updates under its lock."""

    window: int = 200
    control_period_s: float = 0.05
    counters: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.latency = {stage: LatencyWindow(self.window) for stage in STAGES}
        self.image_rate = RateMeter()
        self.inference_rate = RateMeter()
        self.control_rate = RecentEvents(RECENT_RATE_S)
        self.jitter = PeriodJitter(self.control_period_s, self.window)

    def snapshot(self) -> NodeStats:
        """A copy of every window, rate and counter, taken under the node's lock (tens of us).

        The statuses are then built from it outside the lock: building them takes ~1 ms
        (percentiles of five windows), which the control tick must not wait for.
        """
        out = NodeStats.__new__(NodeStats)
        out.window, out.control_period_s = self.window, self.control_period_s
        out.counters = Counter(self.counters)
        out.latency = {stage: w.copy() for stage, w in self.latency.items()}
        out.image_rate, out.inference_rate = self.image_rate.copy(), self.inference_rate.copy()
        out.control_rate, out.jitter = self.control_rate.copy(), self.jitter.copy()
        return out


def _latency_values(stats: NodeStats, stages) -> dict:
    values = {}
    for stage in stages:
        summary = stats.latency[stage].summary()
        for key in ("p50", "p95", "p99", "max"):
            values[f"{stage}_{key}_ms"] = f"{summary[key]:.2f}" if summary else "n/a"
    return values


def build_statuses(node: str, hardware_id: str, cfg: DiagnosticsConfig, stats: NodeStats,
                   backend_values: dict, backend_warnings: list, control: dict,
                   now_monotonic: float) -> list[Status]:
    """Statuses for the inference, inputs and control concerns."""
    c = stats.counters
    return [
        _inference_status(f"{node}: inference", hardware_id, cfg, stats, backend_values,
                          backend_warnings, control, now_monotonic),
        _inputs_status(f"{node}: inputs", hardware_id, cfg, stats, control, now_monotonic, c),
        _control_status(f"{node}: control", hardware_id, cfg, stats, control, now_monotonic),
    ]


def _inference_status(name, hw, cfg, stats, backend_values, warnings, control, now):
    c = stats.counters
    values = dict(backend_values)
    values.update(_latency_values(stats, ("preprocess", "inference")))
    values.update({"inference_rate_hz": f"{stats.inference_rate.rate(now):.2f}",
                   "steps": str(c["steps"]), "inference_errors": str(c["inference_errors"]),
                   "non_finite_actions": str(c["non_finite_actions"]),
                   "discarded_steps": str(c["discarded_steps"])})
    # Whether the current command's tokens reach the action token (token layout, docs/CHECKPOINTS)
    values["instruction_blind"] = control.get("instruction_blind") or "n/a"
    p99 = stats.latency["inference"].summary().get("p99")
    if control.get("fault") == "inference_error":
        level, msg = ERROR, f"inference failing: {control.get('last_error', '')}"
    elif p99 is None:
        level, msg = ERROR, "no data yet"
    elif p99 > cfg.inference_error_ms:
        level, msg = ERROR, f"inference p99 {p99:.1f} ms > {cfg.inference_error_ms} ms"
    elif p99 > cfg.inference_warn_ms:
        level, msg = WARN, f"inference p99 {p99:.1f} ms > {cfg.inference_warn_ms} ms"
    elif warnings:
        level, msg = WARN, "; ".join(warnings)
    else:
        level, msg = OK, f"inference p99 {p99:.1f} ms on {backend_values.get('provider', '')}"
    return Status(name, level, msg, hw, values)


def _inputs_status(name, hw, cfg, stats, control, now, c):
    values = _latency_values(stats, ("transport",))
    rate = stats.image_rate.rate(now)
    values.update({"image_rate_hz": f"{rate:.2f}", "frames_received": str(c["frames_received"]),
                   "frames_dropped": str(c["frames_dropped"]),
                   "malformed_images": str(c["malformed_images"]),
                   "rejected_commands": str(c["rejected_commands"]),
                   "command": control.get("command") or "", "last_input_error":
                   control.get("last_input_error", "")})
    # Publishers whose QoS no reader of the node matches: {topic: (publishers, policy)}.
    incompatible = control.get("incompatible_qos") or {}
    values["incompatible_publishers"] = "; ".join(
        f"{topic}: {count} ({policy})" for topic, (count, policy) in sorted(incompatible.items()))
    # Copies of a latching publisher's messages that both readers got (applied once).
    values["duplicate_inputs"] = str(control.get("duplicate_inputs", 0))
    # The node's resolved enable topic: an incompatible publisher there is an e-stop that can
    # never arrive, so it outranks everything else.
    enable_topic = control.get("enable_topic")
    if enable_topic in incompatible:
        count, policy = incompatible[enable_topic]
        level, msg = ERROR, (f"e-stop publisher with incompatible QoS (its e-stops never "
                             f"arrive) on {enable_topic}: {count} ({policy})")
    elif control.get("fault") == "bad_image":
        level, msg = ERROR, f"bad input: {control.get('last_input_error', '')}"
    elif c["frames_received"] == 0:
        level, msg = ERROR, "no data yet"
    elif control.get("last_stop_reason") == "image_stale" and control.get("stop_reason"):
        level, msg = ERROR, "images stale"
    elif incompatible:
        level, msg = WARN, ("publisher with incompatible QoS (its messages never arrive) on "
                            + values["incompatible_publishers"])
    elif rate < cfg.input_rate_warn_hz:
        level, msg = WARN, f"image rate {rate:.2f} Hz < {cfg.input_rate_warn_hz} Hz"
    elif not control.get("command"):
        error = control.get("last_input_error", "")
        level, msg = WARN, (error if error.startswith("command rejected") else "no command")
    else:
        level, msg = OK, f"images at {rate:.1f} Hz"
    return Status(name, level, msg, hw, values)


def _control_status(name, hw, cfg, stats, control, now):
    jitter = stats.jitter.deviation.summary()
    values = _latency_values(stats, ("end_to_end",))
    nominal = 1.0 / stats.control_period_s
    rate = stats.control_rate.rate(now)
    recent_misses = stats.jitter.recent_misses.count(now)
    values.update({
        "lifecycle_state": control.get("lifecycle", ""),
        "control_rate_hz": f"{rate:.2f}",  # over the last RECENT_RATE_S seconds
        "control_rate_setting_hz": f"{nominal:g}",
        "jitter_p99_ms": f"{jitter['p99']:.3f}" if jitter else "n/a",
        "jitter_max_ms": f"{jitter['max']:.3f}" if jitter else "n/a",
        "deadline_misses": str(stats.jitter.misses),
        "deadline_misses_recent": str(recent_misses),  # over the last recent_misses.span
        "max_tick_gap_ms": f"{stats.jitter.max_gap_s * 1e3:.1f}",
        "clock_jumps": str(control.get("clock_jumps", 0)),
        "gc_pause_max_ms": str(control.get("gc_pause_max_ms", "n/a")),
        "control_thread": str(control.get("control_thread", "")),
        "gc_collections": str(control.get("gc_collections", "n/a")),
        "last_clock_jump": control.get("last_clock_jump", ""),
        "safety_state": "stopped" if control.get("stop_reason") else "moving",
        "stop_reason": control.get("stop_reason") or "",
        "last_stop_reason": control.get("last_stop_reason") or "",
        "stop_counts": ", ".join(f"{k}={v}" for k, v in sorted(control.get("stop_counts",
                                                                            {}).items())),
        "enabled": str(control.get("enabled")),
        "twist": control.get("twist", ""),
    })
    reason = control.get("stop_reason")
    running_s = now - stats.control_rate.first if stats.control_rate.first is not None else 0.0
    if control.get("ticks", 0) == 0:
        level, msg = ERROR, "no data yet"
    elif running_s >= RECENT_RATE_S and rate < 0.5 * nominal:
        level, msg = ERROR, f"control rate {rate:.1f} Hz < half of {nominal:g} Hz"
    elif reason and reason not in BENIGN_STOPS:
        level, msg = ERROR, f"stopped: {reason}"
    elif running_s >= RECENT_RATE_S and rate < 0.9 * nominal:
        level, msg = WARN, f"control rate {rate:.1f} Hz < 90 % of {nominal:g} Hz"
    elif recent_misses:
        level, msg = WARN, (f"{recent_misses} deadline misses in the last "
                            f"{stats.jitter.recent_misses.span:g} s")
    elif reason:
        level, msg = WARN, f"stopped: {reason}"
    elif jitter and jitter["p99"] > cfg.jitter_warn_ms:
        level, msg = WARN, f"control jitter p99 {jitter['p99']:.2f} ms > {cfg.jitter_warn_ms}"
    else:
        level, msg = OK, "moving"
    return Status(name, level, msg, hw, values)
