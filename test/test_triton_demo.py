"""`make triton-demo`'s outage judgement and the local server's log parsing (pure, no server).

The demo's claim is a safety one: after the server is killed the robot stops at the first failed
request and stays stopped until the restarted server really ran a request, and motion comes back
only after a fresh answer. It is judged on the server's own log (first request, on the shared
CLOCK_MONOTONIC) and on the node's reports, not on when the demo's ready check returned.
"""

import calendar

import numpy as np

from mobile_vla_node.demo.triton_demo import outage_failures, outage_report
from mobile_vla_node.export.triton_local_server import (
    FIRST_REQUEST_TAG,
    parse_first_requests,
    parse_grpc_started,
)

MOVE, STOP = np.array([0.3, 0.0, 0.0]), np.zeros(3)
ERROR = (2, "inference failing: TritonStepError: Triton step failed: UNAVAILABLE")
LIMIT = 0.7


def tw(t, twist):
    return (t, None, None, twist)


def run(zero_from=10.05, motion_from=15.3, end=17.0):
    """20 Hz ticks: motion until ``zero_from``, zeros, motion again from ``motion_from``."""
    out, t = [], 9.0
    while t < end:
        out.append(tw(t, STOP if zero_from <= t < motion_from else MOVE))
        t = round(t + 0.05, 3)
    return out


MARKS = {"killed": 10.0, "served": 15.2, "step_served": 15.25, "back": 16.0, "grpc_up": 14.9}


def statuses(ok_at=15.4):
    return [(9.5, 0, "ok"), (10.1, *ERROR), (ok_at, 0, "ok")]


def test_a_clean_outage_passes_even_when_the_ready_check_returns_late():
    out = outage_report(run(), MARKS, statuses(), LIMIT)
    assert out["zero_after_kill_s"] == 0.05 and out["motion_ticks_before_first_zero"] == 1
    assert out["nonzero_ticks_while_down"] == 0 and out["ticks_while_down"] == 104
    assert out["resumed_after_step_request_s"] == 0.05
    assert out["resumed_after_ready_check_s"] < 0  # the old judgement counted these ticks
    assert out["server_request_after_kill_s"] == 5.2 and out["grpc_up_after_kill_s"] == 4.9
    assert outage_failures(out, "1") == []


def test_motion_before_the_server_ran_a_request_fails():
    out = outage_report(run(motion_from=14.0), MARKS, statuses(), LIMIT)
    assert out["nonzero_ticks_while_down"] == 25  # 14.0 .. 15.2 s
    failures = " ".join(outage_failures(out, "1"))
    assert "25 motion Twists" in failures and "before the restarted server ran" in failures


def test_one_stale_tick_between_zeros_fails():
    twists = run()
    twists[40] = tw(twists[40][0], MOVE)  # at 11.0 s, during the outage
    out = outage_report(twists, MARKS, statuses(), LIMIT)
    assert out["nonzero_ticks_while_down"] == 1
    assert outage_failures(out, "1")


def test_a_late_first_zero_no_error_an_early_ok_or_no_recovery_fails():
    late = outage_report(run(zero_from=10.9), MARKS, statuses(), LIMIT)
    assert "first zero 900 ms after the kill > limit 700 ms" in outage_failures(late, "1")
    no_error = outage_report(run(), MARKS, [(9.5, 0, "ok"), (15.4, 0, "ok")], LIMIT)
    assert "the node never reported ERROR 'inference failing'" in outage_failures(no_error, "1")
    early_ok = outage_report(run(), MARKS, statuses(ok_at=12.0), LIMIT)
    assert early_ok["other_states_while_down"] == ["ok"]
    assert outage_failures(early_ok, "1")
    assert outage_failures(outage_report(run(), MARKS, statuses(), LIMIT), "0")


def test_without_the_servers_record_the_outage_cannot_pass():
    marks = dict(MARKS, served=None, step_served=None)
    failures = outage_failures(outage_report(run(), marks, statuses(), LIMIT), "1")
    assert any("logged no request" in f for f in failures)
    never = outage_report(run(motion_from=99.0), MARKS, statuses(), LIMIT)
    assert "motion did not resume" in outage_failures(never, "1")


def test_server_log_parsing():
    log = (
        "I1205 07:39:19.093792 10766 grpc_server.cc:2558] \"Started GRPCInferenceService at "
        "127.0.0.1:38009\"\n"
        f"{FIRST_REQUEST_TAG}: model=mobile_vla_encoder monotonic=100.500000 wall=1.0\n"
        f"{FIRST_REQUEST_TAG}: model=mobile_vla_step monotonic=100.520000 wall=1.1\n"
        "I1205 07:39:36.906492 11577 grpc_server.cc:2558] \"Started GRPCInferenceService at "
        "127.0.0.1:38009\"\n"
        f"{FIRST_REQUEST_TAG}: model=mobile_vla_encoder monotonic=200.250000 wall=2.0\n"
    )
    assert parse_first_requests(log) == {"mobile_vla_encoder": (100.5, 1.0),
                                         "mobile_vla_step": (100.52, 1.1)}
    assert parse_first_requests(log, after=150.0) == {"mobile_vla_encoder": (200.25, 2.0)}
    now = calendar.timegm((2026, 12, 5, 8, 0, 0))
    started = parse_grpc_started(log, now=now)
    assert started == [calendar.timegm((2026, 12, 5, 7, 39, 0)) + 19.093792,
                       calendar.timegm((2026, 12, 5, 7, 39, 0)) + 36.906492]
    new_year = parse_grpc_started(log, now=calendar.timegm((2027, 1, 1, 0, 0, 1)))
    assert new_year[0] == started[0]  # a December line read in January is last year's


def test_the_model_prints_the_tag_the_server_parses():
    from pathlib import Path

    from mobile_vla_node.export.triton_local_server import MODEL_SOURCE

    assert f'FIRST_REQUEST_TAG = "{FIRST_REQUEST_TAG}"' in Path(MODEL_SOURCE).read_text()
