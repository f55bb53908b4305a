"""The exported-model format shared by the ONNX export, the ONNX backend and the TensorRT build.

An export is two ONNX files side by side: ``NAME.onnx`` (the per-frame encoder) and
``NAME.step.onnx`` (LSTM + head). Both carry ``mobile_vla.*`` metadata_props; JSON-valued ones are
parsed by `read_export_metadata`. Only ``onnx`` is needed here (no runtime).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

from .base import ModelSpec

FORMAT_VERSION = "1"
# Format 2: the encoder takes the camera's uint8 frame (1, H, W, 3) and resizes it in-graph; its
# ``preprocess`` metadata says the size and channel order. A node that reads only format 1 refuses
# it by its format number instead of feeding it a model-size image.
CAMERA_FORMAT_VERSION = "2"
FORMAT_VERSIONS = (FORMAT_VERSION, CAMERA_FORMAT_VERSION)
META_PREFIX = "mobile_vla."
STEP_SUFFIX = ".step.onnx"

ENCODER_INPUTS = ("image", "text_ids")
ENCODER_OUTPUTS = ("feature",)
STEP_INPUTS = ("features", "h0", "c0")
STEP_OUTPUTS = ("actions", "hn", "cn")
TEXT_AXIS = "text_len"
WINDOW_AXIS = "window"

# Keys (without the prefix) whose values are JSON; the rest are plain strings.
JSON_KEYS = ("model_spec", "policy_config", "tokenizer", "normalization", "export", "parity",
             "preprocess")
STRING_KEYS = ("format", "role", "step_file")
REQUIRED_KEYS = ("format", "role", "model_spec", "policy_config", "tokenizer", "normalization",
                 "export")


class ExportFormatError(ValueError):
    """A file that is not a (complete) mobile_vla ONNX export."""


def step_file_name(encoder_path: str | Path) -> str:
    """``DIR/NAME.onnx`` -> ``NAME.step.onnx`` (the step file's name beside the encoder)."""
    path = Path(encoder_path)
    if path.suffix != ".onnx":
        raise ExportFormatError(f"encoder file {str(path)!r} must end with .onnx")
    return path.stem + STEP_SUFFIX


def read_props(path: str | Path) -> dict:
    """Raw ``metadata_props`` of an ONNX file as ``{key: str}`` (external weights not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportFormatError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError; onnx may raise others
        raise ExportFormatError(f"{str(path)!r} is not a readable ONNX file: "
                                f"{type(exc).__name__}: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}


def decode_metadata(raw: dict, where: str | Path) -> dict:
    """Export metadata with plain keys: the ``mobile_vla.`` prefix stripped, JSON values decoded.

    The one parser of export metadata (the ONNX backend, `vla_export verify` and the TensorRT
    build all come here). Keys may carry the prefix or not; values of `JSON_KEYS` may be JSON
    text (as stored in ``metadata_props``) or already decoded.
    """
    out: dict = {}
    for key, value in raw.items():
        name = key[len(META_PREFIX):] if key.startswith(META_PREFIX) else key
        if name in JSON_KEYS and isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ExportFormatError(f"{str(where)!r}: metadata {key!r} is not valid JSON: "
                                        f"{exc}") from exc
        out[name] = value
    return out


def parse_props(props: dict, path: str | Path) -> dict:
    """``mobile_vla.*`` props -> ``{key: value}`` without the prefix, JSON values parsed."""
    if props.get(META_PREFIX + "format") is None:
        raise ExportFormatError(f"{str(path)!r} is not a mobile_vla export (no "
                                f"{META_PREFIX}format metadata); create one with "
                                "`vla_export onnx --output FILE.onnx ...`")
    out = decode_metadata({k: v for k, v in props.items() if k.startswith(META_PREFIX)}, path)
    if out["format"] not in FORMAT_VERSIONS:
        raise ExportFormatError(f"{str(path)!r} has export format {out['format']!r}; this "
                                f"package reads formats {list(FORMAT_VERSIONS)} (re-export it)")
    if out["format"] == CAMERA_FORMAT_VERSION and not isinstance(out.get("preprocess"), dict):
        raise ExportFormatError(f"{str(path)!r} is a camera-input export (format "
                                f"{CAMERA_FORMAT_VERSION}) without {META_PREFIX}preprocess")
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        keys = [META_PREFIX + k for k in missing]
        raise ExportFormatError(f"{str(path)!r} lacks metadata {keys}")
    return out


def read_export_metadata(path: str | Path) -> dict:
    """Parsed metadata of an export's ENCODER file, checking that its step file is there.

    Returns the ``mobile_vla.*`` values without the prefix (``format``, ``role``, ``step_file``
    as strings; ``model_spec``, ``policy_config``, ``tokenizer``, ``normalization``, ``export``,
    ``parity`` parsed from JSON) plus ``encoder_path`` and ``step_path`` (absolute strings).
    Raises `ExportFormatError` naming the file for anything else.
    """
    path = Path(path).expanduser()
    meta = parse_props(read_props(path), path)
    if meta["role"] != "encoder":
        raise ExportFormatError(f"{str(path)!r} is the export's {meta['role']!r} file; pass the "
                                "encoder file (NAME.onnx, not NAME.step.onnx)")
    if not meta.get("step_file"):
        raise ExportFormatError(f"{str(path)!r} lacks metadata {META_PREFIX}step_file")
    step = path.parent / meta["step_file"]
    if not step.is_file():
        raise ExportFormatError(f"step file {str(step)!r} of export {str(path)!r} is missing; "
                                "copy both files of the export (NAME.onnx and NAME.step.onnx)")
    step_meta = parse_props(read_props(step), step)
    if step_meta["role"] != "step":
        raise ExportFormatError(f"{str(step)!r} has role {step_meta['role']!r}, expected 'step'")
    if step_meta["model_spec"] != meta["model_spec"]:
        raise ExportFormatError(f"{str(step)!r} belongs to a different model than {str(path)!r} "
                                "(model_spec differs); re-export both files together")
    meta["encoder_path"] = str(path.resolve())
    meta["step_path"] = str(step.resolve())
    return meta


def camera_input(meta: dict) -> dict | None:
    """The ``preprocess`` record of a camera-input encoder (format 2), None for a model-size one.

    ``camera_size`` [width, height], ``camera_order`` / ``channel_order`` (rgb, bgr),
    ``resize_filter``. Exports before format 2 take model-size images (the CPU resizes).
    """
    pre = meta.get("preprocess")
    if meta.get("format") != CAMERA_FORMAT_VERSION or not isinstance(pre, dict):
        return None
    return pre


def camera_frame(camera: dict, frame, swap: str | None = None):
    """A camera frame as a camera-input graph takes it.

    Size checked (ImageError naming the export's size); channels swapped (a copy, only then)
    when ``swap`` ("bgr": frame and model orders differ) is not what the graph does itself;
    contiguous (a view stays a view unless its rows are padded). ``swap`` None: the frame is in
    the export's camera order already.
    """
    import numpy as np

    from ..core.preprocess import ImageError

    width, height = camera["camera_size"]
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise ImageError(f"a {frame.dtype} {frame.shape} frame: this export takes uint8 "
                         f"({height}, {width}, 3) = {width}x{height} camera frames (vla_export "
                         f"onnx --camera-size {width}x{height}); re-export with the camera's "
                         "size, or without --camera-size")
    graph_swaps = camera["camera_order"] != camera["channel_order"]
    if swap is not None and (swap == "bgr") != graph_swaps:
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)


def model_spec_from_metadata(meta: dict) -> ModelSpec:
    """The `ModelSpec` stored in an export's metadata."""
    data = dict(meta["model_spec"])
    names = {f.name for f in fields(ModelSpec)}
    required = {f.name for f in fields(ModelSpec)
                if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ExportFormatError(f"export model_spec lacks {missing}")
    return ModelSpec(**{k: data[k] for k in names if k in data})


def tokenizer_from_metadata(meta: dict):
    """The `PromptTokenizer` stored in an export's metadata."""
    from ..model.tokenizer import PromptTokenizer

    return PromptTokenizer.from_json(json.dumps(meta["tokenizer"]))


def export_precision(meta: dict) -> str:
    """``fp16`` or ``fp32``: the precision the export's weights were written in."""
    return "fp16" if meta.get("export", {}).get("fp16") else "fp32"
