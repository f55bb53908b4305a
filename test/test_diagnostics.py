"""Diagnostic statuses: start in ERROR, thresholds, warnings, input and control levels."""

from __future__ import annotations

import pytest

from mobile_vla_node.backends.base import BackendInfo
from mobile_vla_node.core.config import DiagnosticsConfig
from mobile_vla_node.core.diagnostics import ERROR, OK, WARN, NodeStats, build_statuses

NODE = "vla_node"
CFG = DiagnosticsConfig(inference_warn_ms=100.0, inference_error_ms=500.0, jitter_warn_ms=5.0,
                        input_rate_warn_hz=5.0)
BACKEND = BackendInfo(name="torch", device="cpu (cpu)", precision="fp32",
                      provider="torch 2.x", model="tiny", extra={"parameters": 123})


def statuses(stats, control=None, warnings=(), now=100.0, cfg=CFG):
    out = build_statuses(NODE, "hw0", cfg, stats, BACKEND.as_values(), list(warnings),
                         control or {}, now)
    by_name = {s.name: s for s in out}
    assert list(by_name) == [f"{NODE}: inference", f"{NODE}: inputs", f"{NODE}: control"]
    for s in out:
        assert s.hardware_id == "hw0"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.values.items()), \
            s.values
    return by_name


def inference(stats, **kw):
    return statuses(stats, **kw)[f"{NODE}: inference"]


def inputs(stats, **kw):
    return statuses(stats, **kw)[f"{NODE}: inputs"]


def control_status(stats, **kw):
    return statuses(stats, **kw)[f"{NODE}: control"]


def live_stats(inference_ms=20.0, image_hz=30.0, now=100.0):
    """Stats of a node receiving images at ``image_hz`` and inferring in ``inference_ms``."""
    stats = NodeStats(window=50, control_period_s=0.05)
    for i in range(40):
        stats.latency["inference"].add(inference_ms)
        stats.latency["preprocess"].add(1.0)
        stats.latency["transport"].add(2.0)
        stats.latency["end_to_end"].add(inference_ms + 5.0)
        stats.image_rate.add(now - (39 - i) / image_hz)
        stats.inference_rate.add(now - (39 - i) / image_hz)
        stats.control_rate.add(now - (39 - i) * 0.05)
        stats.jitter.tick(now - (39 - i) * 0.05)
    stats.counters["frames_received"] = 40
    stats.counters["steps"] = 40
    return stats


MOVING = {"command": "go to the red box", "stop_reason": None, "ticks": 40, "enabled": True,
          "stop_counts": {"no_command": 1}, "twist": "0.100, 0.000, 0.000"}


def test_all_three_start_in_error_no_data_yet():
    out = statuses(NodeStats())
    for s in out.values():
        assert s.level == ERROR
        assert s.message == "no data yet"
    assert out[f"{NODE}: inference"].values["inference_p99_ms"] == "n/a"
    assert out[f"{NODE}: control"].values["jitter_p99_ms"] == "n/a"
    assert out[f"{NODE}: inference"].values["backend"] == "torch"
    assert out[f"{NODE}: inference"].values["parameters"] == "123"


def test_control_no_data_before_the_first_tick_even_with_other_data():
    stats = live_stats()
    assert control_status(stats, control={**MOVING, "ticks": 0}).level == ERROR
    assert control_status(stats, control={**MOVING, "ticks": 0}).message == "no data yet"
    assert control_status(stats, control=MOVING).level == OK


@pytest.mark.parametrize("p99, level, words", [
    (50.0, OK, "p99 50.0 ms"),
    (99.9, OK, "p99 99.9 ms"),
    (100.0, OK, "p99 100.0 ms"),
    (150.0, WARN, "150.0 ms > 100.0 ms"),
    (500.0, WARN, "500.0 ms > 100.0 ms"),
    (650.0, ERROR, "650.0 ms > 500.0 ms"),
])
def test_inference_thresholds(p99, level, words):
    s = inference(live_stats(inference_ms=p99), control=MOVING)
    assert s.level == level
    assert words in s.message
    assert s.values["inference_p99_ms"] == f"{p99:.2f}"
    assert s.values["steps"] == "40"


def test_live_threshold_change_changes_the_level():
    stats = live_stats(inference_ms=150.0)
    assert inference(stats, control=MOVING).level == WARN
    relaxed = DiagnosticsConfig(inference_warn_ms=200.0, inference_error_ms=300.0)
    assert inference(stats, control=MOVING, cfg=relaxed).level == OK
    strict = DiagnosticsConfig(inference_warn_ms=50.0, inference_error_ms=120.0)
    assert inference(stats, control=MOVING, cfg=strict).level == ERROR


def test_backend_warnings_make_inference_warn():
    s = inference(live_stats(), control=MOVING,
                  warnings=["fell back to CPUExecutionProvider", "fp16 on CPU"])
    assert s.level == WARN
    assert s.message == "fell back to CPUExecutionProvider; fp16 on CPU"
    assert inference(live_stats(), control=MOVING).level == OK


def test_inference_error_fault_is_error():
    s = inference(live_stats(), control={**MOVING, "fault": "inference_error",
                                         "last_error": "CUDA out of memory"})
    assert s.level == ERROR and "CUDA out of memory" in s.message


def test_inputs_levels():
    stats = live_stats(image_hz=30.0)
    ok = inputs(stats, control=MOVING)
    assert ok.level == OK, ok.message
    assert ok.values["image_rate_hz"] == "30.00"
    assert ok.values["frames_received"] == "40"
    assert ok.values["command"] == "go to the red box"
    bad = inputs(stats, control={**MOVING, "fault": "bad_image",
                                 "last_input_error": "step 8 < width 3 x 3 bytes for rgb8"})
    assert bad.level == ERROR and "step 8 < width 3" in bad.message
    assert bad.values["last_input_error"] == "step 8 < width 3 x 3 bytes for rgb8"
    rejected = inputs(stats, control={**MOVING, "command": None,
                                      "last_input_error": "command rejected: empty instruction"})
    assert rejected.level == WARN and "command rejected" in rejected.message
    stale = inputs(stats, control={**MOVING, "stop_reason": "image_stale",
                                   "last_stop_reason": "image_stale"})
    assert stale.level == ERROR and stale.message == "images stale"
    no_command = inputs(stats, control={**MOVING, "command": None})
    assert no_command.level == WARN and no_command.message == "no command"
    assert no_command.values["command"] == ""
    slow = inputs(live_stats(image_hz=2.0), control=MOVING)
    assert slow.level == WARN and "2.00 Hz < 5.0 Hz" in slow.message


def test_inputs_image_rate_goes_stale_to_zero():
    stats = live_stats(image_hz=30.0, now=100.0)
    s = inputs(stats, control=MOVING, now=110.0)   # no image for ~10 s
    assert s.values["image_rate_hz"] == "0.00"
    assert s.level == WARN


@pytest.mark.parametrize("reason, level", [
    ("no_command", WARN), ("disabled", WARN), ("no_action", WARN),
    ("image_stale", ERROR), ("no_image", ERROR), ("action_stale", ERROR),
    ("non_finite", ERROR), ("bad_image", ERROR), ("inference_error", ERROR),
])
def test_control_stop_levels(reason, level):
    s = control_status(live_stats(), control={**MOVING, "stop_reason": reason,
                                              "last_stop_reason": reason,
                                              "stop_counts": {reason: 2, "no_command": 1}})
    assert s.level == level
    assert s.message == f"stopped: {reason}"
    assert s.values["safety_state"] == "stopped"
    assert s.values["stop_reason"] == reason
    counts = {reason: 2, "no_command": 1}
    assert s.values["stop_counts"] == ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def test_control_moving_and_jitter():
    stats = live_stats()
    s = control_status(stats, control=MOVING)
    assert s.level == OK and s.message == "moving"
    assert s.values["safety_state"] == "moving"
    assert s.values["deadline_misses"] == "0"
    assert s.values["enabled"] == "True"
    assert s.values["twist"] == "0.100, 0.000, 0.000"
    assert s.values["end_to_end_p99_ms"] == "25.00"
    assert float(s.values["control_rate_hz"]) == pytest.approx(20.0, abs=0.01)
    for t in (100.05, 100.11, 100.14):      # on time, 10 ms late, 40 ms early
        stats.jitter.tick(t)
    s = control_status(stats, control=MOVING)
    assert s.level == WARN and "jitter" in s.message
    stats.jitter.tick(100.25)               # 110 ms gap: a deadline miss
    s = control_status(stats, control=MOVING)
    assert s.level == WARN and s.message == "1 deadline misses in the last 5 s"
    assert s.values["deadline_misses"] == "1"
    assert s.values["deadline_misses_recent"] == "1"


def test_recent_misses_and_rate_drops_are_not_averaged_away():
    stats = live_stats()
    stats.jitter.tick(100.5)                # one 500 ms gap after 40 good ticks
    stats.control_rate.add(100.5)
    s = control_status(stats, control=MOVING, now=100.5)
    assert s.level == WARN and s.message == "control rate 15.5 Hz < 90 % of 20 Hz"
    assert s.values["deadline_misses_recent"] == "1"
    # Five seconds later without a miss: OK again, though the total still counts it.
    for i in range(1, 101):
        stats.jitter.tick(100.5 + i * 0.05)
        stats.control_rate.add(100.5 + i * 0.05)
    s = control_status(stats, control=MOVING, now=105.5)
    assert s.level == OK and s.values["deadline_misses"] == "1"
    # The rate over the last 2 s halves: ERROR at once, whatever the long-run average says.
    for i in range(1, 17):
        stats.control_rate.add(105.5 + i * 0.125)
    s = control_status(stats, control=MOVING, now=107.5)
    assert float(s.values["control_rate_hz"]) == pytest.approx(8.0)
    assert s.level == ERROR and "control rate" in s.message


def test_only_malformed_frames_report_the_bad_input():
    stats = NodeStats()
    stats.counters["malformed_images"] = 5
    s = inputs(stats, control={**MOVING, "fault": "bad_image",
                               "last_input_error": "data has 10 bytes, expected 18"})
    assert s.level == ERROR
    assert "data has 10 bytes" in s.message


def test_incompatible_publishers_warn_on_inputs():
    stats = live_stats(image_hz=30.0)
    assert inputs(stats, control=MOVING).values["incompatible_publishers"] == ""
    found = inputs(stats, control={**MOVING, "duplicate_inputs": 3, "incompatible_qos": {
        "/vla/command": (2, "RELIABILITY"), "/vla/enable": (1, "DURABILITY")}})
    assert found.level == WARN
    assert found.values["incompatible_publishers"] == ("/vla/command: 2 (RELIABILITY); "
                                                       "/vla/enable: 1 (DURABILITY)")
    assert "/vla/command: 2 (RELIABILITY)" in found.message
    assert found.values["duplicate_inputs"] == "3"
    # A fault outranks it.
    bad = inputs(stats, control={**MOVING, "fault": "bad_image", "incompatible_qos": {
        "/vla/command": (1, "RELIABILITY")}})
    assert bad.level == ERROR


def test_an_incompatible_publisher_on_the_enable_topic_is_an_error():
    """Its e-stops can never arrive: ERROR, ahead of every other input problem."""
    stats = live_stats(image_hz=30.0)
    qos = {"/robot/vla/command": (1, "RELIABILITY"), "/robot/vla/enable": (2, "RELIABILITY")}
    found = inputs(stats, control={**MOVING, "enable_topic": "/robot/vla/enable",
                                   "incompatible_qos": qos})
    assert found.level == ERROR
    assert "e-stop" in found.message and "/robot/vla/enable: 2 (RELIABILITY)" in found.message
    bad = inputs(stats, control={**MOVING, "enable_topic": "/robot/vla/enable",
                                 "fault": "bad_image", "incompatible_qos": qos})
    assert bad.level == ERROR and "e-stop" in bad.message
    # Only the command topic: still a warning.
    command_only = inputs(stats, control={**MOVING, "enable_topic": "/robot/vla/enable",
                                          "incompatible_qos": {"/robot/vla/command": qos[
                                              "/robot/vla/command"]}})
    assert command_only.level == WARN
