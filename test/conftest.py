"""Test session set-up: DDS stays on loopback, in two domains of this run's own."""

import os

from mobile_vla_node.ros.process import reserve_domain, set_dds_env


# Domains 1..101 only (higher ids map onto Linux ephemeral ports and can clash), never 54 or 77
# (the defaults of vla_stress and the demo).
def _reserve_domain(skip=()) -> int:
    """A domain no other test run on this machine holds (ros/process.py reserve_domain)."""
    domain = reserve_domain(skip)
    if domain is None:
        raise RuntimeError("no free ROS domain for this test run")
    return domain


# Two runs of the suite side by side never share a domain; a CI job may pin the first.
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(_reserve_domain())
if "VLA_TEST_OTHER_DOMAIN" not in os.environ:
    os.environ["VLA_TEST_OTHER_DOMAIN"] = str(
        _reserve_domain(skip=(int(os.environ["ROS_DOMAIN_ID"]),)))
# Loopback-only discovery and the large-image Fast DDS profile (config/fastdds_large_images.xml),
# each under the variable this ROS 2 distribution reads and no deprecated one (ros/process.py
# dds_env; docs/DISTROS.md). Every child process inherits them.
set_dds_env(os.environ)

# Test layers, one entry per test file (`file::test` entries override their file's for that
# test). test/test_layers.py fails while a test file is missing here. unit: no DDS, no node
# process, seconds each; ros: rclpy/DDS/node processes; slow: tens of seconds or more, or an
# external server; gpu: needs a CUDA GPU. `make test-unit` runs `-m unit`; `make test` runs
# everything.
LAYERS = {
    "test_backends.py": ("unit",),
    "test_bag_humble.py": ("unit",),  # writes small bags with rosbags, no DDS
    "test_banded_resize.py": ("unit",),
    "test_bench.py": ("slow",),
    "test_bench.py::test_node_mode_null_backend": ("ros", "slow"),
    "test_bench.py::test_node_mode_frames_in_every_encoding": ("ros",),  # rclpy, no node
    "test_bench.py::test_twist_reception_jitter_uses_the_middleware_stamps": ("unit",),
    "test_bench.py::test_bare_timer_ticks_and_its_figures": ("unit",),
    "test_bench.py::test_bare_subscriber_figures_use_the_measured_window": ("unit",),
    "test_bench.py::test_listener_figures_use_the_measured_window": ("unit",),
    "test_checkpoint.py": ("unit",),
    "test_checkpoint_cli.py": ("unit",),
    "test_chunks.py": ("unit",),
    "test_commands.py": ("unit",),
    "test_config.py": ("unit",),
    "test_control.py": ("unit",),
    "test_control_jitter.py": ("unit",),
    "test_demo_policy.py": ("unit",),
    "test_demo_policy.py::test_demo_policy_beats_random_and_zero": ("slow",),
    "test_diagnostics.py": ("unit",),
    "test_distros.py": ("unit",),
    "test_distros.py::test_no_deprecation_warning_at_init": ("ros",),
    "test_distros.py::test_large_image_profile_applies": ("ros",),
    "test_distros.py::test_the_other_spelling_as_this_distribution_treats_it": ("ros",),
    "test_gpu.py": ("gpu",),
    "test_gpu_check.py": ("unit",),
    "test_gpu_path.py": ("unit",),
    "test_image_pipeline.py": ("unit",),
    "test_inputs.py": ("unit",),
    "test_launch_file.py": ("unit",),
    "test_layers.py": ("unit",),
    "test_model.py": ("unit",),
    "test_node_integration.py": ("ros",),
    "test_node_lifecycle.py": ("ros",),
    "test_node_onnx.py": ("ros", "slow"),
    "test_node_qos.py": ("ros",),
    "test_node_startup.py": ("ros",),
    "test_node_time.py": ("ros", "slow"),
    "test_onnx_backend.py": ("unit",),
    "test_onnx_camera.py": ("slow",),  # camera-input exports with parity
    "test_onnx_export.py": ("slow",),
    "test_package_xml.py": ("unit",),
    "test_pipeline.py": ("unit",),
    "test_params_yaml.py": ("unit",),
    "test_params_yaml.py::test_rcl_parser_reads_the_defaults": ("ros",),
    "test_postprocess.py": ("unit",),
    "test_qos_gate.py": ("unit",),
    "test_preprocess.py": ("unit",),
    "test_replay.py": ("slow",),
    "test_replay_live.py": ("ros", "slow"),
    "test_runtime.py": ("unit",),
    "test_runtime_imports.py": ("unit",),  # a plain Python child process, no DDS
    "test_safety.py": ("unit",),
    "test_sim.py": ("slow",),  # MuJoCo renders (EGL), tens of seconds; no DDS
    "test_sim_node.py": ("ros", "slow"),  # the node drives the sim over DDS
    "test_stress.py": ("unit",),
    "test_stress.py::test_smoke_command_100hz_null_backend": ("ros", "slow"),
    "test_stress.py::test_smoke_soak_null_backend": ("ros", "slow"),
    "test_tensorrt_backend.py": ("unit",),
    "test_tensorrt_backend.py::test_gpu_engine_mismatch_is_refused": ("gpu", "slow"),
    "test_tensorrt_build.py": ("unit",),
    "test_tensorrt_build.py::test_gpu_build_parity_and_infer": ("gpu", "slow"),
    "test_tensorrt_manifest.py": ("unit",),
    "test_team_checkpoints.py": ("unit",),
    "test_team_golden.py": ("slow",),  # six ONNX exports against the team's outputs
    "test_team_node.py": ("ros",),
    "test_ticks.py": ("unit",),
    "test_timing.py": ("unit",),
    "test_token_layouts.py": ("unit",),
    "test_triton.py": ("slow",),  # a real tritonserver on localhost (make triton-env)
    "test_triton.py::test_pbtxt_string_escapes_json": ("unit",),
    "test_triton.py::test_model_config_has_batching_instances_and_parameters": ("unit",),
    "test_triton.py::test_read_headers": ("unit",),
    "test_triton.py::test_stats_delta_and_instance_device": ("unit",),
    "test_triton.py::test_tls_files_are_checked_before_connecting": ("unit",),
    "test_triton_camera.py": ("slow",),  # a real tritonserver on localhost
    "test_triton_demo.py": ("unit",),
    "test_triton_node.py": ("ros", "slow"),
}


def pytest_collection_modifyitems(config, items):
    """Add each test's layer markers from LAYERS (test entry first, else its file's)."""
    import pytest

    for item in items:
        name = item.path.name
        test = getattr(item, "originalname", item.name)
        marks = LAYERS.get(f"{name}::{test}", LAYERS.get(name, ()))
        for mark in marks:
            item.add_marker(getattr(pytest.mark, mark))
        if "ros" in marks and _no_rclpy():  # e.g. the GPU machine: no ROS 2 there
            item.add_marker(pytest.mark.skip(reason=f"ros layer: {_no_rclpy()}"))


def _no_rclpy() -> str:
    """Why rclpy cannot be imported ('' when it can); checked once."""
    if "reason" not in _RCLPY:
        try:
            import rclpy  # noqa: F401
            _RCLPY["reason"] = ""
        except ImportError as exc:
            _RCLPY["reason"] = f"rclpy is not importable ({exc})"
    return _RCLPY["reason"]


_RCLPY: dict = {}
