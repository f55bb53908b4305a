"""PyTorch backend: the reference implementation (CPU or CUDA; fp32, fp16, bf16)."""

from __future__ import annotations

import numpy as np

from . import require
from .base import BackendError, BackendInfo, InferenceBackend, ModelSpec

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
                                         getattr(cfg, "model_config", "")))
        self.model = loaded.model.to(device=self.device, dtype=self.dtype)
        self.tokenizer = loaded.tokenizer
        pc = loaded.config
        self.spec = ModelSpec.from_policy_config(pc, self.model.feature_dim)
        self._encode = self.model.encode_frame
        if cfg.torch_compile:
            self._encode = torch.compile(self.model.encode_frame)
        self._pin = self.device.type == "cuda"
        self._state = self.model.zero_state(1)
        device_name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                       else "cpu")
        self.info = BackendInfo(
            name=self.name, device=f"{cfg.device} ({device_name})", precision=cfg.precision,
            provider=f"torch {torch.__version__}", model=loaded.weights, warnings=warnings,
            extra={"parameters": sum(p.numel() for p in self.model.parameters()),
                   "compiled": cfg.torch_compile})

    def _to_device(self, array: np.ndarray):
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

    def synchronize(self) -> None:
        """Wait for queued device work (for benchmarks)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Drop the model and, on CUDA, cached allocator blocks."""
        self.model = None
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            self.torch.cuda.empty_cache()
