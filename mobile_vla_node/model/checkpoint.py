"""Checkpoint reading: Lightning ``.ckpt``, ``.pth``/``.pt``, ``.safetensors``; safe by default.

* ``torch.load(weights_only=True)`` unless ``allow_unsafe_pickle`` is set (a pickle can run code).
* Wrappers are unwrapped: ``state_dict`` (Lightning), ``model_state_dict``/``model`` (.pth).
* Key prefixes are mapped onto this package's module names: ``model.``/``module.`` are stripped,
  and the text-generation ``lm_head`` of ``Kosmos2ForConditionalGeneration`` is dropped (the
  policy never generates text; it is reported as ignored).
* Strict by default: missing and unexpected keys are listed in the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)
CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
STRIP_PREFIXES = ("model.", "module.")
IGNORED_PREFIXES = ("backbone.text_model.lm_head.",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What a load did: how many tensors were loaded, and what was ignored or left missing."""

    loaded: int = 0
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)


def read_state_dict(path: str | Path, allow_unsafe_pickle: bool = False) -> dict:
    """Read the raw tensors of a checkpoint file, unwrapping Lightning/.pth containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint {str(path)!r}: unknown suffix {path.suffix!r}; "
                              f"expected one of {CHECKPOINT_SUFFIXES}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError depending on version
        if allow_unsafe_pickle:
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds more than tensors and was not unpickled "
            f"(weights_only=True): {exc}. If you trust its source, set allow_unsafe_pickle: true, "
            "or re-save it as .safetensors."
        ) from exc
    if allow_unsafe_pickle:
        LOG.warning("loaded %s with allow_unsafe_pickle=true (full pickle: can run code)", path)
    return unwrap(obj, str(path))


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
              provided: set | None = None) -> LoadReport:
    """Copy ``state`` into ``module``; ``provided`` names keys already filled from elsewhere."""
    state, ignored = map_keys(state)
    expected = set(module.state_dict())
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state) - (provided or set()))
    if strict and (missing or unexpected):
        raise CheckpointError(
            "checkpoint does not match the model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)\n"
            f"  missing: {_short(missing)}\n  unexpected: {_short(unexpected)}\n"
            "Check model_preset / the config JSON beside the checkpoint, or set strict: false."
        )
    shapes = module.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(shapes[k].shape)}"
           for k, v in state.items() if k in shapes and v.shape != shapes[k].shape]
    if bad:
        raise CheckpointError("checkpoint tensor shapes do not match the model:\n  "
                              + "\n  ".join(bad[:20]))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return LoadReport(loaded=len(set(state) & expected), ignored=ignored, missing=missing,
                      unexpected=unexpected)


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
