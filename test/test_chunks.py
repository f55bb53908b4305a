"""Chunk playback: stepping at the period, holding the last step, replacement and blending."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core.chunks import ChunkPlayer, select_actions


def chunk(*xs):
    """A chunk whose linear.x values are ``xs`` (y = -x, yaw = 10 x, to tell axes apart)."""
    return np.array([[x, -x, 10 * x] for x in xs], dtype=np.float64)


def test_no_chunk_means_none():
    player = ChunkPlayer(0.1)
    assert player.current(0.0) is None
    assert player.velocities is None


def test_playback_step_by_step_at_the_period():
    player = ChunkPlayer(0.1)
    player.push(chunk(1.0, 2.0, 3.0), 10.0)
    expected = [(10.0, 1.0, 10.0), (10.05, 1.0, 10.0), (10.099, 1.0, 10.0), (10.1, 2.0, 10.1),
                (10.15, 2.0, 10.1), (10.2, 3.0, 10.2), (10.3, 3.0, 10.2)]
    for now, x, since in expected:
        velocity, valid_from = player.current(now)
        np.testing.assert_array_equal(velocity, chunk(x)[0])
        assert valid_from == pytest.approx(since), now


def test_exact_step_boundaries_despite_float_error():
    player = ChunkPlayer(0.1)
    player.push(chunk(*range(10)), 0.3)
    for i in range(10):
        now = 0.3 + i * 0.1
        assert player.current(now)[0][0] == i, now


def test_hold_of_the_last_step_with_growing_age():
    player = ChunkPlayer(0.2)
    player.push(chunk(0.5, 0.7), 1.0)
    ages = []
    for now in (1.2, 1.5, 2.0, 5.0):
        velocity, valid_from = player.current(now)
        np.testing.assert_array_equal(velocity, chunk(0.7)[0])
        assert valid_from == pytest.approx(1.2)
        ages.append(now - valid_from)
    np.testing.assert_allclose(ages, [0.0, 0.3, 0.8, 3.8], atol=1e-9)


def test_before_the_chunk_start_plays_the_first_step():
    player = ChunkPlayer(0.1)
    player.push(chunk(4.0, 5.0), 2.0)
    velocity, valid_from = player.current(1.9)
    assert velocity[0] == 4.0 and valid_from == 2.0


def test_replacement_by_a_newer_chunk():
    player = ChunkPlayer(0.1)
    player.push(chunk(1.0, 2.0, 3.0, 4.0), 0.0)
    assert player.current(0.15)[0][0] == 2.0
    player.push(chunk(7.0, 8.0), 0.15)
    velocity, valid_from = player.current(0.15)
    assert velocity[0] == 7.0 and valid_from == pytest.approx(0.15)
    assert player.current(0.25)[0][0] == 8.0
    assert player.current(0.6)[0][0] == 8.0   # the old chunk's later steps are gone


def test_push_copies_its_input():
    player = ChunkPlayer(0.1)
    data = chunk(1.0, 2.0)
    player.push(data, 0.0)
    data[:] = 99.0
    assert player.current(0.0)[0][0] == 1.0


def test_blending_over_blend_steps_exact_values():
    player = ChunkPlayer(0.1, blend_steps=2)
    player.push(chunk(0.0, 1.0, 2.0, 3.0), 0.0)
    new = chunk(10.0, 10.0, 10.0)
    player.push(new, 0.1)
    # step i blends with the old schedule at 0.1 + i*0.1 (old values 1, 2) with weight
    # w = (i + 1) / (blend_steps + 1): 2/3*1 + 1/3*10 = 4, 1/3*2 + 2/3*10 = 22/3, then pure new.
    got = [player.current(t)[0] for t in (0.1, 0.2, 0.3, 0.5)]
    np.testing.assert_allclose(got, [chunk(4.0)[0], chunk(22.0 / 3.0)[0], chunk(10.0)[0],
                                     chunk(10.0)[0]], atol=1e-12)
    np.testing.assert_array_equal(new, chunk(10.0, 10.0, 10.0))  # caller's array untouched


def test_blending_from_a_held_last_step_and_a_short_new_chunk():
    player = ChunkPlayer(0.5, blend_steps=3)
    player.push(chunk(2.0), 0.0)             # one step, held
    player.push(chunk(6.0, 10.0), 3.0)       # only 2 of the 3 blend steps exist
    got = [player.current(t)[0][0] for t in (3.0, 3.5, 4.0)]
    # weights 1/4 and 2/4 against the held 2.0
    np.testing.assert_allclose(got, [0.75 * 2 + 0.25 * 6, 0.5 * 2 + 0.5 * 10, 0.5 * 2 + 0.5 * 10],
                               atol=1e-12)


def test_no_blending_without_an_old_chunk_or_after_clear():
    player = ChunkPlayer(0.1, blend_steps=2)
    player.push(chunk(5.0, 6.0), 0.0)
    assert player.current(0.0)[0][0] == 5.0
    player.clear()
    assert player.current(0.05) is None
    player.push(chunk(9.0, 9.0), 0.1)
    assert player.current(0.1)[0][0] == 9.0


def test_clear():
    player = ChunkPlayer(0.1)
    player.push(chunk(1.0), 0.0)
    player.clear()
    assert player.current(0.0) is None
    assert player.velocities is None


@pytest.mark.parametrize("period", [0.0, -0.1])
def test_period_must_be_positive(period):
    with pytest.raises(ValueError, match="must be > 0"):
        ChunkPlayer(period)


# --- action_mode (select_actions) -------------------------------------------------------------

def test_chunk_mode_plays_the_whole_chunk():
    velocities = chunk(0.1, 0.2, 0.3)
    assert select_actions(velocities, "chunk", first=True) is velocities


def test_server_mode_is_chunk0_clipped_with_a_first_frame_zero():
    """minuum/vla Mobile_VLA/inference_server.py: chunk[0], zero at inference_count 0, +-1.5."""
    velocities = np.array([[2.0, -1.7, 3.0], [0.1, 0.1, 0.1]])
    out = select_actions(velocities, "server", first=False)
    np.testing.assert_array_equal(out, [[1.5, -1.5, 3.0]])   # yaw is not clipped there
    np.testing.assert_array_equal(select_actions(velocities, "server", first=True),
                                  [[0.0, 0.0, 0.0]])
    # non-finite values reach the safety chain unclipped
    bad = select_actions(np.array([[np.inf, np.nan, 0.0]]), "server", first=False)
    assert np.isposinf(bad[0, 0]) and np.isnan(bad[0, 1])
    with pytest.raises(ValueError, match="chunk"):
        select_actions(velocities, "replay", first=False)
