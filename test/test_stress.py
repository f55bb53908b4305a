"""vla_stress: the pure parts (timing, shutdown order, targets, JSON) and one smoke run."""

import json
import os
import subprocess
import sys

import pytest

from mobile_vla_node.stress import analysis, report
from mobile_vla_node.stress.cli import parse_args
from mobile_vla_node.stress.recorder import health_summary
from mobile_vla_node.stress.scenarios import SIGNAL_KINDS, signals_summary

PERIOD = 0.05


def ticks(start, n, period=PERIOD):
    return [start + i * period for i in range(n)]


# -- timing ---------------------------------------------------------------------------------------
def test_regular_ticks_are_on_rate_with_no_late_ticks():
    t = analysis.timing(ticks(10.0, 201), PERIOD, 10.0, 20.0)
    assert t["twists"] == 201
    assert t["rate_hz"] == pytest.approx(20.1, abs=0.01)
    assert t["max_gap_ms"] == pytest.approx(50.0, abs=0.1)
    assert t["late_ticks"] == 0 and t["gaps_over_3_periods"] == 0 and t["missing_ticks"] == 0


def test_a_stall_counts_as_late_ticks_missing_ticks_and_a_gap_over_3_periods():
    times = ticks(0.0, 20) + ticks(0.95 + 0.25, 20)  # 250 ms stall after 0.95 s
    t = analysis.timing(times, PERIOD, 0.0, times[-1])
    assert t["max_gap_ms"] == pytest.approx(250.0, abs=0.1)
    assert t["max_gap_periods"] == pytest.approx(5.0)
    assert t["late_ticks"] == 1 and t["gaps_over_3_periods"] == 1
    assert t["missing_ticks"] == 4
    assert t["worst_gaps"][0] == [0.95, 250.0]


def test_silence_at_the_window_edges_counts_as_a_gap_and_lowers_the_rate():
    times = ticks(0.0, 21)  # Twists for 1 s, then nothing until 3 s
    t = analysis.timing(times, PERIOD, 0.0, 3.0)
    assert t["max_gap_ms"] == pytest.approx(2000.0, abs=0.1)
    assert t["rate_hz"] == pytest.approx(7.0)
    assert analysis.timing([], PERIOD, 0.0, 1.0)["max_gap_ms"] == pytest.approx(1000.0)


def test_late_threshold_is_1_5_periods():
    just_under = [0.0, 0.074, 0.124]
    just_over = [0.0, 0.076, 0.126]
    assert analysis.timing(just_under, PERIOD, 0.0, 0.124)["late_ticks"] == 0
    assert analysis.timing(just_over, PERIOD, 0.0, 0.126)["late_ticks"] == 1


def test_worst_second():
    times = ticks(0.0, 20) + ticks(1.0, 5, 0.2) + ticks(2.0, 20)
    assert analysis.worst_second(times, 0.0, 3.0) == 5
    assert analysis.worst_second(times, 0.0, 0.5) is None


# -- shutdown order -------------------------------------------------------------------------------
def tw(t, x=0.0):
    return (t, x, 0.0, 0.0)


def test_nonzero_after_the_first_shutdown_zero_is_counted():
    twists = [tw(0.0, 0.3), tw(0.05, 0.3), tw(0.11), tw(0.12, 0.3), tw(0.13)]
    out = analysis.after_first_zero(twists, t_signal=0.1)
    assert out["first_zero_s"] == pytest.approx(0.01)
    assert out["nonzero_after_zero"] == 1 and out["nonzero_after_zero_max"] == 0.3
    assert out["last_zero"] is True


def test_clean_shutdown_and_missing_zero():
    clean = analysis.after_first_zero([tw(0.0, 0.3), tw(0.2), tw(0.22)], 0.1)
    assert clean["nonzero_after_zero"] == 0 and clean["last_zero"]
    silent = analysis.after_first_zero([tw(0.0, 0.3), tw(0.05, 0.3)], 0.1)
    assert silent["first_zero_s"] is None and not silent["last_zero"]
    assert silent["last_twist"] == [0.3, 0.0, 0.0]


def test_zero_before_the_signal_is_not_the_shutdown_zero():
    out = analysis.after_first_zero([tw(0.0), tw(0.05, 0.3), tw(0.2)], 0.1)
    assert out["first_zero_s"] == pytest.approx(0.1)


def test_first_zero_after_last_frame():
    twists = [tw(0.0, 0.3), tw(0.05, 0.3), tw(0.1, 0.3), tw(0.6), tw(0.65)]
    out = analysis.first_zero_after(twists, 0.07)
    assert out["moving_at_last_frame"] and out["first_zero_ms"] == pytest.approx(530.0)
    assert out["nonzero_after_last_frame"] == 1
    assert analysis.first_zero_after(twists[:3], 0.07)["first_zero_ms"] is None


# -- RSS, diagnostics, publishers -----------------------------------------------------------------
def test_rss_summary_and_cpu_percent():
    samples = [(0.0, 500.0, 10.0), (1.0, 520.0, 10.5), (2.0, 700.0, 11.0), (3.0, 550.0, 11.5)]
    out = analysis.rss_summary(samples, 0.5, 3.0)
    assert out["before_mb"] == 500.0 and out["after_mb"] == 550.0 and out["peak_mb"] == 700.0
    assert out["change_pct"] == pytest.approx(10.0)
    assert out["cpu_pct"] == pytest.approx(50.0)
    assert analysis.rss_series(samples, 0.0, step_s=2.0) == [[0.0, 500.0], [2.0, 700.0]]


def snap(misses, level, malformed=0):
    return {"vla_node: control": {"level": level, "message": "m", "values": {
                "control_rate_hz": "19.5", "deadline_misses": str(misses),
                "jitter_p99_ms": "3.1"}},
            "vla_node: inputs": {"level": 0, "message": "", "values": {
                "malformed_images": str(malformed), "rejected_commands": "0"}}}


def test_diagnostics_summary_reports_end_values_and_window_deltas():
    out = analysis.diagnostics_summary(snap(4, 0), snap(45, 1, malformed=30))
    assert out["control_rate_hz"] == 19.5 and out["deadline_misses"] == 45
    assert out["deadline_misses_in_window"] == 41
    assert out["malformed_images_in_window"] == 30
    assert out["control_level_name"] == "WARN"
    empty = analysis.diagnostics_summary(None, None)
    assert empty["control_rate_hz"] is None and empty["control_level"] is None


def test_publish_summary():
    out = analysis.publish_summary(ticks(0.0, 101, 0.01) + [1.05], 100.0)
    assert out["achieved_hz"] == pytest.approx(101 / 1.05, abs=0.01)
    assert out["max_interval_ms"] == pytest.approx(50.0, abs=0.1)
    assert analysis.publish_summary([1.0], 0.0) == {"nominal_hz": 0.0, "published": 1}


def test_recorder_health_summary():
    out = health_summary([1.0, 2.0, 3.0, 9.0], [0.001, 0.002, 0.030, 0.5], 0.0, 5.0)
    assert out["samples"] == 3 and out["lag_max_ms"] == pytest.approx(30.0)
    assert health_summary([], [], 0.0, 1.0) == {"samples": 0}


# -- targets, table, JSON -------------------------------------------------------------------------
def load_result(name="malformed-flood", times=None, rss_change=5.0, hogs=2):
    times = times if times is not None else ticks(0.0, 401)
    whole = analysis.timing(times, PERIOD, 0.0, 20.0)
    return {
        "scenario": name, "machine": {"cpus": 2}, "cpu_hogs": {"count": hogs},
        "backend": "torch", "control_rate_hz": 20.0,
        "twists": {"load": whole, "tail": analysis.timing(times, PERIOD, 20.0, 20.0),
                   "whole": whole, "fewest_in_one_second": 20},
        "rss": {"before_mb": 500.0, "after_mb": 500.0 * (1 + rss_change / 100),
                "change_pct": rss_change},
        "diagnostics": {"end_of_load": analysis.diagnostics_summary(snap(0, 0), snap(0, 0))},
        "publishers": {"flood": {"nominal_hz": 20.0, "achieved_hz": 12.0, "published": 240}},
        "recorder": {"lag_p99_ms": 2.0, "lag_max_ms": 40.0},
        "shutdown": {"exit_code": 0, "first_zero_s": 0.01, "nonzero_after_zero": 0,
                     "last_zero": True},
    }


def by_name(targets):
    return {t["target"]: t["pass"] for t in targets}


def test_load_targets_pass_on_a_steady_stream():
    assert by_name(report.evaluate(load_result())) == {
        "twist_rate_hz": True, "max_gap_ms": True, "rss_change_pct": True}


def test_load_targets_fail_on_a_gap_a_low_rate_or_rss_growth():
    times = ticks(0.0, 100) + ticks(5.2, 200)  # one 250 ms gap and 100 ticks short
    t = by_name(report.evaluate(load_result(times=times, rss_change=-12.0)))
    assert t == {"twist_rate_hz": False, "max_gap_ms": False, "rss_change_pct": False}
    assert "rss_change_pct" not in by_name(report.evaluate(load_result("camera-1080p")))


def test_signal_targets():
    runs = [{"signals": list(k), "exit_code": 0, "nonzero_after_zero": 0, "last_zero": True,
             "first_zero_s": 0.01} for k in SIGNAL_KINDS]
    good = {"scenario": "signals", "summary": signals_summary(runs)}
    assert all(by_name(report.evaluate(good)).values())
    runs[2] = dict(runs[2], exit_code=-6)
    runs[3] = dict(runs[3], nonzero_after_zero=2)
    bad = {"scenario": "signals", "summary": signals_summary(runs)}
    assert by_name(report.evaluate(bad)) == {"nonzero_after_first_zero": False,
                                              "exit_code_0": False, "last_twist_zero": True}
    assert bad["summary"]["by_pattern"]["SIGINT+SIGINT"]["exit_codes"] == {"-6": 1}


def test_another_cmd_vel_publisher_on_the_domain_is_reported():
    result = load_result()
    result["graph_publishers_max"] = {"/cmd_vel": 2}
    assert any("another node published /cmd_vel" in n for n in report.notes(result))
    assert not any("another node" in n for n in report.notes(load_result()))
    runs = [{"signals": ["SIGINT"], "exit_code": 0, "nonzero_after_zero": 0, "last_zero": True,
             "first_zero_s": 0.0, "graph_publishers_max": {"/cmd_vel": 2}}]
    summary = signals_summary(runs)
    assert summary["all"]["runs_with_foreign_publishers"] == 1
    assert any("in 1 runs" in n for n in report.notes({"scenario": "signals",
                                                        "summary": summary}))


def test_a_run_that_never_started_fails_the_signal_targets():
    runs = [{"signals": ["SIGINT"], "exit_code": None, "nonzero_after_zero": 0,
             "last_zero": False, "first_zero_s": None, "error": "node did not publish"}]
    assert not any(by_name(report.evaluate(
        {"scenario": "signals", "summary": signals_summary(runs)})).values())


def test_clock_jump_targets():
    result = {"scenario": "clock-jump", "limit_ms": 550.0, "variants": [
        {"variant": "none", "repeat": 0, "first_zero_ms": 520.0},
        {"variant": "back-10s", "repeat": 0, "first_zero_ms": 10470.0},
        {"variant": "forward-10s", "repeat": 0, "first_zero_ms": None}]}
    assert list(by_name(report.evaluate(result)).values()) == [True, False, False]


def test_finish_writes_json_with_targets_and_notes(tmp_path):
    result = load_result(hogs=0)
    path = report.finish(result, tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "malformed-flood.json"
    assert {"scenario", "machine", "cpu_hogs", "twists", "rss", "diagnostics", "publishers",
            "recorder", "shutdown", "targets", "notes", "pass"} <= set(data)
    assert {"rate_hz", "max_gap_ms", "late_ticks", "late_fraction"} <= set(data["twists"]["whole"])
    assert data["pass"] is True
    notes = " ".join(data["notes"])
    assert "--cpu-hogs 2" in notes and "recorder lagged" in notes and "publisher flood" in notes
    table = report.render(data)
    assert "PASS  twist_rate_hz" in table and "node RSS" in table


# -- soak -----------------------------------------------------------------------------------------
def test_windows_rate_each_window_and_drop_a_short_last_one():
    times = ticks(0.0, 200) + ticks(10.0, 100, 0.1)  # 20 Hz for 10 s, then 10 Hz
    out = analysis.windows(times, PERIOD, 0.0, 24.0, window_s=10.0)
    assert [w["index"] for w in out] == [0, 1]  # the 4 s rest is under half a window
    assert out[0]["twists"] == 200 and out[1]["twists"] == 100
    assert out[0]["late_ticks"] == 0 and out[1]["late_ticks"] == 100
    assert out[1]["start_s"] == 10.0
    assert len(analysis.windows(times, PERIOD, 0.0, 26.0, window_s=10.0)) == 3
    with pytest.raises(ValueError, match="window_s"):
        analysis.windows(times, PERIOD, 0.0, 1.0, window_s=0.0)


def test_rss_growth_uses_edge_medians_and_a_least_squares_slope():
    samples = [(float(t), 500.0 + t, 0.0) for t in range(0, 121)]  # +1 MB/s
    samples[60] = (60.0, 9000.0, 0.0)  # one wild sample
    samples[1] = (1.0, 9000.0, 0.0)  # in the head: the median ignores it
    out = analysis.rss_growth(samples, 0.0, 120.0, edge_s=10.0)
    assert out["start_mb"] == 506.0 and out["end_mb"] == 615.0  # medians of 11 samples each
    assert out["growth_pct"] == pytest.approx(109 / 506 * 100, abs=0.01)
    assert out["peak_mb"] == 9000.0 and out["samples"] == 121
    flat = analysis.rss_growth([(float(t), 400.0, 0.0) for t in range(100)], 10.0, 90.0)
    assert flat["growth_pct"] == 0.0 and flat["slope_mb_per_min"] == 0.0
    assert "growth_pct" not in analysis.rss_growth([(1.0, 400.0, 0.0)], 0.0, 10.0)


def soak_result(times, rss_growth):
    result = load_result("soak", times=times)
    t1 = max(times)
    samples = [(t, 500.0 + rss_growth / 100 * 500.0 * t / t1, 0.0) for t in range(int(t1) + 1)]
    result["soak"] = {"window_s": 5.0, "warmup_s": 0.0, "load_avg": [[0.0, 3.0, 2.0, 1.0]],
                      "windows": analysis.windows(times, PERIOD, 0.0, t1, 5.0),
                      "rss_after_warmup": analysis.rss_growth(samples, 0.0, t1, edge_s=1.0)}
    return result


def test_soak_targets_every_window_on_rate_and_rss_growth_after_warmup():
    good = soak_result(ticks(0.0, 401), 1.0)
    assert by_name(report.evaluate(good)) == {
        "twist_rate_hz": True, "max_gap_ms": True, "min_window_rate_hz": True,
        "rss_growth_after_warmup_pct": True}
    # Whole-run rate 19.5 Hz, but the third window of 5 s has 10 Hz: that window fails.
    times = ticks(0.0, 200) + ticks(10.0, 50, 0.1) + ticks(15.0, 101)
    bad = soak_result(times, 6.0)
    targets = by_name(report.evaluate(bad))
    assert targets["min_window_rate_hz"] is False
    assert targets["rss_growth_after_warmup_pct"] is False
    no_windows = soak_result(ticks(0.0, 401), 1.0)
    no_windows["soak"]["windows"] = []
    assert by_name(report.evaluate(no_windows))["min_window_rate_hz"] is False
    table = report.render(dict(good, targets=report.evaluate(good), notes=[]))
    assert "window 4 (+15 s)" in table and "RSS after 0 s warm-up" in table


def test_soak_arguments_are_checked():
    args = parse_args(["soak", "--minutes", "0.2", "--warmup-min", "0.05", "--window-s", "3"])
    assert args.minutes == 0.2 and args.window_s == 3.0 and args.warmup_min == 0.05
    with pytest.raises(SystemExit):
        parse_args(["soak", "--minutes", "5"])  # warm-up (5 min) not shorter than the soak
    with pytest.raises(SystemExit):
        parse_args(["soak", "--window-s", "0"])


# -- command line and load generators -------------------------------------------------------------
def test_parse_args_all_means_everything_but_soak_and_params_are_typed():
    args = parse_args(["all", "--param", "control_rate_hz=30", "--param", "use_sim_time=true",
                       "--param", "image_topic=/cam"])
    assert "soak" not in args.scenarios and "signals" in args.scenarios
    assert args.params == {"control_rate_hz": 30, "use_sim_time": True, "image_topic": "/cam"}
    assert args.domain == 54 and args.out == "stress_out" and args.backend == "torch"


def test_every_flood_frame_is_malformed():
    pytest.importorskip("sensor_msgs")
    from mobile_vla_node.core.preprocess import decode_message, validate_message
    from mobile_vla_node.stress.load import MALFORMED_COMMANDS, malformed_frames

    for label, msg in malformed_frames():
        with pytest.raises(Exception):  # noqa: B017, PT011 (ImageError or a decoder error)
            validate_message(msg)
            decode_message(msg)
        assert label
    assert {"empty", "huge", "emoji", "invalid_utf8_ish"} <= {k for k, _ in MALFORMED_COMMANDS}


# -- smoke: one short scenario over real DDS ------------------------------------------------------
def test_smoke_command_100hz_null_backend(tmp_path):
    """A few seconds of command-100hz with the null backend: the events, not the timing."""
    pytest.importorskip("rclpy")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mobile_vla_node.stress.cli", "command-100hz",
           "--backend", "null", "--duration", "3", "--tail", "1", "--no-fail",
           "--domain", os.environ.get("ROS_DOMAIN_ID", "54"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "command-100hz.json").read_text())
    assert data["twists"]["whole"]["twists"] > 0
    assert data["publishers"]["command-100hz"]["published"] > 0
    assert data["publishers"]["camera-640x480"]["published"] > 0
    assert data["shutdown"]["exit_code"] == 0 and data["shutdown"]["last_zero"] is True
    assert data["rss"]["samples"] > 0 and data["diagnostics"]["end"]["control_level"] is not None
    assert {t["target"] for t in data["targets"]} == {"twist_rate_hz", "max_gap_ms"}
    assert "=== vla_stress command-100hz ===" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert "command-100hz" in summary


def test_smoke_soak_null_backend(tmp_path):
    """A 12 s soak in 3 s windows with the null backend: windows, load samples, RSS, JSON."""
    pytest.importorskip("rclpy")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mobile_vla_node.stress.cli", "soak", "--backend", "null",
           "--minutes", "0.2", "--window-s", "3", "--warmup-min", "0.05", "--no-fail",
           "--domain", os.environ.get("ROS_DOMAIN_ID", "54"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "soak.json").read_text())
    soak = data["soak"]
    assert [w["index"] for w in soak["windows"]] == [0, 1, 2, 3]
    assert all(w["twists"] > 0 for w in soak["windows"])
    assert len(soak["load_avg"]) >= 4 and soak["warmup_s"] == 3.0
    assert soak["rss_after_warmup"]["samples"] > 0
    assert {t["target"] for t in data["targets"]} == {
        "twist_rate_hz", "max_gap_ms", "min_window_rate_hz", "rss_growth_after_warmup_pct"}
    assert proc.stdout.count("  soak +") >= 4 and "window 4 (+9 s)" in proc.stdout
