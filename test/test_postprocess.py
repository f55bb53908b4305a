"""Normalized actions -> Twist velocities: clip, axes, scale, gain, sign, deadzone."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core.config import ActionConfig
from mobile_vla_node.core.postprocess import ActionPostprocessor


def post(action_dim=3, model_max_linear=0.5, **kwargs):
    return ActionPostprocessor(ActionConfig(**kwargs), action_dim, model_max_linear)


def test_default_scaling_uses_model_max_linear_and_max_angular():
    out = post()(np.array([[0.5, -0.2, 0.4]]))
    np.testing.assert_allclose(out, [[0.25, -0.1, 0.4]], atol=1e-12)
    assert out.shape == (1, 3) and out.dtype == np.float64


def test_clip_to_unit_range_before_scaling():
    out = post()(np.array([[2.0, -3.0, 1.5], [-1.0001, 0.99, -7.0]]))
    np.testing.assert_allclose(out, [[0.5, -0.5, 1.0], [-0.5, 0.495, -1.0]], atol=1e-12)


def test_max_linear_parameter_overrides_the_model():
    out = post(model_max_linear=1.15, max_linear=0.8)(np.array([[1.0, 0.5, 0.5]]))
    np.testing.assert_allclose(out, [[0.8, 0.4, 0.5]], atol=1e-12)
    # 0 means "use the model's value"
    out = post(model_max_linear=1.15, max_linear=0.0)(np.array([[1.0, 0.5, 0.5]]))
    np.testing.assert_allclose(out, [[1.15, 0.575, 0.5]], atol=1e-12)


def test_max_angular_scales_only_yaw():
    out = post(max_angular=2.5)(np.array([[0.4, 0.4, 0.4]]))
    np.testing.assert_allclose(out, [[0.2, 0.2, 1.0]], atol=1e-12)


def test_gain_applies_to_all_axes():
    out = post(action_gain=0.5)(np.array([[1.0, -1.0, 0.8]]))
    np.testing.assert_allclose(out, [[0.25, -0.25, 0.4]], atol=1e-12)


def test_per_axis_sign_x_inverted_like_the_team():
    out = post(action_sign=[-1.0, 1.0, 1.0])(np.array([[0.6, 0.2, -0.3]]))
    np.testing.assert_allclose(out, [[-0.3, 0.1, -0.3]], atol=1e-12)
    out = post(action_sign=[1.0, -1.0, -1.0])(np.array([[0.6, 0.2, -0.3]]))
    np.testing.assert_allclose(out, [[0.3, -0.1, 0.3]], atol=1e-12)


def test_deadzone_after_scaling():
    # scaled: x 0.5*0.08=0.04 (< 0.05 -> 0), y 0.5*0.12=0.06 (kept), yaw 0.049 (-> 0), -0.05 kept
    out = post(deadzone=0.05)(np.array([[0.08, 0.12, 0.049], [-0.1, -0.2, -0.05]]))
    np.testing.assert_allclose(out, [[0.0, 0.06, 0.0], [-0.05, -0.1, -0.05]], atol=1e-12)


def test_action_dim_2_leaves_yaw_zero():
    out = post(action_dim=2)(np.array([[0.4, -0.6], [3.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.2, -0.3, 0.0], [0.5, 0.0, 0.0]], atol=1e-12)


def test_custom_action_axes_mapping():
    p = post(action_dim=2, action_axes="linear_x,angular_z", max_angular=2.0)
    np.testing.assert_allclose(p(np.array([[0.4, -0.25]])), [[0.2, 0.0, -0.5]], atol=1e-12)
    p = post(action_dim=3, action_axes="angular_z,linear_x,linear_y")
    np.testing.assert_allclose(p(np.array([[0.1, 0.2, 0.3]])), [[0.1, 0.15, 0.1]], atol=1e-12)
    p = post(action_dim=2, action_axes="linear_y,linear_x")
    np.testing.assert_allclose(p(np.array([[0.4, 0.8]])), [[0.4, 0.2, 0.0]], atol=1e-12)


@pytest.mark.parametrize("action_dim, axes", [(3, "linear_x,linear_y"), (2, "linear_x"),
                                              (2, "linear_x,linear_y,angular_z")])
def test_axes_count_must_match_action_dim(action_dim, axes):
    with pytest.raises(ValueError, match=f"action_dim={action_dim}"):
        post(action_dim=action_dim, action_axes=axes)


def test_unsupported_action_dim_without_axes():
    with pytest.raises(ValueError, match="action_dim=1"):
        post(action_dim=1)
    p = post(action_dim=1, action_axes="angular_z")
    np.testing.assert_allclose(p(np.array([[0.5]])), [[0.0, 0.0, 0.5]], atol=1e-12)


def test_nan_passes_through_unchanged():
    p = post(deadzone=0.1, action_sign=[-1.0, 1.0, 1.0])
    out = p(np.array([[np.nan, 0.5, 0.01], [0.4, np.nan, np.nan]]))
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and np.isnan(out[1, 2])
    np.testing.assert_allclose(out[0, 1:], [0.25, 0.0], atol=1e-12)
    assert out[1, 0] == pytest.approx(-0.2)


def test_infinity_passes_through_unchanged():
    out = post()(np.array([[np.inf, -np.inf, 0.0]]))
    assert not np.isfinite(out[0, 0]) and not np.isfinite(out[0, 1])


@pytest.mark.parametrize("shape", [(3,), (1, 2), (2, 4), (1, 3, 1)])
def test_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match=r"shape \(chunk, 3\)"):
        post()(np.zeros(shape))


def test_live_update_changes_gain_and_deadzone():
    p = post()
    actions = np.array([[0.2, 0.2, 0.2]])
    np.testing.assert_allclose(p(actions), [[0.1, 0.1, 0.2]], atol=1e-12)
    p.update(ActionConfig(action_gain=2.0, deadzone=0.3))
    np.testing.assert_allclose(p(actions), [[0.0, 0.0, 0.4]], atol=1e-12)


def test_chunk_rows_are_processed_independently_and_input_is_untouched():
    actions = np.array([[0.1, 0.2, 0.3], [-0.4, 0.5, -0.6], [1.0, -1.0, 0.0]], np.float32)
    before = actions.copy()
    out = post(max_angular=0.5)(actions)
    expected = np.stack([actions[:, 0] * 0.5, actions[:, 1] * 0.5, actions[:, 2] * 0.5], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-7)
    np.testing.assert_array_equal(actions, before)
