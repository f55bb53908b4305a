"""``vla_export tensorrt``: build the encoder and step TensorRT engines from an ONNX export.

``vla_export tensorrt --onnx DIR/NAME.onnx --output DIR/NAME.engine --precision fp16`` builds
``NAME.engine`` (the per-frame encoder, from ``NAME.onnx``) and ``NAME.step.engine`` (LSTM + head,
from the step file named in the ONNX metadata), writes the manifest ``NAME.engine.json``, and then
checks parity against ONNX Runtime on the CPU.

Optimization profiles are fixed at build time: ``text_len`` from 1 (opt ~24) to ``--max-text-len``
(default 64; exactly ``pad_to`` for models that pad prompts), ``window`` from 1 to the model's
``window_size`` (opt = max, the steady state). The builder's timing cache (``--timing-cache``,
default ``trt_timing.cache`` beside the engine) is reused across builds.

int8 calibrates the encoder with frames from ``--calib`` (a rosbag2 bag or an image folder) and a
few prompts, through an entropy calibrator whose table is cached in ``--calib-cache``. The step
engine (an LSTM and an MLP, a few MB of weights and well under a millisecond) stays fp16 in int8
builds: int8 would save nothing measurable there and LSTM state/tanh outputs quantize badly.

Exit codes: 0 built and parity passed; 1 build failed; 2 bad arguments, or TensorRT / CUDA
missing; 3 parity failed (the message names the output with the largest error).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import BackendError
from ..backends.trt_manifest import (
    DEFAULT_CALIB_BATCHES,
    DEFAULT_WORKSPACE_MB,
    PRECISIONS,
    EngineManifest,
    ManifestError,
    create_manifest,
    default_calib_cache,
    default_timing_cache,
    make_profiles,
    manifest_path,
    normalize_metadata,
    step_engine_path,
    text_len_limit,
    validate_precision,
    validate_profiles,
)
from ..core.progress import Progress
from ..replay.frames import BagError
from .calibration import CalibrationError, calibrator_for
from .parity import TENSORRT_ATOL, default_atol

LOG = logging.getLogger(__name__)
EXIT_OK, EXIT_BUILD_FAILED, EXIT_UNAVAILABLE, EXIT_PARITY = 0, 1, 2, 3


class BuildError(RuntimeError):
    """A build that failed: unreadable ONNX, TensorRT parser or builder error."""


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vla_export tensorrt`` options to ``parser``."""
    parser.add_argument("--onnx", required=True, type=Path,
                        help="encoder NAME.onnx written by `vla_export onnx` (NAME.step.onnx "
                             "beside it)")
    parser.add_argument("--output", type=Path, default=None,
                        help="FILE.engine to write (FILE.step.engine and FILE.engine.json beside "
                             "it); default: the ONNX path with .engine")
    parser.add_argument("--precision", default="fp16", choices=PRECISIONS,
                        help="engine precision (int8 needs --calib or an existing --calib-cache)")
    parser.add_argument("--calib", default=None,
                        help="rosbag2 bag or image folder with calibration frames (int8); also "
                             "used for the parity check")
    parser.add_argument("--calib-cache", default=None,
                        help="int8 calibration cache (default FILE.calib.cache); reused when "
                             "--calib is not given")
    parser.add_argument("--calib-batches", type=int, default=DEFAULT_CALIB_BATCHES,
                        help="calibration batches (frames) to use at most")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB,
                        help="builder workspace memory limit in MiB")
    parser.add_argument("--timing-cache", default=None,
                        help="builder timing cache, reused across builds (default "
                             "trt_timing.cache beside the engine)")
    parser.add_argument("--max-text-len", type=int, default=None,
                        help="longest prompt (ids) the encoder engine accepts (default 64, or "
                             "the model's pad_to)")
    parser.add_argument("--atol", type=float, default=None,
                        help="parity tolerance, max abs error (default " + ", ".join(
                            f"{p} {TENSORRT_ATOL[p]:g}" for p in PRECISIONS) + ")")


@dataclass
class BuildOptions:
    """Validated ``vla_export tensorrt`` settings."""

    onnx: Path
    output: Path
    precision: str = "fp16"
    calib: str | None = None
    calib_cache: Path | None = None
    calib_batches: int = DEFAULT_CALIB_BATCHES
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None
    max_text_len: int | None = None
    atol: float | None = None

    def __post_init__(self):
        self.onnx = Path(self.onnx).expanduser()
        if not self.onnx.is_file():
            raise ManifestError(f"--onnx {str(self.onnx)!r} does not exist; export it with "
                                f"vla_export onnx --output {self.onnx}")
        self.output = Path(self.output).expanduser() if self.output else \
            self.onnx.with_suffix(".engine")
        if self.output.suffix != ".engine":
            raise ManifestError(f"--output {str(self.output)!r} must end in .engine")
        if self.precision == "int8" and self.calib_cache is None:
            self.calib_cache = default_calib_cache(self.output)
        self.calib_cache = Path(self.calib_cache) if self.calib_cache else None
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else \
            default_timing_cache(self.output)
        validate_precision(self.precision, self.calib, self.calib_cache)
        if self.calib_batches < 1:
            raise ManifestError(f"--calib-batches {self.calib_batches} must be >= 1")
        if self.workspace_mb < 64:
            raise ManifestError(f"--workspace-mb {self.workspace_mb} is too small (>= 64 MiB)")
        if self.atol is not None and not self.atol > 0:
            raise ManifestError(f"--atol {self.atol} must be > 0")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildOptions:
        """From parsed command-line arguments."""
        return cls(onnx=args.onnx, output=args.output, precision=args.precision,
                   calib=args.calib, calib_cache=args.calib_cache,
                   calib_batches=args.calib_batches, workspace_mb=args.workspace_mb,
                   timing_cache=args.timing_cache, max_text_len=args.max_text_len,
                   atol=args.atol)

    @property
    def tolerance(self) -> float:
        """Parity tolerance: ``--atol`` or the precision's default."""
        return self.atol if self.atol is not None else default_atol(self.precision, "tensorrt")

    def build_args(self) -> dict:
        """What the manifest records to print the exact rebuild command."""
        return {"output": str(self.output.resolve()),
                "calib": str(Path(self.calib).resolve()) if self.calib else None,
                "calib_cache": str(self.calib_cache.resolve()) if self.calib_cache else None,
                "calib_batches": self.calib_batches, "workspace_mb": self.workspace_mb,
                "timing_cache": str(self.timing_cache.resolve()),
                "max_text_len": self.max_text_len, "atol": self.atol}


def run(args: argparse.Namespace) -> int:
    """Build, write the manifest, check parity; return the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        options = BuildOptions.from_args(args)
        manifest = build_engines(options, log=_print)
    except (ManifestError, BackendError, BagError) as exc:
        print(f"vla_export tensorrt: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BuildError as exc:
        print(f"vla_export tensorrt: build failed: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    return check_parity(options, manifest, log=_print)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m mobile_vla_node.export.tensorrt``)."""
    parser = argparse.ArgumentParser(prog="vla_export tensorrt", description=__doc__.split(
        "\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _print(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------- progress


class BuildProgress(Progress):
    """TensorRT builder progress as `Progress` lines (TensorRT calls it from several threads).

    Phase starts and ends are printed for the two outermost levels; steps of any phase at most
    every ``interval_s`` seconds. ``cancel()`` makes the next step report ask TensorRT to stop.
    """

    def __init__(self, label: str, emit=_print, clock=time.monotonic, interval_s: float = 2.0,
                 max_depth: int = 2):
        super().__init__(label, emit, clock)
        self.interval_s, self.max_depth = interval_s, max_depth
        self.phases: dict[str, tuple[str | None, int]] = {}
        self.cancelled = False
        self._last_step = -float("inf")

    def _path(self, name: str) -> list[str]:
        path, seen = [name], {name}
        parent = self.phases.get(name, (None, 0))[0]
        while parent and parent not in seen:
            path.insert(0, parent)
            seen.add(parent)
            parent = self.phases.get(parent, (None, 0))[0]
        return path

    def message(self, text: str) -> None:
        """A free-form progress line."""
        self.line(text)

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        """TensorRT entered a phase of ``num_steps`` steps."""
        with self._lock:
            self.phases[phase_name] = (parent_phase, int(num_steps))
            path = self._path(phase_name)
            if len(path) <= self.max_depth:
                self.line(f"{' > '.join(path)} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """A step finished; return False to cancel the build."""
        with self._lock:
            now = self.clock()
            if now - self._last_step >= self.interval_s:
                self._last_step = now
                steps = self.phases.get(phase_name, (None, 0))[1]
                self.line(f"{' > '.join(self._path(phase_name))} {step + 1}/{steps}")
            return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        """TensorRT left a phase."""
        with self._lock:
            path = self._path(phase_name)
            if len(path) <= self.max_depth:
                self.line(f"{' > '.join(path)} done")
            self.phases.pop(phase_name, None)

    def cancel(self) -> None:
        """Ask TensorRT to stop at the next step."""
        self.cancelled = True


def make_progress_monitor(trt, progress: BuildProgress):
    """A ``trt.IProgressMonitor`` forwarding to ``progress`` (TensorRT >= 10), else None."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return _Monitor()


@contextlib.contextmanager
def _heartbeat(progress: BuildProgress, period_s: float = 30.0):
    """Elapsed-time lines while a build without a progress monitor runs."""
    done = threading.Event()

    def beat():
        while not done.wait(period_s):
            progress.message("still building")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _cancel_on_interrupt(progress: BuildProgress):
    """Ctrl-C asks TensorRT to stop at its next progress step instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        progress.cancel()
        progress.message("interrupted: cancelling the build at TensorRT's next step")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- build


def read_metadata(onnx: Path) -> dict:
    """Normalized export metadata of an export's encoder file (its step file checked too)."""
    from ..backends.onnx_format import read_export_metadata

    try:
        meta = normalize_metadata(read_export_metadata(onnx))
    except ManifestError as exc:
        raise BuildError(f"{onnx}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - ExportFormatError, protobuf errors: unusable file
        raise BuildError(f"cannot use {str(onnx)!r}: {exc}") from exc
    if meta.get("role") != "encoder":
        raise BuildError(f"{str(onnx)!r} has mobile_vla.role={meta.get('role')!r}; pass the "
                         "encoder NAME.onnx written by vla_export onnx")
    return meta


def _network_inputs(network) -> dict:
    return {network.get_input(i).name: network.get_input(i)
            for i in range(network.num_inputs)}


def _check_inputs(inputs: dict, profile: dict, label: str) -> None:
    if set(inputs) != set(profile):
        raise BuildError(f"{label} ONNX inputs {sorted(inputs)} are not the exported-model "
                         f"contract's {sorted(profile)}")
    for name, tensor in inputs.items():
        shape, rng = tuple(tensor.shape), profile[name]
        bad = len(shape) != len(rng["max"]) or any(
            d >= 0 and not lo == d == hi for d, lo, hi in zip(shape, rng["min"], rng["max"],
                                                              strict=False))
        if bad:
            raise BuildError(f"{label} ONNX input {name!r} has shape {list(shape)}, which the "
                             f"profile min {rng['min']} / max {rng['max']} does not fit")


def _load_timing_cache(config, path: Path, log):
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:  # noqa: BLE001 - a damaged cache only costs build time
        log(f"timing cache {path} is unreadable ({exc}); starting a fresh one")
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        log(f"timing cache {path} was made by another TensorRT/GPU; starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return bool(data)


def _write_atomic(path: Path, data) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    tmp.replace(path)
    return path.stat().st_size


def pin_resize_fp32(trt, network) -> int:
    """Keep a camera-input encoder's in-graph resize in fp32 in an fp16 build; layers pinned.

    The resize's banded matmuls are exact in float32 and TF32, not in fp16, which an FP16
    builder may pick for any layer. Its layers carry the ONNX node names ``.../pil_resize/...``
    (`core.resize.GRAPH_SCOPE`); each of them whose outputs are all floating point gets
    ``precision`` and output types float32 (the caller sets OBEY_PRECISION_CONSTRAINTS).
    Returns the number pinned: 0 for graphs without it (model-size inputs).
    """
    from ..core.resize import GRAPH_SCOPE

    num_layers = getattr(network, "num_layers", 0)
    if not num_layers:
        return 0
    marker = f"/{GRAPH_SCOPE}/"
    floats = {trt.DataType.FLOAT, getattr(trt.DataType, "HALF", trt.DataType.FLOAT)}
    pinned = 0
    for i in range(num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if marker not in (layer.name or "") or not outputs or not all(
                t is not None and t.dtype in floats for t in outputs):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(len(outputs)):
            layer.set_output_type(j, trt.DataType.FLOAT)
        pinned += 1
    return pinned


def build_engine(trt, logger, onnx: Path, engine: Path, *, precision: str, profile: dict,
                 workspace_mb: int, timing_cache: Path, progress: BuildProgress,
                 calibration=None) -> dict:
    """Parse one ONNX file and build, serialize and write its engine; return build figures.

    ``calibration`` (int8 only) is called with the parsed network's inputs and returns
    ``(calibrator, {input: shape})``, the shapes forming the calibration profile.
    """
    started = time.monotonic()
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress.message(f"parsing {onnx}")
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT cannot parse {onnx}: {' | '.join(errors) or 'unknown error'}")
    _check_inputs(_network_inputs(network), profile, progress.label)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    flag_names = []
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 (parity at 1e-3)
    else:
        if not getattr(builder, "platform_has_fast_fp16", True):
            progress.message("this GPU has no fast fp16; the engine may be slow")
        config.set_flag(trt.BuilderFlag.FP16)
        flag_names.append("FP16")
        pinned = pin_resize_fp32(trt, network)
        if pinned:   # the in-graph resize of a camera-input export stays fp32 (exact)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            flag_names.append(f"OBEY_PRECISION_CONSTRAINTS(resize: {pinned} layers fp32)")
            progress.message(f"in-graph resize: {pinned} layers pinned to fp32")
    opt = builder.create_optimization_profile()
    for name, rng in profile.items():
        opt.set_shape(name, rng["min"], rng["opt"], rng["max"])
    config.add_optimization_profile(opt)
    if precision == "int8":
        calibrator, shapes = calibration(_network_inputs(network))
        config.set_flag(trt.BuilderFlag.INT8)
        flag_names.append("INT8")
        config.int8_calibrator = calibrator
        calib_profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            calib_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
    reused = _load_timing_cache(config, timing_cache, progress.message)
    flag_names.append("TIMING_CACHE(reused)" if reused else "TIMING_CACHE(new)")
    monitor = make_progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    progress.message(f"building {precision} engine (workspace {workspace_mb} MiB)")
    beat = contextlib.nullcontext() if monitor is not None else _heartbeat(progress)
    with beat, _cancel_on_interrupt(progress):
        serialized = builder.build_serialized_network(network, config)
    if progress.cancelled:
        raise KeyboardInterrupt
    if serialized is None:
        raise BuildError(f"TensorRT could not build the {progress.label} engine from {onnx} "
                         "(see the TensorRT errors above; a larger --workspace-mb may help)")
    size = _write_atomic(engine, serialized)
    _write_atomic(timing_cache, config.get_timing_cache().serialize())
    seconds = time.monotonic() - started
    progress.message(f"wrote {engine} ({size / 1e6:.1f} MB) in {seconds:.1f} s")
    return {"seconds": seconds, "bytes": size, "flags": flag_names, "precision": precision}


def build_engines(options: BuildOptions, log=_print) -> EngineManifest:
    """Build both engines and write the manifest (TensorRT and a CUDA device required)."""
    from ..backends.tensorrt_backend import (
        CudaRuntime,
        import_cudart,
        import_tensorrt,
        make_logger,
        runtime_facts,
    )

    trt = import_tensorrt()
    cuda = CudaRuntime(import_cudart(), 0)
    facts = runtime_facts(trt, cuda)
    meta = read_metadata(options.onnx)
    step_onnx = Path(meta.get("step_path") or options.onnx.parent / str(meta.get("step_file")))
    if not step_onnx.is_file():
        raise BuildError(f"step ONNX {str(step_onnx)!r} (mobile_vla.step_file of {options.onnx}) "
                         "does not exist; keep NAME.step.onnx beside NAME.onnx")
    spec, policy = meta["model_spec"], meta.get("policy_config") or {}
    from ..backends.onnx_format import camera_input

    camera = camera_input(meta)
    if camera is not None and options.precision == "int8":
        raise BuildError("int8 calibration of a camera-input export (--camera-size) is not "
                         "supported: build fp16/fp32, or int8 from an export without "
                         "--camera-size")
    profiles = make_profiles(spec, policy, options.max_text_len, camera=camera)
    limit = text_len_limit(policy, meta["tokenizer"], meta.get("export"))
    validate_profiles(profiles, int(spec["window_size"]), limit)
    text_max = profiles["encoder"]["text_ids"]["max"][1]
    step_precision = "fp16" if options.precision == "int8" else options.precision
    log(f"TensorRT {facts['tensorrt_version']} on {facts['gpu_name']} (compute "
        f"{facts['compute_capability']}): encoder {options.precision}, step {step_precision}"
        + (" (int8 builds keep the tiny step engine in fp16)" if options.precision == "int8"
           else ""))
    logger = make_logger(trt)
    started = time.monotonic()
    results, made = {}, []

    def calibration(inputs):
        try:
            made.append(calibrator_for(trt, cuda, options, meta, text_max, log, inputs))
        except CalibrationError as exc:
            raise BuildError(str(exc)) from exc
        return made[-1]

    try:
        try:
            results["encoder"] = build_engine(
                trt, logger, options.onnx, options.output, precision=options.precision,
                profile=profiles["encoder"], workspace_mb=options.workspace_mb,
                timing_cache=options.timing_cache, progress=BuildProgress("encoder", emit=log),
                calibration=calibration if options.precision == "int8" else None)
        except BuildError as exc:
            error = made and made[0][0].error
            if error:
                raise BuildError(f"int8 calibration failed: {error}") from exc
            raise
        results["step"] = build_engine(
            trt, logger, step_onnx, step_engine_path(options.output), precision=step_precision,
            profile=profiles["step"], workspace_mb=options.workspace_mb,
            timing_cache=options.timing_cache, progress=BuildProgress("step", emit=log))
    finally:
        for calibrator, _ in made:
            calibrator.free()
    total = time.monotonic() - started
    manifest = create_manifest(
        facts=facts, precision=options.precision, engine=options.output,
        encoder_onnx=options.onnx, step_onnx=step_onnx, profiles=profiles,
        workspace_mb=options.workspace_mb, build_time_s=total,
        builder_flags={role: r["flags"] for role, r in results.items()}, metadata=meta,
        step_precision=step_precision, build_args=options.build_args())
    manifest.save(manifest_path(options.output))
    log(summary(manifest, options, results))
    return manifest


def summary(manifest: EngineManifest, options: BuildOptions, results: dict) -> str:
    """The final build summary."""
    enc, step = manifest.profiles["encoder"]["text_ids"], manifest.profiles["step"]["features"]
    rows = [("encoder", options.output, manifest.precision,
             f"text_len {enc['min'][1]}/{enc['opt'][1]}/{enc['max'][1]}"),
            ("step", step_engine_path(options.output), manifest.step_precision,
             f"window {step['min'][1]}/{step['opt'][1]}/{step['max'][1]}")]
    lines = [f"built in {manifest.build_time_s:.1f} s with TensorRT {manifest.tensorrt_version} "
             f"on {manifest.gpu_name} (compute {manifest.compute_capability}), workspace "
             f"{manifest.workspace_mb} MiB"]
    for role, path, precision, shape in rows:
        r = results[role]
        lines.append(f"  {role:<8} {str(path):<40} {precision:<5} {r['bytes'] / 1e6:9.1f} MB "
                     f"{r['seconds']:7.1f} s  {shape}")
    lines.append(f"  manifest {manifest_path(options.output)}")
    lines.append(f"  timing cache {options.timing_cache}")
    if options.precision == "int8":
        lines.append(f"  calibration cache {options.calib_cache}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- parity


def check_parity(options: BuildOptions, manifest: EngineManifest, log=_print) -> int:
    """Compare the engines with ONNX Runtime (CPU); record the result in the manifest."""
    from ..backends import backend_class
    from ..core.config import BackendConfig

    atol = options.tolerance
    backends = []
    try:
        from .parity import format_report, make_cases, run_parity

        reference = backend_class("onnx")(BackendConfig(
            backend="onnx", model_path=str(options.onnx), providers=["CPUExecutionProvider"]))
        backends.append(reference)
        reference.load()
        candidate = backend_class("tensorrt")(BackendConfig(
            backend="tensorrt", model_path=str(options.output), device="cuda:0"))
        backends.append(candidate)
        candidate.load()
        from ..backends.onnx_format import camera_input

        cases = make_cases(reference, frames=options.calib,
                           camera=camera_input(getattr(reference, "meta", None) or {}))
        results = run_parity(reference, candidate, cases, atol)
    except (BackendError, BagError, ImportError) as exc:
        print(f"vla_export tensorrt: the engines were built but the parity check could not run: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    finally:
        for backend in backends:
            backend.close()
    log(format_report(results))
    worst = max(results, key=lambda r: r.max_abs)
    passed = all(r.passed for r in results)
    manifest.parity = {"passed": passed, "atol": atol, "cases": len(cases),
                       "max_abs": {r.output: r.max_abs for r in results}}
    manifest.save(manifest_path(options.output))
    if not passed:
        failed = max((r for r in results if not r.passed), key=lambda r: r.max_abs)
        print(f"vla_export tensorrt: parity FAILED at {options.precision}: largest error in "
              f"output {failed.output!r}: max abs {failed.max_abs:.3g} > atol {atol:g} (the "
              "engines were written and the manifest records the failure); try a higher "
              "precision, or --atol if this error is acceptable", file=sys.stderr)
        return EXIT_PARITY
    log(f"parity passed at atol {atol:g} over {len(cases)} cases (largest error: "
        f"{worst.output!r} {worst.max_abs:.3g})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
