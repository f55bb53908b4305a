"""TensorRT engine manifests and build-config validation (no TensorRT, no ROS).

A TensorRT engine only runs under the exact TensorRT version and on the GPU model that built it.
`vla_export tensorrt` therefore writes ``FILE.engine.json`` beside ``FILE.engine`` (and
``FILE.step.engine``): what built the engines (TensorRT version, GPU, compute capability), from
which ONNX files (sha256), with which precision / optimization profiles / workspace, plus the
export metadata the runtime needs (model spec, tokenizer), so the engine folder is
self-contained.
`check_manifest` compares a manifest with the running system and returns every mismatch, each with
the exact command that rebuilds the engines.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .onnx_format import META_PREFIX, ExportFormatError, decode_metadata

MANIFEST_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_TEXT_LEN = 64
OPT_TEXT_LEN = 24
DEFAULT_WORKSPACE_MB = 2048
DEFAULT_CALIB_BATCHES = 128
# Encoder sequence = <s> <image> + latent image tokens + </image> + prompt + action token.
FIXED_PROMPT_TOKENS = 4
# Runtime facts an engine is tied to.
RUNTIME_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")


class ManifestError(ValueError):
    """An unreadable or incomplete manifest, or an invalid build setting (names the value)."""


# ----------------------------------------------------------------------------- paths


def step_engine_path(engine: str | Path) -> Path:
    """``DIR/NAME.engine`` -> ``DIR/NAME.step.engine``."""
    engine = Path(engine)
    if engine.suffix != ".engine":
        raise ManifestError(f"engine path {str(engine)!r} must end in .engine")
    return engine.with_name(engine.stem + ".step.engine")


def manifest_path(engine: str | Path) -> Path:
    """``DIR/NAME.engine`` -> ``DIR/NAME.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def default_calib_cache(engine: str | Path) -> Path:
    """``DIR/NAME.engine`` -> ``DIR/NAME.calib.cache`` (int8 calibration table)."""
    engine = Path(engine)
    return engine.with_name(engine.stem + ".calib.cache")


def default_timing_cache(engine: str | Path) -> Path:
    """The timing cache shared by all builds into one folder: ``DIR/trt_timing.cache``."""
    return Path(engine).with_name("trt_timing.cache")


def onnx_data_file(onnx: str | Path) -> Path:
    """The external-data file an ONNX model larger than 2 GB keeps its weights in."""
    onnx = Path(onnx)
    return onnx.with_name(onnx.name + ".data")


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def onnx_digest(onnx: str | Path) -> str:
    """Hex sha256 of an ONNX file and, when present, its ``NAME.onnx.data`` weights."""
    graph = sha256_file(onnx)
    data = onnx_data_file(onnx)
    if not data.is_file():
        return graph
    return hashlib.sha256(bytes.fromhex(graph) + bytes.fromhex(sha256_file(data))).hexdigest()


# ----------------------------------------------------------------------------- export metadata


def normalize_metadata(raw: dict) -> dict:
    """Export metadata (`onnx_format.decode_metadata`) with ``tokenizer`` as JSON text.

    ``tokenizer`` stays JSON text (the form `PromptTokenizer.from_json` reads); ``model_spec``
    and ``tokenizer`` must be there.
    """
    try:
        out = decode_metadata(raw, "export metadata")
    except ExportFormatError as exc:
        raise ManifestError(str(exc)) from exc
    if "tokenizer" in out and not isinstance(out["tokenizer"], str):
        out["tokenizer"] = json.dumps(out["tokenizer"])
    for name in ("model_spec", "tokenizer"):
        if not out.get(name):
            raise ManifestError(f"export metadata lacks {META_PREFIX}{name}; re-export the "
                                "ONNX model with `vla_export onnx`")
    return out


# ----------------------------------------------------------------------------- validation


def validate_precision(precision: str, calib: str | Path | None = None,
                       calib_cache: str | Path | None = None) -> None:
    """Check the engine precision; int8 needs calibration frames or an existing cache."""
    if precision not in PRECISIONS:
        raise ManifestError(f"precision {precision!r} is not supported by the TensorRT backend; "
                            f"use one of {list(PRECISIONS)}")
    if precision != "int8":
        return
    if calib:
        if not Path(calib).exists():
            raise ManifestError(f"--calib {str(calib)!r} does not exist (a rosbag2 bag or an "
                                "image folder)")
        return
    if calib_cache and Path(calib_cache).is_file():
        return
    where = f" ({str(calib_cache)!r} does not exist)" if calib_cache else ""
    raise ManifestError("precision 'int8' needs calibration data: pass --calib BAG_OR_DIR, or "
                        f"--calib-cache PATH of an existing calibration cache{where}")


def shape_range(lo, opt, hi) -> dict:
    """One input's optimization-profile entry as stored in the manifest."""
    return {"min": [int(v) for v in lo], "opt": [int(v) for v in opt],
            "max": [int(v) for v in hi]}


def text_len_limit(policy_config: dict | None, tokenizer_json: str | None = None,
                   export: dict | None = None) -> int | None:
    """Longest prompt (ids) the exported encoder takes: the smallest of the limits known.

    The export's own ``max_text_len`` (its positional table is fixed-size), the same figure
    derived from the backbone config, and the tokenizer's ``max_tokens``.
    """
    limits = []
    if export and export.get("max_text_len"):
        limits.append(int(export["max_text_len"]))
    backbone = (policy_config or {}).get("backbone") or {}
    positions = (backbone.get("text_config") or {}).get("max_position_embeddings")
    # team token layouts size the positional table for max_text_len (the export's own figure)
    if positions and (policy_config or {}).get("token_layout", "package") == "package":
        from ..model.presets import backbone_latents

        latents = backbone_latents(backbone)
        limits.append(int(positions) - latents - FIXED_PROMPT_TOKENS)
    if tokenizer_json:
        max_tokens = json.loads(tokenizer_json).get("max_tokens")
        if max_tokens:
            limits.append(int(max_tokens))
    return min(limits) if limits else None


def make_profiles(model_spec: dict, policy_config: dict, max_text_len: int | None = None,
                  opt_text_len: int = OPT_TEXT_LEN, camera: dict | None = None) -> dict:
    """Optimization profiles of both engines, fixed at build time.

    Encoder: ``image`` [1, S, S, 3] fixed (a camera-input export, ``camera`` = its
    ``preprocess`` record: [1, H, W, 3], the camera's frame, resized in the engine);
    ``text_ids`` [1, L] with L from 1 (opt ~24) to ``max_text_len`` (default 64), or exactly
    ``pad_to`` when the model pads its prompts.
    Step: ``features`` [1, T, D] with T from 1 to ``window_size`` (opt = max = window_size, the
    steady state), ``h0``/``c0`` [layers, 1, H] fixed.
    """
    size, dim = int(model_spec["image_size"]), int(model_spec["feature_dim"])
    window = int(model_spec["window_size"])
    layers, hidden = int(policy_config["lstm_layers"]), int(policy_config["lstm_hidden"])
    pad_to = int(policy_config.get("pad_to") or 0)
    if pad_to:
        if max_text_len not in (None, pad_to):
            raise ManifestError(f"--max-text-len {max_text_len} differs from the model's "
                                f"pad_to={pad_to} (its prompts are always {pad_to} ids long)")
        text = shape_range((1, pad_to), (1, pad_to), (1, pad_to))
    else:
        hi = DEFAULT_MAX_TEXT_LEN if max_text_len is None else int(max_text_len)
        if hi < 1:
            raise ManifestError(f"--max-text-len {hi} must be >= 1")
        text = shape_range((1, 1), (1, min(opt_text_len, hi)), (1, hi))
    image = (1, size, size, 3)
    if camera is not None:
        width, height = (int(v) for v in camera["camera_size"])
        image = (1, height, width, 3)
    state = (layers, 1, hidden)
    return {
        "encoder": {"image": shape_range(image, image, image), "text_ids": text},
        "step": {"features": shape_range((1, 1, dim), (1, window, dim), (1, window, dim)),
                 "h0": shape_range(state, state, state), "c0": shape_range(state, state, state)},
    }


def validate_profiles(profiles: dict, window_size: int, text_limit: int | None = None) -> None:
    """Check min <= opt <= max on every axis and the model's window / prompt limits."""
    errors = []
    for engine, inputs in profiles.items():
        for name, rng in inputs.items():
            label = f"{engine} input {name!r}"
            lo, opt, hi = rng["min"], rng["opt"], rng["max"]
            if not len(lo) == len(opt) == len(hi):
                errors.append(f"{label}: min {lo}, opt {opt}, max {hi} differ in rank")
                continue
            if any(v < 1 for v in lo):
                errors.append(f"{label}: min {lo} has a dimension below 1")
            for axis, (a, b, c) in enumerate(zip(lo, opt, hi, strict=True)):
                if not a <= b <= c:
                    errors.append(f"{label} axis {axis}: min={a} opt={b} max={c} violates "
                                  "min <= opt <= max")
    window = profiles.get("step", {}).get("features")
    if window and len(window["max"]) > 1 and window["max"][1] > window_size:
        errors.append(f"step input 'features' window max={window['max'][1]} exceeds the "
                      f"model's window_size={window_size}")
    text = profiles.get("encoder", {}).get("text_ids")
    if text and text_limit is not None and len(text["max"]) > 1 and text["max"][1] > text_limit:
        errors.append(f"encoder input 'text_ids' text_len max={text['max'][1]} exceeds the "
                      f"model's prompt limit of {text_limit} ids")
    if errors:
        raise ManifestError("invalid optimization profile: " + "; ".join(errors))


# ----------------------------------------------------------------------------- manifest


@dataclass
class EngineManifest:
    """What built a pair of engines, from what, and how (saved as ``FILE.engine.json``)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    step_precision: str
    encoder_engine: str  # file names, relative to the manifest's folder
    step_engine: str
    encoder_onnx: str  # absolute paths at build time
    step_onnx: str
    encoder_onnx_sha256: str
    step_onnx_sha256: str
    profiles: dict
    workspace_mb: int
    build_time_s: float
    builder_flags: dict
    model_spec: dict
    tokenizer: str
    engine_bytes: dict = field(default_factory=dict)
    build_args: dict = field(default_factory=dict)
    normalization: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)  # filled by the build's parity check
    created_at: str = ""
    format: int = MANIFEST_FORMAT

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically: a reader never sees half a manifest)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> EngineManifest:
        """Read a manifest; a missing file or key is an error naming it (unknown keys ignored)."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"engine manifest {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"engine manifest {str(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"engine manifest {str(path)!r} is not a JSON object")
        known = {f.name: f for f in fields(cls)}
        required = [n for n, f in known.items() if f.default is f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ManifestError(f"engine manifest {str(path)!r} lacks {missing}")
        return cls(**{k: v for k, v in data.items() if k in known})


def create_manifest(*, facts: dict, precision: str, engine: str | Path, encoder_onnx: str | Path,
                    step_onnx: str | Path, profiles: dict, workspace_mb: int,
                    build_time_s: float, builder_flags: dict, metadata: dict,
                    step_precision: str | None = None, build_args: dict | None = None
                    ) -> EngineManifest:
    """A manifest for freshly built engines (hashes the ONNX files, sizes the engine files).

    ``facts`` holds ``tensorrt_version``, ``gpu_name`` and ``compute_capability`` of the build
    machine; ``metadata`` is the normalized export metadata (`normalize_metadata`).
    """
    if precision not in PRECISIONS:
        raise ManifestError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    missing = [k for k in RUNTIME_KEYS if not facts.get(k)]
    if missing:
        raise ManifestError(f"runtime facts lack {missing}")
    engine = Path(engine)
    step = step_engine_path(engine)
    sizes = {role: p.stat().st_size for role, p in (("encoder", engine), ("step", step))
             if p.is_file()}
    return EngineManifest(
        tensorrt_version=str(facts["tensorrt_version"]), gpu_name=str(facts["gpu_name"]),
        compute_capability=str(facts["compute_capability"]), precision=precision,
        step_precision=step_precision or precision, encoder_engine=engine.name,
        step_engine=step.name, encoder_onnx=str(Path(encoder_onnx).resolve()),
        step_onnx=str(Path(step_onnx).resolve()), encoder_onnx_sha256=onnx_digest(encoder_onnx),
        step_onnx_sha256=onnx_digest(step_onnx), profiles=profiles, workspace_mb=int(workspace_mb),
        build_time_s=round(float(build_time_s), 3), builder_flags=builder_flags,
        model_spec=dict(metadata["model_spec"]), tokenizer=metadata["tokenizer"],
        engine_bytes=sizes, build_args=dict(build_args or {}),
        normalization=dict(metadata.get("normalization") or {}),
        export=_export_record(metadata),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _export_record(metadata: dict) -> dict:
    """The export's record, with its ``preprocess`` (camera-input exports) kept beside it."""
    from .onnx_format import camera_input

    record = dict(metadata.get("export") or {})
    camera = camera_input(metadata)
    if camera is not None:
        record["preprocess"] = dict(camera)
    return record


def onnx_beside(manifest: EngineManifest, engine: str | Path) -> dict[str, Path]:
    """The manifest's ONNX files that sit beside ``engine`` (by file name), keyed by role."""
    folder = Path(engine).parent
    found = {}
    for role, recorded in (("encoder", manifest.encoder_onnx), ("step", manifest.step_onnx)):
        candidate = folder / Path(recorded).name
        if candidate.is_file():
            found[role] = candidate
    return found


def rebuild_args(manifest: EngineManifest, engine: str | Path | None = None) -> list[str]:
    """The ``vla_export`` arguments (``tensorrt ...``) that rebuild these engines.

    The ONNX export beside the engine wins over the recorded path. A calibration source that is
    gone while its cache exists is left out (the build then reuses the cache).
    """
    engine = Path(engine) if engine else Path(manifest.build_args.get("output")
                                              or manifest.encoder_engine)
    beside = onnx_beside(manifest, engine).get("encoder")
    args = ["tensorrt", "--onnx", str(beside or manifest.encoder_onnx),
            "--output", str(engine), "--precision", manifest.precision]
    build = manifest.build_args
    calib, cache = build.get("calib"), build.get("calib_cache")
    calib_gone = bool(calib) and not Path(calib).exists() and bool(cache) and Path(cache).is_file()
    for key, flag in (("calib", "--calib"), ("calib_cache", "--calib-cache"),
                      ("calib_batches", "--calib-batches"), ("workspace_mb", "--workspace-mb"),
                      ("timing_cache", "--timing-cache"), ("max_text_len", "--max-text-len"),
                      ("atol", "--atol")):
        value = build.get(key)
        if value is None or value == "" or (key == "calib" and calib_gone):
            continue
        if key == "calib_batches" and manifest.precision != "int8":
            continue
        args += [flag, str(value)]
    return args


def rebuild_command(manifest: EngineManifest, engine: str | Path | None = None) -> str:
    """The exact ``vla_export tensorrt`` command line that rebuilds these engines."""
    return shlex.join(["vla_export", *rebuild_args(manifest, engine)])


def check_manifest(manifest: EngineManifest, runtime_facts: dict,
                   onnx_paths: dict | None = None, engine: str | Path | None = None
                   ) -> list[str]:
    """Every way the engines do not fit this system (empty: they do).

    ``runtime_facts``: ``tensorrt_version``, ``gpu_name``, ``compute_capability`` of the running
    system. ``onnx_paths`` (``{"encoder": path, "step": path}``, either optional): ONNX files to
    compare with the hashes the engines were built from. Every message ends with the command that
    rebuilds the engines.
    """
    fix = f"rebuild with: {rebuild_command(manifest, engine)}"
    problems = []
    if manifest.format > MANIFEST_FORMAT:
        problems.append(f"manifest format {manifest.format} is newer than this code reads "
                        f"({MANIFEST_FORMAT}); {fix}")
    what = {"tensorrt_version": ("TensorRT version", "engines load only under the exact "
                                 "TensorRT version that built them"),
            "gpu_name": ("GPU", "engines are tuned for and tied to one GPU model"),
            "compute_capability": ("compute capability", "engine kernels are compiled for one "
                                   "SM architecture")}
    for key, (label, why) in what.items():
        built, running = str(getattr(manifest, key)), str(runtime_facts.get(key, ""))
        if built != running:
            problems.append(f"{label} differs: engine built with {built!r}, this system has "
                            f"{running!r} ({why}); {fix}")
    for role, path in (onnx_paths or {}).items():
        if role not in ("encoder", "step"):
            raise ManifestError(f"onnx_paths role {role!r} must be 'encoder' or 'step'")
        expected = getattr(manifest, f"{role}_onnx_sha256")
        if not Path(path).is_file():
            problems.append(f"{role} ONNX {str(path)!r} does not exist, so the engine cannot be "
                            f"checked against it; {fix}")
            continue
        actual = onnx_digest(path)
        if actual != expected:
            problems.append(f"{role} ONNX {str(path)!r} changed since the engine was built "
                            f"(sha256 {actual[:12]}..., engine built from {expected[:12]}...); "
                            f"{fix}")
    return problems


def check_engine_files(manifest: EngineManifest, engine: str | Path) -> list[str]:
    """Both engine files exist beside the manifest with the sizes it recorded."""
    fix = f"rebuild with: {rebuild_command(manifest, engine)}"
    folder = Path(engine).parent
    problems = []
    for role, name in (("encoder", manifest.encoder_engine), ("step", manifest.step_engine)):
        path = folder / name
        if not path.is_file():
            problems.append(f"{role} engine {str(path)!r} is missing; {fix}")
            continue
        recorded = manifest.engine_bytes.get(role)
        if recorded is not None and path.stat().st_size != recorded:
            problems.append(f"{role} engine {str(path)!r} has {path.stat().st_size} bytes but "
                            f"the manifest records {recorded} (replaced or truncated); {fix}")
    return problems
