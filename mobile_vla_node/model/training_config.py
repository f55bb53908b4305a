"""The team's RoboVLMs JSON training config -> policy settings, each with its reason (torch-free).

Their configs carry their own names (``mobile_vla_left_chunk10_20251218.json``) and are passed
as ``model_config``. What is read, and from where (details in docs/CHECKPOINTS.md):

* sizes: ``window_size``, ``fwd_pred_next_n`` (top level, else ``act_head``),
  ``act_head.{type, hidden_size, num_layers, action_dim, num_classes, latent, down_sample}``;
* LoRA: ``train_setup.{lora_enable, lora_r, lora_alpha}``;
* image pipeline (resize filter, mean/std; `core.image_pipeline`): the node's
  ``image_pipeline`` parameter wins; then explicit ``image_norm``/``resize_filter`` keys; else
  auto from the training dataset (``MobileVLAH5Dataset`` -> ``team_h5_2025``), which is never
  determined: the JSON lists ``image_mean``/``image_std`` in every version of their code, so it
  cannot tell their server (bicubic + CLIP), their dataset before 6423566 (bilinear, none) and
  after it (bilinear + CLIP) apart -- the pick is listed in ``assumed``;
* action scale (normalized action x scale = m/s): ``max_linear`` / ``action_scale`` if given;
  else ``MobileVLAH5Dataset`` clamps raw teleop velocities (+-1.15 m/s) to [-1, 1], so 1.15;
  the earlier ``MobileVLADataset`` divided by 2.0, so 2.0; ``norm_action`` with a symmetric
  ``norm_min``/``norm_max`` otherwise;
* classification: ``classification_speed`` (default 1.15) and ``classification_action_map``
  (``{class: [vx, vy]}``) as their inference server reads them.

Values that had to be assumed are listed in ``assumed``; things that cannot run are ``refused``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.image_pipeline import (
    CLIP_MEAN,
    CLIP_STD,
    TEAM_PRESETS,
    ImageChoice,
    Pipeline,
    ambiguity_note,
    from_choice,
    preset,
)
from ..core.resize import check_filter
from .team_layouts import LAYOUT_BY_NAME

IMAGE_NORMS = {
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Training dataset class -> (image_norm, resize filter, action scale, where that comes from).
DATASET_PIPELINES = {
    "MobileVLAH5Dataset": ("none", "bilinear", 1.15,
                           "minuum/RoboVLMs robovlms/data/mobile_vla_h5_dataset.py: PIL bilinear "
                           "resize, /255, no mean/std; velocities clamped to [-1, 1] from +-1.15"),
    "MobileVLADataset": ("imagenet", "bilinear", 2.0,
                         "their earlier dataset: ImageNet mean/std, actions / 2.0 (issue 11)"),
}
DEFAULT_SPEED = 1.15
# tokenizer.max_text_len when a training JSON omits it: their H5 dataset's default.
DEFAULT_MAX_TEXT_LEN = 256
DIAGONAL = 0.707
TURN_RATE = 0.5


def default_class_velocities(num_classes: int, speed: float = DEFAULT_SPEED,
                             diagonal: float | None = None) -> list | None:
    """Their inference server's class -> [vx, vy, wz] table (6, 8 or 9 classes), else None.

    9 classes: minuum/vla Mobile_VLA/inference_server.py (02b4c38) ``class_map`` default --
    stop, forward, backward, left, right, forward-left, forward-right, backward-left,
    backward-right, every component +-1.15 (diagonals too; ``diagonal`` overrides them).
    """
    if num_classes == 9:
        s, d = speed, speed if diagonal is None else diagonal
        return [[0.0, 0.0, 0.0], [s, 0.0, 0.0], [-s, 0.0, 0.0], [0.0, s, 0.0], [0.0, -s, 0.0],
                [d, d, 0.0], [d, -d, 0.0], [-d, d, 0.0], [-d, -d, 0.0]]
    d = round(speed * DIAGONAL, 6)
    table = [[0.0, 0.0, 0.0], [speed, 0.0, 0.0], [0.0, speed, 0.0], [0.0, -speed, 0.0],
             [d, d, 0.0], [d, -d, 0.0], [0.0, 0.0, TURN_RATE], [0.0, 0.0, -TURN_RATE]]
    return table[:num_classes] if num_classes in (6, 8) else None


CLASS_NAMES = {6: ["stop", "forward", "left", "right", "forward-left", "forward-right"],
               8: ["stop", "forward", "left", "right", "forward-left", "forward-right",
                   "turn-left", "turn-right"],
               9: ["stop", "forward", "backward", "left", "right", "forward-left",
                   "forward-right", "backward-left", "backward-right"]}


@dataclass
class TrainingFacts:
    """What a training config says, as PolicyConfig overrides plus the reasons."""

    path: str = ""
    head_type: str = ""
    overrides: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)          # enable, r, alpha
    notes: dict = field(default_factory=dict)         # field -> where its value came from
    assumed: list = field(default_factory=list)       # values not stated by the config
    refused: list = field(default_factory=list)       # reasons it cannot run faithfully
    image_undetermined: str = ""                      # why auto's image pipeline is a guess


def load_training_json(path: str | Path, _depth: int = 0) -> dict:
    """Read a JSON config, merging its ``parent`` chain (child keys win, dicts merged)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model_config {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config {str(path)!r} is not valid JSON: {exc}") from exc
    parent = data.get("parent") if isinstance(data, dict) else None
    if parent and _depth < 8:
        candidate = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
        if not candidate.is_file():
            candidate = path.parent / Path(parent).name
        if not candidate.is_file():
            raise FileNotFoundError(f"config {str(path)!r} names parent {parent!r}, which is not "
                                    f"at {str(candidate)!r}; copy it beside the config")
        return _deep_merge(load_training_json(candidate, _depth + 1), data)
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def is_team_config(data: dict) -> bool:
    """A RoboVLMs-style training config (not this package's native ``config.json``)."""
    return not ("backbone" in data and "preset" in data)


def read_training_config(data: dict, path: str = "",
                         image: ImageChoice | None = None) -> TrainingFacts:
    """Map a RoboVLMs training config onto PolicyConfig overrides, with reasons."""
    facts = TrainingFacts(path=str(path))
    head = data.get("act_head") or {}
    setup = data.get("train_setup") or {}
    put, note = facts.overrides.__setitem__, facts.notes.__setitem__
    facts.head_type = str(head.get("type") or "")
    _check_structure(data, head, facts)

    for name, value, where in (
        ("window_size", data.get("window_size", head.get("window_size")), "window_size"),
        ("fwd_pred_next_n", data.get("fwd_pred_next_n", head.get("fwd_pred_next_n")),
         "fwd_pred_next_n"),
        ("lstm_hidden", head.get("hidden_size"), "act_head.hidden_size"),
        ("lstm_layers", head.get("num_layers", head.get("n_layer")), "act_head.num_layers"),
        ("mlp_hidden", head.get("mlp_hidden"), "act_head.mlp_hidden"),
        ("prompt_template", data.get("prompt_template"), "prompt_template"),
    ):
        if value is not None:
            put(name, value)
            note(name, f"{where} = {value!r}")
    if data.get("pad_text"):
        put("pad_to", (data.get("tokenizer") or {}).get("max_text_len", 0))
        note("pad_to", "pad_text with tokenizer.max_text_len")
    text_len = (data.get("tokenizer") or {}).get("max_text_len")
    if text_len is not None:
        put("max_text_len", int(text_len))
        note("max_text_len", f"tokenizer.max_text_len = {text_len!r} (their server pads the "
             "prompt to it)")
    else:
        put("max_text_len", DEFAULT_MAX_TEXT_LEN)
        note("max_text_len", f"{DEFAULT_MAX_TEXT_LEN} (assumed: their H5 dataset's default)")
        facts.assumed.append("tokenizer.max_text_len is not in the config: "
                             f"{DEFAULT_MAX_TEXT_LEN} assumed (their dataset's default; their "
                             "server needs the key). It decides the action token's position")

    layout = LAYOUT_BY_NAME.get(facts.head_type)
    if layout is not None:
        put("head_type", layout.name)
        put("head", layout.kind)
    action_dim = head.get("action_dim", data.get("action_dim"))
    if layout is not None and layout.kind == "classification":
        classes = int(head.get("num_classes", 6))
        put("num_classes", classes)
        note("num_classes", f"act_head.num_classes = {classes}"
             if "num_classes" in head else "MobileVLAClassificationDecoder default 6")
        _class_table(data, classes, facts)
    elif action_dim is not None:
        dim = int(action_dim) - (layout.action_dim_offset if layout else 0)
        if layout is None or not layout.action_dim_offset or dim in (2, 3):
            put("action_dim", dim)
            note("action_dim", f"act_head.action_dim = {action_dim}" +
                 (f" minus the gripper -> {dim}" if layout and layout.action_dim_offset else ""))
        else:
            facts.refused.append(
                f"upstream LSTMDecoder with action_dim {action_dim}: its 'actions' MLP predicts "
                f"{dim} tanh value(s) per step plus a gripper logit; only 2 or 3 velocity "
                "outputs map onto Twist axes")

    facts.lora = {"enable": bool(setup.get("lora_enable", False)), "r": setup.get("lora_r"),
                  "alpha": setup.get("lora_alpha")}
    _image_pipeline(data, facts, image)
    _action_scale(data, facts, layout)
    return facts


def _check_structure(data: dict, head: dict, facts: TrainingFacts) -> None:
    model = str(data.get("model", "kosmos")).lower()
    if model != "kosmos":
        facts.refused.append(f"backbone model {data.get('model')!r}: only Kosmos-2 ('kosmos') "
                             "is implemented")
    if data.get("use_vision_resampler"):
        facts.refused.append("use_vision_resampler: true (PerceiverResampler between vision and "
                             "text) is not implemented")
    if data.get("use_hand_rgb"):
        facts.refused.append("use_hand_rgb: true (a second, gripper camera) is not implemented")
    if int(head.get("latent", 1) or 1) != 1:
        facts.refused.append(f"act_head.latent = {head.get('latent')}: only one action-token "
                             "feature per frame (latent 1) is implemented")
    if head.get("action_space") == "discrete" and head.get("type") not in (
            "MobileVLAClassificationDecoder", "NavPolicy"):
        facts.assumed.append(f"act_head.action_space 'discrete' with {head.get('type')}: "
                             "the head's own layout is used (RoboVLMs' action tokenizer is not)")


def _class_table(data: dict, classes: int, facts: TrainingFacts) -> None:
    speed = float(data.get("classification_speed", DEFAULT_SPEED))
    diagonal = data.get("classification_diagonal_speed")
    table = default_class_velocities(classes, speed,
                                     None if diagonal is None else float(diagonal))
    where = (f"their inference server's {classes}-class table, speed {speed}"
             + ("" if "classification_speed" in data else " (default)"))
    # their server (02b4c38) reads "class_map" ({class: [vx, vy]}); later ones
    # "classification_action_map"
    user = data.get("classification_action_map") or data.get("class_map") or {}
    if user:
        table = table or [[0.0, 0.0, 0.0] for _ in range(classes)]
        for key, value in user.items():
            if str(key).isdigit() and int(key) < classes and len(value) >= 2:
                table[int(key)] = [float(value[0]), float(value[1]),
                                   float(value[2]) if len(value) > 2 else 0.0]
        where += (", classification_action_map" if data.get("classification_action_map")
                  else ", class_map")
    if table is None:
        facts.assumed.append(f"no velocity table for {classes} classes: set class_velocities "
                             "(x,y,yaw per class) or classification_action_map")
        return
    facts.overrides["class_velocities"] = table
    facts.notes["class_velocities"] = where


def _image_pipeline(data: dict, facts: TrainingFacts, choice: ImageChoice | None = None) -> None:
    """The image pipeline of a team checkpoint.

    Given (``choice``), stated by the JSON, or picked from the training dataset, which is never
    determined (``facts.image_undetermined``).
    """
    choice = choice or ImageChoice()
    dataset = str((data.get("train_dataset") or {}).get("type") or "")
    if choice.pipeline == "package":
        raise ValueError("image_pipeline 'package' is for this package's own checkpoints (their "
                         "config.json records it); for the team's checkpoints set "
                         f"image_pipeline to one of {list(TEAM_PRESETS)} or custom")
    pipeline = from_choice(choice, data.get("image_mean"), data.get("image_std"))
    if pipeline is None:
        pipeline = _json_pipeline(data, dataset, facts)
    if not pipeline.determined:
        facts.image_undetermined = ambiguity_note(pipeline.name)
        facts.assumed.append(facts.image_undetermined)
    facts.overrides.update(pipeline_overrides(pipeline))
    facts.notes["image_pipeline"] = pipeline.reason
    facts.notes["image_norm"] = pipeline.reason
    facts.notes["resize_filter"] = f"{pipeline.resize_filter} ({pipeline.reason})"


def _json_pipeline(data: dict, dataset: str, facts: TrainingFacts) -> Pipeline:
    """``auto`` for a training JSON: its explicit keys, else the dataset (ambiguous)."""
    norm, filt = data.get("image_norm"), data.get("resize_filter")
    if norm is not None:
        if norm in IMAGE_NORMS:
            mean, std = IMAGE_NORMS[norm]
        elif norm == "custom" and data.get("image_mean") and data.get("image_std"):
            mean, std = data["image_mean"], data["image_std"]
        else:
            raise ValueError(f"image_norm {norm!r} must be one of {sorted(IMAGE_NORMS)} or "
                             "'custom' with image_mean and image_std")
        filt = filt or "bicubic"
        check_filter(filt)
        return Pipeline("custom", filt, tuple(mean), tuple(std), 0,
                        f"image_norm = {norm!r}, resize_filter = {filt!r} in the config")
    if dataset == "MobileVLAH5Dataset":
        p = preset("team_h5_2025")
        why = f"auto: train_dataset.type {dataset}, as {p.reason}"
        return Pipeline(p.name, filt or p.resize_filter, p.image_mean, p.image_std, 0, why,
                        determined=False)
    if dataset in DATASET_PIPELINES:
        norm, dflt, _, source = DATASET_PIPELINES[dataset]
        mean, std = IMAGE_NORMS[norm]
        why = f"auto: train_dataset.type {dataset}: {source}"
        return Pipeline("auto", filt or dflt, tuple(mean), tuple(std), 0, why, determined=False)
    p = preset("team_server", data.get("image_mean"), data.get("image_std"))
    why = (f"auto: training dataset {dataset or '(none)'} is not known: team_server "
           f"({p.reason})")
    return Pipeline(p.name, filt or p.resize_filter, p.image_mean, p.image_std, 0, why,
                    determined=False)


def norm_name(mean, std) -> str:
    """The `IMAGE_NORMS` name of a mean/std pair, or ``custom``."""
    for name, (m, s) in IMAGE_NORMS.items():
        if all(abs(float(a) - b) <= 1e-6 for a, b in zip(mean, m, strict=True)) and all(
                abs(float(a) - b) <= 1e-6 for a, b in zip(std, s, strict=True)):
            return name
    return "custom"


def pipeline_overrides(pipeline: Pipeline) -> dict:
    """PolicyConfig overrides of a resolved pipeline."""
    out = {"image_pipeline": pipeline.name, "resize_filter": check_filter(pipeline.resize_filter),
           "image_norm": norm_name(pipeline.image_mean, pipeline.image_std),
           "image_mean": [float(v) for v in pipeline.image_mean],
           "image_std": [float(v) for v in pipeline.image_std]}
    if pipeline.image_size:
        out["image_size"] = int(pipeline.image_size)
    return out


def _action_scale(data: dict, facts: TrainingFacts, layout) -> None:
    dataset = str((data.get("train_dataset") or {}).get("type") or "")
    explicit = data.get("max_linear", data.get("action_scale"))
    if explicit is not None:
        scale, where = float(explicit), "max_linear/action_scale in the config"
    elif dataset in DATASET_PIPELINES:
        scale, where = DATASET_PIPELINES[dataset][2], f"train_dataset.type {dataset}"
    elif data.get("norm_action") and data.get("norm_min") is not None:
        lo, hi = float(data["norm_min"]), float(data.get("norm_max", 1.0))
        if lo != -hi:
            facts.refused.append(f"norm_action with asymmetric [{lo}, {hi}] is not supported")
            return
        scale, where = hi, f"norm_action over [{lo}, {hi}]"
    else:
        if layout is None or layout.kind != "classification":
            facts.assumed.append("action scale: not stated by the config or its dataset; the "
                                 "preset's max_linear is used (set max_linear)")
        return
    facts.overrides["max_linear"] = scale
    facts.notes["max_linear"] = f"{scale} ({where})"
