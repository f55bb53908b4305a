"""Triton serving a camera-input encoder (`vla_export triton --camera-size`): the repository
declares the camera frame, the client hands it the frame, and the served result equals the PIL
reference (against a local CPU server when `make triton-env` installed one)."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.backends import create_backend
from mobile_vla_node.backends.triton_backend import TritonBackend, model_names
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.core.preprocess import ImageError, to_model_input
from mobile_vla_node.export.triton_local_server import DEFAULT_ENV, LocalTriton
from mobile_vla_node.export.triton_repo import serving_io, trt_profiles

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in requirements.txt")
W, H = 160, 120
CAMERA = {"camera_size": [W, H], "camera_order": "bgr", "channel_order": "rgb",
          "resize_filter": "bicubic"}


@pytest.fixture(scope="module")
def torch_backend():
    backend = create_backend(BackendConfig(backend="torch", model_preset="tiny", warmup_iters=0))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from mobile_vla_node.export.cli import main

    out = tmp_path_factory.mktemp("triton_camera") / "repo"
    assert main(["triton", "--preset", "tiny", "--output", str(out), "--instance-kind", "cpu",
                 "--max-batch", "2", "--camera-size", f"{W}x{H}", "--camera-order", "bgr"]) == 0
    return out


def test_the_repository_declares_the_camera_frame(repo):
    config = (repo / "mobile_vla_encoder" / "config.pbtxt").read_text()
    assert f'name: "image" data_type: TYPE_UINT8 dims: [ {H}, {W}, 3 ]' in config
    assert 'key: "mobile_vla.format" value: { string_value: "2" }' in config
    assert "mobile_vla.preprocess" in config


def test_client_checks_the_camera_io_and_profiles(torch_backend):
    backend = TritonBackend(BackendConfig(backend="triton"))
    backend.spec, backend.camera = torch_backend.spec, CAMERA
    io = serving_io(backend.spec, CAMERA)
    backend.encoder_name, backend.step_name = model_names("m")

    def config(role):
        inputs, outputs = io[role]
        return {"max_batch_size": 2,
                "input": [{"name": n, "data_type": t, "dims": [str(d) for d in dims]}
                          for n, (t, dims) in inputs.items()],
                "output": [{"name": n, "data_type": t, "dims": [str(d) for d in dims]}
                           for n, (t, dims) in outputs.items()]}

    backend._check_io({"m_encoder": config("encoder"), "m_step": config("step")})
    assert trt_profiles(backend.spec, 4, 32, CAMERA)["encoder"]["image"]["max"] == (4, H, W, 3)


@pytest.mark.skipif(not (DEFAULT_ENV / ".installed").exists(),
                    reason=f"no local Triton server environment at {DEFAULT_ENV}")
def test_served_camera_encoder_matches_pil_and_torch(repo, tmp_path, torch_backend):
    from mobile_vla_node.demo import synthetic

    rgb = synthetic.render(synthetic.random_scene(np.random.default_rng(2)), W, H)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    with LocalTriton(repo, tmp_path) as server:
        remote = create_backend(BackendConfig(backend="triton", triton_url=server.url,
                                              warmup_iters=0, triton_timeout_ms=20000.0))
        remote.load()
        try:
            assert remote.preprocesses_on_device
            ids = remote.tokenizer.encode("go to the red box")
            empty = np.zeros((0, remote.spec.feature_dim), np.float32)
            want_f, want_a = torch_backend.infer(to_model_input(rgb, 224), ids, empty)
            for frame, swap in ((bgr, "bgr"), (rgb, "rgb")):   # bgr8 camera, rgb8 camera
                got_f, got_a = remote.infer_raw(frame, ids, empty, swap)
                assert np.abs(got_f - want_f).max() < 1e-4
                assert np.abs(got_a - want_a).max() < 1e-4
            with pytest.raises(ImageError, match=f"{W}x{H} camera frames"):
                remote.infer_raw(np.zeros((224, 224, 3), np.uint8), ids, empty, "rgb")
        finally:
            remote.close()
