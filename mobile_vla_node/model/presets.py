"""Policy configuration, the named presets, and the team's RoboVLMs JSON training config."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.image_pipeline import PIPELINES, ImageChoice, from_choice
from ..core.resize import RESIZE_FILTERS
from .token_layouts import LAYOUTS, TEAM_LAYOUTS
from .training_config import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_NORMS,
    TrainingFacts,
    is_team_config,
    pipeline_overrides,
    read_training_config,
)

HEADS = ("regression", "classification")
# Image tokens per frame when a Kosmos-2 backbone config omits latent_query_num (transformers'
# Kosmos2Config default).
LATENT_QUERY_NUM = 64

DEFAULT_PROMPT = "<grounding>An image of a robot {instruction}"
DEMO_POLICY_DIR = Path(__file__).resolve().parent / "demo_policy"


@dataclass
class PolicyConfig:
    """Everything needed to build the policy module and feed it (no weights)."""

    preset: str
    backbone: dict
    window_size: int = 8
    fwd_pred_next_n: int = 1
    action_dim: int = 2
    lstm_hidden: int = 512
    lstm_layers: int = 4
    mlp_hidden: list = field(default_factory=lambda: [1024, 512, 256])
    image_size: int = 224
    image_mean: list = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list = field(default_factory=lambda: list(CLIP_STD))
    prompt_template: str = DEFAULT_PROMPT
    pad_to: int = 0
    max_linear: float = 1.15
    chunk_step_period_s: float = 0.1
    # Policy head: regression (tanh actions) or classification (logits over num_classes, each
    # class a row [vx, vy, wz] of class_velocities); head_type names the training-side class.
    head: str = "regression"
    head_type: str = "mobile_vla_node"
    num_classes: int = 0
    class_velocities: list = field(default_factory=list)
    # Image pipeline: normalization name (none, clip, imagenet, custom) and resize filter;
    # image_pipeline names where they come from (core.image_pipeline: package for this
    # package's own checkpoints, a team preset, custom, or auto for a legacy dataset's values).
    image_norm: str = "clip"
    resize_filter: str = "bicubic"
    image_pipeline: str = "package"
    # Token layout (model/token_layouts.py): package | robovlms_kosmos | robovlms_patched, and
    # the team tokenizer's padding length (their training JSON's tokenizer.max_text_len).
    token_layout: str = "package"
    max_text_len: int = 0

    def __post_init__(self):
        for name in ("window_size", "fwd_pred_next_n", "lstm_hidden", "lstm_layers", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy config {name}={getattr(self, name)!r} must be >= 1")
        if self.action_dim not in (2, 3):
            raise ValueError(f"policy config action_dim={self.action_dim!r} must be 2 or 3")
        self._check_head()
        self._check_image()
        self._check_layout()
        if "{instruction}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} lacks '{{instruction}}'")
        vision = self.backbone.get("vision_config", {})
        if vision.get("image_size", 224) != self.image_size:
            raise ValueError(f"image_size={self.image_size} differs from the backbone's "
                             f"vision_config.image_size={vision.get('image_size', 224)}")

    def _check_head(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"policy config head={self.head!r} must be one of {list(HEADS)}")
        if self.head == "regression":
            if self.num_classes or self.class_velocities:
                raise ValueError("policy config: num_classes/class_velocities need head "
                                 "'classification'")
            return
        if int(self.num_classes) < 2:
            raise ValueError(f"policy config num_classes={self.num_classes!r} must be >= 2 for "
                             "head 'classification'")
        table = self.class_velocities
        if table and (len(table) != self.num_classes or
                      any(len(row) != 3 for row in table)):
            raise ValueError(f"policy config class_velocities must be {self.num_classes} rows "
                             f"of [vx, vy, wz], got {table!r}")

    def _check_layout(self) -> None:
        if self.token_layout not in LAYOUTS:
            raise ValueError(f"policy config token_layout={self.token_layout!r} must be one of "
                             f"{list(LAYOUTS)}")
        if self.token_layout in TEAM_LAYOUTS and int(self.max_text_len) < 2:
            raise ValueError(f"policy config token_layout={self.token_layout!r} needs "
                             f"max_text_len >= 2 (the training JSON's tokenizer.max_text_len), "
                             f"got {self.max_text_len!r}")

    def _check_image(self) -> None:
        if self.image_pipeline not in PIPELINES:
            raise ValueError(f"policy config image_pipeline={self.image_pipeline!r} must be one "
                             f"of {list(PIPELINES)}")
        if self.resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"policy config resize_filter={self.resize_filter!r} must be one "
                             f"of {list(RESIZE_FILTERS)}")
        if self.image_norm == "custom":
            return
        if self.image_norm not in IMAGE_NORMS:
            raise ValueError(f"policy config image_norm={self.image_norm!r} must be one of "
                             f"{sorted(IMAGE_NORMS)} or 'custom'")
        mean, std = IMAGE_NORMS[self.image_norm]
        if (any(abs(a - b) > 1e-6 for a, b in zip(self.image_mean, mean, strict=True)) or
                any(abs(a - b) > 1e-6 for a, b in zip(self.image_std, std, strict=True))):
            raise ValueError(f"policy config image_norm={self.image_norm!r} but image_mean/"
                             f"image_std are {self.image_mean}/{self.image_std}; use 'custom'")

    @property
    def latent_query_num(self) -> int:
        """Image tokens per frame (the backbone's latent_query_num)."""
        return backbone_latents(self.backbone)

    def to_dict(self) -> dict:
        """Plain dict (JSON-serializable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        """Build from `to_dict` output; unknown keys are an error that names them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy config keys {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(data))

    def save(self, path: Path) -> None:
        """Write as ``config.json``-style JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def backbone_latents(backbone: dict) -> int:
    """``latent_query_num`` of a Kosmos-2 backbone config dict (`LATENT_QUERY_NUM` if absent)."""
    return int(backbone.get("latent_query_num", LATENT_QUERY_NUM))


def _kosmos2(text: dict, vision: dict, latent_query_num: int) -> dict:
    return {"text_config": text, "vision_config": vision, "latent_query_num": latent_query_num}


# Kosmos-2 patch14-224 dimensions (transformers' Kosmos2Config defaults), written out explicitly.
_KOSMOS2_FULL = _kosmos2(
    text={"vocab_size": 65037, "embed_dim": 2048, "layers": 24, "ffn_dim": 8192,
          "attention_heads": 32, "max_position_embeddings": 2048},
    vision={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    latent_query_num=64,
)

PRESETS: dict[str, dict] = {
    # For tests and the demo: seconds to build, milliseconds per step on a CPU.
    "tiny": dict(
        backbone=_kosmos2(
            text={"vocab_size": 128, "embed_dim": 64, "layers": 2, "ffn_dim": 128,
                  "attention_heads": 4, "max_position_embeddings": 128},
            vision={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
            latent_query_num=16,
        ),
        window_size=4, fwd_pred_next_n=1, action_dim=3, lstm_hidden=64, lstm_layers=2,
        mlp_hidden=[64], max_linear=0.5,
    ),
    # Mid-size stand-in (about 60M parameters): CPU benchmarks of the real code path.
    "small": dict(
        backbone=_kosmos2(
            text={"vocab_size": 65037, "embed_dim": 512, "layers": 6, "ffn_dim": 2048,
                  "attention_heads": 8, "max_position_embeddings": 2048},
            vision={"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
                    "num_attention_heads": 6, "image_size": 224, "patch_size": 14},
            latent_query_num=64,
        ),
        window_size=8, fwd_pred_next_n=1, action_dim=2, lstm_hidden=512, lstm_layers=4,
    ),
    # The team's deployed policy: Kosmos-2 patch14-224, window 8, 4-layer LSTM, hidden 1024.
    "mobile-vla-kosmos2": dict(
        backbone=_KOSMOS2_FULL, window_size=8, fwd_pred_next_n=1, action_dim=2,
        lstm_hidden=1024, lstm_layers=4,
    ),
    # Same backbone, window 2 / hidden 512 / chunk of 10 (their other trained head).
    "mobile-vla-kosmos2-chunk10": dict(
        backbone=_KOSMOS2_FULL, window_size=2, fwd_pred_next_n=10, action_dim=2,
        lstm_hidden=512, lstm_layers=4,
    ),
}


def preset_config(name: str, **overrides) -> PolicyConfig:
    """The named preset's config; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model_preset {name!r}; known presets: {sorted(PRESETS)}")
    data = copy.deepcopy(PRESETS[name])
    data.update(overrides)
    return PolicyConfig(preset=name, **data)


def config_from_robovlms(training: dict, preset: str = "mobile-vla-kosmos2") -> PolicyConfig:
    """Map a RoboVLMs / Mobile-VLA training config (JSON dict) onto a preset.

    What is read is documented in `training_config`; everything else keeps the preset's value.
    An already-native config (with ``backbone``) is accepted as is.
    """
    return policy_config_from_training(training, preset)[0]


def policy_config_from_training(training: dict, preset: str = "mobile-vla-kosmos2",
                                path: str = "", image: ImageChoice | None = None
                                ) -> tuple[PolicyConfig, TrainingFacts | None]:
    """(PolicyConfig, the config's facts: reasons, assumptions, refusals; None if native).

    ``image``: the node's image_pipeline choice (auto: the checkpoint decides).
    """
    if not is_team_config(training):
        return with_image_choice(PolicyConfig.from_dict(training), image), None
    facts = read_training_config(training, path, image)
    overrides = dict(facts.overrides)
    if training.get("max_linear") is not None:
        overrides["max_linear"] = training["max_linear"]
    return preset_config(preset, **overrides), facts


def with_image_choice(config: PolicyConfig, image: ImageChoice | None) -> PolicyConfig:
    """``config`` with an explicit team preset or custom pipeline applied.

    ``auto`` and ``package`` keep what the config records.
    """
    pipeline = from_choice(image) if image is not None else None
    if pipeline is None:
        return config
    return dataclasses.replace(config, **pipeline_overrides(pipeline))


def load_config_file(path: Path, preset: str) -> PolicyConfig:
    """Read a JSON config (native or RoboVLMs) from disk."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {str(path)!r} is not valid JSON: {exc}") from exc
    return config_from_robovlms(data, preset=preset)
