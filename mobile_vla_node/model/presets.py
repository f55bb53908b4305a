"""Policy configuration, the named presets, and the team's RoboVLMs JSON training config."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# CLIP image statistics (Kosmos-2's processor); here so reading a config never imports torch.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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

    def __post_init__(self):
        for name in ("window_size", "fwd_pred_next_n", "lstm_hidden", "lstm_layers", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy config {name}={getattr(self, name)!r} must be >= 1")
        if self.action_dim not in (2, 3):
            raise ValueError(f"policy config action_dim={self.action_dim!r} must be 2 or 3")
        if "{instruction}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} lacks '{{instruction}}'")
        vision = self.backbone.get("vision_config", {})
        if vision.get("image_size", 224) != self.image_size:
            raise ValueError(f"image_size={self.image_size} differs from the backbone's "
                             f"vision_config.image_size={vision.get('image_size', 224)}")

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

    Reads ``window_size``, ``fwd_pred_next_n``, ``act_head.{hidden_size, num_layers|n_layer,
    action_dim, mlp_hidden}``, ``tokenizer.max_text_len``/``pad_to`` and ``max_linear``;
    everything else keeps the preset's value. An already-native config (with ``backbone``) is
    accepted as is.
    """
    if "backbone" in training and "preset" in training:
        return PolicyConfig.from_dict(training)
    head = training.get("act_head", {}) or {}
    overrides: dict = {}
    pick = {
        "window_size": training.get("window_size"),
        "fwd_pred_next_n": training.get("fwd_pred_next_n", head.get("fwd_pred_next_n")),
        "action_dim": head.get("action_dim", training.get("action_dim")),
        "lstm_hidden": head.get("hidden_size"),
        "lstm_layers": head.get("num_layers", head.get("n_layer")),
        "mlp_hidden": head.get("mlp_hidden"),
        "max_linear": training.get("max_linear"),
        "pad_to": training.get("pad_to", (training.get("tokenizer") or {}).get("max_text_len")
                               if training.get("pad_text", False) else None),
        "prompt_template": training.get("prompt_template"),
    }
    overrides = {k: v for k, v in pick.items() if v is not None}
    return preset_config(preset, **overrides)


def load_config_file(path: Path, preset: str) -> PolicyConfig:
    """Read a JSON config (native or RoboVLMs) from disk."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {str(path)!r} is not valid JSON: {exc}") from exc
    return config_from_robovlms(data, preset=preset)
