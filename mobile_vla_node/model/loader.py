"""Build a ready-to-run policy from a preset, a checkpoint and/or a local backbone folder.

Resolution order (all local paths; nothing is downloaded):

1. config: ``model_config`` (the team's training JSON, any name), else ``config.json`` in a model
   folder, or ``<checkpoint>.json`` / ``config.json`` beside a checkpoint file (native or
   RoboVLMs format), else the ``model_preset``;
2. token layout (`token_layouts`): the ``token_layout`` parameter, else the one a native
   ``config.json`` records, else ``robovlms_kosmos`` for the team's checkpoints and configs (the
   reason is in ``notes``), else ``package``;
3. tokenizer: ``tokenizer_path``, else ``backbone_path`` (a Kosmos-2 folder), else (this
   package's checkpoints only) ``tokenizer.json`` beside the model or the built-in word-level
   tokenizer. The team's checkpoints without a real Kosmos-2 tokenizer are refused;
4. weights: the Kosmos-2 weights in ``backbone_path`` (if given), then the checkpoint on top; with
   no checkpoint the ``tiny`` preset uses the shipped demo policy and other presets random
   weights (seeded, and logged as such).

A checkpoint goes through `prepare`: its head layout is detected from its keys
(`team_layouts`), its keys are mapped with that layout's table, PEFT LoRA adapters are set aside
and merged onto base weights (`lora`), and its sizes are checked against the config. Anything
that cannot run faithfully is refused with the reason; `vla_checkpoint inspect` prints the same.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.image_pipeline import ImageChoice, Pipeline, no_json_note
from .checkpoint import (
    CHECKPOINT_SUFFIXES,
    CheckpointError,
    Container,
    load_into,
    map_keys,
    read_checkpoint,
    read_state_dict,
)
from .lora import LoraSet, lora_scale, merge_lora, split_lora
from .policy import MobileVLAPolicy
from .presets import (
    DEMO_POLICY_DIR,
    PolicyConfig,
    policy_config_from_training,
    preset_config,
    with_image_choice,
)
from .team_layouts import HeadLayout, KeyPlan, LayoutError, detect_head, head_dims, plan_keys
from .token_layouts import KOSMOS, PACKAGE, TEAM_COMMIT, TEAM_LAYOUTS, check_layout
from .tokenizer import PromptTokenizer, load_tokenizer
from .training_config import DEFAULT_MAX_TEXT_LEN, TrainingFacts, load_training_json

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
    model_config: str = ""
    # the image_pipeline choice (core.image_pipeline); pass it by keyword
    image: ImageChoice = field(default_factory=ImageChoice)
    token_layout: str = "auto"
    tokenizer_path: str = ""


@dataclass
class LoadedPolicy:
    """A built policy with its tokenizer, config and a one-line description of its weights."""

    model: MobileVLAPolicy
    tokenizer: PromptTokenizer
    config: PolicyConfig
    weights: str


@dataclass
class Prepared:
    """A checkpoint read, mapped and checked, before any model is built."""

    config: PolicyConfig
    checkpoint: Path | None = None
    config_file: Path | None = None
    folder: Path | None = None
    facts: TrainingFacts | None = None
    container: Container | None = None
    raw_shapes: dict = field(default_factory=dict)    # after wrapper prefixes, before mapping
    state: dict = field(default_factory=dict)         # our names (LoRA adapters set aside)
    layout: HeadLayout | None = None
    plan: KeyPlan | None = None
    ignored: dict = field(default_factory=dict)       # key -> why it is not loaded
    lora: LoraSet | None = None
    lora_scale: float | None = None
    notes: dict = field(default_factory=dict)         # setting -> where it came from
    assumed: list = field(default_factory=list)
    problems: list = field(default_factory=list)      # fatal: cannot run faithfully
    team: bool = False                                # the team's checkpoint/config format
    layout_recorded: bool = False                     # token_layout stated by a native config
    tokenizer_file: str = ""                          # the prompt tokenizer's path ("": built-in)
    image_undetermined: str = ""                      # why the image pipeline is a guess

    @property
    def token_layout(self) -> str:
        """The token layout the policy will run (`token_layouts`)."""
        return self.config.token_layout

    def fail_if_problems(self) -> None:
        """Raise `CheckpointError` listing every problem."""
        if self.problems:
            name = str(self.checkpoint) if self.checkpoint else "model"
            raise CheckpointError(f"{name} cannot run faithfully:\n  - "
                                  + "\n  - ".join(self.problems))


def resolve_paths(source: ModelSource) -> tuple[Path | None, Path | None, Path | None]:
    """Return (checkpoint file, config file, folder holding a tokenizer) for a model source."""
    if not source.model_path:
        if source.preset == "tiny" and DEMO_POLICY_DIR.is_dir() and not source.model_config:
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


def _read_config(source: ModelSource, config_file: Path | None):
    """(PolicyConfig, TrainingFacts or None, the file used, token_layout stated by the file)."""
    path = Path(source.model_config).expanduser() if source.model_config else config_file
    if path is None:
        return with_image_choice(preset_config(source.preset), source.image), None, None, False
    data = load_training_json(path)
    config, facts = policy_config_from_training(data, source.preset, str(path), source.image)
    return config, facts, path, facts is None and "token_layout" in data


def choose_layout(prep: Prepared, source: ModelSource) -> None:
    """Set the config's token layout from the parameter or the checkpoint, with the reason."""
    cfg = prep.config
    requested = check_layout(source.token_layout or "auto")
    if requested != "auto":
        layout, why = requested, "token_layout parameter"
    elif prep.layout_recorded:
        layout, why = cfg.token_layout, f"recorded in {prep.config_file}"
    elif prep.team:
        layout = KOSMOS
        why = ("the team's trainer (" + TEAM_COMMIT + "): stock Kosmos-2 raises without "
               "pixel_values, so BaseRoboVLM.forward_continuous always takes its fallback "
               "branch (base_backbone.py lines 1214-1385), in training and in their inference "
               "server; set token_layout: robovlms_patched only for a checkpoint trained with "
               "tools/modeling_kosmos2.py copied into transformers")
    elif prep.config_file is not None:
        layout = PACKAGE
        why = (f"this package's native config {prep.config_file} (written before token_layout "
               "was recorded: always the package layout)")
    else:
        layout, why = PACKAGE, f"preset {cfg.preset!r}: this package's layout"
    if layout in TEAM_LAYOUTS and cfg.max_text_len < 2:
        changes = {"max_text_len": DEFAULT_MAX_TEXT_LEN}
        prep.assumed.append("max_text_len: no training config states tokenizer.max_text_len; "
                            f"{DEFAULT_MAX_TEXT_LEN} assumed (set model_config)")
    else:
        changes = {}
    if layout != cfg.token_layout or changes:
        prep.config = dataclasses.replace(cfg, token_layout=layout, **changes)
    prep.notes["token_layout"] = f"{layout} ({why})"


def choose_tokenizer(prep: Prepared, source: ModelSource) -> None:
    """Find the prompt tokenizer; a team checkpoint without a real one is a problem."""
    folder = prep.folder
    beside = folder / "tokenizer.json" if folder and (folder / "tokenizer.json").is_file() \
        else None
    if source.tokenizer_path:
        path, why = source.tokenizer_path, "tokenizer_path parameter"
    elif source.backbone_path:
        path, why = source.backbone_path, "backbone_path (the Kosmos-2 folder)"
    elif beside is not None and not prep.team:
        path, why = str(beside), "tokenizer.json beside the model"
    else:
        path, why = "", "built-in word-level tokenizer"
    prep.tokenizer_file = path
    if prep.team and not path:
        prep.problems.append(
            "the team's checkpoint needs the real Kosmos-2 tokenizer (their prompt ids decide "
            "what the model sees): set tokenizer_path (a tokenizer.json or kosmos-2-patch14-224 "
            "folder) or backbone_path; the built-in word-level tokenizer would give other ids")
        prep.notes["tokenizer"] = "none (refused: set tokenizer_path or backbone_path)"
        return
    if path and not _has_tokenizer(Path(path).expanduser()):
        prep.problems.append(f"{why}: {path!r} holds no tokenizer (tokenizer.json, or "
                             "tokenizer_config.json with its vocabulary); set tokenizer_path")
    prep.notes["tokenizer"] = f"{path or 'built-in'} ({why})"


def _has_tokenizer(path: Path) -> bool:
    """A tokenizer.json file, or a folder `load_tokenizer` can read."""
    if path.is_file():
        return True
    return path.is_dir() and any((path / name).is_file() for name in (
        "tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model"))


def make_tokenizer(prep: Prepared) -> PromptTokenizer:
    """The `PromptTokenizer` `choose_tokenizer` found, set up for the config's layout."""
    cfg = prep.config
    team = cfg.token_layout in TEAM_LAYOUTS
    return PromptTokenizer(load_tokenizer(prep.tokenizer_file or None), cfg.prompt_template,
                           0 if team else cfg.pad_to,
                           cfg.max_text_len if team else 256, team=team)


def prepare(source: ModelSource) -> Prepared:
    """Read config and checkpoint, detect the head, map keys and check sizes (no model built)."""
    ckpt, config_file, folder = resolve_paths(source)
    config, facts, config_file, recorded = _read_config(source, config_file)
    prep = Prepared(config=config, checkpoint=ckpt, config_file=config_file, folder=folder,
                    facts=facts, layout_recorded=recorded)
    if facts is not None:
        prep.notes.update(facts.notes)
        prep.assumed += facts.assumed
        prep.problems += facts.refused
    _read_checkpoint(prep, ckpt, source)
    prep.team = prep.team or facts is not None
    _note_image_guess(prep, source)
    try:
        choose_layout(prep, source)
    except ValueError as exc:
        prep.problems.append(str(exc))
    choose_tokenizer(prep, source)
    return prep


def _note_image_guess(prep: Prepared, source: ModelSource) -> None:
    """Record an image pipeline that nothing determined (a guess, logged and never "faithful").

    The training JSON's ambiguous pick, or a team checkpoint's without any config: auto keeps
    the preset's pipeline.
    """
    if prep.facts is not None:
        prep.image_undetermined = prep.facts.image_undetermined
    elif prep.team and prep.config_file is None and not source.image.explicit:
        cfg = prep.config
        kept = Pipeline(cfg.image_pipeline, cfg.resize_filter, tuple(cfg.image_mean),
                        tuple(cfg.image_std))
        prep.image_undetermined = no_json_note(kept.describe())
        prep.assumed.append(prep.image_undetermined)


def _read_checkpoint(prep: Prepared, ckpt: Path | None, source: ModelSource) -> None:
    """Read, map and check the checkpoint's tensors into ``prep``."""
    facts = prep.facts
    if ckpt is None:
        return
    raw, prep.container = read_checkpoint(ckpt, source.allow_unsafe_pickle)
    state, ignored = map_keys(raw)
    prep.ignored.update({k: "text-generation lm_head (the policy never generates text)"
                         for k in ignored})
    state, prep.lora = split_lora(state)
    prep.raw_shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        prep.layout = detect_head(state, facts.head_type if facts else None)
    except LayoutError as exc:
        prep.problems.append(str(exc))
        prep.state = state
        return
    prep.team = prep.layout.name != "mobile_vla_node"
    prep.plan = plan_keys(state, prep.layout)
    prep.ignored.update(prep.plan.dropped)
    prep.state = {prep.plan.mapped[k]: v for k, v in state.items() if k in prep.plan.mapped}
    _fit_config(prep, facts is not None)
    _check_lora(prep, source)


def _fit_config(prep: Prepared, from_training: bool) -> None:
    """Take head kind/sizes the config does not state from tensor shapes; check the rest."""
    cfg, layout = prep.config, prep.layout
    dims = head_dims({k: tuple(v.shape) for k, v in prep.state.items()}, layout)
    stated = set(prep.facts.overrides) if prep.facts else set()
    native = prep.config_file is not None and not from_training
    changes: dict = {}
    if native:   # this package's own config.json: trusted as is; load_into names any mismatch
        if layout.kind != cfg.head:
            prep.problems.append(f"the checkpoint has a {layout.kind} head ({layout.name}) but "
                                 f"its config.json says {cfg.head!r}")
        return
    if layout.kind != cfg.head:
        changes.update(head=layout.kind, head_type=layout.name)
    if layout.name != cfg.head_type and "head_type" not in stated:
        changes["head_type"] = layout.name
    for name in ("lstm_hidden", "lstm_layers", "mlp_hidden"):
        if name in dims and name not in stated:
            if dims[name] != getattr(cfg, name):
                changes[name] = dims[name]
                prep.notes[name] = f"{dims[name]} (from tensor shapes)"
        elif name in dims and dims[name] != getattr(cfg, name):
            prep.problems.append(f"{name}: the config says {getattr(cfg, name)} but the "
                                 f"checkpoint's tensors have {dims[name]}")
    chunk = cfg.fwd_pred_next_n
    out = dims.get("head_out")
    if layout.kind == "classification" and out is not None:
        if "num_classes" not in stated:
            if out % chunk:
                prep.problems.append(f"act_head.logits has {out} outputs, not a multiple of "
                                     f"fwd_pred_next_n={chunk}; set model_config")
                return
            changes["num_classes"] = out // chunk
            prep.notes["num_classes"] = f"{out // chunk} (logits {out} / chunk {chunk})"
        elif out != chunk * cfg.num_classes:
            prep.problems.append(f"act_head.logits has {out} outputs but the config says "
                                 f"fwd_pred_next_n {chunk} x num_classes {cfg.num_classes}")
    elif out is not None and out != chunk * cfg.action_dim:
        prep.problems.append(f"the head outputs {out} values per step but the config says "
                             f"fwd_pred_next_n {chunk} x action_dim {cfg.action_dim} = "
                             f"{chunk * cfg.action_dim}; wrong model_config / model_preset?")
    if changes.get("head") == "classification" or (
            cfg.head == "classification" and not cfg.class_velocities):
        from .training_config import default_class_velocities

        classes = changes.get("num_classes", cfg.num_classes)
        table = default_class_velocities(classes)
        if table is not None and not cfg.class_velocities:
            changes["class_velocities"] = table
            prep.notes.setdefault("class_velocities", "their inference server's default table")
    if not from_training:
        prep.assumed.append(f"no training config: window_size {cfg.window_size}, "
                            f"fwd_pred_next_n {chunk}, image_norm {cfg.image_norm}, "
                            f"max_linear {cfg.max_linear} come from preset {cfg.preset!r} "
                            "(set model_config to the training JSON)")
    if changes:
        try:
            prep.config = dataclasses.replace(cfg, **changes)
        except ValueError as exc:
            prep.problems.append(str(exc))


def _check_lora(prep: Prepared, source: ModelSource) -> None:
    lora = prep.lora
    enabled = bool(prep.facts and prep.facts.lora.get("enable"))
    if not lora.pairs and not lora.unsupported:
        if enabled:
            prep.notes["lora"] = ("lora_enable in the config, but no adapters in the "
                                  "checkpoint (merged before saving, or saved without them)")
        return
    if lora.unsupported:
        prep.problems.append(f"unsupported PEFT tensors (embedding LoRA / DoRA): "
                             f"{lora.unsupported[:4]}")
    try:
        alpha = prep.facts.lora.get("alpha") if prep.facts else None
        r = prep.facts.lora.get("r") if prep.facts else None
        prep.lora_scale = lora_scale(lora, alpha, r)
    except ValueError as exc:
        prep.problems.append(str(exc))
    no_base = sorted(t for t in lora.pairs if t not in prep.state)
    if no_base and not source.backbone_path:
        prep.problems.append(
            f"{len(no_base)} LoRA adapter pairs have no base weight in the checkpoint (e.g. "
            f"{no_base[0]}); set backbone_path to the local kosmos-2-patch14-224 folder the "
            "adapters were trained on, so W + alpha/r * B @ A can be merged")
    prep.notes["lora"] = (f"{len(lora.pairs)} adapter pairs, rank {lora.rank()}, scale "
                          f"{prep.lora_scale} (alpha/r), base weights from "
                          f"{'backbone_path' if no_base else 'the checkpoint'}")


def build_model(config: PolicyConfig, tokenizer: PromptTokenizer) -> MobileVLAPolicy:
    """The policy module for ``config`` (seeded random weights until loaded)."""
    return MobileVLAPolicy(config, tokenizer.prefix_ids, tokenizer.image_end_id,
                           tokenizer.special_ids["<pad>"])


def load_policy(source: ModelSource) -> LoadedPolicy:
    """Build the policy (eval mode, fp32, CPU) with its tokenizer and weights."""
    prep = prepare(source)
    prep.fail_if_problems()
    for item in prep.assumed:
        LOG.warning("policy config: %s", item)
    config = prep.config
    LOG.info("token layout: %s; tokenizer: %s", prep.notes.get("token_layout"),
             prep.notes.get("tokenizer"))
    tokenizer = make_tokenizer(prep)
    torch.manual_seed(RANDOM_SEED)
    model = build_model(config, tokenizer)
    provided: set = set()
    described = []
    if source.backbone_path:
        provided = _load_backbone(model, Path(source.backbone_path))
        described.append(f"backbone from {source.backbone_path}")
    if prep.checkpoint is not None:
        state = dict(prep.state)
        if prep.lora is not None and prep.lora.pairs:
            ours = model.state_dict()
            bases = {t: state.get(t, ours.get(t)) for t in prep.lora.pairs}
            unknown = sorted(t for t, b in bases.items() if b is None)
            if unknown:
                raise CheckpointError(f"LoRA adapters target weights the model does not have: "
                                      f"{unknown[:4]}")
            state.update(merge_lora(prep.lora, bases, prep.lora_scale))
            described.append(f"{len(prep.lora.pairs)} LoRA adapters merged")
        report = load_into(model, state, strict=source.strict, provided=provided)
        head = (f" ({prep.layout.name} layout)" if prep.layout and
                prep.layout.name != "mobile_vla_node" else "")
        described.append(f"{report.loaded} tensors from {prep.checkpoint}{head}")
        ignored = sorted(set(prep.ignored) | set(report.ignored))
        if ignored:
            LOG.info("ignored %d checkpoint keys (e.g. %s)", len(ignored), ignored[0])
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


def backbone_files(folder: Path) -> list:
    """The weight files of a local Hugging Face Kosmos-2 folder."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"backbone_path {str(folder)!r} has no *.safetensors or "
                              "pytorch_model*.bin weights")
    return files


def _load_backbone(model: MobileVLAPolicy, folder: Path) -> set:
    """Load Kosmos-2 weights from a local Hugging Face folder into ``model.backbone``."""
    state: dict = {}
    for f in backbone_files(folder):
        state.update(read_state_dict(f))
    state = {("backbone." + k): v for k, v in state.items()}
    report = load_into(model, state, strict=False, require_policy=False)
    loaded = {k for k in model.state_dict() if k.startswith("backbone.")} - set(report.missing)
    LOG.info("backbone: %d tensors from %s", report.loaded, folder)
    return loaded
