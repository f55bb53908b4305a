"""ControlLoop: state sequence, first-use meta, stop counts, e-stop/command clearing, timeouts."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core.config import ControlConfig, SafetyConfig
from mobile_vla_node.core.control import ChunkMeta, ControlLoop

NO_ACCEL = SafetyConfig(max_accel_x=0.0, max_accel_y=0.0, max_accel_z=0.0)
V = np.array([[0.2, -0.1, 0.3]])


def loop(step_period_s=0.1, safety=NO_ACCEL, **control):
    control = {"image_timeout_s": 0.5, "action_timeout_s": 1.0, **control}
    return ControlLoop(ControlConfig(**control), safety, step_period_s)


def test_states_in_order_with_stop_counts_on_transitions():
    c = loop()
    reasons = []

    def tick(t):
        result = c.tick(t)
        reasons.append(result.stop_reason)
        return result

    tick(0.00)
    tick(0.05)
    c.on_command(True)
    tick(0.10)
    c.on_image(0.12)
    tick(0.15)
    tick(0.20)
    meta = ChunkMeta(image_stamp=0.12, transport_ms=1.0, preprocess_ms=2.0, inference_ms=30.0)
    c.on_chunk(V, 0.22, meta)
    moving = tick(0.25)
    tick(0.30)
    tick(0.70)       # image from 0.12 is 0.58 s old > 0.5
    tick(0.75)
    c.on_image(0.76)
    tick(0.80)       # fresh image, chunk step from 0.22 is 0.58 s old: still moving
    tick(1.30)       # image stale again
    assert reasons == ["no_command", "no_command", "no_image", "no_action", "no_action", None,
                       None, "image_stale", "image_stale", None, "image_stale"]
    np.testing.assert_allclose(moving.twist, V[0])
    assert dict(c.stop_counts) == {"no_command": 1, "no_image": 1, "no_action": 1,
                                   "image_stale": 2}
    assert c.last_stop_reason == "image_stale"
    assert c.last.stop_reason == "image_stale"


def test_first_use_meta_exactly_once_per_chunk():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    meta1 = ChunkMeta(image_stamp=0.0, inference_ms=12.0)
    c.on_chunk(V, 0.01, meta1)
    first = c.tick(0.02)
    assert first.stop_reason is None and first.first_use is meta1
    assert c.tick(0.07).first_use is None
    assert c.tick(0.12).first_use is None
    c.on_image(0.1)
    meta2 = ChunkMeta(image_stamp=0.1)
    c.on_chunk(2 * V, 0.13, meta2)
    again = c.tick(0.14)
    assert again.first_use is meta2
    np.testing.assert_allclose(again.twist, 2 * V[0])
    assert c.tick(0.19).first_use is None


def test_first_use_waits_until_the_robot_moves():
    c = loop()
    c.on_command(True)
    meta = ChunkMeta(image_stamp=0.0)
    c.on_chunk(V, 0.0, meta)           # chunk arrives, but no image yet
    stopped = c.tick(0.01)
    assert stopped.stop_reason == "no_image" and stopped.first_use is None
    c.on_image(0.02)
    moving = c.tick(0.03)
    assert moving.stop_reason is None and moving.first_use is meta
    assert c.tick(0.08).first_use is None


def test_e_stop_clears_the_chunk():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(V, 0.0, ChunkMeta(0.0))
    assert c.tick(0.01).stop_reason is None
    c.set_enabled(False)
    stopped = c.tick(0.02)
    assert stopped.stop_reason == "disabled"
    np.testing.assert_array_equal(stopped.twist, np.zeros(3))
    c.set_enabled(True)
    c.on_image(0.03)
    assert c.tick(0.04).stop_reason == "no_action"    # the old chunk does not resume
    c.on_chunk(V, 0.05, ChunkMeta(0.03))
    assert c.tick(0.06).stop_reason is None
    assert c.stop_counts["disabled"] == 1 and c.stop_counts["no_action"] == 1


def test_start_disabled():
    c = loop(start_enabled=False)
    assert c.enabled is False
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(V, 0.0, ChunkMeta(0.0))
    assert c.tick(0.01).stop_reason == "disabled"
    # a chunk computed while disabled is fresh and plays once enabled (the e-stop itself cleared
    # nothing here because nothing was playing)
    c.set_enabled(True)
    result = c.tick(0.02)
    assert result.stop_reason is None
    np.testing.assert_allclose(result.twist, V[0])


def test_on_command_clears_the_chunk_and_its_pending_meta():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    old = ChunkMeta(0.0)
    c.on_chunk(V, 0.0, old)
    c.on_command(True)                   # a new instruction
    result = c.tick(0.01)
    assert result.stop_reason == "no_action" and result.first_use is None
    new = ChunkMeta(0.005)
    c.on_chunk(-V, 0.02, new)
    result = c.tick(0.03)
    assert result.first_use is new
    np.testing.assert_allclose(result.twist, -V[0])
    c.on_command(False)                  # command cleared
    assert c.tick(0.04).stop_reason == "no_command"
    c.on_command(True)
    assert c.tick(0.05).stop_reason == "no_action"


def test_chunk_with_nan_is_non_finite():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(np.array([[np.nan, 0.0, 0.0], [0.1, 0.0, 0.0]]), 0.0, ChunkMeta(0.0))
    result = c.tick(0.01)
    assert result.stop_reason == "non_finite" and result.first_use is None
    np.testing.assert_array_equal(result.twist, np.zeros(3))
    c.on_image(0.1)
    result = c.tick(0.11)                # the chunk's second step is finite
    assert result.stop_reason is None
    np.testing.assert_allclose(result.twist, [0.1, 0.0, 0.0])


def test_fault_stops_and_clears():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(V, 0.0, ChunkMeta(0.0))
    c.fault = "bad_image"
    assert c.tick(0.01).stop_reason == "bad_image"
    c.fault = None
    assert c.tick(0.02).stop_reason is None
    assert c.stop_counts["bad_image"] == 1


def test_action_timeout_ends_chunk_playback():
    c = loop(step_period_s=0.1, action_timeout_s=0.25, image_timeout_s=10.0)
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(np.array([[0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0]], float), 1.0, ChunkMeta(0.0))
    xs = {t: c.tick(t) for t in (1.0, 1.1, 1.2, 1.3, 1.44, 1.46)}
    assert [xs[t].twist[0] for t in (1.0, 1.1, 1.2, 1.3, 1.44)] == pytest.approx(
        [0.1, 0.2, 0.3, 0.3, 0.3])
    assert all(xs[t].stop_reason is None for t in (1.0, 1.1, 1.2, 1.3, 1.44))
    # last step valid from 1.2; at 1.46 it is 0.26 s old > 0.25
    assert xs[1.46].stop_reason == "action_stale"
    np.testing.assert_array_equal(xs[1.46].twist, np.zeros(3))


def test_chunk_period_parameter_overrides_the_model_period():
    c = loop(step_period_s=0.1, chunk_step_period_s=0.3)
    assert c.player.period == 0.3
    assert loop(step_period_s=0.1).player.period == 0.1
    assert loop(chunk_blend_steps=3).player.blend_steps == 3


def test_configure_applies_live_limits_and_timeouts():
    c = loop()
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(np.array([[0.4, 0.4, 0.9]]), 0.0, ChunkMeta(0.0))
    np.testing.assert_allclose(c.tick(0.1).twist, [0.4, 0.4, 0.9])
    assert c.tick(0.6).stop_reason == "image_stale"
    c.configure(ControlConfig(image_timeout_s=2.0, action_timeout_s=2.0),
                SafetyConfig(max_linear_x=0.1, max_linear_y=0.2, max_angular_z=0.3,
                             max_accel_x=0.0, max_accel_y=0.0, max_accel_z=0.0))
    result = c.tick(0.7)
    assert result.stop_reason is None
    np.testing.assert_allclose(result.twist, [0.1, 0.2, 0.3])


def test_accel_limit_through_the_loop_resets_on_stop():
    c = loop(safety=SafetyConfig(max_accel_x=1.0, max_accel_y=1.0, max_accel_z=1.0))
    c.on_command(True)
    c.on_image(0.0)
    c.on_chunk(np.array([[0.5, 0.5, 0.5]]), 0.0, ChunkMeta(0.0))
    xs = [c.tick(t).twist[1] for t in (0.0, 0.1, 0.2)]
    assert xs == pytest.approx([0.0, 0.1, 0.2])
    c.set_enabled(False)
    c.tick(0.3)
    c.set_enabled(True)
    c.on_chunk(np.array([[0.5, 0.5, 0.5]]), 0.3, ChunkMeta(0.0))
    assert c.tick(0.4).twist == pytest.approx([0.1, 0.1, 0.1])


def moving_loop(now=10.0):
    c = loop()
    c.on_command(True)
    c.on_image(now)
    c.on_chunk(V, now, ChunkMeta(image_stamp=now))
    assert c.tick(now + 0.05).stop_reason is None
    return c


def test_clock_jump_back_stops_until_a_new_image_and_chunk():
    c = moving_loop(100.0)
    # Without a jump report the future stamps alone already stop it (clock ran backwards).
    assert c.tick(90.0).stop_reason in ("image_from_future", "action_from_future")
    c.on_clock_jump("ROS time jumped back 10 s")
    assert c.tick(90.05).stop_reason == "clock_jump"
    c.on_chunk(V, 90.1, ChunkMeta(image_stamp=90.1))   # a step from a pre-jump frame
    assert c.tick(90.15).stop_reason == "clock_jump"
    c.on_image(90.2)
    assert c.tick(90.25).stop_reason == "clock_jump"   # needs a chunk after the image
    c.on_chunk(V, 90.3, ChunkMeta(image_stamp=90.2))
    assert c.tick(90.35).stop_reason is None
    assert c.clock_jumps == 1 and "back" in c.last_clock_jump


def test_forward_jump_is_stale_not_fresh():
    c = moving_loop(100.0)
    assert c.tick(110.0).stop_reason == "image_stale"


def test_stop_command_and_lifecycle_inactive():
    c = moving_loop()
    c.on_command(False, stop=True)
    assert c.tick(10.1).stop_reason == "stop_command"
    c = moving_loop()
    c.set_active(False)
    assert c.tick(10.1).stop_reason == "inactive" and c.player.velocities is None
    c.set_active(True)
    assert c.tick(10.15).stop_reason == "no_action"


def test_forced_stop_tick_resets_the_limiter():
    c = moving_loop()
    out = c.tick(10.1, stop="clock_stalled")
    assert out.stop_reason == "clock_stalled" and not out.twist.any()
    assert c.stop_counts["clock_stalled"] == 1
