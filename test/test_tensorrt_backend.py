"""The TensorRT backend (backends/tensorrt_backend.py) at run time.

On a CPU: the clear errors without TensorRT / cuda-python / a device, engine/manifest mismatches
and `engine_rebuild: auto` (a vla_export child process), and buffers, shapes, int32 ids and
CUDA graphs on the fake TensorRT of fakes_tensorrt.py. On a GPU (`gpu`): a mismatched engine is
refused.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
from fakes_tensorrt import (
    FACTS,
    H100,
    FakeContext,
    assert_one_line,
    expected_command,
    export_tiny_onnx,
    fake_cudart,
    fake_encoder,
    fake_metadata,
    fake_step,
    fake_tensorrt,
    gpu,
    hide_cuda_python,
    hide_tensorrt,
    install_fakes,
    make_engine_dir,
)

from mobile_vla_node.backends import create_backend
from mobile_vla_node.backends import tensorrt_backend as trb
from mobile_vla_node.backends import trt_manifest as tm
from mobile_vla_node.backends.base import BackendError
from mobile_vla_node.backends.tensorrt_backend import (
    CudaRuntime,
    TensorRTBackend,
    engine_problems,
    mismatch_message,
)
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.export import tensorrt as trt_build


@pytest.fixture
def fakes(monkeypatch):
    """Fake ``tensorrt`` and cuda-python installed; (trt, cudart)."""
    return install_fakes(monkeypatch)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny preset exported to ONNX (GPU tests)."""
    return export_tiny_onnx(tmp_path_factory)


def test_backend_without_tensorrt(monkeypatch, tmp_path):
    hide_tensorrt(monkeypatch)
    backend = create_backend(BackendConfig(backend="tensorrt",
                                           model_path=str(tmp_path / "m.engine")))
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    with pytest.raises(BackendError) as err:
        backend.load()
    assert_one_line(str(err.value), "TensorRT is not available", "python3-libnvinfer",
                    "pip install tensorrt")
    backend.close()  # closing a backend that never loaded is fine


def test_backend_without_cuda_python_or_device(monkeypatch, tmp_path):
    fake_tensorrt(monkeypatch)
    hide_cuda_python(monkeypatch)
    cfg = BackendConfig(backend="tensorrt", model_path=str(tmp_path / "m.engine"))
    with pytest.raises(BackendError) as err:
        TensorRTBackend(cfg).load()
    assert_one_line(str(err.value), "cuda-python is not available", "pip install cuda-python")
    fake_cudart(monkeypatch, devices=0)
    with pytest.raises(BackendError) as err:
        TensorRTBackend(cfg).load()
    assert_one_line(str(err.value), "no CUDA device", "cudaErrorNoDevice")


def test_backend_model_path_errors(tmp_path):
    with pytest.raises(BackendError, match="needs model_path"):
        TensorRTBackend(BackendConfig(backend="tensorrt")).load()
    with pytest.raises(BackendError, match=r"is not a \.engine file.*--onnx MODEL.onnx"):
        TensorRTBackend(BackendConfig(backend="tensorrt",
                                      model_path=str(tmp_path / "m.onnx"))).load()


def test_cuda_runtime_facts_from_fake(monkeypatch):
    rt = fake_cudart(monkeypatch)
    cuda = CudaRuntime(rt, 0)
    assert cuda.facts() == {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(BackendError, match="CUDA device 3 does not exist"):
        CudaRuntime(rt, 3)


def test_backend_mismatched_engine_names_rebuild_command(monkeypatch, tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    fake_tensorrt(monkeypatch, "10.7.0")
    fake_cudart(monkeypatch)  # an H100 with TensorRT 10.7 vs an engine built on Orin/10.3
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda:0"))
    with pytest.raises(BackendError) as err:
        backend.load()
    text = str(err.value)
    assert_one_line(text, "does not fit this system", "TensorRT version differs",
                    "'10.3.0'", "'10.7.0'", "GPU differs", "compute capability differs",
                    "engine_rebuild: auto")
    command = expected_command(engine, tmp_path)
    assert text.count(f"rebuild with: {command}") == 1


def test_backend_auto_rebuild_failure_is_reported(monkeypatch, tmp_path, caplog):
    engine, manifest = make_engine_dir(tmp_path)
    fake_tensorrt(monkeypatch, "10.7.0")
    fake_cudart(monkeypatch)
    calls = []

    def failing_builder(args, log):
        calls.append(args)
        log("vla_export tensorrt: build failed: TensorRT could not build the encoder engine")
        return 1, ["vla_export tensorrt: build failed: TensorRT could not build the encoder "
                   "engine"]

    monkeypatch.setattr(trb, "run_builder", failing_builder)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda", engine_rebuild="auto"))
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err:
        backend.load()
    assert calls == [tm.rebuild_args(manifest, engine)]
    assert calls[0][:3] == ["tensorrt", "--onnx", str(tmp_path / "policy.onnx")]
    text = str(err.value)
    assert_one_line(text, "automatic rebuild of", "vla_export exit 1", "could not build",
                    "TensorRT version differs")
    assert "REBUILDING the TensorRT engines NOW, at start-up" in caplog.text


def test_run_builder_is_a_child_process_running_vla_export():
    lines = []
    code, tail = trb.run_builder(["tensorrt", "--help"], lines.append)
    assert code == 0
    assert lines[0].startswith("vla_export: usage: vla_export tensorrt")
    assert all(line.startswith("vla_export: ") for line in lines)
    assert "--calib-cache" in "\n".join(lines) and len(tail) <= 20
    code, tail = trb.run_builder(["tensorrt", "--onnx", "/nonexistent/policy.onnx"],
                                 lambda _: None)
    assert code != 0 and "does not exist" in tail[-1]


def test_engine_problems_without_manifest(tmp_path):
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BackendError, match="lonely.engine.json' does not exist.*rebuild it with "
                                           "vla_export tensorrt"):
        engine_problems(engine, FACTS)


def test_mismatch_message_dedups_command(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    _, problems = engine_problems(engine, dict(FACTS, gpu_name="X", compute_capability="1.0"))
    message = mismatch_message(manifest, engine, problems)
    assert message.count("rebuild with:") == 1 and " | " in message


def test_fake_backend_runs_engines(fakes, tmp_path):
    trt, cudart = fakes
    engine, _ = make_engine_dir(tmp_path, facts=H100)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine)))
    backend.load()
    info = backend.describe()
    assert info.provider == "TensorRT 10.7.0" and info.precision == "fp16"
    assert info.device == "cuda:0 (NVIDIA H100 80GB HBM3)" and info.extra["cuda_graph"] == "off"
    assert "device 'cpu' ignored" in info.warnings[0]
    assert backend.spec.window_size == 4 and backend.tokenizer.max_tokens == 64
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ids = backend.tokenizer.encode("go to the red box")
    history = rng.standard_normal((3, 64)).astype(np.float32)
    feature, actions = backend.infer(image, ids, history)
    expected = fake_encoder({"image": image[None], "text_ids": ids[None]})["feature"][0]
    np.testing.assert_allclose(feature, expected, rtol=1e-6)
    window = np.concatenate([history, feature[None]])
    np.testing.assert_allclose(actions, fake_step({
        "features": window[None], "h0": np.zeros((2, 1, 64), np.float32),
        "c0": np.zeros((2, 1, 64), np.float32)})["actions"][0], rtol=1e-6)  # h0/c0 zeroed
    short = backend.decode(window[:1])  # the window is filling: T=1
    np.testing.assert_allclose(short, np.tanh(window[0, :3])[None], rtol=1e-6)
    backend.warmup(2)
    with pytest.raises(BackendError, match=r"'text_ids' shape \(1, 65\) is outside.*max "
                                           r"\(1, 64\).*--max-text-len"):
        backend.encode(image, np.ones(65, np.int64))
    backend.close()
    backend.close()  # idempotent
    assert cudart.buffers == {} and cudart.streams == set()


def test_fake_backend_int32_ids_and_cuda_graph(fakes, tmp_path, caplog):
    trt, cudart = fakes
    trt.text_dtype = np.int32  # TensorRT 8.6's ONNX parser turns int64 inputs into int32
    engine, _ = make_engine_dir(tmp_path, facts=H100)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda:0", cuda_graph=True))
    backend.load()
    assert backend.describe().extra["cuda_graph"].startswith("on (window 4")
    feature = backend.encode(np.zeros((224, 224, 3), np.uint8), np.array([3, 4], np.int64))
    np.testing.assert_allclose(feature, 7 * np.arange(64) / 64, rtol=1e-6)
    window = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    launches = cudart.launches
    with_graph = backend.decode(window)
    assert cudart.launches == launches + 1  # the full window replays the graph
    backend.decode(window[:2])
    assert cudart.launches == launches + 1  # shorter windows run normally
    again = backend.decode(window)  # first full window after that: one plain run
    assert cudart.launches == launches + 1
    backend.decode(window)
    assert cudart.launches == launches + 2  # then graph replays again
    np.testing.assert_allclose(with_graph, np.tanh(window.sum(0)[:3])[None], rtol=1e-6)
    np.testing.assert_allclose(again, with_graph, rtol=1e-6)
    set_device_calls = cudart.set_device_calls
    worker = threading.Thread(target=backend.decode, args=(window,))
    worker.start()
    worker.join()
    assert cudart.set_device_calls == set_device_calls + 1  # the device is current per thread
    backend.close()

    original = FakeContext.__init__

    def failing(self, engine):
        original(self, engine)
        self.fail_in_capture = True

    FakeContext.__init__ = failing
    try:
        with caplog.at_level(logging.WARNING):
            fallback = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                                     cuda_graph=True))
            fallback.load()
    finally:
        FakeContext.__init__ = original
    state = fallback.describe().extra["cuda_graph"]
    assert state.startswith("off (capture failed") and "not permitted" in state
    assert "cuda_graph requested but not used" in caplog.text
    np.testing.assert_allclose(fallback.decode(window), with_graph, rtol=1e-6)
    fallback.close()
    assert cudart.buffers == {}


def test_fake_auto_rebuild_at_startup(fakes, monkeypatch, tmp_path, caplog):
    """The backend hands `rebuild_args` to vla_export; run here in-process on the fakes."""
    from mobile_vla_node.export import cli

    fake_metadata(monkeypatch, tmp_path)
    engine, manifest = make_engine_dir(tmp_path)  # built on Orin / TensorRT 10.3
    assert manifest.gpu_name == "Orin"
    ran = []

    def in_process_builder(args, log):  # the child process cannot see the stand-in modules
        ran.append(args)
        monkeypatch.setattr(trt_build, "check_parity", lambda options, manifest, log: 0)
        return cli.main(list(args)), []

    monkeypatch.setattr(trb, "run_builder", in_process_builder)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            engine_rebuild="auto"))
    with caplog.at_level(logging.WARNING):
        backend.load()
    assert ran == [tm.rebuild_args(manifest, engine)]
    rebuilt = tm.EngineManifest.load(tm.manifest_path(engine))
    assert rebuilt.gpu_name == "NVIDIA H100 80GB HBM3" and rebuilt.tensorrt_version == "10.7.0"
    assert "REBUILDING the TensorRT engines NOW" in caplog.text
    assert "rebuilt TensorRT engines" in caplog.text
    assert backend.decode(np.zeros((4, 64), np.float32)).shape == (1, 3)
    backend.close()


@gpu
def test_gpu_engine_mismatch_is_refused(tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    assert trt_build.main(["--onnx", str(tiny_onnx), "--output", str(engine),
                           "--precision", "fp16"]) == 0
    path = tm.manifest_path(engine)
    data = json.loads(path.read_text())
    data["gpu_name"] = "Some Other GPU"
    path.write_text(json.dumps(data))
    with pytest.raises(BackendError, match="GPU differs.*rebuild with: vla_export tensorrt"):
        create_backend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                     device="cuda:0")).load()
