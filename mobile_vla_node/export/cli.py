"""``vla_export``: export the policy to ONNX with a parity check, verify it, build TensorRT.

Subcommands:

* ``onnx``: write ``NAME.onnx`` (encoder) and ``NAME.step.onnx`` (LSTM + head) with metadata, run
  ``onnx.checker``, then compare ONNX Runtime (CPU) against PyTorch (fp32, CPU) on the same inputs;
* ``verify``: repeat that comparison for an existing export;
* ``tensorrt``: build TensorRT engines (`export.tensorrt`, imported only for this subcommand).

Exit codes: 0 ok, 1 unexpected failure, 2 bad arguments/inputs, 3 parity or checker failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from ..core.progress import Progress
from .parity import ATOL, default_atol

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARITY = 0, 1, 2, 3
DEFAULT_OPSET = 17
MAX_OPSET = 20  # the TorchScript exporter's highest opset in torch 2.13
CHECKPOINT_DEFAULT_PRESET = "mobile-vla-kosmos2"
EXAMPLE_COMMAND = "go to the red box"


class CliError(Exception):
    """A one-line error with an exit code (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"opset {text!r} is not an integer") from exc
    if not DEFAULT_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"opset {value} is outside {DEFAULT_OPSET}..{MAX_OPSET} "
                                         "(17 is the minimum: LayerNormalization)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset (tiny, small, mobile-vla-kosmos2, ...); "
                        "with --checkpoint: the architecture when no config JSON is beside it")
    parser.add_argument("--checkpoint", help="checkpoint file or model folder (a config.json or "
                        "<checkpoint>.json beside it is used)")
    parser.add_argument("--backbone-path", default="",
                        help="local Kosmos-2 folder (weights + tokenizer)")
    parser.add_argument("--model-config", default="",
                        help="the team's JSON training config (window, chunk, head, image "
                             "normalization, action scale); see `vla_checkpoint inspect`")
    add_layout_arguments(parser)
    from .checkpoint_cli import add_image_arguments

    add_image_arguments(parser)


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """--token-layout and --tokenizer-path (node parameters token_layout, tokenizer_path)."""
    parser.add_argument("--token-layout", default="auto",
                        choices=("auto", "robovlms_kosmos", "robovlms_patched", "package"),
                        help="token layout (default auto: from the checkpoint; "
                             "docs/CHECKPOINTS.md)")
    parser.add_argument("--tokenizer-path", default="",
                        help="the real Kosmos-2 tokenizer (tokenizer.json or folder) for the "
                             "team's checkpoints (default: --backbone-path's)")


def _camera_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera size {text!r} must be WIDTHxHEIGHT, "
                                         "e.g. 640x480") from None
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise argparse.ArgumentTypeError(f"camera size {text!r} out of range 1..4096")
    return width, height


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    """--camera-size / --camera-order: an encoder that takes the camera frame (format 2)."""
    parser.add_argument("--camera-size", type=_camera_size, default=None, metavar="WxH",
                        help="the encoder takes the camera's uint8 WxH frames and resizes them "
                             "in its graph, bit-exact with PIL (for GPU providers, TensorRT and "
                             "Triton; on a CPU the runtime's resize of a model-size export is "
                             "faster). Default: model-size input, resized by the node")
    parser.add_argument("--camera-order", choices=("rgb", "bgr"), default="rgb",
                        help="channel order of the camera frames (rgb8 / bgr8; default rgb): "
                             "a bgr camera's channels are swapped in the graph")


def _add_parity(parser: argparse.ArgumentParser, atol_help: str) -> None:
    parser.add_argument("--atol", type=_positive, help=atol_help)
    parser.add_argument("--frames", help="rosbag2 bag or image folder: real frames for parity")
    parser.add_argument("--parity-cases", type=_count, default=6,
                        help="random parity cases, and the most frames taken from --frames "
                             "(default 6)")


def build_parser(with_tensorrt: bool = False) -> tuple[argparse.ArgumentParser, str]:
    """The CLI parser; the tensorrt subcommand's options are added only when it is used.

    Returns the parser and an error text if `export.tensorrt` could not be imported.
    """
    parser = argparse.ArgumentParser(prog="vla_export", description=__doc__.split("\n")[0])
    subs = parser.add_subparsers(dest="command", required=True,
                                 metavar="{onnx,verify,tensorrt,triton}")

    onnx = subs.add_parser("onnx", help="export NAME.onnx + NAME.step.onnx and check parity")
    _add_source(onnx)
    onnx.add_argument("--output", required=True, help="encoder file DIR/NAME.onnx (the step "
                      "graph goes to DIR/NAME.step.onnx)")
    onnx.add_argument("--fp16", action="store_true", help="fp16 weights/compute (I/O unchanged)")
    add_camera_arguments(onnx)
    onnx.add_argument("--opset", type=_opset, default=DEFAULT_OPSET,
                      help=f"ONNX opset, {DEFAULT_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    _add_parity(onnx, f"max abs difference allowed (default {ATOL['fp32']:g}; "
                      f"{ATOL['fp16']:g} with --fp16)")
    onnx.set_defaults(func=cmd_onnx)

    verify = subs.add_parser("verify", help="re-run the parity check of an existing export")
    verify.add_argument("--onnx", required=True, help="the export's encoder NAME.onnx")
    _add_source(verify)
    _add_parity(verify, "max abs difference allowed (default: the export's own tolerance)")
    verify.set_defaults(func=cmd_verify)

    triton = subs.add_parser("triton", help="write a Triton model repository (encoder + step "
                             "models, config.pbtxt) and check parity")
    triton_repo = importlib.import_module(f"{__package__}.triton_repo")
    triton_repo.add_arguments(triton)
    triton.set_defaults(func=triton_repo.run)

    trt = subs.add_parser("tensorrt", help="build TensorRT engines from an ONNX export")
    trt_error = ""
    if with_tensorrt:
        try:
            builder = importlib.import_module(f"{__package__}.tensorrt")
            builder.add_arguments(trt)
            trt.set_defaults(func=builder.run)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.tensorrt":
                trt_error = ("the tensorrt subcommand is not available: "
                             "mobile_vla_node/export/tensorrt.py is missing from this install")
            else:
                trt_error = (f"the tensorrt subcommand cannot start: {exc} (TensorRT builds need "
                             "the tensorrt Python package: JetPack, or pip install tensorrt)")
        except Exception as exc:  # a broken builder must not break the other subcommands
            trt_error = (f"the tensorrt subcommand cannot start: mobile_vla_node/export/"
                         f"tensorrt.py failed to load: {type(exc).__name__}: {exc}")
    if trt_error or not with_tensorrt:
        trt.set_defaults(func=None)
    return parser, trt_error


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla_export``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_trt = bool(argv) and argv[0] == "tensorrt"
    parser, trt_error = build_parser(with_tensorrt=wants_trt)
    if wants_trt and trt_error:
        print(f"vla_export tensorrt: error: {trt_error}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"vla_export {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"vla_export {args.command}: interrupted", file=sys.stderr)
        return 130


# --- shared steps ---------------------------------------------------------------------------

def _source(args) -> tuple[str, str]:
    """(preset, checkpoint) after checking they exist; errors name the bad value."""
    from ..model.presets import PRESETS

    if not args.preset and not args.checkpoint:
        raise CliError("give --preset NAME or --checkpoint PATH")
    preset = args.preset or CHECKPOINT_DEFAULT_PRESET
    if preset not in PRESETS:
        raise CliError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}")
    checkpoint = ""
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser()
        if not path.exists():
            raise CliError(f"checkpoint {str(path)!r} does not exist")
        checkpoint = str(path)
    if args.backbone_path and not Path(args.backbone_path).expanduser().is_dir():
        raise CliError(f"backbone path {args.backbone_path!r} is not a folder")
    if args.frames and not Path(args.frames).expanduser().exists():
        raise CliError(f"frames source {args.frames!r} does not exist")
    return preset, checkpoint


def image_params(args) -> dict:
    """The image pipeline node parameters given on the command line (`add_image_arguments`)."""
    return {"image_pipeline": getattr(args, "image_pipeline", "auto"),
            "resize_filter": getattr(args, "resize_filter", ""),
            "image_size": int(getattr(args, "image_size", 0) or 0),
            "image_mean": list(getattr(args, "image_mean", ()) or ()),
            "image_std": list(getattr(args, "image_std", ()) or ())}


def load_reference(preset: str, checkpoint: str, backbone_path: str, model_config: str = "",
                   token_layout: str = "auto", tokenizer_path: str = "",
                   image: dict | None = None):
    """The PyTorch reference backend (fp32, CPU) for a preset or checkpoint.

    ``image``: image pipeline parameters (`image_params`); default auto.
    """
    from ..backends.base import BackendError
    from ..backends.torch_backend import TorchBackend
    from ..core.config import BackendConfig
    from ..model.checkpoint import CheckpointError

    try:
        cfg = BackendConfig(backend="torch", model_preset=preset, model_path=checkpoint,
                            backbone_path=backbone_path, model_config=model_config,
                            token_layout=token_layout, tokenizer_path=tokenizer_path,
                            device="cpu", precision="fp32", warmup_iters=0, **(image or {}))
        backend = TorchBackend(cfg)
        backend.load()
    except (CheckpointError, BackendError, ValueError, FileNotFoundError) as exc:
        raise CliError(f"cannot load the policy: {exc}") from exc
    return backend


def load_candidate(path: str | Path):
    """The ONNX Runtime backend (CPUExecutionProvider) for an export."""
    from ..backends.onnx_backend import OnnxBackend
    from ..core.config import BackendConfig

    backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(path),
                                        providers=["CPUExecutionProvider"], warmup_iters=0))
    backend.load()
    return backend


def parity_check(reference, candidate, args, atol: float, progress: Progress) -> tuple[list,
                                                                                          dict]:
    """Run the parity cases, print the report; return (results, summary)."""
    from . import parity

    with progress.phase("parity vs PyTorch (fp32, CPU)"):
        try:
            from ..backends.onnx_format import camera_input

            camera = camera_input(getattr(candidate, "meta", {}) or {})
            cases = parity.make_cases(reference, n_random=args.parity_cases, frames=args.frames,
                                      n_frames=max(args.parity_cases, 1), camera=camera)
        except Exception as exc:  # BagError, ValueError from frames/case building
            raise CliError(f"cannot build parity cases: {exc}") from exc
        n_frames = len(cases) - args.parity_cases
        progress.line(f"{len(cases)} cases: {args.parity_cases} random"
                      + (f", {n_frames} frames from {args.frames}" if args.frames else ""))
        results = parity.run_parity(reference, candidate, cases, atol)
    print(parity.format_report(results), flush=True)
    summary = parity.summary(results, len(cases))
    summary.update(reference="torch fp32 cpu", candidate=candidate.describe().provider,
                   frames=args.frames or "")
    return results, summary


def _check_output(output: str) -> Path:
    """The output path, after checking its name and that its folder is writable."""
    out = Path(output).expanduser()
    if out.suffix != ".onnx" or out.name.endswith(".step.onnx"):
        raise CliError(f"output {str(out)!r} must be DIR/NAME.onnx (not .step.onnx)")
    if out.is_dir():
        raise CliError(f"output {str(out)!r} is a folder; give DIR/NAME.onnx")
    existing = next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir():
        raise CliError(f"output path {str(out)!r} is not writable: {str(existing)!r} is a file, "
                       "not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".vla_export_probe_"):
            pass
    except OSError as exc:
        raise CliError(f"output path {str(out)!r} is not writable: {exc.strerror or exc}") from exc
    return out


# --- onnx -----------------------------------------------------------------------------------

def cmd_onnx(args) -> int:
    """Export both graphs, check them, write metadata, and verify parity."""
    out = _check_output(args.output)  # before any heavy import: fail fast
    preset, checkpoint = _source(args)
    from ..backends.base import BackendError
    from ..backends.onnx_format import step_file_name
    from . import onnx as ox

    atol = args.atol or default_atol("fp16" if args.fp16 else "fp32")
    progress = Progress()
    what = f"checkpoint {checkpoint!r}" if checkpoint else f"preset {preset!r}"
    with progress.phase(f"loading policy ({what})"):
        reference = load_reference(preset, checkpoint, args.backbone_path,
                                   getattr(args, "model_config", ""),
                                   getattr(args, "token_layout", "auto"),
                                   getattr(args, "tokenizer_path", ""), image_params(args))
    policy = reference.model
    progress.line(f"weights: {reference.info.model}")
    step_path = out.with_name(step_file_name(out))
    example_ids = reference.tokenizer.encode(EXAMPLE_COMMAND)
    with tempfile.TemporaryDirectory(prefix="vla_export_") as tmp:
        preprocess = ox.camera_preprocess(policy, getattr(args, "camera_size", None),
                                          getattr(args, "camera_order", "rgb"))
        with progress.phase(f"exporting encoder (opset {args.opset})"
                            + (" with the camera-frame resize" if preprocess else "")):
            encoder = ox.export_encoder(policy, example_ids, args.opset, Path(tmp), preprocess)
        with progress.phase(f"exporting step (opset {args.opset})"):
            step = ox.export_step(policy, args.opset, Path(tmp))
    if args.fp16:
        with progress.phase("fp16 conversion"):
            encoder, step = ox.to_fp16(encoder), ox.to_fp16(step)
    meta = _metadata(reference, args, preset, checkpoint, atol, ox.max_text_len(policy),
                     ox.weight_bytes(encoder) > ox.EXTERNAL_DATA_BYTES, preprocess)
    with progress.phase(f"writing {out} and {step_path.name}"):
        ox.set_metadata(encoder, dict(meta, role="encoder", step_file=step_path.name))
        ox.set_metadata(step, dict(meta, role="step"))
        ox.save_model(encoder, out)
        ox.save_model(step, step_path)
    del encoder, step
    with progress.phase("onnx.checker"):
        for path in (out, step_path):
            try:
                ox.check(path)
            except Exception as exc:  # onnx.checker.ValidationError and shape-inference errors
                raise CliError(f"onnx.checker rejected {path}: {exc}", EXIT_PARITY) from exc
    try:
        candidate = load_candidate(out)
    except BackendError as exc:
        raise CliError(f"ONNX Runtime cannot run the export: {exc}", EXIT_PARITY) from exc
    results, summary = parity_check(reference, candidate, args, atol, progress)
    record = json.dumps(summary)
    for path in (out, step_path):
        ox.update_metadata(path, {"parity": record})
    print(_figures(results))
    if not summary["passed"]:
        print(f"vla_export onnx: error: parity FAILED (atol {atol:g}); the export was written "
              f"but marked as failed in its metadata: {out}", file=sys.stderr)
        return EXIT_PARITY
    progress.line(f"wrote {out} and {step_path} (parity passed, atol {atol:g})")
    return EXIT_OK


def _metadata(reference, args, preset: str, checkpoint: str, atol: float,
              max_text_len: int | None, external: bool, preprocess: dict | None = None) -> dict:
    """The string-valued ``mobile_vla.*`` props common to both files."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    from ..backends.onnx_format import CAMERA_FORMAT_VERSION, FORMAT_VERSION
    from . import onnx as ox

    config = reference.model.config
    export = {
        "opset": args.opset, "fp16": bool(args.fp16), "precision": "fp16" if args.fp16 else "fp32",
        "exporter": ox.EXPORTER, "torch": torch.__version__,
        "transformers": transformers.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "fp16_fp32_ops": list(ox.FP16_KEEP_FP32_OPS) if args.fp16 else [],
        "source": {"preset": preset, "checkpoint": checkpoint,
                   "model_config": getattr(args, "model_config", ""),
                   "backbone_path": args.backbone_path, "weights": reference.info.model},
        "tolerances": {"atol": atol, "reference": "torch fp32 cpu"},
        "max_text_len": max_text_len, "external_data": external,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    normalization = {
        "mean": list(config.image_mean), "std": list(config.image_std),
        "image_norm": config.image_norm, "resize_filter": config.resize_filter,
        "channel_order_note": "input `image` is uint8 (1, S, S, 3), already resized to S (PIL "
                              "filter: resize_filter) and in "
                              "the channel order the policy was trained with (node parameter "
                              "channel_order); (x / 255 - mean) / std runs inside the graph",
    }
    out = {
        "format": CAMERA_FORMAT_VERSION if preprocess else FORMAT_VERSION,
        "model_spec": json.dumps(asdict(reference.spec)),
        "policy_config": json.dumps(config.to_dict()),
        "tokenizer": reference.tokenizer.to_json(),
        "normalization": json.dumps(normalization),
        "export": json.dumps(export),
        "parity": json.dumps({"passed": None, "note": "not measured yet"}),
    }
    if preprocess:
        out["preprocess"] = json.dumps(preprocess)
    return out


def _figures(results: list) -> str:
    """One machine-greppable line per output."""
    return "\n".join(f"parity {r.output}: max_abs={r.max_abs:.3e} mean_abs={r.mean_abs:.3e} "
                     f"cosine={r.cosine:.9f} atol={r.atol:g} {'PASS' if r.passed else 'FAIL'}"
                     for r in results)


# --- verify ---------------------------------------------------------------------------------

def cmd_verify(args) -> int:
    """Re-run checker and parity of an existing export against PyTorch."""
    from ..backends.base import BackendError
    from ..backends.onnx_format import (
        ExportFormatError,
        export_precision,
        model_spec_from_metadata,
        read_export_metadata,
    )
    from . import onnx as ox

    path = Path(args.onnx).expanduser()
    if not path.is_file():
        raise CliError(f"ONNX file {str(path)!r} does not exist")
    preset, checkpoint = _source(args)
    progress = Progress()
    with progress.phase(f"reading {path}"):
        try:
            meta = read_export_metadata(path)
        except ExportFormatError as exc:
            raise CliError(f"verify FAILED: {exc}", EXIT_PARITY) from exc
    with progress.phase("onnx.checker"):
        for file in (meta["encoder_path"], meta["step_path"]):
            try:
                ox.check(Path(file))
            except Exception as exc:  # onnx.checker.ValidationError and shape-inference errors
                raise CliError(f"verify FAILED: onnx.checker rejected {file}: {exc}",
                               EXIT_PARITY) from exc
    what = f"checkpoint {checkpoint!r}" if checkpoint else f"preset {preset!r}"
    with progress.phase(f"loading policy ({what})"):
        reference = load_reference(preset, checkpoint, args.backbone_path,
                                   getattr(args, "model_config", ""),
                                   getattr(args, "token_layout", "auto"),
                                   getattr(args, "tokenizer_path", ""), image_params(args))
    exported = model_spec_from_metadata(meta)
    if exported != reference.spec:
        diff = {k: (v, getattr(reference.spec, k)) for k, v in asdict(exported).items()
                if v != getattr(reference.spec, k)}
        raise CliError(f"verify FAILED: the export is a different model than {what}: "
                       f"(export, reference) differ in {diff}", EXIT_PARITY)
    with progress.phase("opening ONNX Runtime sessions"):
        try:
            candidate = load_candidate(path)
        except BackendError as exc:
            raise CliError(f"verify FAILED: {exc}", EXIT_PARITY) from exc
    default = (meta["export"].get("tolerances", {}).get("atol")
               or default_atol(export_precision(meta)))
    atol = args.atol or float(default)
    try:
        results, _ = parity_check(reference, candidate, args, atol, progress)
    except CliError:
        raise
    except Exception as exc:  # onnxruntime errors from a damaged graph
        raise CliError(f"verify FAILED: running the export failed: {exc}", EXIT_PARITY) from exc
    print(_figures(results))
    if not all(r.passed for r in results):
        print(f"vla_export verify: error: parity FAILED for {path} (atol {atol:g})",
              file=sys.stderr)
        return EXIT_PARITY
    progress.line(f"{path}: parity passed (atol {atol:g})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
