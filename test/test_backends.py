"""Backend registry, `require`, the torch and null backends, and `InferenceBackend.infer`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobile_vla_node.backends import (
    REGISTRY,
    BackendError,
    BackendInfo,
    InferenceBackend,
    ModelSpec,
    backend_class,
    create_backend,
    require,
)
from mobile_vla_node.backends.null_backend import NullBackend
from mobile_vla_node.backends.torch_backend import TorchBackend
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.model.presets import DEFAULT_PROMPT
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer

COMMAND = "go to the red box"


def test_registry_names():
    assert set(REGISTRY) == {"torch", "onnx", "tensorrt", "triton", "null"}
    assert backend_class("torch") is TorchBackend
    assert backend_class("null") is NullBackend


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        backend_class("tflite")
    assert "'tflite'" in str(err.value)
    assert "['null', 'onnx', 'tensorrt', 'torch', 'triton']" in str(err.value)


def test_create_backend_instantiates_without_loading():
    cfg = BackendConfig(backend="null", model_preset="small")
    backend = create_backend(cfg)
    assert isinstance(backend, NullBackend)
    assert backend.config is cfg
    assert backend.spec is None and backend.info is None
    with pytest.raises(BackendError, match="'null' is not loaded"):
        backend.describe()


def test_require_names_the_install_step():
    assert require("json", "n/a").dumps([1]) == "[1]"
    with pytest.raises(BackendError) as err:
        require("mobile_vla_no_such_runtime", "pip install mobile-vla-runtime==1.0")
    text = str(err.value)
    assert "'mobile_vla_no_such_runtime'" in text
    assert "install it with: pip install mobile-vla-runtime==1.0" in text


# -- torch backend -------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_torch_cuda_without_cuda_is_a_backend_error(device):
    backend = TorchBackend(BackendConfig(device=device))
    with pytest.raises(BackendError, match=f"device='{device}'.*no CUDA.*device: cpu"):
        backend.load()


def test_torch_int8_is_refused():
    with pytest.raises(BackendError, match="int8.*tensorrt"):
        TorchBackend(BackendConfig(precision="int8")).load()


@pytest.fixture(scope="module")
def fp32():
    backend = TorchBackend(BackendConfig())
    backend.load()
    return backend


@pytest.fixture(scope="module")
def frame(fp32):
    size = fp32.spec.image_size
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_torch_fp32_describe_and_spec(fp32):
    info = fp32.describe()
    assert (info.name, info.precision) == ("torch", "fp32")
    assert info.device.startswith("cpu")
    assert info.provider == f"torch {torch.__version__}"
    assert info.warnings == []
    assert info.extra["parameters"] == sum(p.numel() for p in fp32.model.parameters())
    # the tiny preset's shapes (from the shipped demo policy's config when present)
    pc = fp32.model.config
    assert pc.preset == "tiny"
    assert fp32.spec == ModelSpec("tiny", pc.image_size, pc.backbone["text_config"]["embed_dim"],
                                  pc.window_size, pc.fwd_pred_next_n, pc.action_dim,
                                  pc.max_linear, pc.chunk_step_period_s,
                                  token_layout="package",
                                  image_tokens=pc.backbone["latent_query_num"])
    assert fp32.spec.feature_dim == fp32.model.feature_dim


def test_torch_infer_equals_the_model(fp32, frame):
    spec = fp32.spec
    ids = fp32.tokenizer.encode(COMMAND)
    history = np.random.default_rng(1).standard_normal(
        (spec.window_size - 1, spec.feature_dim)).astype(np.float32)
    feature, actions = fp32.infer(frame, ids, history)
    assert feature.dtype == np.float32 and feature.shape == (spec.feature_dim,)
    assert actions.dtype == np.float32 and actions.shape == (spec.chunk, spec.action_dim)
    model = fp32.model
    with torch.inference_mode():
        ref_f = model.encode_frame(torch.from_numpy(frame)[None], torch.from_numpy(ids)[None])
        window = torch.cat([torch.from_numpy(history), ref_f])[None]
        ref_a = model.decode(window, *model.zero_state(1))[0]
    np.testing.assert_allclose(feature, ref_f[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(actions, ref_a[0].numpy(), atol=1e-6)


def test_torch_accepts_read_only_and_strided_arrays(fp32, frame):
    ids = fp32.tokenizer.encode(COMMAND)
    ref = fp32.encode(frame, ids)
    read_only = np.frombuffer(frame.tobytes(), np.uint8).reshape(frame.shape)
    assert not read_only.flags.writeable
    np.testing.assert_array_equal(fp32.encode(read_only, ids), ref)
    strided = np.ascontiguousarray(frame[:, :, ::-1])[:, :, ::-1]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(fp32.encode(strided, ids), ref)
    ids_view = np.repeat(ids, 2)[::2]
    assert not ids_view.flags.c_contiguous and np.array_equal(ids_view, ids)
    np.testing.assert_array_equal(fp32.encode(frame, ids_view), ref)


def test_torch_bf16_on_cpu(fp32, frame):
    backend = TorchBackend(BackendConfig(precision="bf16"))
    backend.load()
    assert backend.describe().precision == "bf16"
    assert all(p.dtype == torch.bfloat16 for p in backend.model.parameters())
    spec = backend.spec
    ids = backend.tokenizer.encode(COMMAND)
    history = np.zeros((spec.window_size - 1, spec.feature_dim), np.float32)
    feature, actions = backend.infer(frame, ids, history)
    assert feature.dtype == np.float32 and actions.dtype == np.float32
    assert actions.shape == (spec.chunk, spec.action_dim) and np.all(np.isfinite(actions))
    ref_f, ref_a = fp32.infer(frame, ids, history)
    cosine = float(feature @ ref_f / np.linalg.norm(feature) / np.linalg.norm(ref_f))
    assert cosine > 0.99
    assert np.abs(actions - ref_a).max() < 0.1
    backend.close()
    assert backend.model is None


def test_torch_fp16_on_cpu_warns():
    backend = TorchBackend(BackendConfig(precision="fp16"))
    backend.load()
    assert backend.describe().precision == "fp16"
    assert any("fp16 on CPU" in w for w in backend.describe().warnings)
    assert backend.describe().as_values()["backend_warnings"].startswith("fp16 on CPU")


def test_warmup_runs_the_full_step(fp32, monkeypatch):
    calls = []
    original = fp32.infer

    def spy(image, ids, history):
        calls.append((image.shape, ids.dtype, history.shape))
        return original(image, ids, history)

    monkeypatch.setattr(fp32, "infer", spy)
    fp32.warmup(2)
    s = fp32.spec
    assert calls == [((s.image_size, s.image_size, 3), np.int64,
                      (s.window_size - 1, s.feature_dim))] * 2


# -- null backend --------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, dim, window, chunk, action_dim", [
    ("tiny", 64, 4, 1, 3),
    ("mobile-vla-kosmos2", 2048, 8, 1, 2),
    ("mobile-vla-kosmos2-chunk10", 2048, 2, 10, 2),
])
def test_null_backend_shapes(preset, dim, window, chunk, action_dim):
    backend = create_backend(BackendConfig(backend="null", model_preset=preset))
    backend.load()
    spec = backend.spec
    assert (spec.preset, spec.feature_dim, spec.window_size, spec.chunk, spec.action_dim) == \
        (preset, dim, window, chunk, action_dim)
    ids = backend.tokenizer.encode(COMMAND)
    feature, actions = backend.infer(np.zeros((224, 224, 3), np.uint8), ids,
                                     np.ones((window - 1, dim), np.float32))
    assert feature.shape == (dim,) and feature.dtype == np.float32 and not feature.any()
    assert actions.shape == (chunk, action_dim) and actions.dtype == np.float32
    assert not actions.any()
    info = backend.describe()
    assert info.name == "null" and info.precision == "none"
    assert any("zero actions" in w for w in info.warnings)


@pytest.mark.parametrize("device_preprocess", [True, False])
def test_null_backend_takes_the_camera_frame_unless_told(device_preprocess, monkeypatch):
    """device_preprocess (default): the frame reaches the backend as received, like a
    camera-input graph; false: the runtime's CPU resize makes it model-size first."""
    from mobile_vla_node.core.config import ActionConfig
    from mobile_vla_node.core.runtime import PolicyRuntime

    backend = create_backend(BackendConfig(backend="null", model_preset="tiny",
                                           device_preprocess=device_preprocess))
    backend.load()
    seen = []
    encode = backend.encode
    monkeypatch.setattr(backend, "encode", lambda image, ids: seen.append(image) or
                        encode(image, ids))
    runtime = PolicyRuntime(backend, ActionConfig())
    runtime.set_command(COMMAND)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    result = runtime.step(frame)
    assert backend.preprocesses_on_device is device_preprocess
    size = backend.spec.image_size
    if device_preprocess:
        assert seen[0] is frame   # the frame itself: no resize, no copy
    else:
        assert seen[0].shape == (size, size, 3)
    assert result is not None and not result.velocities.any()
    assert ("camera-input" in backend.describe().extra["preprocess"]) is device_preprocess


def test_camera_input_description_names_the_encoder_and_the_frame():
    backend = create_backend(BackendConfig(backend="null", model_preset="tiny"))
    assert backend.describe_camera_input("export", "encoder graph") == \
        "cpu (model-size export: the runtime resizes)"
    backend.camera = {"camera_size": [640, 480], "camera_order": "bgr",
                      "resize_filter": "bicubic"}
    assert backend.describe_camera_input("engine", "encoder engine") == \
        "in the encoder engine: 640x480 bgr frames, PIL bicubic tables (bit-exact)"


# -- the base class ------------------------------------------------------------------------------

class RecordingBackend(InferenceBackend):
    """encode returns a feature built from the image; decode records the windows it gets."""

    name = "recording"

    def load(self):
        self.spec = ModelSpec("fake", 4, 3, 3, 2, 2, 1.0, 0.1)
        self.tokenizer = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT)
        self.info = BackendInfo(self.name, "cpu", "fp32")
        self.windows = []

    def encode(self, image, text_ids):
        return np.full(3, float(image[0, 0, 0]), np.float32)

    def decode(self, features):
        self.windows.append(features.copy())
        return np.full((2, 2), float(len(features)), np.float32)


def test_infer_concatenates_history_oldest_first():
    backend = RecordingBackend(None)
    backend.load()
    ids = backend.tokenizer.encode(COMMAND)
    image = np.full((4, 4, 3), 9, np.uint8)
    history = np.array([[1, 1, 1], [2, 2, 2]], np.float32)
    feature, actions = backend.infer(image, ids, history)
    np.testing.assert_array_equal(feature, [9, 9, 9])
    np.testing.assert_array_equal(backend.windows[-1], [[1, 1, 1], [2, 2, 2], [9, 9, 9]])
    np.testing.assert_array_equal(actions, np.full((2, 2), 3.0))
    feature, actions = backend.infer(image, ids, np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(backend.windows[-1], [[9, 9, 9]])
    np.testing.assert_array_equal(actions, np.full((2, 2), 1.0))


def test_base_warmup_and_close():
    backend = RecordingBackend(None)
    backend.load()
    backend.warmup(3)
    assert len(backend.windows) == 3
    assert all(w.shape == (3, 3) and not w.any() for w in backend.windows)
    backend.close()
    assert backend.describe().name == "recording"


def test_backend_info_as_values():
    info = BackendInfo("onnx", "cuda:0 (Orin)", "fp16", provider="", model="m.onnx",
                       warnings=["fell back", "slow"], extra={"opset": 17, "fp16": True})
    assert info.as_values() == {"backend": "onnx", "device": "cuda:0 (Orin)", "precision": "fp16",
                                "provider": "onnx", "model": "m.onnx", "opset": "17",
                                "fp16": "True", "backend_warnings": "fell back; slow"}
    assert "backend_warnings" not in BackendInfo("torch", "cpu", "fp32").as_values()
