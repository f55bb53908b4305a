"""Build a ready-to-run policy from a preset, a checkpoint and/or a local backbone folder.

Resolution order (all local paths; nothing is downloaded):

1. config: ``config.json`` in a model folder, or ``<checkpoint>.json`` / ``config.json`` beside a
   checkpoint file (native or RoboVLMs format), else the ``model_preset``;
2. tokenizer: ``backbone_path`` (a Kosmos-2 folder), else ``tokenizer.json`` beside the model, else
   the built-in word-level tokenizer;
3. weights: the Kosmos-2 weights in ``backbone_path`` (if given), then the checkpoint on top; with
   no checkpoint the ``tiny`` preset uses the shipped demo policy and other presets random
   weights (seeded, and logged as such).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_SUFFIXES, CheckpointError, load_into, read_state_dict
from .policy import MobileVLAPolicy
from .presets import DEMO_POLICY_DIR, PolicyConfig, load_config_file, preset_config
from .tokenizer import PromptTokenizer, load_tokenizer

LOG = logging.getLogger(__name__)
RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelSource:
    """Where the policy comes from (a sub-set of the node config)."""

    preset: str = "tiny"
    model_path: str = ""
    backbone_path: str = ""
    strict: bool = True
    allow_unsafe_pickle: bool = False


@dataclass
class LoadedPolicy:
    """A built policy with its tokenizer, config and a one-line description of its weights."""

    model: MobileVLAPolicy
    tokenizer: PromptTokenizer
    config: PolicyConfig
    weights: str


def resolve_paths(source: ModelSource) -> tuple[Path | None, Path | None, Path | None]:
    """Return (checkpoint file, config file, folder holding a tokenizer) for a model source."""
    if not source.model_path:
        if source.preset == "tiny" and DEMO_POLICY_DIR.is_dir():
            return _folder_files(DEMO_POLICY_DIR)
        return None, None, None
    path = Path(source.model_path).expanduser()
    if path.is_dir():
        return _folder_files(path)
    if not path.exists():
        raise CheckpointError(f"model_path {str(path)!r} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"model_path {str(path)!r} is not a PyTorch checkpoint (expected "
                              f"one of {CHECKPOINT_SUFFIXES}); for .onnx use backend: onnx, for "
                              ".engine backend: tensorrt")
    config = next((c for c in (path.with_suffix(".json"), path.parent / "config.json")
                   if c.is_file()), None)
    return path, config, path.parent


def _folder_files(folder: Path):
    ckpts = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if len(ckpts) > 1:
        raise CheckpointError(f"model folder {str(folder)!r} holds several checkpoints "
                              f"{[p.name for p in ckpts]}; set model_path to one file")
    config = folder / "config.json"
    return (ckpts[0] if ckpts else None), (config if config.is_file() else None), folder


def load_policy(source: ModelSource) -> LoadedPolicy:
    """Build the policy (eval mode, fp32, CPU) with its tokenizer and weights."""
    ckpt, config_file, folder = resolve_paths(source)
    config = (load_config_file(config_file, source.preset) if config_file
              else preset_config(source.preset))
    tok_path = source.backbone_path or (folder / "tokenizer.json" if folder and
                                        (folder / "tokenizer.json").is_file() else None)
    tokenizer = PromptTokenizer(load_tokenizer(tok_path), config.prompt_template, config.pad_to)
    special = tokenizer.special_ids
    torch.manual_seed(RANDOM_SEED)
    model = MobileVLAPolicy(config, tokenizer.prefix_ids, tokenizer.image_end_id,
                            special["<pad>"])
    provided: set = set()
    described = []
    if source.backbone_path:
        provided = _load_backbone(model, Path(source.backbone_path))
        described.append(f"backbone from {source.backbone_path}")
    if ckpt is not None:
        report = load_into(model, read_state_dict(ckpt, source.allow_unsafe_pickle),
                           strict=source.strict, provided=provided)
        described.append(f"{report.loaded} tensors from {ckpt}")
        if report.ignored:
            LOG.info("ignored %d checkpoint keys (e.g. %s)", len(report.ignored),
                     report.ignored[0])
        if report.missing or report.unexpected:
            LOG.warning("non-strict load: %d missing, %d unexpected keys", len(report.missing),
                        len(report.unexpected))
    if not described:
        described.append(f"random weights (seed {RANDOM_SEED}): preset {config.preset!r} "
                         "has no checkpoint; actions are meaningless")
        LOG.warning(described[-1])
    model.eval()
    return LoadedPolicy(model=model, tokenizer=tokenizer, config=config,
                        weights="; ".join(described))


def _load_backbone(model: MobileVLAPolicy, folder: Path) -> set:
    """Load Kosmos-2 weights from a local Hugging Face folder into ``model.backbone``."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"backbone_path {str(folder)!r} has no *.safetensors or "
                              "pytorch_model*.bin weights")
    state: dict = {}
    for f in files:
        state.update(read_state_dict(f))
    state = {("backbone." + k): v for k, v in state.items()}
    report = load_into(model, state, strict=False)
    loaded = {k for k in model.state_dict() if k.startswith("backbone.")} - set(report.missing)
    LOG.info("backbone: %d tensors from %s", report.loaded, folder)
    return loaded
