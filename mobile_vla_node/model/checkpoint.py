"""Checkpoint reading: Lightning ``.ckpt``, ``.pth``/``.pt``, ``.safetensors``; safe by default.

* ``torch.load(weights_only=True)`` unless ``allow_unsafe_pickle`` is set (a pickle can run code).
  One harmless class is allow-listed: ``argparse.Namespace`` (the team's ``.pth`` files store the
  training ``args`` beside ``model_state_dict``); every other global is still refused.
* Wrappers are unwrapped: ``state_dict`` (Lightning), ``model_state_dict``/``model`` (.pth).
* Key prefixes are mapped onto this package's module names: ``model.``/``module.`` are stripped,
  and the text-generation ``lm_head`` of ``Kosmos2ForConditionalGeneration`` is dropped (the
  policy never generates text; it is reported as ignored).
* Strict by default: missing and unexpected keys are listed in the error.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .team_layouts import head_of

LOG = logging.getLogger(__name__)
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
STRIP_PREFIXES = ("model.", "module.")
IGNORED_PREFIXES = ("backbone.text_model.lm_head.",)
SAFE_GLOBALS = (argparse.Namespace,)


@dataclass
class LoadReport:
    """What a load did: how many tensors were loaded, and what was ignored or left missing."""

    loaded: int = 0
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)


@dataclass
class Container:
    """What a checkpoint file held around its tensors."""

    kind: str                       # safetensors | lightning | pth | tensors
    wrapper: str = ""               # the key the state dict was found under
    top_level: list = field(default_factory=list)
    args: dict = field(default_factory=dict)   # vars() of an argparse.Namespace ``args``
    extras: dict = field(default_factory=dict)  # small scalars (epoch, val_mae, global_step)


def read_state_dict(path: str | Path, allow_unsafe_pickle: bool = False) -> dict:
    """Read the raw tensors of a checkpoint file, unwrapping Lightning/.pth containers."""
    return read_checkpoint(path, allow_unsafe_pickle)[0]


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with `SAFE_GLOBALS` allow-listed (where torch can)."""
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):            # torch >= 2.5: scoped to this call
        with ser.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    if hasattr(ser, "add_safe_globals"):        # torch 2.4: process-wide, the same one class
        ser.add_safe_globals(list(SAFE_GLOBALS))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> tuple[dict,
                                                                                 Container]:
    """(tensors, container description) of a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), Container("safetensors")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint {str(path)!r}: unknown suffix {path.suffix!r}; "
                              f"expected one of {CHECKPOINT_SUFFIXES}")
    try:
        obj = (torch.load(str(path), map_location="cpu", weights_only=False)
               if allow_unsafe_pickle else _safe_load(path))
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError depending on version
        if allow_unsafe_pickle:
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds more than tensors and was not unpickled "
            f"(weights_only=True, allow-listed: "
            f"{[c.__module__ + '.' + c.__name__ for c in SAFE_GLOBALS]}): {exc}. If you trust "
            "its source, set allow_unsafe_pickle: true, or re-save it as .safetensors."
        ) from exc
    if allow_unsafe_pickle:
        LOG.warning("loaded %s with allow_unsafe_pickle=true (full pickle: can run code)", path)
    return unwrap(obj, str(path)), describe_container(obj, path)


def describe_container(obj, path: Path) -> Container:
    """Container kind, wrapper key, top-level keys, ``args`` and small scalars."""
    if not isinstance(obj, dict):
        return Container("tensors")
    wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), "")
    kind = ("lightning" if wrapper == "state_dict" and path.suffix == ".ckpt"
            else "pth" if wrapper else "tensors")
    args = obj.get("args")
    extras = {k: v for k, v in obj.items()
              if isinstance(v, (int, float, str, bool)) or
              (isinstance(v, torch.Tensor) and v.numel() == 1)}
    extras = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in extras.items()}
    return Container(kind, wrapper, sorted(map(str, obj))[:20],
                     dict(vars(args)) if isinstance(args, argparse.Namespace) else {},
                     extras if wrapper else {})


def unwrap(obj, name: str = "checkpoint") -> dict:
    """Find the tensor mapping inside a Lightning/.pth container."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return unwrap(obj[key], name)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{name}: no state dict found (top-level: {keys}); expected a tensor "
                          f"mapping, or one under {WRAPPER_KEYS}")


def map_keys(state: dict) -> tuple[dict, list]:
    """Strip wrapper prefixes and drop keys the policy has no use for; return (state, ignored)."""
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    return {k: v for k, v in state.items() if k not in ignored}, ignored


def load_into(module: torch.nn.Module, state: dict, strict: bool = True,
              provided: set | None = None, require_policy: bool = True) -> LoadReport:
    """Copy ``state`` into ``module``; ``provided`` names keys already filled from elsewhere.

    With ``require_policy`` (checkpoints, not backbone folders) every policy-head tensor
    (``act_head.*``, ``action_token``) must come from ``state``, whatever ``strict`` says: a
    head left at random weights would drive the robot with meaningless actions.
    """
    state, ignored = map_keys(state)
    expected = set(module.state_dict())
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state) - (provided or set()))
    if strict and (missing or unexpected):
        raise CheckpointError(
            "checkpoint does not match the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)\n"
            f"  missing: {_short(missing)}\n  unexpected: {_short(unexpected)}\n"
            "Check model_preset / model_config (the training JSON), or set strict: false."
        )
    if require_policy:
        _require_policy(expected, set(state), strict)
    shapes = module.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(shapes[k].shape)}"
           for k, v in state.items() if k in shapes and v.shape != shapes[k].shape]
    if bad:
        raise CheckpointError("checkpoint tensor shapes do not match the model:\n  "
                              + "\n  ".join(bad[:20]))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return LoadReport(loaded=len(set(state) & expected), ignored=ignored, missing=missing,
                      unexpected=unexpected)


def _require_policy(expected: set, present: set, strict: bool) -> None:
    policy = sorted(k for k in expected if head_of(k))
    missing = [k for k in policy if k not in present]
    if len(missing) == len(policy):
        raise CheckpointError(
            f"checkpoint has none of the policy's {len(policy)} head tensors (act_head.*, "
            f"action_token), so its actions would come from random weights; refusing whatever "
            f"strict_loading says (strict={strict}). Its head may use a layout this package "
            "does not know: run `vla_checkpoint inspect` on it")
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} of the policy's {len(policy)} head tensors "
            f"({_short(missing, 8)}); a partly random head is refused whatever strict_loading "
            f"says (strict={strict})")


def _short(keys: list, limit: int = 20) -> str:
    if not keys:
        return "none"
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def save_safetensors(module: torch.nn.Module, path: str | Path) -> None:
    """Write the module's weights as safetensors (contiguous copies, shared tensors split)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(path))
