"""Shared helpers and stand-ins of the TensorRT tests (not a test module).

* engine folders with a saved manifest, as `vla_export tensorrt` leaves them (`make_engine_dir`);
* missing-runtime helpers: hide or fake ``tensorrt`` and cuda-python (`hide_tensorrt`,
  `fake_cudart`);
* fake TensorRT and CUDA: "device" pointers are host ctypes buffers and engines compute a known
  numpy function, so the build glue and the backend's buffer/shape/graph handling run on a CPU
  (`install_fakes`); numerical agreement of real engines is the GPU tests' job;
* the GPU gate (`gpu`) and the tiny ONNX export the GPU tests build from (`export_tiny_onnx`).
"""

from __future__ import annotations

import ctypes
import enum
import json
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mobile_vla_node.backends import trt_manifest as tm
from mobile_vla_node.backends.base import BackendError
from mobile_vla_node.backends.tensorrt_backend import CudaRuntime
from mobile_vla_node.model.presets import preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer

TINY_SPEC = {"preset": "tiny", "image_size": 224, "feature_dim": 64, "window_size": 4,
             "chunk": 1, "action_dim": 3, "max_linear": 0.5, "chunk_step_period_s": 0.1}
FACTS = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def tokenizer_json() -> str:
    return PromptTokenizer(builtin_tokenizer(), "An image of a robot {instruction}").to_json()


def make_engine_dir(folder: Path, precision: str = "fp16", build_args: dict | None = None,
                    facts: dict | None = None) -> tuple[Path, tm.EngineManifest]:
    """Fake ONNX + engine files and a saved manifest, as `vla_export tensorrt` leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.onnx").write_bytes(b"encoder graph")
    (folder / "policy.step.onnx").write_bytes(b"step graph")
    engine = folder / "policy.engine"
    engine.write_bytes(b"E" * 100)
    tm.step_engine_path(engine).write_bytes(b"S" * 10)
    profiles = tm.make_profiles(TINY_SPEC, preset_config("tiny").to_dict())
    args = {"output": str(engine), "workspace_mb": 2048, "timing_cache": None}
    args.update(build_args or {})
    manifest = tm.create_manifest(
        facts=facts or FACTS, precision=precision, engine=engine,
        encoder_onnx=folder / "policy.onnx", step_onnx=folder / "policy.step.onnx",
        profiles=profiles, workspace_mb=2048, build_time_s=12.5,
        builder_flags={"encoder": ["FP16"], "step": ["FP16"]},
        metadata={"model_spec": TINY_SPEC, "tokenizer": tokenizer_json(),
                  "normalization": {"mean": [0.5] * 3}, "export": {"opset": 17}},
        step_precision="fp16" if precision == "int8" else precision, build_args=args)
    manifest.save(tm.manifest_path(engine))
    return engine, manifest


def expected_command(engine: Path, folder: Path, precision="fp16") -> str:
    return shlex.join(["vla_export", "tensorrt", "--onnx", str(folder / "policy.onnx"),
                       "--output", str(engine), "--precision", precision,
                       "--workspace-mb", "2048"])


def hide_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def hide_cuda_python(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


def fake_tensorrt(monkeypatch, version="10.7.0"):
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", module)


class CudaErr(enum.Enum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


def fake_cudart(monkeypatch, devices=1, name=b"NVIDIA H100 80GB HBM3\0\0", cc=(9, 0)):
    """A cuda-python runtime module that answers the start-up queries (no GPU behind it)."""
    ok = CudaErr.cudaSuccess
    props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1])
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = CudaErr
    rt.cudaGetDeviceCount = lambda: (ok, devices) if devices else (
        CudaErr.cudaErrorNoDevice, 0)
    rt.cudaGetErrorName = lambda err: (ok, err.name.encode())
    rt.cudaGetErrorString = lambda err: (ok, b"no CUDA-capable device is detected")
    rt.cudaSetDevice = lambda index: (ok,)
    rt.cudaGetDeviceProperties = lambda index: (ok, props)
    for mod in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return rt


def assert_one_line(text: str, *needles: str) -> None:
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


def onnx_file(folder: Path) -> str:
    (folder / "m.onnx").write_bytes(b"graph")
    return str(folder / "m.onnx")


# ----------------------------------------------------------------------------- fake TensorRT
# TensorRT and CUDA stand-ins: "device" pointers are host ctypes buffers, engines compute a known
# numpy function. They run the build glue and the backend's buffer/shape/graph handling here;
# numerical agreement of real engines is the GPU tests' job.

class FakeCudart(types.ModuleType):
    """cuda-python's runtime module over host memory."""

    def __init__(self, name=b"NVIDIA H100 80GB HBM3", cc=(9, 0)):
        super().__init__("cuda.bindings.runtime")
        ok = CudaErr.cudaSuccess
        self.ok, self.cudaError_t, self.cudaStreamNonBlocking = ok, CudaErr, 1
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1,
                                                    cudaMemcpyDeviceToHost=2)
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=2)
        self.props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1])
        self.buffers, self.capturing, self.launches, self.streams = {}, None, 0, set()
        self.set_device_calls = 0

    def cudaGetDeviceCount(self):
        return self.ok, 1

    def cudaSetDevice(self, index):
        self.set_device_calls += 1
        return (self.ok,)

    def cudaGetDeviceProperties(self, index):
        return self.ok, self.props

    def cudaGetErrorName(self, err):
        return self.ok, err.name.encode()

    def cudaGetErrorString(self, err):
        return self.ok, b"fake error"

    def cudaGetLastError(self):
        return (self.ok,)

    def cudaMalloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return self.ok, ctypes.addressof(buf)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        del self.buffers[ptr]
        return (self.ok,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert stream in self.streams
        ctypes.memmove(dst, src, nbytes)
        return (self.ok,)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        ctypes.memmove(dst, src, nbytes)
        return (self.ok,)

    def cudaMemsetAsync(self, ptr, value, nbytes, stream):
        ctypes.memset(ptr, value, nbytes)
        return (self.ok,)

    def cudaStreamCreateWithFlags(self, flags):
        self.streams.add(77)
        return self.ok, 77

    def cudaStreamSynchronize(self, stream):
        return (self.ok,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return (self.ok,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (self.ok,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return self.ok, graph

    def cudaGraphInstantiate(self, graph, flags):
        return self.ok, types.SimpleNamespace(runs=list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for run in graph_exec.runs:
            run()
        return (self.ok,)

    def cudaGraphDestroy(self, graph):
        return (self.ok,)

    cudaGraphExecDestroy = cudaGraphDestroy


def host_array(ptr: int, dtype, shape) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * count).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def fake_encoder(inputs: dict) -> dict:
    image, ids = inputs["image"].astype(np.float32), inputs["text_ids"].astype(np.float32)
    dim = TINY_SPEC["feature_dim"]
    feature = image.mean() / 255 + ids.sum() * np.arange(dim, dtype=np.float32) / dim
    return {"feature": feature[None].astype(np.float32)}


def fake_step(inputs: dict) -> dict:
    chunk, adim = TINY_SPEC["chunk"], TINY_SPEC["action_dim"]
    pooled = inputs["features"].sum(axis=1)[:, : chunk * adim] + inputs["h0"].sum()
    return {"actions": np.tanh(pooled).reshape(1, chunk, adim).astype(np.float32),
            "hn": inputs["h0"] + 1, "cn": inputs["c0"]}


class FakeEngine:
    """Named I/O tensors (TensorRT 10 API) computing ``fn`` on "device" memory."""

    def __init__(self, trt, tensors: dict, fn, out_shapes):
        self.trt, self.tensors, self.fn, self.out_shapes = trt, tensors, fn, out_shapes
        self.names = list(tensors)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.tensors[name][3]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.fail_in_capture = engine, {}, {}, False

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        return self.engine.out_shapes(self.shapes)[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        rt = self.engine.trt.cudart
        if rt.capturing is not None:
            if self.fail_in_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
            rt.capturing.append(self._run)
        else:
            self._run()
        return True

    def _run(self):
        tensors = self.engine.tensors
        inputs = {n: host_array(self.addresses[n], tensors[n][1], self.shapes[n]).copy()
                  for n, t in tensors.items() if t[0] == "in"}
        for name, value in self.engine.fn(inputs).items():
            host_array(self.addresses[name], tensors[name][1], value.shape)[...] = value


class FakeTensorRT(types.ModuleType):
    """The parts of the ``tensorrt`` module the build and the backend use."""

    def __init__(self, cudart, version="10.7.0", text_dtype=np.int64):
        super().__init__("tensorrt")
        trt = self
        self.__version__, self.cudart, self.text_dtype = version, cudart, text_dtype
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
        self.nptype = np.dtype
        self.built, self.configs = [], []

        class ILogger:
            Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3,
                                             VERBOSE=4)

            def __init__(self):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, data):
                return trt.engine(bytes(data[:20]))

        self.ILogger, self.IProgressMonitor, self.Runtime = ILogger, IProgressMonitor, Runtime
        self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        self.Builder = lambda logger: FakeBuilder(trt)
        self.OnnxParser = lambda network, logger: FakeParser(network)

    def engine(self, head: bytes):
        """The encoder or step engine, by the serialized bytes' first letters."""
        f32, dim, w = np.dtype(np.float32), TINY_SPEC["feature_dim"], TINY_SPEC["window_size"]
        size = TINY_SPEC["image_size"]
        if head.startswith((b"S", b"ENGINE-step")):
            state = (2, 1, 64)
            tensors = {"features": ("in", f32, (1, -1, dim), [(1, 1, dim), (1, w, dim),
                                                              (1, w, dim)]),
                       "h0": ("in", f32, state, None), "c0": ("in", f32, state, None),
                       "actions": ("out", f32, (1, 1, 3), None), "hn": ("out", f32, state, None),
                       "cn": ("out", f32, state, None)}
            return FakeEngine(self, tensors, fake_step, lambda shapes: {
                "actions": (1, 1, 3), "hn": state, "cn": state})
        ids = np.dtype(self.text_dtype)
        tensors = {"image": ("in", np.dtype(np.uint8), (1, size, size, 3), None),
                   "text_ids": ("in", ids, (1, -1), [(1, 1), (1, 24), (1, 64)]),
                   "feature": ("out", f32, (1, dim), None)}
        return FakeEngine(self, tensors, fake_encoder, lambda shapes: {"feature": (1, dim)})


class FakeNetwork:
    def __init__(self):
        self.inputs = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class FakeParser:
    def __init__(self, network):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path):
        step = path.endswith(".step.onnx")
        label = "step" if step else "encoder"
        engine = FakeTensorRT(None).engine(b"ENGINE-" + label.encode())
        self.network.label = label
        self.network.inputs = [types.SimpleNamespace(name=n, shape=t[2], dtype=t[1])
                               for n, t in engine.tensors.items() if t[0] == "in"]
        return True


class FakeConfig:
    def __init__(self):
        self.flags, self.profiles, self.calib_profile = set(), [], None
        self.int8_calibrator = self.progress_monitor = self.timing = None

    def set_memory_pool_limit(self, pool, nbytes):
        self.workspace = nbytes

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)
        self.cleared = flag

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def set_calibration_profile(self, profile):
        self.calib_profile = profile

    def create_timing_cache(self, data):
        return types.SimpleNamespace(serialize=lambda: bytes(data) + b"+")

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing = cache
        return True

    def get_timing_cache(self):
        return self.timing


class FakeBuilder:
    platform_has_fast_fp16 = True

    def __init__(self, trt):
        self.trt = trt

    def create_network(self, flags):
        return FakeNetwork()

    def create_builder_config(self):
        config = FakeConfig()
        self.trt.configs.append(config)
        return config

    def create_optimization_profile(self):
        profile = types.SimpleNamespace(shapes={})
        profile.set_shape = lambda name, lo, opt, hi: profile.shapes.update(
            {name: (tuple(lo), tuple(opt), tuple(hi))})
        return profile

    def build_serialized_network(self, network, config):
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, 2)
        assert monitor.step_complete("Building engine", 0)
        monitor.phase_finish("Building engine")
        calib = config.int8_calibrator
        if calib is not None:
            names = sorted(config.calib_profile.shapes)
            while calib.get_batch(names) is not None:
                pass
            calib.write_calibration_cache(b"TRT-table")
        self.trt.built.append((network.label, sorted(config.flags)))
        return b"ENGINE-" + network.label.encode() + b"-" * 64


def install_fakes(monkeypatch):
    """Install fake ``tensorrt`` and cuda-python modules; return (trt, cudart)."""
    cudart = FakeCudart()
    trt = FakeTensorRT(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for mod in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt, cudart


H100 = {"tensorrt_version": "10.7.0", "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0"}


def fake_metadata(monkeypatch, folder: Path) -> Path:
    """An export's encoder/step files and the metadata `read_export_metadata` would return."""
    onnx = folder / "policy.onnx"
    onnx.write_bytes(b"encoder graph")
    (folder / "policy.step.onnx").write_bytes(b"step graph")
    meta = {"format": "1", "role": "encoder", "step_file": "policy.step.onnx",
            "model_spec": TINY_SPEC, "policy_config": preset_config("tiny").to_dict(),
            "tokenizer": json.loads(tokenizer_json()), "normalization": {"mean": [0.5] * 3},
            "export": {"opset": 17, "max_text_len": 108},
            "step_path": str(folder / "policy.step.onnx")}
    monkeypatch.setattr("mobile_vla_node.backends.onnx_format.read_export_metadata",
                        lambda path: dict(meta))
    return onnx


# ----------------------------------------------------------------------------- GPU

def _gpu_available() -> bool:
    from mobile_vla_node.backends.tensorrt_backend import import_cudart, import_tensorrt

    try:
        import_tensorrt()
        CudaRuntime(import_cudart(), 0)
    except BackendError:
        return False
    return True


gpu = pytest.mark.skipif(not _gpu_available(),
                         reason="needs the tensorrt Python package, cuda-python and a CUDA GPU "
                                "(JetPack python3-libnvinfer or pip install tensorrt)")


def export_tiny_onnx(tmp_path_factory):
    """The tiny preset exported to ONNX by `vla_export onnx` (GPU tests)."""
    out = tmp_path_factory.mktemp("tiny_export") / "tiny.onnx"
    proc = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.cli", "onnx",
                           "--preset", "tiny", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out
