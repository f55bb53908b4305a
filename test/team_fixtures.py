"""Fixture checkpoints in the team's layouts, generated from the documented key tables.

Dimensions are the `tiny` preset's, the tokenizer a tiny Kosmos-2-style one
(kosmos_tokenizer.py; nothing downloaded). Layouts (docs/CHECKPOINTS.md):
MobileVLALSTMDecoder keeps its MLP under ``act_head.velocities``; MobileVLAClassificationDecoder
has ``act_head.logits`` plus loss buffers; Lightning prefixes every key with ``model.``; their
``.pth`` files wrap ``model_state_dict`` with ``epoch``, ``optimizer_state_dict``, ``val_mae``
and an ``argparse.Namespace`` ``args``; PEFT LoRA puts the backbone under ``base_model.model.``
with ``<module>.base_layer.weight`` and ``<module>.lora_{A,B}.default.weight``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from kosmos_tokenizer import make_tokenizer_folder

from mobile_vla_node.backends.base import BackendInfo, InferenceBackend, ModelSpec
from mobile_vla_node.model.loader import ModelSource
from mobile_vla_node.model.policy import MobileVLAPolicy
from mobile_vla_node.model.presets import preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer, load_tokenizer

WINDOW, CHUNK = 4, 3
MAX_TEXT_LEN = 256
_TOKENIZER_DIR = None
LORA_TARGETS = ("text_model.model.layers.0.self_attn.q_proj",
                "text_model.model.layers.1.ffn.fc1",
                "vision_model.model.encoder.layers.0.mlp.fc1")


def tiny_config(**overrides):
    """The tiny preset as the team would train it: 2 velocities, chunk 3, H5 pipeline, their
    trainer's token layout (robovlms_kosmos, prompts padded to max_text_len 256)."""
    base = dict(window_size=WINDOW, fwd_pred_next_n=CHUNK, action_dim=2, image_norm="none",
                image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                resize_filter="bilinear", max_linear=1.15, token_layout="robovlms_kosmos",
                max_text_len=MAX_TEXT_LEN)
    base.update(overrides)
    return preset_config("tiny", **base)


def tokenizer_dir() -> Path:
    """A tiny Kosmos-2-style tokenizer folder (test/kosmos_tokenizer.py), built once."""
    global _TOKENIZER_DIR
    if _TOKENIZER_DIR is None:
        _TOKENIZER_DIR = make_tokenizer_folder(Path(tempfile.mkdtemp(prefix="kosmos_tok_")))
    return _TOKENIZER_DIR


def team_source(model_path="", **kwargs) -> ModelSource:
    """A tiny-preset `ModelSource` with the Kosmos-2-style tokenizer (team checkpoints need it)."""
    kwargs.setdefault("tokenizer_path", str(tokenizer_dir()))
    return ModelSource("tiny", str(model_path) if model_path else "", **kwargs)


def prompt_tokenizer(config) -> PromptTokenizer:
    """The tokenizer a loaded policy with ``config`` uses (Kosmos-2-style for team layouts)."""
    if config.token_layout == "package":
        return PromptTokenizer(builtin_tokenizer(), config.prompt_template, config.pad_to)
    return PromptTokenizer(load_tokenizer(tokenizer_dir()), config.prompt_template,
                           max_tokens=config.max_text_len, team=True)


def build(config, seed: int = 0) -> MobileVLAPolicy:
    """A tiny policy with scrambled weights (outputs clearly depend on every tensor)."""
    tok = PromptTokenizer(builtin_tokenizer(), config.prompt_template)
    torch.manual_seed(seed)
    model = MobileVLAPolicy(config, tok.prefix_ids, tok.image_end_id, tok.special_ids["<pad>"])
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() >= 2 else 0.05))
    return model.eval()


def training_json(head_type: str = "MobileVLALSTMDecoder", action_dim: int = 2, **top) -> dict:
    """A training config shaped like minuum/vla Mobile_VLA/configs/mobile_vla_*.json."""
    head = {"type": head_type, "hidden_size": 64, "action_dim": action_dim,
            "down_sample": "none", "latent": 1, "fwd_pred_next_n": CHUNK, "window_size": WINDOW,
            "action_space": "continuous", "with_history": True, "history_type": "post",
            "num_layers": 2}
    if head_type == "MobileVLAClassificationDecoder":
        head.update(num_classes=6, class_weights=[1.0, 0.5, 2.0, 2.0, 1.0, 1.0])
    data = {
        "robovlm_name": "RoboKosMos", "model": "kosmos", "image_size": 224,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "window_size": WINDOW, "fwd_pred_next_n": CHUNK, "use_hand_rgb": False,
        "use_vision_resampler": False,
        "train_setup": {"freeze_backbone": True, "lora_enable": False, "lora_r": 32,
                        "lora_alpha": 16},
        "act_head": head,
        "tokenizer": {"type": "AutoProcessor", "max_text_len": 256},
        "train_dataset": {"type": "MobileVLAH5Dataset", "episode_pattern": "episode_*.h5"},
        "norm_action": True, "norm_min": -1.0, "norm_max": 1.0,
    }
    data.update(top)
    return data


def to_team_keys(state: dict, head: str = "velocities") -> dict:
    """Our key names -> the team head's (``actions`` -> ``velocities``; classification as is)."""
    out = {}
    for key, value in state.items():
        if head == "velocities" and key.startswith("act_head.actions."):
            key = "act_head.velocities." + key[len("act_head.actions."):]
        out[key] = value.detach().clone()
    return out


def save_lightning(path: Path, state: dict) -> Path:
    """A Lightning ``.ckpt``: ``state_dict`` with ``model.`` prefixes, plus trainer state."""
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 9,
                "global_step": 4810, "pytorch-lightning_version": "2.1.0"}, str(path))
    return path


def save_pth(path: Path, state: dict) -> Path:
    """Their earlier ``.pth``: model_state_dict + optimizer + val_mae + argparse ``args``."""
    args = argparse.Namespace(data_path="/data/mobile_vla", batch_size=2, num_epochs=5,
                              output_dir="results", save_interval=1)
    torch.save({"epoch": 5, "model_state_dict": state,
                "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0)}},
                                         "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "val_mae": 0.212, "args": args}, str(path))
    return path


def write_json(path: Path, data: dict) -> Path:
    """Write a JSON config."""
    path.write_text(json.dumps(data, indent=2))
    return path


def write_team_checkpoint(folder: Path):
    """A tiny policy saved in ``folder`` as the team would: Lightning ``last.ckpt`` in their
    regression head's names, beside its training JSON (named as theirs, so never picked up as
    ``config.json``). Returns (model, checkpoint path, JSON path)."""
    model = build(tiny_config())
    ckpt = save_lightning(folder / "last.ckpt", to_team_keys(model.state_dict()))
    cfg = write_json(folder / "mobile_vla_left_chunk10_20251218.json", training_json())
    return model, ckpt, cfg


class LoadedBackend(InferenceBackend):
    """A `LoadedPolicy` behind the backend interface, as TorchBackend runs it (CPU, fp32); its
    ``model`` is the loaded policy itself, so edits to it show in the next step."""

    name = "loaded"

    def __init__(self, loaded):
        super().__init__(config=None)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.spec = ModelSpec.from_policy_config(loaded.config, loaded.model.feature_dim)
        self.info = BackendInfo(self.name, "cpu", "fp32")

    def load(self) -> None:
        """Nothing to load: the policy came loaded."""

    def encode(self, image, text_ids):
        with torch.no_grad():
            return self.model.encode_frame(torch.from_numpy(image)[None],
                                           torch.from_numpy(text_ids)[None])[0].numpy()

    def decode(self, features):
        with torch.no_grad():
            out, _, _ = self.model.decode(torch.from_numpy(features)[None],
                                          *self.model.zero_state(1))
            return out[0].numpy()


def peft_state(state: dict, lora: dict, with_base: bool = True) -> dict:
    """Our state -> PEFT naming: backbone under base_model.model., adapters beside base_layer."""
    out = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            out[key] = value
            continue
        if not with_base:
            continue
        inner = key[len("backbone."):]
        module = inner.rsplit(".", 1)[0]
        if module in lora:
            inner = module + ".base_layer." + inner.rsplit(".", 1)[1]
        out["backbone.base_model.model." + inner] = value
    for module, (a, b) in lora.items():
        out[f"backbone.base_model.model.{module}.lora_A.default.weight"] = a
        out[f"backbone.base_model.model.{module}.lora_B.default.weight"] = b
    return out


def make_lora(state: dict, rank: int = 4, seed: int = 5) -> dict:
    """Random adapters (A: r x in, B: out x r) for `LORA_TARGETS`."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module in LORA_TARGETS:
        w = state["backbone." + module + ".weight"]
        out[module] = (torch.randn(rank, w.shape[1], generator=gen) * 0.3,
                       torch.randn(w.shape[0], rank, generator=gen) * 0.3)
    return out
