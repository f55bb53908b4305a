"""The team's checkpoint key layouts: one small table per policy-head type (torch-free).

A checkpoint is read as ``{key: shape}``; `detect_head` finds which head wrote it (from the keys,
cross-checked with ``act_head.type`` of the training config) and `plan_keys` says, key by key,
what maps onto this package's `MobileVLAPolicy`, what is dropped on purpose and what is unknown.
Facts come from the team's public code (paths in docs/CHECKPOINTS.md):

* ``MobileVLALSTMDecoder`` (alias ``NavPolicyRegression``), minuum/RoboVLMs
  ``robovlms/model/policy_head/mobile_vla_policy.py``: LSTM ``act_head.rnn`` + ``MLPTanhHead``
  named ``velocities`` (fwd_pred_next_n x action_dim) -> our ``act_head.actions``.
* ``MobileVLAClassificationDecoder`` (alias ``NavPolicy``): same LSTM + ``act_head.logits``
  (Linear to fwd_pred_next_n x num_classes); ``class_weights_tensor`` and
  ``target_class_prior_tensor`` are loss buffers (dropped); ``instr_proj`` (instruction
  conditioning) is refused.
* upstream ``LSTMDecoder`` (RoboVLMs ``base_policy.py``): ``actions`` (fwd x (action_dim - 1),
  tanh) + ``gripper`` (an arm's open/close logit, dropped); runs when action_dim - 1 is 2 or 3.
* ``HybridActionHead`` (minuum/MoNaVLA): refused (see `HYBRID_REASON`).
* Anything without an ``act_head.`` group (``best_simple_lstm_model.pth``,
  ``best_simple_clip_lstm_model.pth``, the "Kosmos2 + CLIP hybrid"): refused, naming its groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CheckpointError


class LayoutError(CheckpointError, ValueError):
    """A checkpoint this package cannot run faithfully; the message says what is unknown."""


@dataclass(frozen=True)
class HeadLayout:
    """How one policy-head class stores its tensors, and how they map onto ours."""

    name: str
    aliases: tuple = ()
    kind: str = "regression"         # regression | classification
    markers: tuple = ()              # key prefixes that identify this head
    rename: tuple = ()               # (their prefix, our prefix)
    dropped: tuple = ()              # their keys/prefixes that are training-only (not loaded)
    refused: tuple = ()              # their keys/prefixes whose presence cannot run faithfully
    action_dim_offset: int = 0       # output dims per step = config action_dim - this
    source: str = ""


HEAD_LAYOUTS: tuple[HeadLayout, ...] = (
    HeadLayout(
        name="MobileVLALSTMDecoder", aliases=("NavPolicyRegression",),
        markers=("act_head.velocities.mlp.",),
        rename=(("act_head.velocities.", "act_head.actions."),),
        source="minuum/RoboVLMs robovlms/model/policy_head/mobile_vla_policy.py",
    ),
    HeadLayout(
        name="MobileVLAClassificationDecoder", aliases=("NavPolicy",), kind="classification",
        markers=("act_head.logits.",),
        dropped=("act_head.class_weights_tensor", "act_head.target_class_prior_tensor"),
        refused=("act_head.instr_proj.",),
        source="minuum/RoboVLMs robovlms/model/policy_head/mobile_vla_policy.py; "
               "minuum/MoNaVLA robovlm_nav/models/policy_head/nav_policy_impl.py",
    ),
    HeadLayout(
        name="LSTMDecoder", markers=("act_head.gripper.",), dropped=("act_head.gripper.",),
        action_dim_offset=1,
        source="RoboVLMs robovlms/model/policy_head/base_policy.py (LSTMDecoder)",
    ),
    HeadLayout(
        name="mobile_vla_node", aliases=("LSTMActionHead",), markers=("act_head.actions.mlp.",),
        source="this package (mobile_vla_node/model/policy.py)",
    ),
)
HYBRID_MARKERS = ("direction_head.", "magnitude_head.", "shared_lstm.")
HYBRID_REASON = (
    "HybridActionHead (minuum/MoNaVLA) is refused: it is a stand-alone module (its own 2-layer "
    "LSTM over hidden states, left/right direction logits times sigmoid magnitudes) and no public "
    "training config or trainer shows which backbone feature feeds it or under which key prefix "
    "it is saved, so any mapping onto the RoboVLMs window/feature path would be a guess")
INSTR_REASON = ("act_head.instr_proj (instruction conditioning, 'Exp13') adds a projected "
                "instruction embedding to every LSTM input; the embedding's source is not in the "
                "checkpoint and this package does not compute it")
LAYOUT_BY_NAME = {n: lay for lay in HEAD_LAYOUTS for n in (lay.name, *lay.aliases)}
POLICY_PREFIXES = ("act_head.", "action_token")   # tensors without which actions are meaningless
KNOWN_GROUPS = ("backbone", "act_head", "action_token")
SIMPLE_MODEL_HINT = (
    "its top-level modules look like the team's earlier custom models "
    "(best_simple_lstm_model.pth / best_simple_clip_lstm_model.pth / the 'Kosmos2 + CLIP "
    "hybrid'), whose module definitions are not public")


def head_of(key: str) -> bool:
    """True for a key the policy head (or action token) owns."""
    return key.startswith(POLICY_PREFIXES)


def top_groups(keys) -> dict:
    """``{first dotted component: count}``, sorted by name."""
    groups: dict = {}
    for key in keys:
        name = key.split(".", 1)[0]
        groups[name] = groups.get(name, 0) + 1
    return dict(sorted(groups.items()))


def detect_head(keys, config_type: str | None = None) -> HeadLayout:
    """The head layout a checkpoint's keys were written by; `LayoutError` if none or refused."""
    keys = list(keys)
    hybrid = sorted({m for k in keys for m in HYBRID_MARKERS if m in k})
    if hybrid or config_type == "HybridActionHead":
        raise LayoutError(f"{HYBRID_REASON} (keys {hybrid or 'n/a'}, act_head.type "
                          f"{config_type!r})")
    if not any(k.startswith("act_head.") for k in keys):
        groups = top_groups(keys)
        unknown = [g for g in groups if g not in KNOWN_GROUPS]
        hint = f"; {SIMPLE_MODEL_HINT}" if unknown else ""
        raise LayoutError(
            f"unknown architecture: no policy-head tensors (no 'act_head.*' key); top-level "
            f"groups {groups}, unknown to this package: {unknown or 'none'}{hint}. Only RoboVLMs "
            f"heads {sorted(LAYOUT_BY_NAME)} can run; nothing was loaded")
    found = [lay for lay in HEAD_LAYOUTS if any(k.startswith(lay.markers) for k in keys)]
    if len(found) > 1 and found[-1].name == "mobile_vla_node":
        found = found[:-1]   # upstream LSTMDecoder also has act_head.actions.mlp.*
    if len(found) != 1:
        heads = sorted({".".join(k.split(".")[:2]) for k in keys if k.startswith("act_head.")})
        raise LayoutError(f"unknown policy head: act_head groups {heads} match "
                          f"{[lay.name for lay in found] or 'no known head'}; known heads: "
                          f"{sorted(LAYOUT_BY_NAME)}")
    layout = found[0]
    if config_type and config_type not in LAYOUT_BY_NAME:
        raise LayoutError(f"training config act_head.type {config_type!r} is not a known head "
                          f"({sorted(LAYOUT_BY_NAME)}); the checkpoint's keys look like "
                          f"{layout.name}")
    if config_type and LAYOUT_BY_NAME[config_type] is not layout:
        raise LayoutError(f"training config says act_head.type {config_type!r} but the "
                          f"checkpoint's keys were written by {layout.name} "
                          f"(markers {list(layout.markers)}); wrong model_config?")
    refused = sorted({k for k in keys if k.startswith(layout.refused)})
    if refused:
        raise LayoutError(f"{layout.name} checkpoint with {refused[:4]}: {INSTR_REASON}")
    return layout


@dataclass
class KeyPlan:
    """Per key: our name (mapped), or dropped (with why), for one checkpoint."""

    layout: HeadLayout
    mapped: dict = field(default_factory=dict)       # their key -> our key
    dropped: dict = field(default_factory=dict)      # their key -> reason

    @property
    def renamed(self) -> dict:
        """Only the keys whose name changed."""
        return {k: v for k, v in self.mapped.items() if k != v}


def plan_keys(keys, layout: HeadLayout) -> KeyPlan:
    """Map their (prefix-stripped) keys onto ours with the layout's table."""
    plan = KeyPlan(layout)
    for key in keys:
        if key.startswith(layout.dropped) or key in layout.dropped:
            plan.dropped[key] = f"{layout.name}: training-only / not a velocity output"
            continue
        new = key
        for theirs, ours in layout.rename:
            if key.startswith(theirs):
                new = ours + key[len(theirs):]
                break
        plan.mapped[key] = new
    return plan


def mlp_layers(shapes: dict, prefix: str) -> list:
    """``[(index, out, in)]`` of the Linear layers under ``prefix`` (``act_head.actions.mlp.``)."""
    out = []
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith(".weight") and len(shape) == 2:
            index = key[len(prefix):].split(".")[0]
            if index.isdigit():
                out.append((int(index), int(shape[0]), int(shape[1])))
    return sorted(out)


def head_dims(shapes: dict, layout: HeadLayout) -> dict:
    """LSTM size/layers and head output width, read from tensor shapes (keys already mapped)."""
    dims: dict = {}
    w_ih = shapes.get("act_head.rnn.weight_ih_l0")
    if w_ih is not None:
        dims["lstm_hidden"] = int(w_ih[0]) // 4
        dims["feature_dim"] = int(w_ih[1])
        dims["lstm_layers"] = len([k for k in shapes if k.startswith("act_head.rnn.weight_ih_l")])
    if layout.kind == "classification":
        w = shapes.get("act_head.logits.weight")
        if w is not None:
            dims["head_out"] = int(w[0])
    else:
        layers = mlp_layers(shapes, "act_head.actions.mlp.")
        if layers:
            dims["mlp_hidden"] = [o for _, o, _ in layers[:-1]]
            dims["head_out"] = layers[-1][1]
    return dims
