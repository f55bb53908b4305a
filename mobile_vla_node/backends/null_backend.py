"""Zero-cost backend: the preset's shapes, no model. Measures node overhead alone (vla_bench)."""

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
        self.info = BackendInfo(name=self.name, device="cpu", precision="none",
                                provider="null (no model)", model="none",
                                warnings=["null backend: zero actions, for overhead benchmarks"])

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """Zero feature."""
        return np.zeros(self.spec.feature_dim, np.float32)

    def decode(self, features: np.ndarray) -> np.ndarray:
        """Zero actions."""
        return np.zeros((self.spec.chunk, self.spec.action_dim), np.float32)
