"""PEFT LoRA adapters in a checkpoint: find them, and merge ``W + alpha / r * B @ A`` at load.

RoboVLMs wraps the Kosmos-2 backbone with PEFT when ``train_setup.lora_enable`` is set, so keys
look like ``backbone.base_model.model.<module>.lora_A.default.weight`` (``lora_B`` likewise)
beside ``<module>.base_layer.weight`` (PEFT >= 0.7) or ``<module>.weight`` (older PEFT); with
``freeze_backbone`` only the adapters may have been saved. `split_lora` strips the PEFT wrapper
names so every key reads like the plain model's, and sets the adapter pairs aside; `merge_lora`
adds them onto base weights, which come from the checkpoint itself or from ``backbone_path``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

_ADAPTER = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
UNSUPPORTED = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@dataclass
class LoraSet:
    """Adapter pairs by target weight key (plain naming), plus what cannot be merged."""

    pairs: dict = field(default_factory=dict)        # "x.weight" -> {"A": t, "B": t}
    unsupported: list = field(default_factory=list)
    adapter_names: set = field(default_factory=set)

    def rank(self) -> int | None:
        """The adapters' rank (rows of A), if they agree."""
        ranks = {int(p["A"].shape[0]) for p in self.pairs.values() if "A" in p}
        return ranks.pop() if len(ranks) == 1 else None


def plain_key(key: str) -> str:
    """Drop PEFT's wrapper names: ``base_model.model.`` and ``.base_layer``."""
    key = key.replace(".base_model.model.", ".")
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    return key.replace(".base_layer.", ".")


def split_lora(state: dict) -> tuple[dict, LoraSet]:
    """(state with plain keys and no adapters, the adapters)."""
    plain: dict = {}
    lora = LoraSet()
    for key, value in state.items():
        if any(f".{u}" in key for u in UNSUPPORTED):
            lora.unsupported.append(key)
            continue
        match = _ADAPTER.match(plain_key(key))
        if match:
            target = match.group("module") + ".weight"
            lora.pairs.setdefault(target, {})[match.group("part")] = value
            if match.group("name"):
                lora.adapter_names.add(match.group("name"))
            continue
        plain[plain_key(key)] = value
    return plain, lora


def lora_scale(lora: LoraSet, alpha, r) -> float:
    """``alpha / r``; raises ValueError naming what is missing or inconsistent."""
    rank = lora.rank()
    if alpha is None:
        raise ValueError(f"{len(lora.pairs)} LoRA adapter pairs (rank {rank}) but lora_alpha is "
                         "unknown: set model_config to the training JSON (train_setup.lora_alpha)")
    if r is not None and rank is not None and int(r) != rank:
        raise ValueError(f"train_setup.lora_r = {r} but the adapters have rank {rank}")
    r = rank if rank is not None else r
    if not r:
        raise ValueError("LoRA rank is unknown (adapters disagree and no train_setup.lora_r)")
    return float(alpha) / float(r)


def merge_lora(lora: LoraSet, bases: dict, scale: float) -> dict:
    """``{target: base + scale * B @ A}`` for every pair; ``bases`` maps target -> base weight."""
    merged = {}
    for target, pair in sorted(lora.pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {target}: only lora_{''.join(sorted(pair))} is in "
                             "the checkpoint (both lora_A and lora_B are needed)")
        base = bases[target]
        a, b = pair["A"].to(torch.float32), pair["B"].to(torch.float32)
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(base.shape):
            raise ValueError(f"LoRA adapter {target}: B {tuple(b.shape)} @ A {tuple(a.shape)} "
                             f"does not fit the base weight {tuple(base.shape)}")
        merged[target] = (base.to(torch.float32) + scale * (b @ a)).to(base.dtype)
    return merged
