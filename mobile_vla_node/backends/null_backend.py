"""Zero-cost backend: the preset's shapes, no model. Measures node overhead alone (vla_bench).

``device_preprocess`` (default true) makes it take the camera frame as received, as a
camera-input export does (`infer_raw`, ``preprocesses_on_device``): the node's own work around
a graph that resizes inside itself (issue 19: preprocessing in the graph). With
``device_preprocess: false`` it takes model-size images, so the node runs its CPU resize
(`cpu_resize`) first, as for a model-size export.
"""

from __future__ import annotations

import numpy as np

from .base import BackendInfo, InferenceBackend, ModelSpec


class NullBackend(InferenceBackend):
    """Returns zero features and zero actions instantly; never use it to drive a robot."""

    name = "null"

    def load(self) -> None:
        """Read the preset's shapes and the built-in tokenizer; build no model."""
        from ..model.presets import preset_config
        from ..model.tokenizer import PromptTokenizer, builtin_tokenizer

        pc = preset_config(self.config.model_preset)
        dim = pc.backbone["text_config"]["embed_dim"]
        self.spec = ModelSpec(pc.preset, pc.image_size, dim, pc.window_size,
                              pc.fwd_pred_next_n, pc.action_dim, pc.max_linear,
                              pc.chunk_step_period_s)
        self.tokenizer = PromptTokenizer(builtin_tokenizer(), pc.prompt_template, pc.pad_to)
        self.preprocesses_on_device = bool(getattr(self.config, "device_preprocess", True))
        self.info = BackendInfo(name=self.name, device="cpu", precision="none",
                                provider="null (no model)", model="none",
                                warnings=["null backend: zero actions, for overhead benchmarks"],
                                extra={"preprocess": "none: takes the camera frame as a "
                                       "camera-input graph does (device_preprocess: true)"
                                       if self.preprocesses_on_device else
                                       "cpu (runtime resize; device_preprocess: false)"})

    def infer_raw(self, rgb: np.ndarray, text_ids: np.ndarray, history: np.ndarray,
                  channel_order: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
        """The camera frame as received (no resize, as in a camera-input graph); zeros."""
        if not self.preprocesses_on_device:
            return super().infer_raw(rgb, text_ids, history, channel_order)
        return self.infer(rgb, text_ids, history)

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """Zero feature."""
        return np.zeros(self.spec.feature_dim, np.float32)

    def decode(self, features: np.ndarray) -> np.ndarray:
        """Zero actions."""
        return np.zeros((self.spec.chunk, self.spec.action_dim), np.float32)
