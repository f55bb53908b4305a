"""ONNX Runtime backend: runs the two graphs of a ``vla_export onnx`` export.

``model_path`` is the encoder ``NAME.onnx``; the step file, tokenizer and model spec come from the
export's metadata. A camera-input export (format 2, ``vla_export onnx --camera-size WxH``) takes
the camera's uint8 frame and resizes it in its graph (``preprocesses_on_device``): the node hands
it the frame as received (a view of the message buffer); a frame of another size is a bad image,
named as such. An export without it (format 1, every export before) takes model-size images,
resized by the runtime on the CPU.

Providers are used in the configured order and the provider each session actually runs on is
reported: a missing or silently dropped first provider is an error unless
``allow_provider_fallback`` is set, in which case it becomes a warning in `BackendInfo.warnings`.
"""

from __future__ import annotations

import numpy as np

from . import require
from .base import (
    BackendError,
    BackendInfo,
    InferenceBackend,
    check_encoder_inputs,
    check_token_layout,
    check_window,
)
from .onnx_format import (
    ENCODER_INPUTS,
    STEP_INPUTS,
    ExportFormatError,
    camera_frame,
    camera_input,
    export_precision,
    model_spec_from_metadata,
    read_export_metadata,
    tokenizer_from_metadata,
)

ORT_INSTALL = ("pip install onnxruntime (GPU: onnxruntime-gpu; Jetson: the JetPack "
               "onnxruntime-gpu wheel)")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_GPU_WHEEL = "pip install onnxruntime-gpu (Jetson: the JetPack onnxruntime-gpu wheel)"
PROVIDER_INSTALL = {
    "CUDAExecutionProvider": f"{_GPU_WHEEL} plus the CUDA and cuDNN libraries it was built for",
    "TensorrtExecutionProvider": f"{_GPU_WHEEL} plus the CUDA, cuDNN and TensorRT libraries it "
                                 "was built for",
}
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def install_hint(provider: str) -> str:
    """How to get an ONNX Runtime execution provider."""
    return PROVIDER_INSTALL.get(provider, "an onnxruntime build that includes it")


class OnnxBackend(InferenceBackend):
    """Runs the encoder and step ONNX graphs with ONNX Runtime."""

    name = "onnx"

    def load(self) -> None:
        """Read the export's metadata, open both sessions and record the providers in use."""
        ort = require("onnxruntime", ORT_INSTALL)
        cfg = self.config
        if not cfg.model_path:
            raise BackendError("backend onnx needs model_path set to an exported encoder "
                               "NAME.onnx (create one with `vla_export onnx --output NAME.onnx`)")
        try:
            meta = read_export_metadata(cfg.model_path)
        except ExportFormatError as exc:
            raise BackendError(f"backend onnx: {exc}") from exc
        self.ort = ort
        self.meta = meta
        self.spec = model_spec_from_metadata(meta)
        check_token_layout(cfg, self.spec, cfg.model_path)
        self.tokenizer = tokenizer_from_metadata(meta)
        self.max_text_len = meta["export"].get("max_text_len")
        self.precision = export_precision(meta)
        self.camera = camera_input(meta)
        self.preprocesses_on_device = self.camera is not None
        self.device_id = int(cfg.device.split(":")[1]) if cfg.device.startswith("cuda:") else 0
        warnings: list[str] = []
        providers = self._providers(ort.get_available_providers(), warnings)
        options = self._session_options(ort)
        self.encoder = self._session(meta["encoder_path"], providers, options, warnings)
        self.step = self._session(meta["step_path"], providers, options, warnings)
        used = {"encoder": self.encoder.get_providers()[0], "step": self.step.get_providers()[0]}
        self._check_io()
        self.on_cuda = used["encoder"] in GPU_PROVIDERS or used["step"] in GPU_PROVIDERS
        self._zero_h = np.zeros((self.spec_layers, 1, self.spec_hidden), np.float32)
        self._init_bindings(used)
        if self.precision == "fp16" and not self.on_cuda:
            warnings.append("fp16 export on CPUExecutionProvider: ONNX Runtime inserts casts "
                            "around fp16 nodes; slow, only for parity checks")
        if cfg.device.startswith("cuda") and not self.on_cuda:
            warnings.append(f"device={cfg.device!r} but the sessions run on {used['encoder']}: "
                            "the onnx backend follows `providers` (list CUDAExecutionProvider "
                            "first to use the GPU)")
        if cfg.precision not in ("fp32", self.precision):
            warnings.append(f"precision={cfg.precision!r} is ignored by the onnx backend: the "
                            f"export's weights are {self.precision} (set at export time)")
        if self.camera is not None and not self.on_cuda:
            warnings.append("camera-input export on the CPU: its in-graph resize costs a little "
                            "more than the runtime's CPU resize of a model-size export (3.4 vs "
                            "2.0 ms at 640x480 bicubic; docs/BENCHMARKS.md, Preprocessing)")
        parity = meta.get("parity") or {}
        if parity.get("passed") is False:
            warnings.append(f"export {cfg.model_path!r} FAILED its parity check at export time "
                            "(see `vla_export verify`)")
        provider = (used["encoder"] if used["encoder"] == used["step"]
                    else f"encoder: {used['encoder']}, step: {used['step']}")
        self.info = BackendInfo(
            name=self.name, device=self._device_name(used), precision=self.precision,
            provider=provider, model=meta["encoder_path"], warnings=warnings,
            extra={"step_model": meta["step_path"], "onnxruntime": ort.__version__,
                   "requested_providers": ",".join(cfg.providers),
                   "graph_optimization_level": cfg.graph_optimization_level,
                   "intra_op_threads": cfg.intra_op_threads, "io_binding": self.on_cuda,
                   "opset": meta["export"].get("opset"),
                   "preprocess": self.describe_camera_input("export", "encoder graph"),
                   "source": (meta["export"].get("source") or {}).get("weights", "")})

    @property
    def spec_layers(self) -> int:
        """LSTM layers of the step graph (from the exported policy config)."""
        return int(self.meta["policy_config"]["lstm_layers"])

    @property
    def spec_hidden(self) -> int:
        """LSTM hidden size of the step graph."""
        return int(self.meta["policy_config"]["lstm_hidden"])

    def _providers(self, available: list, warnings: list) -> list:
        """The providers to request: the configured ones, or the usable ones on fall-back."""
        requested = list(self.config.providers)
        first = requested[0]
        if first in available:
            return [self._with_options(p) for p in requested if p in available]
        if not self.config.allow_provider_fallback:
            raise BackendError(
                f"ONNX Runtime provider {first!r} (first in providers) is not available in "
                f"onnxruntime {self.ort.__version__} (available: {available}); install: "
                f"{install_hint(first)} -- or set allow_provider_fallback: true to run on the "
                "next available provider")
        usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        warnings.append(f"requested ONNX Runtime provider {first} is not available "
                        f"(install: {install_hint(first)}); falling back to {usable[0]}")
        return [self._with_options(p) for p in usable]

    def _with_options(self, provider: str):
        if provider in GPU_PROVIDERS:
            return provider, {"device_id": str(self.device_id)}
        return provider

    def _session_options(self, ort):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   OPT_LEVELS[self.config.graph_optimization_level])
        if self.config.intra_op_threads > 0:
            options.intra_op_num_threads = int(self.config.intra_op_threads)
        # Idle worker threads must sleep, not spin: spinning starved the node's control timer
        # (vla_bench node mode: jitter p99 29 ms, 115 deadline misses at 50 Hz).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _session(self, path: str, providers: list, options, warnings: list):
        """Create a session and catch ONNX Runtime silently dropping the first provider."""
        try:
            session = self.ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise BackendError(f"ONNX Runtime cannot open {path!r}: {exc}") from exc
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        actual = session.get_providers()[0]
        if actual != wanted:
            message = (f"ONNX Runtime created the session for {path!r} on {actual} although "
                       f"{wanted} was requested first (usually missing CUDA/cuDNN/TensorRT "
                       f"libraries; install: {install_hint(wanted)})")
            if not self.config.allow_provider_fallback:
                raise BackendError(message + "; set allow_provider_fallback: true to accept it")
            warnings.append(message)
        return session

    def _check_io(self) -> None:
        names = ([i.name for i in self.encoder.get_inputs()], [i.name for i in
                                                                self.step.get_inputs()])
        if tuple(names[0]) != ENCODER_INPUTS or tuple(names[1]) != STEP_INPUTS:
            raise BackendError(f"export {self.config.model_path!r} has inputs {names}; expected "
                               f"{list(ENCODER_INPUTS)} and {list(STEP_INPUTS)}")

    def _device_name(self, used: dict) -> str:
        if not self.on_cuda:
            return "cpu"
        gpu = [p for p in used.values() if p in GPU_PROVIDERS][0]
        return f"cuda:{self.device_id} ({gpu})"

    def _init_bindings(self, used: dict) -> None:
        """On GPU providers: I/O bindings and the zero LSTM state kept on the device."""
        self._bind = {}
        if not self.on_cuda:
            return
        ort = self.ort
        for role, session in (("encoder", self.encoder), ("step", self.step)):
            if used[role] in GPU_PROVIDERS:
                self._bind[role] = session.io_binding()
        if "step" in self._bind:
            # The runtime always decodes from a zero state: upload it once, rebind each call.
            self._zero_dev = ort.OrtValue.ortvalue_from_numpy(self._zero_h, "cuda",
                                                              self.device_id)

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) + int64 (L,) -> float32 (D,).

        A camera-input export takes the camera frame (H, W, 3) in its camera order instead.
        """
        if self.camera is not None:
            return self._encode_frame(camera_frame(self.camera, image), text_ids)
        ids = check_encoder_inputs(self.spec, image, text_ids, self.max_text_len,
                                   "exported encoder")
        return self._run_encoder(np.ascontiguousarray(image)[None], ids)

    def _encode_frame(self, frame: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(text_ids, dtype=np.int64).reshape(1, -1)
        if self.max_text_len is not None and ids.shape[1] > self.max_text_len:
            raise ValueError(f"prompt has {ids.shape[1]} ids; the exported encoder accepts at "
                             f"most {self.max_text_len} (its positional table is fixed)")
        return self._run_encoder(frame[None], ids)

    def _run_encoder(self, image: np.ndarray, ids: np.ndarray) -> np.ndarray:
        feeds = {"image": image, "text_ids": ids}
        binding = self._bind.get("encoder")
        if binding is None:
            return self.encoder.run(None, feeds)[0][0]
        return self._run_bound(self.encoder, binding, feeds, "feature")[0]

    def decode(self, features: np.ndarray) -> np.ndarray:
        """float32 (T, D) -> float32 (chunk, action_dim)."""
        window = check_window(self.spec, features)
        binding = self._bind.get("step")
        if binding is None:
            feeds = {"features": window, "h0": self._zero_h, "c0": self._zero_h}
            return self.step.run(["actions"], feeds)[0][0]
        binding.bind_ortvalue_input("h0", self._zero_dev)
        binding.bind_ortvalue_input("c0", self._zero_dev)
        return self._run_bound(self.step, binding, {"features": window}, "actions")[0]

    def _run_bound(self, session, binding, feeds: dict, output: str) -> np.ndarray:
        """One upload per input, output left on the device, one copy back."""
        uploaded = []  # keep the device copies referenced until the run is done
        for name, array in feeds.items():
            uploaded.append(self.ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id))
            binding.bind_ortvalue_input(name, uploaded[-1])
        binding.bind_output(output, "cuda", self.device_id)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        """Drop both sessions (and their device memory)."""
        self._bind = {}
        self._zero_dev = None
        self.encoder = None
        self.step = None
