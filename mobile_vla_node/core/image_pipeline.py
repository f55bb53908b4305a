"""Image pipelines: resize filter, size and mean/std, as named presets that name their source.

A policy only computes the team's actions when its camera frames are preprocessed as in the
code it is compared with. The team's code has three pipelines, and their training JSON lists
``image_mean``/``image_std`` in every version, so the JSON alone cannot tell them apart:

* ``team_server``: minuum/vla ``Mobile_VLA/inference_server.py`` (read at commit 02b4c38):
  ``torchvision.transforms.Resize((224, 224), interpolation=BICUBIC)`` on a PIL image (that is
  PIL's ``Image.resize(..., BICUBIC)``, antialiased), ``ToTensor`` (/255) and ``Normalize`` with
  the config's ``image_mean``/``image_std`` (their fallback: 0.481, 0.457, 0.408 / 0.268, 0.261,
  0.275); the JSON configs carry CLIP's values;
* ``team_h5_2025``: minuum/RoboVLMs ``robovlms/data/mobile_vla_h5_dataset.py`` before commit
  6423566 (2026-02-03): ``img.resize((image_size, image_size), Image.BILINEAR)``, /255, no
  mean/std;
* ``team_h5_2026``: the same dataset since 6423566: bilinear, /255, then CLIP mean/std (written
  out in the dataset; still so at 8d65987, 2026-02-20);

plus ``package`` (this package's own checkpoints: the values recorded in their config.json and
export metadata) and ``custom`` (the explicit ``resize_filter``, ``image_size``, ``image_mean``,
``image_std`` parameters). ``auto`` resolves from the checkpoint and says why (`resolve`).
Pure Python: no numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NO_MEAN, NO_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
SERVER_DEFAULT_MEAN, SERVER_DEFAULT_STD = (0.481, 0.457, 0.408), (0.268, 0.261, 0.275)

PIPELINES = ("auto", "team_server", "team_h5_2025", "team_h5_2026", "package", "custom")
TEAM_PRESETS = ("team_server", "team_h5_2025", "team_h5_2026")

SOURCES = {
    "team_server": "minuum/vla Mobile_VLA/inference_server.py (02b4c38): torchvision "
                   "Resize((224, 224), BICUBIC) on a PIL image = PIL bicubic, /255, Normalize("
                   "the config's image_mean/image_std)",
    "team_h5_2025": "minuum/RoboVLMs robovlms/data/mobile_vla_h5_dataset.py before 6423566 "
                    "(2026-02-03): PIL bilinear resize, /255, no mean/std",
    "team_h5_2026": "minuum/RoboVLMs robovlms/data/mobile_vla_h5_dataset.py since 6423566 "
                    "(2026-02-03): PIL bilinear resize, /255, CLIP mean/std",
    "package": "this package's checkpoint: recorded in its config.json / export metadata",
    "custom": "the node parameters resize_filter, image_size, image_mean, image_std",
}


@dataclass(frozen=True)
class ImageChoice:
    """What the node (or `vla_checkpoint inspect`) was told about the image pipeline.

    ``pipeline`` is one of `PIPELINES`; the other fields are read only with ``custom``
    (``resize_filter`` "" / ``image_size`` 0 / empty mean or std: not given).
    """

    pipeline: str = "auto"
    resize_filter: str = ""
    image_size: int = 0
    image_mean: tuple = ()
    image_std: tuple = ()

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise ValueError(f"image_pipeline {self.pipeline!r} must be one of {list(PIPELINES)}")
        given = [n for n, v in (("resize_filter", self.resize_filter),
                                ("image_size", self.image_size),
                                ("image_mean", self.image_mean),
                                ("image_std", self.image_std)) if v]
        if self.pipeline != "custom" and given:
            raise ValueError(f"{', '.join(given)} are read only with image_pipeline: custom "
                             f"(image_pipeline is {self.pipeline!r}); set image_pipeline: custom "
                             "or leave them empty")
        if self.pipeline == "custom":
            missing = [n for n, v in (("resize_filter", self.resize_filter),
                                      ("image_mean", self.image_mean),
                                      ("image_std", self.image_std)) if not v]
            if missing:
                raise ValueError(f"image_pipeline: custom needs {', '.join(missing)}")
            if len(self.image_mean) != 3 or len(self.image_std) != 3 or any(
                    float(s) <= 0.0 for s in self.image_std):
                raise ValueError(f"image_mean/image_std must be 3 values each (std > 0), got "
                                 f"{list(self.image_mean)} / {list(self.image_std)}")

    @property
    def explicit(self) -> bool:
        """Given by the user (not ``auto``)."""
        return self.pipeline != "auto"


@dataclass(frozen=True)
class Pipeline:
    """A resolved pipeline: the values, the preset's name and why it was chosen."""

    name: str
    resize_filter: str
    image_mean: tuple
    image_std: tuple
    image_size: int = 0          # 0: the model's
    reason: str = ""
    determined: bool = True      # False: auto picked one of several candidates (ambiguous)

    def describe(self) -> str:
        """One line for logs and `inspect`."""
        return (f"{self.name}: {self.resize_filter} resize, /255, mean "
                f"{_fmt(self.image_mean)}, std {_fmt(self.image_std)}")


def preset(name: str, config_mean=None, config_std=None) -> Pipeline:
    """The named team preset; ``team_server`` takes the training config's mean/std if given."""
    if name == "team_server":
        mean = tuple(float(v) for v in (config_mean or SERVER_DEFAULT_MEAN))
        std = tuple(float(v) for v in (config_std or SERVER_DEFAULT_STD))
        return Pipeline(name, "bicubic", mean, std, 224, SOURCES[name])
    if name == "team_h5_2025":
        return Pipeline(name, "bilinear", NO_MEAN, NO_STD, 0, SOURCES[name])
    if name == "team_h5_2026":
        return Pipeline(name, "bilinear", CLIP_MEAN, CLIP_STD, 0, SOURCES[name])
    raise ValueError(f"{name!r} is not a team image pipeline preset; presets: "
                     f"{list(TEAM_PRESETS)}")


def from_choice(choice: ImageChoice, config_mean=None, config_std=None) -> Pipeline | None:
    """The pipeline an explicit choice names (None: auto/package, the checkpoint decides)."""
    if choice.pipeline in TEAM_PRESETS:
        p = preset(choice.pipeline, config_mean, config_std)
        return Pipeline(p.name, p.resize_filter, p.image_mean, p.image_std, p.image_size,
                        f"image_pipeline: {choice.pipeline} (given) -- {p.reason}")
    if choice.pipeline == "custom":
        return Pipeline("custom", choice.resize_filter,
                        tuple(float(v) for v in choice.image_mean),
                        tuple(float(v) for v in choice.image_std), int(choice.image_size),
                        "image_pipeline: custom (given): " + SOURCES["custom"])
    return None


def ambiguity_note(picked: str) -> str:
    """Why an auto-picked team pipeline is not determined (for inspect and the node's log)."""
    others = [p for p in TEAM_PRESETS if p != picked]
    return (f"image normalization / image pipeline: the training JSON cannot tell "
            f"{', '.join(TEAM_PRESETS)} apart (every version lists image_mean/image_std); auto "
            f"picked {picked}; {' or '.join(others)} may be the one the checkpoint needs: set "
            "image_pipeline explicitly")


def no_json_note(kept: str) -> str:
    """Why a team checkpoint without its training JSON has no determined pipeline (auto)."""
    return (f"image normalization / image pipeline: no training JSON, so nothing states the "
            f"team checkpoint's pipeline; auto kept the preset's ({kept}), which may be none of "
            f"the team's ({', '.join(TEAM_PRESETS)}): set image_pipeline explicitly")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
