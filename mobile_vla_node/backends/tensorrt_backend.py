"""TensorRT backend: the frame-encoder and policy-step engines built by `vla_export tensorrt`.

``model_path`` is ``FILE.engine``; ``FILE.step.engine`` and the manifest ``FILE.engine.json`` sit
beside it. At load the manifest is checked against the running TensorRT / GPU (and against the
ONNX files when they sit beside the engine); a mismatch is a `BackendError` carrying the rebuild
command, or, with ``engine_rebuild: auto``, a rebuild at start-up (never mid-run). The rebuild
runs the builder (`mobile_vla_node.export`, build-time code) as a child process, so the robot
process never imports the engine builder, int8 calibration or rosbags.

Execution uses the TensorRT 10 API (named I/O tensors, ``set_tensor_address``,
``execute_async_v3``; also present in 8.5/8.6) and cuda-python for memory and one CUDA stream:
device buffers for every I/O tensor are allocated once at the profile's maximum shape, inputs go
through pinned host buffers (one upload per input per call), and with ``cuda_graph: true`` the
full-window step is replayed from a CUDA graph.

Engines built from a camera-input export (``vla_export onnx --camera-size``; recorded in the
manifest's ``export.preprocess``) take the camera's uint8 frame and resize it in the engine with
PIL's tables (banded MatMul layers, exact in fp32 and TF32 and pinned to fp32 in fp16 builds,
or Gather/Mul/Add/Div/Max/Min layers: TensorRT's ONNX parser has no antialiased Resize); the
node hands them the frame as received (``preprocesses_on_device``).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import mmap
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import numpy as np

from .base import BackendError, BackendInfo, InferenceBackend, ModelSpec, check_token_layout
from .trt_manifest import (
    EngineManifest,
    ManifestError,
    check_engine_files,
    check_manifest,
    manifest_path,
    onnx_beside,
    rebuild_args,
    rebuild_command,
    step_engine_path,
)

LOG = logging.getLogger(__name__)

TENSORRT_INSTALL = ("on Jetson install JetPack's TensorRT Python bindings "
                    "(sudo apt install python3-libnvinfer); on x86: pip install tensorrt")
CUDA_PYTHON_INSTALL = ("pip install cuda-python matching the CUDA major version (JetPack 6 / "
                       "CUDA 12: pip install 'cuda-python>=12,<13'; JetPack 5 / CUDA 11.4: "
                       "pip install 'cuda-python>=11.4,<12')")
# `engine_rebuild: auto` runs ``python -m BUILDER_MODULE tensorrt ...`` (that is, vla_export).
BUILDER_MODULE = "mobile_vla_node.export.cli"
ENCODER_IO = ("image", "text_ids", "feature")
STEP_IO = ("features", "h0", "c0", "actions", "hn", "cn")


def import_tensorrt():
    """Import ``tensorrt`` or raise a one-line `BackendError` naming the install step."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # OSError: bindings present, libnvinfer.so missing
        raise BackendError(f"TensorRT is not available (import tensorrt failed: {exc}); "
                           f"{TENSORRT_INSTALL}") from exc


def import_cudart():
    """Import cuda-python's runtime module (new and old layouts) or raise `BackendError`."""
    errors = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except (ImportError, OSError) as exc:
            errors.append(f"{name}: {exc}")
    raise BackendError(f"cuda-python is not available ({'; '.join(errors)}); install it with: "
                       f"{CUDA_PYTHON_INSTALL}")


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _handle(obj) -> int:
    """A CUDA handle (cudaStream_t, pointer) as the integer TensorRT takes."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


class CudaRuntime:
    """Checked calls into cuda-python's runtime API on one device."""

    def __init__(self, cudart, device: int = 0):
        self.rt = cudart
        self.device = int(device)
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count == 0:
            reason = self.error_text(err) if err != cudart.cudaError_t.cudaSuccess else "0 devices"
            raise BackendError(f"no CUDA device ({reason}); TensorRT needs an NVIDIA GPU with "
                               "its driver (a Jetson, or an x86 machine with a CUDA GPU)")
        if self.device >= count:
            raise BackendError(f"CUDA device {self.device} does not exist ({count} visible)")
        self._thread = None
        self.use_device()

    def use_device(self) -> None:
        """Make the device current in this thread (the runtime API's device is per thread)."""
        thread = threading.get_ident()
        if thread != self._thread:
            self.check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
            self._thread = thread

    def error_text(self, err) -> str:
        """``cudaErrorX: description`` for an error code."""
        name = self.rt.cudaGetErrorName(err)[1]
        text = self.rt.cudaGetErrorString(err)[1]
        return f"{_text(name)}: {_text(text)}"

    def check(self, result, what: str):
        """Unpack a cuda-python ``(err, *values)`` result; raise `BackendError` on failure."""
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed: {self.error_text(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def facts(self) -> dict:
        """GPU name and compute capability of the device."""
        props = self.check(self.rt.cudaGetDeviceProperties(self.device),
                           "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return {"gpu_name": str(name).strip(),
                "compute_capability": f"{props.major}.{props.minor}"}

    def malloc(self, nbytes: int) -> int:
        """Device allocation (at least one byte)."""
        return _handle(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        """Free a device allocation."""
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Pinned host allocation and a writable uint8 numpy view of it."""
        nbytes = max(int(nbytes), 1)
        ptr = _handle(self.check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        view = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=np.uint8)
        return ptr, view

    def free_host(self, ptr: int) -> None:
        """Free a pinned host allocation."""
        self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def upload(self, dst: int, src: int, nbytes: int, stream) -> None:
        """Asynchronous host-to-device copy on ``stream``."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync H2D")

    def copy_to_device(self, dst: int, array: np.ndarray) -> None:
        """Synchronous copy of a host array to device memory."""
        array = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpy(dst, array.ctypes.data, array.nbytes, kind), "cudaMemcpy")

    def download(self, dst: int, src: int, nbytes: int, stream) -> None:
        """Asynchronous device-to-host copy on ``stream``."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync D2H")

    def zero(self, ptr: int, nbytes: int, stream) -> None:
        """Asynchronously set device memory to zero."""
        self.check(self.rt.cudaMemsetAsync(ptr, 0, nbytes, stream), "cudaMemsetAsync")

    def stream(self):
        """A new non-blocking stream."""
        return self.check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking),
                          "cudaStreamCreateWithFlags")

    def sync(self, stream) -> None:
        """Wait for all work queued on ``stream``."""
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream) -> None:
        """Destroy a stream."""
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def begin_capture(self, stream) -> None:
        """Start capturing ``stream`` into a CUDA graph (this thread's calls only)."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        """Stop capturing; return the captured graph."""
        return self.check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def instantiate(self, graph):
        """Instantiate a graph (cuda-python 12 and 11 signatures)."""
        try:
            result = self.rt.cudaGraphInstantiate(graph, 0)
        except TypeError:  # cuda-python 11: (graph, error-log buffer, buffer size)
            result = self.rt.cudaGraphInstantiate(graph, b"", 0)
        value = self.check(result, "cudaGraphInstantiate")
        return value[0] if isinstance(value, tuple) else value

    def launch(self, graph_exec, stream) -> None:
        """Launch an instantiated graph on ``stream``."""
        self.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph=None, graph_exec=None) -> None:
        """Destroy a graph and/or its executable (errors ignored: used in cleanup)."""
        if graph_exec is not None:
            self.rt.cudaGraphExecDestroy(graph_exec)
        if graph is not None:
            self.rt.cudaGraphDestroy(graph)

    def clear_error(self) -> None:
        """Reset the last (non-sticky) CUDA error after a failed capture."""
        self.rt.cudaGetLastError()


def runtime_facts(trt, cuda: CudaRuntime) -> dict:
    """TensorRT version, GPU name and compute capability of this system (what engines tie to)."""
    return {"tensorrt_version": str(trt.__version__), **cuda.facts()}


def make_logger(trt, verbose: bool = False):
    """A ``trt.ILogger`` that forwards TensorRT's messages to Python logging."""
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR,
              sev.WARNING: logging.WARNING, sev.INFO: logging.DEBUG,
              sev.VERBOSE: logging.DEBUG if verbose else None}

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            level = levels.get(severity, logging.WARNING)
            if level is not None:
                LOG.log(level, "TensorRT: %s", msg)

    return _Logger()


def _dims(dims) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


class _Binding:
    """One I/O tensor: its dtype, profile range, device buffer and pinned host buffer."""

    def __init__(self, name, is_input, dtype, lo, hi):
        self.name, self.is_input, self.dtype = name, is_input, np.dtype(dtype)
        self.min, self.max = lo, hi
        self.device = self.host_ptr = 0
        self.host: np.ndarray | None = None


class EngineRunner:
    """An execution context over one engine with buffers allocated at the maximum shapes."""

    def __init__(self, trt, cuda: CudaRuntime, engine, stream, label: str, names: tuple):
        self.cuda, self.engine, self.stream, self.label = cuda, engine, stream, label
        self.handle = _handle(stream)
        self.bindings: dict[str, _Binding] = {}
        self.shapes: dict[str, tuple] = {}
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for the {label} "
                               "engine (out of GPU memory?)")
        io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        missing = [n for n in names if n not in io]
        if missing:
            raise BackendError(f"{label} engine lacks tensors {missing} (has {io}); it was not "
                               "built by vla_export tensorrt from this package's ONNX export")
        try:
            for name in io:
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = trt.nptype(engine.get_tensor_dtype(name))
                shape = _dims(engine.get_tensor_shape(name))
                if is_input and any(d < 0 for d in shape):
                    lo, _, hi = (_dims(d) for d in engine.get_tensor_profile_shape(name, 0))
                else:
                    lo = hi = shape
                self.bindings[name] = _Binding(name, is_input, dtype, lo, hi)
            for b in self.inputs():
                self._set_shape(b.name, b.max)
            for b in self.bindings.values():
                if not b.is_input:
                    b.max = _dims(self.context.get_tensor_shape(b.name))
                    if any(d < 0 for d in b.max):
                        raise BackendError(f"{label} output {b.name!r} has a data-dependent "
                                           f"shape {b.max}; not supported")
                nbytes = int(np.prod(b.max)) * b.dtype.itemsize
                b.device = cuda.malloc(nbytes)
                b.host_ptr, b.host = cuda.malloc_host(nbytes)
                if not self.context.set_tensor_address(b.name, b.device):
                    raise BackendError(f"TensorRT rejected the address of {label} tensor "
                                       f"{b.name!r}")
        except BaseException:
            self.close()
            raise

    def inputs(self) -> list[_Binding]:
        """The input bindings."""
        return [b for b in self.bindings.values() if b.is_input]

    def _set_shape(self, name: str, shape: tuple) -> None:
        if self.shapes.get(name) == shape:
            return
        b = self.bindings[name]
        if len(shape) != len(b.min) or any(not lo <= s <= hi
                                           for s, lo, hi in zip(shape, b.min, b.max, strict=True)):
            raise BackendError(f"{self.label} input {name!r} shape {shape} is outside the "
                               f"engine's optimization profile (min {b.min}, max {b.max}); "
                               "rebuild the engine with a wider profile (e.g. --max-text-len)")
        if self.context.set_input_shape(name, shape) is False:
            raise BackendError(f"TensorRT rejected shape {shape} for {self.label} input {name!r}")
        self.shapes[name] = shape

    def set_input(self, name: str, array: np.ndarray) -> None:
        """Set the shape and queue the one upload of an input (via its pinned buffer)."""
        b = self.bindings[name]
        array = np.ascontiguousarray(array, dtype=b.dtype)
        self._set_shape(name, tuple(array.shape))
        b.host[: array.nbytes] = array.reshape(-1).view(np.uint8)
        self.cuda.upload(b.device, b.host_ptr, array.nbytes, self.stream)

    def zero_input(self, name: str, shape: tuple) -> None:
        """Set an input's shape and fill its device buffer with zeros (once, for constants)."""
        b = self.bindings[name]
        self._set_shape(name, shape)
        self.cuda.zero(b.device, int(np.prod(shape)) * b.dtype.itemsize, self.stream)

    def execute(self) -> None:
        """Queue one inference on the stream."""
        if not self.context.execute_async_v3(self.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed for the {self.label} engine "
                               "(see the TensorRT log)")

    def fetch(self, *names: str) -> list[np.ndarray]:
        """Queue downloads of outputs, wait for the stream, return copies."""
        shapes = []
        for name in names:
            b = self.bindings[name]
            shape = _dims(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * b.dtype.itemsize
            self.cuda.download(b.host_ptr, b.device, nbytes, self.stream)
            shapes.append((b, shape, nbytes))
        self.cuda.sync(self.stream)
        return [b.host[:n].view(b.dtype).reshape(shape).copy() for b, shape, n in shapes]

    def capture(self):
        """Capture one inference at the current shapes into an instantiated CUDA graph."""
        self.execute()  # flush TensorRT's deferred per-shape setup outside the capture
        self.cuda.sync(self.stream)
        self.cuda.begin_capture(self.stream)
        error = None
        try:
            if not self.context.execute_async_v3(self.handle):
                error = "execute_async_v3 failed during capture"
        except Exception as exc:  # noqa: BLE001 - the capture must be ended whatever happened
            error = f"execute_async_v3 raised during capture: {exc}"
        try:
            graph = self.cuda.end_capture(self.stream)
        except BackendError as exc:
            self.cuda.clear_error()
            raise BackendError(error or str(exc)) from exc
        if error:
            self.cuda.destroy_graph(graph=graph)
            self.cuda.clear_error()
            raise BackendError(error)
        try:
            return self.cuda.instantiate(graph)
        finally:
            self.cuda.destroy_graph(graph=graph)

    def close(self) -> None:
        """Free buffers and the context (idempotent)."""
        for b in self.bindings.values():
            if b.device:
                self.cuda.free(b.device)
                b.device = 0
            if b.host_ptr:
                b.host = None
                self.cuda.free_host(b.host_ptr)
                b.host_ptr = 0
        self.context = None


def _read_engine(runtime, path: Path, label: str):
    """Deserialize an engine from a memory-mapped file (no second copy of the weights)."""
    if path.stat().st_size == 0:
        raise BackendError(f"the {label} engine {str(path)!r} is empty; rebuild it with "
                           "vla_export tensorrt")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(f"TensorRT cannot deserialize the {label} engine {str(path)!r} "
                           "(corrupt, or built by another TensorRT version); rebuild it with "
                           "vla_export tensorrt")
    return engine


def engine_problems(engine: Path, facts: dict) -> tuple[EngineManifest, list[str]]:
    """Load the manifest beside ``engine`` and list every mismatch with this system."""
    try:
        manifest = EngineManifest.load(manifest_path(engine))
    except ManifestError as exc:
        raise BackendError(f"{exc}; an engine without its manifest cannot be checked: rebuild "
                           f"it with vla_export tensorrt --onnx MODEL.onnx --output {engine}"
                           ) from exc
    problems = check_engine_files(manifest, engine)
    problems += check_manifest(manifest, facts, onnx_beside(manifest, engine), engine=engine)
    return manifest, problems


def mismatch_message(manifest: EngineManifest, engine: Path, problems: list[str]) -> str:
    """One line: every problem, then the rebuild command once."""
    command = rebuild_command(manifest, engine)
    suffix = f"; rebuild with: {command}"
    core = [p.removesuffix(suffix) for p in problems]
    return (f"TensorRT engine {str(engine)!r} does not fit this system: {' | '.join(core)}; "
            f"rebuild with: {command} (or set engine_rebuild: auto to rebuild at start-up)")


def run_builder(args: list[str], log=LOG.warning) -> tuple[int, list[str]]:
    """Run ``vla_export ARGS`` in a child process, its output line by line to ``log``.

    Returns the exit code and the last lines. The child is stopped if this process is
    interrupted while it runs.
    """
    cmd = [sys.executable, "-m", BUILDER_MODULE, *args]
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, bufsize=1)
    except OSError as exc:
        return 127, [f"cannot start {cmd[0]}: {exc}"]
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log(f"vla_export: {line}")
        return proc.wait(), list(tail)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        proc.stdout.close()


class TensorRTBackend(InferenceBackend):
    """Runs the encoder and step engines on one CUDA stream."""

    name = "tensorrt"

    def __init__(self, config):
        super().__init__(config)
        self.cuda: CudaRuntime | None = None
        self.stream = None
        self._encoder: EngineRunner | None = None
        self._step: EngineRunner | None = None
        self._engines: list = []
        self._graph = None
        self._graph_window = 0
        self._graph_ready = False  # False after the step ran at another shape

    def _device_index(self, warnings: list) -> int:
        device = self.config.device
        if device.startswith("cuda:"):
            return int(device[5:])
        if device == "cpu":
            warnings.append("device 'cpu' ignored: TensorRT runs on CUDA device 0")
        return 0

    def load(self) -> None:
        """Check the manifest, deserialize both engines, allocate buffers, warm nothing yet."""
        cfg = self.config
        if not cfg.model_path:
            raise BackendError("backend tensorrt needs model_path: the FILE.engine built with "
                               "vla_export tensorrt --onnx FILE.onnx --output FILE.engine")
        engine_path = Path(cfg.model_path).expanduser()
        if engine_path.suffix != ".engine":
            raise BackendError(f"model_path {str(engine_path)!r} is not a .engine file; build one "
                               f"with vla_export tensorrt --onnx MODEL.onnx --output "
                               f"{engine_path.with_suffix('.engine')}")
        trt = import_tensorrt()
        warnings: list = []
        self.cuda = cuda = CudaRuntime(import_cudart(), self._device_index(warnings))
        facts = runtime_facts(trt, cuda)
        if not engine_path.is_file():
            raise BackendError(f"model_path {str(engine_path)!r} does not exist; build it with "
                               f"vla_export tensorrt --onnx MODEL.onnx --output {engine_path}")
        manifest, problems = engine_problems(engine_path, facts)
        if problems:
            manifest = self._rebuild(manifest, engine_path, facts, problems)
        try:
            self._start(trt, cuda, manifest, engine_path, facts, warnings)
        except BaseException:
            self.close()
            raise

    def _rebuild(self, manifest, engine_path, facts, problems) -> EngineManifest:
        if self.config.engine_rebuild != "auto":
            raise BackendError(mismatch_message(manifest, engine_path, problems))
        LOG.warning("TensorRT engine %s does not fit this system: %s", engine_path,
                    " | ".join(problems))
        LOG.warning("engine_rebuild=auto: REBUILDING the TensorRT engines NOW, at start-up; "
                    "this takes minutes and the node stays not-ready until it is done")
        args = rebuild_args(manifest, engine_path)
        code, tail = run_builder(args, LOG.warning)
        last = tail[-1] if tail else "no output"
        try:
            manifest, problems = engine_problems(engine_path, facts)
        except BackendError as exc:
            raise BackendError(f"automatic rebuild of {engine_path} failed (vla_export exit "
                               f"{code}: {last}): {exc}") from exc
        if problems:
            raise BackendError(f"automatic rebuild of {engine_path} failed (vla_export exit "
                               f"{code}: {last}); "
                               f"{mismatch_message(manifest, engine_path, problems)}")
        if code != 0:  # built, but the parity check failed or could not run
            LOG.warning("vla_export exited %d after rebuilding %s: %s", code, engine_path, last)
        LOG.warning("rebuilt TensorRT engines %s with: %s", engine_path,
                    rebuild_command(manifest, engine_path))
        return manifest

    def _start(self, trt, cuda, manifest, engine_path, facts, warnings) -> None:
        from ..model.tokenizer import PromptTokenizer

        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        encoder = _read_engine(self._runtime, engine_path, "encoder")
        step = _read_engine(self._runtime, step_engine_path(engine_path), "step")
        self._engines = [encoder, step]
        self.stream = cuda.stream()
        self._encoder = EngineRunner(trt, cuda, encoder, self.stream, "encoder", ENCODER_IO)
        self._step = EngineRunner(trt, cuda, step, self.stream, "step", STEP_IO)
        for name in ("h0", "c0"):  # zero LSTM state, uploaded once
            self._step.zero_input(name, self._step.bindings[name].max)
        self.spec = ModelSpec(**manifest.model_spec)
        check_token_layout(self.config, self.spec, "the engine")
        self.camera = (manifest.export or {}).get("preprocess")
        self.preprocesses_on_device = self.camera is not None
        self.tokenizer = PromptTokenizer.from_json(manifest.tokenizer)
        text_max = self._encoder.bindings["text_ids"].max[-1]
        if self.tokenizer.pad_to > text_max:
            raise BackendError(f"the tokenizer pads prompts to {self.tokenizer.pad_to} ids but "
                               f"the engine takes at most {text_max}; "
                               f"rebuild with: {rebuild_command(manifest, engine_path)}")
        if not self.tokenizer.pad_to:  # longer commands are rejected when they arrive
            self.tokenizer.max_tokens = min(self.tokenizer.max_tokens, text_max)
        parity = manifest.parity
        if parity.get("passed") is False:
            warnings.append(f"these engines FAILED the parity check when built (max abs "
                            f"{parity.get('max_abs')}, atol {parity.get('atol')})")
        elif not parity:
            warnings.append("these engines have no recorded parity check")
        graph_state = self._setup_graph() if self.config.cuda_graph else "off"
        self.info = BackendInfo(
            name=self.name, device=f"cuda:{cuda.device} ({facts['gpu_name']})",
            precision=manifest.precision, provider=f"TensorRT {trt.__version__}",
            model=str(engine_path), warnings=warnings,
            extra={"step_precision": manifest.step_precision,
                   "compute_capability": facts["compute_capability"],
                   "engine_built": manifest.created_at, "cuda_graph": graph_state,
                   "max_text_len": text_max,
                   "preprocess": self.describe_camera_input("engine", "encoder engine")})

    def _setup_graph(self) -> str:
        """Capture the full-window step (its steady state) in a CUDA graph, or say why not."""
        features = self._step.bindings["features"]
        window = features.max[1]
        if window != self.spec.window_size:
            reason = (f"the step engine's window profile max {window} differs from the model's "
                      f"window_size {self.spec.window_size}")
        else:
            try:
                self._step.zero_input("features", features.max)
                self._graph = self._step.capture()
                self._graph_window = window
                self._graph_ready = True
                LOG.info("CUDA graph captured for the step engine at window %d", window)
                return f"on (window {window}; shorter windows run normally)"
            except Exception as exc:  # noqa: BLE001 - any capture failure means plain execution
                reason = f"capture failed: {exc}"
        LOG.warning("cuda_graph requested but not used (%s); running the step engine normally",
                    reason)
        return f"off ({reason})"

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) + int64 (L,) -> float32 (D,).

        Engines from a camera-input export take the camera frame (H, W, 3) in its camera order.
        """
        if self.camera is not None:
            from .onnx_format import camera_frame

            image = camera_frame(self.camera, image)
        self.cuda.use_device()
        enc = self._encoder
        enc.set_input("image", np.asarray(image)[None])
        enc.set_input("text_ids", np.asarray(text_ids).reshape(1, -1))
        enc.execute()
        (feature,) = enc.fetch("feature")
        return feature.reshape(-1).astype(np.float32, copy=False)

    def decode(self, features: np.ndarray) -> np.ndarray:
        """float32 (T, D) -> float32 (chunk, action_dim); zero LSTM state."""
        self.cuda.use_device()
        step = self._step
        window = np.asarray(features, dtype=np.float32)[None]
        step.set_input("features", window)
        if self._graph is not None and window.shape[1] == self._graph_window:
            if self._graph_ready:
                self.cuda.launch(self._graph, self.stream)
            else:  # back at the captured shape: one plain run redoes TensorRT's shape setup
                step.execute()
                self._graph_ready = True
        else:
            step.execute()
            self._graph_ready = False
        (actions,) = step.fetch("actions")
        return actions[0].astype(np.float32, copy=False)

    def synchronize(self) -> None:
        """Wait for queued device work (for benchmarks)."""
        if self.stream is not None:
            self.cuda.sync(self.stream)

    def close(self) -> None:
        """Free graphs, buffers, contexts, engines and the stream (idempotent)."""
        cuda = self.cuda
        if cuda is None:
            return
        if self.stream is not None:
            try:
                cuda.sync(self.stream)
            except BackendError as exc:  # still free what can be freed
                LOG.warning("closing the TensorRT backend: %s", exc)
        if self._graph is not None:
            cuda.destroy_graph(graph_exec=self._graph)
            self._graph = None
        for runner in (self._encoder, self._step):
            if runner is not None:
                runner.close()
        self._encoder = self._step = None
        self._engines = []
        if self.stream is not None:
            cuda.destroy_stream(self.stream)
            self.stream = None
