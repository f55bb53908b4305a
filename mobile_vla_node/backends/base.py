"""The common inference interface every backend implements.

A backend owns one loaded policy and runs its two stages on numpy arrays:

* ``encode(image, text_ids)``: uint8 (H, W, 3) image, already resized to the model's input size
  and in its channel order, int64 (L,) prompt ids -> float32 (D,) frame feature;
* ``decode(features)``: float32 (T, D) window of features, oldest first -> float32
  (chunk, action_dim) normalized actions in [-1, 1] (or (chunk, num_classes) logits for a
  classification head, see `ModelSpec`).

``infer`` is both in one call. History, command handling and post-processing live in
`core.runtime.PolicyRuntime`, shared by all backends.

A backend whose ``preprocesses_on_device`` is true after `load` also takes the decoded camera
frame as it is: ``infer_raw(rgb, text_ids, history, channel_order)`` with a uint8 (H, W, 3)
frame of any size (any strides; ``channel_order`` "bgr": its channels must be swapped for the
model); it resizes (like `core.preprocess.to_model_input`) and normalizes on its device, so the
CPU does no per-pixel work. `PolicyRuntime.step` calls it instead of ``prepare`` + ``infer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot start: missing runtime, device, provider or model file."""


@dataclass
class BackendInfo:
    """What a backend actually runs on, as reported after `load` (never what was asked for)."""

    name: str
    device: str
    precision: str
    provider: str = ""
    model: str = ""
    warnings: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def as_values(self) -> dict:
        """Flat string values for diagnostics and benchmark tables."""
        values = {"backend": self.name, "device": self.device, "precision": self.precision,
                  "provider": self.provider or self.name, "model": self.model}
        values.update({k: str(v) for k, v in self.extra.items()})
        if self.warnings:
            values["backend_warnings"] = "; ".join(self.warnings)
        return values


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about the loaded model the runtime needs (sizes, prompt, normalization).

    ``head`` is ``regression`` (decode gives (chunk, action_dim) actions in [-1, 1]) or
    ``classification`` (decode gives (chunk, num_classes) logits; ``class_velocities`` holds one
    [vx, vy, wz] row per class). ``resize_filter`` is the PIL filter the model was trained with;
    ``image_norm`` names the mean/std the model (and its exported graphs) apply after /255.
    Fields after ``chunk_step_period_s`` have defaults so older exports still load.
    """

    preset: str
    image_size: int
    feature_dim: int
    window_size: int
    chunk: int
    action_dim: int
    max_linear: float
    chunk_step_period_s: float
    head: str = "regression"
    num_classes: int = 0
    class_velocities: list = field(default_factory=list)
    resize_filter: str = "bicubic"
    image_norm: str = "clip"
    # Token layout (model/token_layouts.py) and image tokens per frame (latent_query_num): with
    # them the runtime says whether a command can change the actions (exports before them used
    # the package layout).
    token_layout: str = "package"
    image_tokens: int = 0

    @property
    def output_dim(self) -> int:
        """Width of decode's output per chunk step (action_dim, or num_classes)."""
        return self.num_classes if self.head == "classification" else self.action_dim

    @classmethod
    def from_policy_config(cls, pc, feature_dim: int) -> ModelSpec:
        """The spec of a `PolicyConfig` (torch-free: reads attributes only)."""
        return cls(pc.preset, pc.image_size, feature_dim, pc.window_size, pc.fwd_pred_next_n,
                   pc.action_dim, pc.max_linear, pc.chunk_step_period_s, pc.head,
                   pc.num_classes, [list(map(float, r)) for r in pc.class_velocities],
                   pc.resize_filter, pc.image_norm,
                   token_layout=pc.token_layout,
                   image_tokens=pc.latent_query_num)


def check_encoder_inputs(spec: ModelSpec, image: np.ndarray, text_ids: np.ndarray,
                         max_text_len: int | None, encoder: str) -> np.ndarray:
    """Check a model-size uint8 image and the prompt ids for ``encoder`` (named in errors).

    Returns the ids as contiguous int64 (1, L). ``max_text_len``: the export's fixed
    positional table, if it has one.
    """
    size = spec.image_size
    if image.shape != (size, size, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 ({size}, {size}, 3), got {image.dtype} "
                         f"{image.shape}")
    ids = np.ascontiguousarray(text_ids, dtype=np.int64).reshape(1, -1)
    if max_text_len is not None and ids.shape[1] > max_text_len:
        raise ValueError(f"prompt has {ids.shape[1]} ids; the {encoder} accepts at most "
                         f"{max_text_len} (its positional table is fixed)")
    return ids


def check_token_layout(config, spec: ModelSpec, what: str) -> None:
    """An export runs the token layout it was built with: a different ``token_layout`` is an error.

    ``auto`` accepts the export's. (The torch backend builds the layout the parameter names.)
    """
    wanted = config.token_layout or "auto"
    if wanted not in ("auto", spec.token_layout):
        raise BackendError(f"token_layout {wanted!r} but {what} was exported with the "
                           f"{spec.token_layout!r} layout (it is part of the graph); re-export "
                           f"with --token-layout {wanted}, or set token_layout: auto")


def check_window(spec: ModelSpec, features: np.ndarray) -> np.ndarray:
    """Check a (T, D) feature window (1 <= T <= window_size); return it as float32 (1, T, D)."""
    t = features.shape[0]
    if features.ndim != 2 or features.shape[1] != spec.feature_dim or not (
            1 <= t <= spec.window_size):
        raise ValueError(f"features must be (T, {spec.feature_dim}) with 1 <= T <= "
                         f"{spec.window_size}, got {features.shape}")
    return np.ascontiguousarray(features, dtype=np.float32)[None]


class InferenceBackend(ABC):
    """Load once, warm up, then `infer` per frame; `close` releases device memory."""

    name = "base"
    # True (set by load) when infer_raw resizes and normalizes the camera frame on the device.
    preprocesses_on_device = False
    # A camera-input export's ``preprocess`` record (onnx_format.camera_input; set by load):
    # `encode` then takes the camera frame itself, in the export's camera order.
    camera: dict | None = None

    def __init__(self, config):
        self.config = config
        self.info: BackendInfo | None = None
        self.spec: ModelSpec | None = None
        self.tokenizer = None  # PromptTokenizer, set by load()

    @abstractmethod
    def load(self) -> None:
        """Load the model; fill ``self.info``, ``self.spec`` and ``self.tokenizer``."""

    @abstractmethod
    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) + int64 (L,) -> float32 (D,)."""

    @abstractmethod
    def decode(self, features: np.ndarray) -> np.ndarray:
        """float32 (T, D) -> float32 (chunk, action_dim)."""

    def infer(self, image: np.ndarray, text_ids: np.ndarray,
              history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode a frame and decode it after ``history`` (T-1, D); return (feature, actions)."""
        feature = self.encode(image, text_ids)
        window = feature[None]
        if len(history):
            window = np.concatenate([history, window], axis=0)
        return feature, self.decode(window)

    def infer_raw(self, rgb: np.ndarray, text_ids: np.ndarray, history: np.ndarray,
                  channel_order: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
        """`infer` on a decoded uint8 (H, W, 3) camera frame in ``channel_order``.

        A model-size model gets it resized here on the CPU; a camera-input export (``camera``)
        gets the frame itself, size-checked and swapped only where its graph does not swap.
        """
        if self.camera is not None:
            from .onnx_format import camera_frame

            return self.infer(camera_frame(self.camera, rgb, channel_order), text_ids, history)
        from ..core.preprocess import to_model_input

        return self.infer(to_model_input(rgb, self.spec.image_size, channel_order,
                                         self.spec.resize_filter), text_ids, history)

    def describe_camera_input(self, artifact: str, encoder: str) -> str:
        """Diagnostics text: where the camera frame is resized.

        ``artifact``/``encoder``: "export"/"encoder graph" (ONNX), "engine"/"encoder engine".
        """
        if self.camera is None:
            return f"cpu (model-size {artifact}: the runtime resizes)"
        width, height = self.camera["camera_size"]
        return (f"in the {encoder}: {width}x{height} {self.camera['camera_order']} frames, "
                f"PIL {self.camera['resize_filter']} tables (bit-exact)")

    def warmup(self, iters: int = 3) -> None:
        """Run the full step on dummy inputs (allocations, kernel selection, lazy init).

        A camera-input export is warmed up with a camera-size frame.
        """
        if self.camera is not None:
            width, height = self.camera["camera_size"]
        else:
            width = height = self.spec.image_size
        image = np.zeros((height, width, 3), np.uint8)
        ids = self.tokenizer.encode("warm up")
        history = np.zeros((self.spec.window_size - 1, self.spec.feature_dim), np.float32)
        for _ in range(iters):
            self.infer(image, ids, history)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release resources; the backend is unusable afterwards."""

    def describe(self) -> BackendInfo:
        """The device / precision / provider actually in use."""
        if self.info is None:
            raise BackendError(f"backend {self.name!r} is not loaded")
        return self.info
