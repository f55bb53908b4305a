"""Safety chain: gates and their priority, per-axis clamp and acceleration limit, live config."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core.config import SafetyConfig
from mobile_vla_node.core.safety import AccelLimiter, SafetyChain, SafetyContext, SafetyOutput

UNLIMITED_ACCEL = dict(max_accel_x=0.0, max_accel_y=0.0, max_accel_z=0.0)


def chain(image_timeout=0.5, action_timeout=1.0, **safety):
    return SafetyChain(SafetyConfig(**safety), image_timeout, action_timeout)


def ctx(now=10.0, action=(0.1, 0.0, 0.0), **overrides):
    """A context where every gate passes, unless overridden."""
    base = dict(now=now, enabled=True, fault=None, has_command=True, image_time=now,
                action=None if action is None else np.array(action, float), action_time=now)
    base.update(overrides)
    return SafetyContext(**base)


def test_all_gates_pass():
    out = chain(**UNLIMITED_ACCEL).apply(ctx(action=(0.2, -0.1, 0.3)))
    assert out.stop_reason is None and out.state == "moving"
    np.testing.assert_allclose(out.twist, [0.2, -0.1, 0.3])


@pytest.mark.parametrize("overrides, reason", [
    (dict(enabled=False), "disabled"),
    (dict(fault="bad_image"), "bad_image"),
    (dict(fault="inference_error"), "inference_error"),
    (dict(has_command=False), "no_command"),
    (dict(image_time=None), "no_image"),
    (dict(image_time=10.0 - 0.51), "image_stale"),
    (dict(action=None), "no_action"),
    (dict(action_time=None), "no_action"),
    (dict(action_time=10.0 - 1.01), "action_stale"),
    (dict(action=np.array([np.nan, 0.0, 0.0])), "non_finite"),
    (dict(action=np.array([0.0, np.inf, 0.0])), "non_finite"),
    (dict(action=np.array([0.0, 0.0, -np.inf])), "non_finite"),
])
def test_each_gate_alone_stops_with_zero(overrides, reason):
    c = chain(**UNLIMITED_ACCEL)
    overrides = {"action": (0.3, 0.2, 0.1), **overrides}
    out = c.apply(ctx(**overrides))
    assert out.stop_reason == reason
    assert out.state == "stopped"
    np.testing.assert_array_equal(out.twist, np.zeros(3))


def test_timeouts_are_strictly_greater_than():
    c = chain(image_timeout=0.5, action_timeout=1.0, **UNLIMITED_ACCEL)
    assert c.apply(ctx(now=10.0, image_time=9.5, action_time=9.0)).stop_reason is None
    assert c.apply(ctx(now=10.0, image_time=9.49, action_time=9.0)).stop_reason == "image_stale"
    assert c.apply(ctx(now=10.0, image_time=9.5, action_time=8.99)).stop_reason == \
        "action_stale"


@pytest.mark.parametrize("overrides, reason", [
    (dict(enabled=False, fault="bad_image", has_command=False, image_time=None, action=None),
     "disabled"),
    (dict(fault="bad_image", has_command=False, image_time=None, action=None), "bad_image"),
    (dict(has_command=False, image_time=None, action=None), "no_command"),
    (dict(image_time=None, action=None), "no_image"),
    (dict(image_time=0.0, action=None), "image_stale"),
    (dict(image_time=0.0, action_time=0.0, action=np.array([np.nan] * 3)), "image_stale"),
    (dict(action_time=0.0, action=np.array([np.nan] * 3)), "action_stale"),
    (dict(action=None), "no_action"),
])
def test_priority_order(overrides, reason):
    assert chain().apply(ctx(**overrides)).stop_reason == reason


def test_clamp_per_axis():
    c = chain(max_linear_x=0.5, max_linear_y=0.3, max_angular_z=1.0, **UNLIMITED_ACCEL)
    np.testing.assert_allclose(c.apply(ctx(action=(2.0, -2.0, -5.0))).twist, [0.5, -0.3, -1.0])
    np.testing.assert_allclose(c.apply(ctx(action=(-0.7, 0.31, 0.99))).twist,
                               [-0.5, 0.3, 0.99])
    np.testing.assert_allclose(c.apply(ctx(action=(0.1, 0.1, 0.1))).twist, [0.1, 0.1, 0.1])
    zero_y = chain(max_linear_y=0.0, **UNLIMITED_ACCEL)
    np.testing.assert_allclose(zero_y.apply(ctx(action=(0.2, 0.4, 0.0))).twist, [0.2, 0.0, 0.0])


def test_acceleration_limit_per_axis_including_linear_y():
    c = chain(max_linear_x=5.0, max_linear_y=5.0, max_angular_z=5.0,
              max_accel_x=1.0, max_accel_y=2.0, max_accel_z=4.0)
    target = (1.0, -1.0, 1.0)
    # First tick defines the time base: no time has passed, so nothing moves yet.
    outs = [c.apply(ctx(now=t, action=target)).twist for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    expected = [[0.0, 0.0, 0.0],
                [0.1, -0.2, 0.4],
                [0.2, -0.4, 0.8],
                [0.3, -0.6, 1.0],   # yaw reaches its target and stays
                [0.4, -0.8, 1.0],
                [0.5, -1.0, 1.0]]   # y reaches its target
    np.testing.assert_allclose(outs, expected, atol=1e-12)
    # deceleration is limited too; a longer tick allows a larger step
    out = c.apply(ctx(now=0.75, action=(0.0, 0.0, -1.0))).twist
    np.testing.assert_allclose(out, [0.25, -0.5, 0.0], atol=1e-12)


def test_acceleration_limit_runs_after_the_clamp():
    c = chain(max_linear_x=0.2, max_accel_x=1.0)
    outs = [c.apply(ctx(now=t, action=(3.0, 0.0, 0.0))).twist[0] for t in (0.0, 0.1, 0.2, 0.3)]
    np.testing.assert_allclose(outs, [0.0, 0.1, 0.2, 0.2], atol=1e-12)


def test_zero_acceleration_means_unlimited_on_that_axis():
    c = chain(max_accel_x=0.0, max_accel_y=1.0, max_accel_z=0.0)
    c.apply(ctx(now=0.0, action=(0.4, 0.4, 0.9)))
    out = c.apply(ctx(now=0.1, action=(0.4, 0.4, 0.9))).twist
    np.testing.assert_allclose(out, [0.4, 0.1, 0.9], atol=1e-12)
    out = c.apply(ctx(now=0.2, action=(-0.4, 0.4, -0.9))).twist
    np.testing.assert_allclose(out, [-0.4, 0.2, -0.9], atol=1e-12)


def test_a_stop_resets_the_limiter_so_motion_ramps_from_zero():
    c = chain(max_accel_x=1.0, max_accel_y=1.0, max_accel_z=2.0)
    for t in np.arange(0.0, 1.01, 0.1):
        out = c.apply(ctx(now=float(t), action=(0.5, 0.5, 1.0)))
    np.testing.assert_allclose(out.twist, [0.5, 0.5, 1.0], atol=1e-12)
    stop = c.apply(ctx(now=1.1, action=(0.5, 0.5, 1.0), enabled=False))
    assert stop.stop_reason == "disabled"
    np.testing.assert_array_equal(stop.twist, np.zeros(3))
    # resumes from zero at the stop's time, not from the old 0.5
    out = c.apply(ctx(now=1.2, action=(0.5, 0.5, 1.0)))
    assert out.stop_reason is None
    np.testing.assert_allclose(out.twist, [0.1, 0.1, 0.2], atol=1e-12)
    out = c.apply(ctx(now=1.3, action=(0.5, 0.5, 1.0)))
    np.testing.assert_allclose(out.twist, [0.2, 0.2, 0.4], atol=1e-12)


def test_stop_after_long_pause_does_not_allow_a_jump():
    c = chain(max_accel_x=1.0)
    c.apply(ctx(now=0.0, action=(0.3, 0.0, 0.0)))
    c.apply(ctx(now=0.5, action=(0.3, 0.0, 0.0), has_command=False))
    # the stop happened at 0.5, so 0.1 s later the step is 0.1 m/s, not the full 0.3 m/s
    out = c.apply(ctx(now=0.6, action=(0.3, 0.0, 0.0)))
    np.testing.assert_allclose(out.twist, [0.1, 0.0, 0.0], atol=1e-12)


def test_live_configure_changes_limits_and_timeouts():
    c = chain(image_timeout=0.5, action_timeout=1.0, **UNLIMITED_ACCEL)
    assert c.apply(ctx(now=10.0, image_time=9.0)).stop_reason == "image_stale"
    assert c.apply(ctx(now=10.0, action_time=8.5)).stop_reason == "action_stale"
    c.configure(SafetyConfig(max_linear_x=0.1, max_linear_y=0.2, max_angular_z=0.3,
                             **UNLIMITED_ACCEL), 2.0, 2.0)
    assert c.apply(ctx(now=10.0, image_time=9.0)).stop_reason is None
    assert c.apply(ctx(now=10.0, action_time=8.5)).stop_reason is None
    np.testing.assert_allclose(c.apply(ctx(action=(1.0, -1.0, 1.0))).twist, [0.1, -0.2, 0.3])
    c.configure(SafetyConfig(max_accel_x=1.0, max_accel_y=0.0, max_accel_z=0.0), 2.0, 2.0)
    # the limiter continues from the last output (0.1) with the new limit
    out = c.apply(ctx(now=10.1, action=(0.5, 0.5, 0.5))).twist
    np.testing.assert_allclose(out, [0.2, 0.5, 0.5], atol=1e-12)


def test_accel_limiter_alone():
    lim = AccelLimiter(np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(lim(np.array([1.0, 1.0, 1.0]), 5.0), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(lim(np.array([1.0, 1.0, 1.0]), 5.25), [0.25, 1.0, 0.5])
    # time going backwards allows no change
    np.testing.assert_allclose(lim(np.array([-1.0, 0.0, -1.0]), 5.0), [0.25, 0.0, 0.5])
    lim.reset(6.0)
    np.testing.assert_allclose(lim(np.array([1.0, 1.0, 1.0]), 6.5), [0.5, 1.0, 1.0])


def test_output_state_and_twist_is_a_fresh_array():
    c = chain()
    first = c.apply(ctx(enabled=False))
    first.twist[:] = 7.0
    second = c.apply(ctx(enabled=False))
    np.testing.assert_array_equal(second.twist, np.zeros(3))
    assert SafetyOutput(np.zeros(3), None).state == "moving"
    assert SafetyOutput(np.zeros(3), "no_image").state == "stopped"
