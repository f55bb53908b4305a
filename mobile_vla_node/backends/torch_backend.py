"""PyTorch backend: the reference implementation (CPU or CUDA; fp32, fp16, bf16).

On CUDA two options cut the per-step overhead (docs/GPU.md):

* ``cuda_graph: true`` replays the per-frame encoder and the window step from CUDA graphs, one
  per static shape (`torch_cuda_graphs`); a shape whose capture fails runs eagerly, with the reason
  logged and shown in ``describe().extra["cuda_graph"]``. On the CPU it is reported unavailable.
* ``device_preprocess: true`` (the default) makes `infer_raw` upload the camera's uint8 frame once
  and resize it on the GPU inside the encoder (`model.preprocessing.FramePreprocess`: every PIL
  filter, bit-exact), so `PolicyRuntime.step` skips the CPU resize (``preprocesses_on_device``).
  On the CPU the runtime's resize (`core.preprocess.CpuResize`) is still faster than the in-graph
  one (2.0 vs 3.0 ms at 640x480 bicubic; docs/BENCHMARKS.md, "Preprocessing"), so it is kept
  there.
"""

from __future__ import annotations

import logging

import numpy as np

from . import require
from .base import BackendError, BackendInfo, InferenceBackend, ModelSpec

LOG = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(InferenceBackend):
    """Runs `MobileVLAPolicy` under ``torch.inference_mode`` on the configured device."""

    name = "torch"

    def load(self) -> None:
        """Build the policy, move it to device/precision, and record what is in use."""
        torch = require("torch", "pip install torch (on Jetson: the JetPack PyTorch wheel)")
        from ..model.loader import ModelSource, load_policy

        cfg = self.config
        if cfg.precision not in DTYPES:
            raise BackendError(f"precision={cfg.precision!r} is not supported by the torch "
                               f"backend; use one of {sorted(DTYPES)} (int8: backend tensorrt)")
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device={cfg.device!r} but torch {torch.__version__} sees no CUDA "
                               "device (CPU-only build, or no GPU); set device: cpu")
        self.torch = torch
        if cfg.intra_op_threads > 0:
            # On a small CPU torch's default pool oversubscribes the cores shared with the node's
            # executor (measured: tiny p50 214 ms with 2 threads vs 13 ms with 1, under load).
            torch.set_num_threads(cfg.intra_op_threads)
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, DTYPES[cfg.precision])
        warnings = []
        if self.device.type == "cpu" and cfg.precision == "fp16":
            warnings.append("fp16 on CPU is slow and only for parity checks")
        loaded = load_policy(ModelSource(cfg.model_preset, cfg.model_path, cfg.backbone_path,
                                         cfg.strict_loading, cfg.allow_unsafe_pickle,
                                         getattr(cfg, "model_config", ""),
                                         token_layout=getattr(cfg, "token_layout", "auto"),
                                         tokenizer_path=getattr(cfg, "tokenizer_path", ""),
                                         image=cfg.image_choice()))
        self.model = loaded.model.to(device=self.device, dtype=self.dtype)
        self.tokenizer = loaded.tokenizer
        pc = loaded.config
        self.spec = ModelSpec.from_policy_config(pc, self.model.feature_dim)
        self._encode = self.model.encode_frame
        if cfg.torch_compile:
            self._encode = torch.compile(self.model.encode_frame)
        self._pin = self.device.type == "cuda"
        self._state = self.model.zero_state(1)
        self._resize_filter = str(getattr(pc, "resize_filter", "bicubic"))
        preprocess = self._setup_device_preprocess(cfg, warnings)
        self._graphs = None
        graph_state = self._setup_graphs(cfg, warnings)
        device_name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                       else "cpu")
        self.info = BackendInfo(
            name=self.name, device=f"{cfg.device} ({device_name})", precision=cfg.precision,
            provider=f"torch {torch.__version__}", model=loaded.weights, warnings=warnings,
            extra={"parameters": sum(p.numel() for p in self.model.parameters()),
                   "compiled": cfg.torch_compile, "cuda_graph": graph_state,
                   "preprocess": preprocess,
                   "image_pipeline": f"{getattr(pc, 'image_pipeline', 'package')}: "
                                     f"{pc.resize_filter}, {pc.image_norm}"})

    def _setup_device_preprocess(self, cfg, warnings: list) -> str:
        """Decide whether `infer_raw` resizes on the device; return the diagnostics text."""
        self.preprocesses_on_device = False
        self._swap_index = self.torch.tensor([2, 1, 0], device=self.device)   # rgb <-> bgr
        if not getattr(cfg, "device_preprocess", True):
            return "cpu (runtime resize; device_preprocess: false)"
        if self.device.type != "cuda":
            return "cpu (runtime resize: faster than the in-graph one on a CPU)"
        self.preprocesses_on_device = True
        how = ("int32 gathers" if self._resize_filter == "nearest"
               else "exact banded float32 matmuls")
        return f"{cfg.device} (in the encoder: PIL {self._resize_filter} tables, {how}, bit-exact)"

    def _setup_graphs(self, cfg, warnings: list) -> str:
        """Create the graph cache when ``cuda_graph`` is on and possible; return its state."""
        if not cfg.cuda_graph:
            return "off"
        from .torch_cuda_graphs import GraphCache, capture_cuda, unavailable_reason

        reason = unavailable_reason(self.torch, self.device)
        if reason:
            warnings.append(reason)
            LOG.warning("%s; running eagerly", reason)
            return f"off ({reason})"
        if cfg.torch_compile:
            warnings.append("cuda_graph with torch_compile: the compiled encoder is captured "
                            "(not measured together; measure first)")
        self._graphs = GraphCache(
            lambda fn, inputs: capture_cuda(self.torch, fn, inputs, self.device),
            on_change=self._graphs_changed)
        return self._graphs.summary()

    def _graphs_changed(self, cache) -> None:
        if self.info is not None:
            self.info.extra["cuda_graph"] = cache.summary()

    def _to_device(self, array: np.ndarray):
        if array.size == 0:  # e.g. the empty history of a first frame: nothing to pin or copy
            return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array, copy=True, order="C")
        tensor = self.torch.from_numpy(array)
        if self._pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=self._pin)

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) + int64 (L,) -> float32 (D,); the uint8 image is uploaded once."""
        with self.torch.inference_mode():
            feature = self._encode(self._to_device(image)[None], self._to_device(text_ids)[None])
            return feature[0].float().cpu().numpy()

    def decode(self, features: np.ndarray) -> np.ndarray:
        """float32 (T, D) -> float32 (chunk, action_dim)."""
        with self.torch.inference_mode():
            window = self._to_device(features.astype(np.float32, copy=False))[None]
            actions, _, _ = self.model.decode(window.to(self.dtype), *self._state)
            return actions[0].float().cpu().numpy()

    def infer(self, image: np.ndarray, text_ids: np.ndarray,
              history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-size uint8 image + prompt ids + history (T-1, D) -> (feature, actions).

        Encoder and window step run back to back on the device (the new feature joins the window
        there); one device-to-host copy at the end. With ``cuda_graph`` both are graph replays.
        """
        return self._run_step(image, text_ids, history, None)

    def infer_raw(self, rgb: np.ndarray, text_ids: np.ndarray, history: np.ndarray,
                  channel_order: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
        """Camera uint8 (H, W, 3) frame of any size (any strides) -> (feature, actions).

        With ``preprocesses_on_device`` the frame is uploaded once and resized inside the encoder
        on the device (``channel_order`` "bgr": swap its channels there); otherwise it is resized
        on the CPU first (the base class's behaviour).
        """
        if not self.preprocesses_on_device:
            return super().infer_raw(rgb, text_ids, history, channel_order)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order {channel_order!r} must be rgb or bgr")
        return self._run_step(rgb, text_ids, history, channel_order)

    def _run_step(self, frame: np.ndarray, text_ids: np.ndarray, history: np.ndarray,
                  channel_order: str | None):
        """One step; ``channel_order`` None: ``frame`` is already the model input."""
        torch = self.torch
        dim = self.spec.feature_dim
        history = np.asarray(history, dtype=np.float32).reshape(-1, dim)
        with torch.inference_mode():
            image = self._to_device(frame)[None]
            ids = self._to_device(text_ids)[None]
            hist = self._to_device(history)[None]
            if channel_order is None:
                key, encoder = ("encoder", tuple(image.shape), "model", ids.shape[1]), self._encode
            else:
                key = ("encoder", tuple(image.shape), channel_order, ids.shape[1])
                encoder = self._raw_encoder(channel_order)
            feature = self._call(key, encoder, image, ids)
            actions = self._call(("step", hist.shape[1] + 1), self._window_step, hist, feature)
            # copy=True: graph outputs are static tensors the next replay overwrites (on the
            # CPU a plain .cpu().numpy() would alias them).
            host = {"device": "cpu", "dtype": torch.float32, "copy": True}
            return feature[0].to(**host).numpy(), actions[0].to(**host).numpy()

    def _call(self, key, fn, *inputs):
        if self._graphs is None:
            return fn(*inputs)
        return self._graphs.run(key, fn, *inputs)

    def _raw_encoder(self, channel_order: str):
        encoders = self.__dict__.setdefault("_raw_encoders", {})
        if channel_order not in encoders:
            encode = self._encode
            # made at load, not in the call: no host-to-device copy inside a CUDA graph capture
            swap = self._swap_index if channel_order == "bgr" else None

            def encode_raw(frames, ids):
                # encode_frame resizes a camera-size frame in-graph (FramePreprocess); the swap
                # is a 3-channel gather of the frame
                if swap is not None:
                    frames = frames.index_select(3, swap)
                return encode(frames, ids)

            encoders[channel_order] = encode_raw
        return encoders[channel_order]

    def _window_step(self, history, feature):
        """float32 history (1, T-1, D) + feature (1, D) at model dtype -> actions (1, chunk, a)."""
        window = self.torch.cat([history, feature.float()[:, None]], dim=1)
        actions, _, _ = self.model.decode(window.to(self.dtype), *self._state)
        return actions

    def warmup(self, iters: int = 3) -> None:
        """The full-window step ``iters`` times; with CUDA graphs also every shorter window.

        That captures the window-step graphs the history passes through after a command or reset
        (T = 1 .. window_size) and the encoder graph for the warm-up prompt's length; other prompt
        lengths and raw camera-frame sizes are captured on first use.
        """
        super().warmup(iters)
        if self._graphs is None:
            return
        size, dim = self.spec.image_size, self.spec.feature_dim
        image = np.zeros((size, size, 3), np.uint8)
        ids = self.tokenizer.encode("warm up")
        for t in range(1, self.spec.window_size):
            self.infer(image, ids, np.zeros((t - 1, dim), np.float32))

    def synchronize(self) -> None:
        """Wait for queued device work (for benchmarks)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Drop the model and, on CUDA, cached allocator blocks."""
        self.model = None
        if getattr(self, "_graphs", None) is not None:
            self._graphs.clear()
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            self.torch.cuda.empty_cache()
