"""Node configuration as validated dataclasses, built once from flat ROS parameters.

Every ROS parameter is a field of one section below. Its metadata carries the description, the
allowed range and whether it is live-tunable (``live``); `node.py` turns these into
``ParameterDescriptor``s, so this file is the single table of parameters. Errors
name the bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from .commands import DEFAULT_STOP_PHRASES
from .image_pipeline import PIPELINES as IMAGE_PIPELINES
from .image_pipeline import ImageChoice

BACKENDS = ("torch", "onnx", "tensorrt", "triton", "null")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TWIST_AXES = ("linear_x", "linear_y", "angular_z")
ACTION_MODES = ("chunk", "server")


def param(default, doc: str, lo=None, hi=None, live: bool = False, choices=None, items=None):
    """A dataclass field that is also a ROS parameter.

    A list parameter's element type (``items``: "str" or "float", which gives its ROS array
    type) comes from its default; an empty default must name it.
    """
    if isinstance(default, (list, tuple)):
        items = items or (type(default[0]).__name__ if default else None)
        if items not in ("str", "float"):
            raise TypeError(f"list parameter default {default!r}: items must be str or float")
    meta = {"doc": doc, "lo": lo, "hi": hi, "live": live, "choices": choices, "items": items}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A parameter value that is out of range or of the wrong kind."""


def _check_fields(section) -> None:
    """Range/choice checks from field metadata; the message names parameter and value."""
    for f in fields(section):
        value = getattr(section, f.name)
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"parameter {f.name}={value!r} is not one of "
                              f"{list(meta['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"parameter {f.name}={value!r} must be finite")
            if meta.get("lo") is not None and value < meta["lo"]:
                raise ConfigError(f"parameter {f.name}={value!r} is below {meta['lo']}")
            if meta.get("hi") is not None and value > meta["hi"]:
                raise ConfigError(f"parameter {f.name}={value!r} is above {meta['hi']}")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs which model where (read-only at run time)."""

    backend: str = param("torch", "inference backend", choices=BACKENDS)
    model_preset: str = param("tiny", "policy preset (tiny, small, mobile-vla-kosmos2, ...)")
    model_path: str = param("", "checkpoint/folder (torch), .onnx (onnx) or .engine (tensorrt); "
                                "empty: the preset's shipped or random weights")
    backbone_path: str = param("", "local Kosmos-2 folder (weights + tokenizer); never a hub id")
    model_config: str = param("", "the team's JSON training config (any name; window, chunk, "
                                  "head, normalization, action scale); empty: config beside "
                                  "the checkpoint or the preset")
    token_layout: str = param("auto", "token layout of the prompt, image and action tokens: "
                                      "auto (from the checkpoint, reason logged), "
                                      "robovlms_kosmos (the team's trainer as it runs: "
                                      "instruction-blind), robovlms_patched (Kosmos-2 patched "
                                      "to take inputs_embeds), package",
                              choices=("auto", "robovlms_kosmos", "robovlms_patched", "package"))
    tokenizer_path: str = param("", "the real Kosmos-2 tokenizer (tokenizer.json or folder) for "
                                    "the team's checkpoints; empty: backbone_path's")
    image_pipeline: str = param("auto", "camera frame -> model input: auto (from the checkpoint; "
                                        "for the team's checkpoints a guess, reported), "
                                        "team_server (bicubic + config mean/std), team_h5_2025 "
                                        "(bilinear, none), team_h5_2026 (bilinear + CLIP), "
                                        "package, custom (the four parameters below)",
                                choices=IMAGE_PIPELINES)
    resize_filter: str = param("", "image_pipeline custom: PIL resize filter (bicubic, "
                                   "bilinear, nearest, box, hamming, lanczos)")
    image_size: int = param(0, "image_pipeline custom: model input size (0: the model's)", 0,
                            4096)
    image_mean: list = param([], "image_pipeline custom: per-channel mean after /255 (3 "
                                 "values)", items="float")
    image_std: list = param([], "image_pipeline custom: per-channel std after /255 (3 values)",
                            items="float")
    cpu_resize: str = param("auto", "resize of the camera frame on the CPU (graphs that take "
                                    "model-size images): auto (torch's uint8 kernel where it "
                                    "stays within 1 level of PIL: bilinear; else PIL), exact "
                                    "(PIL), fast (torch's kernel for bicubic too: ~5x faster, "
                                    "up to 2 levels off)", choices=("auto", "exact", "fast"))
    device: str = param("cpu", "cpu, cuda or cuda:N")
    precision: str = param("fp32", "torch weight precision", choices=PRECISIONS)
    strict_loading: bool = param(True, "fail on missing/unexpected checkpoint keys")
    allow_unsafe_pickle: bool = param(False, "allow full pickle loading of checkpoints (can run "
                                             "code)")
    warmup_iters: int = param(3, "inference runs before the node reports ready", 0, 1000)
    torch_compile: bool = param(False, "torch.compile the encoder (measure first)")
    providers: list = param(["CPUExecutionProvider"], "ONNX Runtime providers, in priority order")
    allow_provider_fallback: bool = param(False, "run on a later provider if the first is "
                                                 "missing (diagnostics then WARN)")
    graph_optimization_level: str = param("all", "ONNX Runtime graph optimization",
                                          choices=("disable", "basic", "extended", "all"))
    intra_op_threads: int = param(0, "intra-op threads of torch / ONNX Runtime (0: their default)",
                                  0, 256)
    engine_rebuild: str = param("never", "rebuild a mismatched TensorRT engine", choices=("never",
                                                                                          "auto"))
    cuda_graph: bool = param(False, "replay CUDA graphs: TensorRT's full-window step; torch on "
                                    "CUDA: encoder per prompt length and window step per length "
                                    "(unavailable on cpu, reported)")
    device_preprocess: bool = param(True, "torch on CUDA: resize the camera frame in the "
                                          "encoder on the GPU (PIL's tables, bit-exact); null: "
                                          "take the camera frame as a camera-input graph does; "
                                          "false: the runtime's CPU resize (cpu_resize)")
    triton_url: str = param("localhost:8001", "Triton gRPC endpoint host:port (backend triton)")
    triton_model: str = param("mobile_vla", "Triton model name prefix: serves NAME_encoder and "
                                            "NAME_step (vla_export triton)")
    triton_model_version: str = param("", "Triton model version (empty: the server's latest)")
    triton_timeout_ms: float = param(500.0, "one inference step (both requests) fails after "
                                            "this many ms", 1.0, 600000.0)
    triton_reconnect_max_s: float = param(2.0, "longest wait between reconnection attempts "
                                               "after a failed step", 0.05, 600.0)
    triton_ssl: bool = param(False, "TLS to the Triton server (gRPC over SSL)")
    triton_root_cert: str = param("", "PEM root certificate(s) for TLS (empty: system roots)")
    triton_client_cert: str = param("", "PEM client certificate for mutual TLS")
    triton_client_key: str = param("", "PEM client private key for mutual TLS")
    triton_headers_file: str = param("", "file of 'Name: value' lines sent as gRPC metadata "
                                         "with every request (API key, bearer token)")

    def __post_init__(self):
        _check_fields(self)
        if not (self.device == "cpu" or self.device == "cuda" or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ConfigError(f"parameter device={self.device!r} must be cpu, cuda or cuda:N")
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise ConfigError(f"parameter providers={self.providers!r} must list provider names")
        self.image_choice()

    def image_choice(self) -> ImageChoice:
        """The image pipeline parameters as one `ImageChoice` (ConfigError if inconsistent)."""
        try:
            return ImageChoice(self.image_pipeline, self.resize_filter, int(self.image_size),
                               tuple(float(v) for v in self.image_mean),
                               tuple(float(v) for v in self.image_std))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"parameter {exc}") from exc


@dataclass(frozen=True)
class TopicConfig:
    """Topic names and image transport.

    The defaults are relative names: in the root namespace they are ``/camera/image_raw``,
    ``/cmd_vel``, ...; under a namespace (launch ``namespace:=robot1``) they follow it
    (``/robot1/cmd_vel``). A name starting with ``/`` stays global.
    """

    image_topic: str = param("camera/image_raw", "sensor_msgs/Image topic")
    compressed_image_topic: str = param("camera/image_raw/compressed",
                                        "sensor_msgs/CompressedImage topic")
    image_transport: str = param("raw", "raw or compressed", choices=("raw", "compressed"))
    command_topic: str = param("vla/command", "std_msgs/String instruction topic")
    cmd_vel_topic: str = param("cmd_vel", "geometry_msgs/Twist output topic")
    enable_topic: str = param("vla/enable", "std_msgs/Bool enable (false = e-stop)")
    timing_topic: str = param("~/step_timing", "std_msgs/Float64MultiArray per-step timings")

    def __post_init__(self):
        _check_fields(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_topic") and (not value or " " in value):
                raise ConfigError(f"parameter {f.name}={value!r} is not a topic name")

    def absolute(self, namespace: str = "/") -> TopicConfig:
        """The names as ROS resolves them in ``namespace`` (``~/`` private names unchanged).

        Tools that match names against a bag or the graph (replay) compare absolute names.
        """
        return replace(self, **{f.name: absolute_topic(getattr(self, f.name), namespace)
                                for f in fields(self) if f.name.endswith("_topic")})


def absolute_topic(name: str, namespace: str = "/") -> str:
    """``name`` resolved in ``namespace``: relative names get the namespace, others stay."""
    if name.startswith(("/", "~")):
        return name
    return f"{namespace.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ControlConfig:
    """Control timer, staleness and chunk playback."""

    control_rate_hz: float = param(20.0, "Twist publish rate", 1.0, 1000.0)
    image_timeout_s: float = param(0.5, "zero if the newest image is older", 0.01, 60.0,
                                   live=True)
    action_timeout_s: float = param(1.0, "zero if the newest action step is older", 0.01, 60.0,
                                    live=True)
    chunk_step_period_s: float = param(0.0, "seconds per action of a chunk (0: model config)",
                                       0.0, 10.0)
    chunk_blend_steps: int = param(0, "steps over which a new chunk blends into the old", 0, 100)
    start_enabled: bool = param(True, "publish motion at start (false: wait for enable)")
    max_command_chars: int = param(512, "longer commands are rejected", 1, 100000)
    stop_phrases: list = param(list(DEFAULT_STOP_PHRASES), "an instruction containing one of "
                               "these stops the robot at once, without inference", live=True)
    allowed_instructions: list = param([], "if not empty, only these instructions drive "
                                           "(others are rejected)", live=True, items="str")
    time_jump_threshold_s: float = param(1.0, "ROS time running this much ahead of the steady "
                                              "clock between ticks is a forward jump (a jump "
                                              "back is always one): stop until fresh input",
                                         0.05, 3600.0, live=True)
    autostart: bool = param(True, "configure and activate the lifecycle node at start-up "
                                  "(false: wait for a lifecycle manager)")
    control_thread_priority: int = param(10, "SCHED_FIFO priority of the control thread if the "
                                             "process may set it (0: normal scheduling)", 0, 99)
    control_gil_lead_ms: float = param(0.0, "the control thread takes Python's GIL this long "
                                            "before each tick and keeps it until the tick, so no "
                                            "other thread of the node delays it (steady clock, "
                                            "Linux; 0: off)", 0.0, 10.0)

    def __post_init__(self):
        _check_fields(self)
        for name in ("stop_phrases", "allowed_instructions"):
            value = getattr(self, name)
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"parameter {name}={value!r} must be a list of strings")


@dataclass(frozen=True)
class ActionConfig:
    """Post-processing from normalized actions to velocities."""

    channel_order: str = param("rgb", "channel order the model was trained on",
                               choices=("rgb", "bgr"))
    max_linear: float = param(0.0, "normalized action x this = m/s (0: model config)", 0.0, 10.0)
    max_angular: float = param(1.0, "normalized angular action x this = rad/s", 0.0, 20.0)
    action_gain: float = param(1.0, "extra gain on all axes", 0.0, 10.0, live=True)
    action_sign: list = param([1.0, 1.0, 1.0], "per-axis sign (x, y, yaw): 1 or -1")
    deadzone: float = param(0.0, "|velocity| below this (after scaling) becomes 0", 0.0, 5.0,
                            live=True)
    action_axes: str = param("", "comma-separated twist axis of each action dim, e.g. "
                                 "'linear_x,linear_y' (empty: x, y[, yaw])")
    class_velocities: str = param("", "classification heads: 'vx,vy,wz; ...' per class, m/s "
                                      "and rad/s (empty: the model config's table)")
    action_mode: str = param("chunk", "chunk: play the whole chunk of each inference; server: "
                                      "like the team's inference server, chunk[0] only, zero "
                                      "for the first frame after a command or reset, linear "
                                      "x/y clipped to +-1.5", choices=ACTION_MODES)

    def __post_init__(self):
        _check_fields(self)
        if len(self.action_sign) != 3 or any(s not in (1.0, -1.0) for s in self.action_sign):
            raise ConfigError(f"parameter action_sign={self.action_sign!r} must be 3 values "
                              "of 1 or -1")
        self.class_table()
        axes = self.axes()
        if any(a not in TWIST_AXES for a in axes) or len(set(axes)) != len(axes):
            raise ConfigError(f"parameter action_axes={self.action_axes!r} must be distinct "
                              f"names from {list(TWIST_AXES)}")

    def class_table(self) -> list:
        """`class_velocities` as rows [vx, vy, wz] (empty: use the model config's table)."""
        rows = [r for r in self.class_velocities.split(";") if r.strip()]
        try:
            table = [[float(v) for v in r.split(",")] for r in rows]
        except ValueError:
            table = None
        if table is None or any(len(r) != 3 or not all(map(math.isfinite, r)) for r in table):
            raise ConfigError(f"parameter class_velocities={self.class_velocities!r} must be "
                              "'vx,vy,wz; vx,vy,wz; ...' (3 finite numbers per class)")
        return table

    def axes(self) -> tuple:
        """`action_axes` as a tuple of names (empty: the model's default mapping)."""
        return tuple(a.strip() for a in self.action_axes.split(",") if a.strip())


@dataclass(frozen=True)
class SafetyConfig:
    """Per-axis velocity and acceleration limits (0 acceleration = unlimited)."""

    max_linear_x: float = param(0.5, "|linear.x| limit, m/s", 0.0, 10.0, live=True)
    max_linear_y: float = param(0.5, "|linear.y| limit, m/s", 0.0, 10.0, live=True)
    max_angular_z: float = param(1.0, "|angular.z| limit, rad/s", 0.0, 20.0, live=True)
    max_accel_x: float = param(1.0, "linear.x acceleration limit, m/s^2 (0: none)", 0.0, 100.0,
                               live=True)
    max_accel_y: float = param(1.0, "linear.y acceleration limit, m/s^2 (0: none)", 0.0, 100.0,
                               live=True)
    max_accel_z: float = param(2.0, "angular.z acceleration limit, rad/s^2 (0: none)", 0.0,
                               200.0, live=True)

    def __post_init__(self):
        _check_fields(self)


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Diagnostics period, statistics window and level thresholds."""

    diagnostics_period_s: float = param(1.0, "DiagnosticArray period", 0.05, 60.0)
    latency_window: int = param(200, "samples per latency statistic", 10, 100000)
    hardware_id: str = param("", "DiagnosticStatus.hardware_id (empty: backend device)")
    inference_warn_ms: float = param(100.0, "inference p99 above this: WARN", 0.0, 1e6,
                                     live=True)
    inference_error_ms: float = param(500.0, "inference p99 above this: ERROR", 0.0, 1e6,
                                      live=True)
    jitter_warn_ms: float = param(5.0, "control jitter p99 above this: WARN", 0.0, 1e6, live=True)
    input_rate_warn_hz: float = param(1.0, "image rate below this: WARN", 0.0, 1e6, live=True)

    def __post_init__(self):
        _check_fields(self)
        if self.inference_error_ms < self.inference_warn_ms:
            raise ConfigError(f"parameter inference_error_ms={self.inference_error_ms} is below "
                              f"inference_warn_ms={self.inference_warn_ms}")


SECTIONS = {"backend": BackendConfig, "topics": TopicConfig, "control": ControlConfig,
            "action": ActionConfig, "safety": SafetyConfig, "diagnostics": DiagnosticsConfig}


@dataclass(frozen=True)
class NodeConfig:
    """All sections; build with `from_params`."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    @classmethod
    def from_params(cls, params: dict) -> NodeConfig:
        """Build from flat ``{parameter: value}``; unknown names are an error."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ConfigError(f"unknown parameters {unknown}")
        sections = {}
        for key, section in SECTIONS.items():
            names = {f.name for f in fields(section)}
            sections[key] = section(**{k: _coerce(k, v) for k, v in params.items()
                                       if k in names})
        return cls(**sections)

    def with_params(self, params: dict) -> NodeConfig:
        """A copy with some parameters changed (validated like `from_params`)."""
        current = self.to_params()
        current.update(params)
        return NodeConfig.from_params(current)

    def to_params(self) -> dict:
        """Flat ``{parameter: value}``."""
        out = {}
        for key in SECTIONS:
            section = getattr(self, key)
            out.update({f.name: getattr(section, f.name) for f in fields(section)})
        return out

    def replace_section(self, key: str, **changes) -> NodeConfig:
        """Copy with one section's fields changed."""
        return replace(self, **{key: replace(getattr(self, key), **changes)})


def _coerce(name: str, value):
    """Check a value's kind against the parameter's default; ROS gives ints for floats like 1."""
    proto = PARAMETERS[name]["default"]
    if isinstance(proto, bool):
        ok = isinstance(value, bool)
    elif isinstance(proto, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(proto, int) and not isinstance(value, int):
            ok = False
    elif isinstance(proto, list):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"parameter {name}={value!r} must be of the same kind as {proto!r}")
    if isinstance(proto, float):
        return float(value)
    if isinstance(proto, list):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _parameter_table() -> dict:
    table = {}
    for section in SECTIONS.values():
        for f in fields(section):
            default = f.default_factory() if callable(f.default_factory) else f.default
            table[f.name] = dict(f.metadata, default=default)
    return table


PARAMETERS = _parameter_table()
