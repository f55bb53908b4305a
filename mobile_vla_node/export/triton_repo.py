"""``vla_export triton``: write a Triton Inference Server model repository for the policy.

``vla_export triton --preset tiny --output REPO`` (or ``--checkpoint PATH``) writes::

    REPO/NAME_encoder/config.pbtxt   uint8 image (B, S, S, 3) + int64 ids (B, L) -> feature (B, D)
    REPO/NAME_encoder/1/model.onnx
    REPO/NAME_step/config.pbtxt      float32 window (B, T, D) -> actions (B, chunk, action_dim)
    REPO/NAME_step/1/model.onnx
    [REPO/NAME_trt_encoder, REPO/NAME_trt_step: TensorRT plans, with --tensorrt PRECISION]

The graphs are the two halves of the ``vla_export onnx`` contract, traced again with a dynamic
batch dimension first (Triton's dynamic batcher stacks requests on axis 0); the step graph starts
its LSTM from a zero state inside the graph, so it has one input. Parity against PyTorch is
checked at batch 1 and at a full batch (every row against its own PyTorch run) before anything
is written, and recorded in the configs. The encoder's ``config.pbtxt`` carries the model spec,
tokenizer, normalization and export record as ``mobile_vla.*`` parameters: the robot's
``backend: triton`` reads them from the server and needs no model files.

Each config has dynamic batching (``--max-batch``, ``--queue-delay-us``; queued requests may be
given a per-request timeout, which the client sets to its step deadline), an instance group
(``--instance-kind gpu|cpu``, ``--instances``) and keeps one version loaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..backends.triton_backend import FORMAT_VERSION, PARAM_PREFIX, model_names, output_width

DEFAULT_NAME = "mobile_vla"
DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 2000
ATOL = {False: 1e-4, True: 1e-2}
TYPES = {np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.int64): "TYPE_INT64",
         np.dtype(np.float32): "TYPE_FP32"}


def serving_io(spec, camera: dict | None = None) -> dict:
    """``{role: (inputs, outputs)}`` with ``{name: (dtype, dims without batch)}`` each.

    ``camera`` (a camera-input encoder's ``preprocess`` record): ``image`` is the camera frame.
    """
    s = spec
    image = [s.image_size, s.image_size, 3]
    if camera is not None:
        image = [int(camera["camera_size"][1]), int(camera["camera_size"][0]), 3]
    return {
        "encoder": ({"image": ("TYPE_UINT8", image),
                     "text_ids": ("TYPE_INT64", [-1])},
                    {"feature": ("TYPE_FP32", [s.feature_dim])}),
        "step": ({"features": ("TYPE_FP32", [-1, s.feature_dim])},
                 {"actions": ("TYPE_FP32", [s.chunk, output_width(s)])}),
    }


def pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 kept as is)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def model_config(name: str, *, inputs: dict, outputs: dict, max_batch: int, backend: str = "",
                 platform: str = "", instance_kind: str = "KIND_GPU", instances: int = 1,
                 gpus: list | None = None, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 parameters: dict | None = None) -> str:
    """One ``config.pbtxt``; ``parameters`` become ``mobile_vla.*`` string parameters."""
    lines = [f"name: {pbtxt_string(name)}"]
    if backend:
        lines.append(f"backend: {pbtxt_string(backend)}")
    if platform:
        lines.append(f"platform: {pbtxt_string(platform)}")
    lines.append(f"max_batch_size: {int(max_batch)}")

    def tensors(kind: str, table: dict) -> None:
        items = [f"  {{ name: {pbtxt_string(n)} data_type: {t} dims: [ "
                 f"{', '.join(str(d) for d in dims)} ] }}" for n, (t, dims) in table.items()]
        lines.append(f"{kind} [\n" + ",\n".join(items) + "\n]")

    tensors("input", inputs)
    tensors("output", outputs)
    if max_batch > 0:
        lines.append("dynamic_batching {\n"
                     f"  max_queue_delay_microseconds: {int(queue_delay_us)}\n"
                     "  default_queue_policy { timeout_action: REJECT "
                     "allow_timeout_override: true }\n}")
    group = f"count: {int(instances)} kind: {instance_kind}"
    if gpus and instance_kind == "KIND_GPU":
        group += f" gpus: [ {', '.join(str(g) for g in gpus)} ]"
    lines.append(f"instance_group [ {{ {group} }} ]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {pbtxt_string(PARAM_PREFIX + key)} "
                     f"value: {{ string_value: {pbtxt_string(str(value))} }} }}")
    return "\n".join(lines) + "\n"


# --- graphs ---------------------------------------------------------------------------------

def export_graphs(policy, example_ids, opset: int, workdir: Path, fp16: bool,
                  preprocess: dict | None = None):
    """Trace the batched encoder and step graphs; return two ``onnx.ModelProto``.

    ``preprocess`` (`onnx.camera_preprocess`): the encoder takes camera frames and resizes them
    in-graph (PIL's tables, bit-exact), as `vla_export onnx --camera-size` does.
    """
    import onnx
    import torch
    from torch import nn

    from . import onnx as ox

    class ServeEncoder(nn.Module):
        """(B, S, S, 3) uint8 (camera input: (B, H, W, 3)) + (B, L) int64 -> (B, D) float32."""

        def __init__(self, p, swap: bool):
            super().__init__()
            self.p, self.swap = p, swap

        def forward(self, image, text_ids):
            if self.swap:
                image = image.index_select(3, torch.tensor([2, 1, 0]))
            return self.p.encode_frame(image, text_ids).float()

    class ServeStep(nn.Module):
        """(B, T, D) window -> (B, chunk, action_dim), LSTM from a zero state."""

        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, features):
            shape = (self.p.config.lstm_layers, features.shape[0], self.p.config.lstm_hidden)
            h0 = torch.zeros(shape, dtype=features.dtype, device=features.device)
            return self.p.decode(features, h0, torch.zeros_like(h0))[0].float()

    size = policy.config.image_size
    shape, swap = (size, size), False
    if preprocess is not None:
        shape = (preprocess["camera_size"][1], preprocess["camera_size"][0])
        swap = preprocess["camera_order"] != preprocess["channel_order"]
    ids = torch.as_tensor(example_ids, dtype=torch.long).reshape(1, -1).repeat(2, 1)
    image = torch.zeros((2, *shape, 3), dtype=torch.uint8)
    enc_path, step_path = workdir / "encoder.onnx", workdir / "step.onnx"
    ox._quiet_export(ServeEncoder(policy, swap), (image, ids), enc_path, opset,
                     ["image", "text_ids"], ["feature"],
                     {"image": {0: "batch"}, "text_ids": {0: "batch", 1: "text_len"},
                      "feature": {0: "batch"}})
    gen = torch.Generator().manual_seed(0)
    window = torch.randn((2, policy.config.window_size, policy.feature_dim), generator=gen)
    ox._quiet_export(ServeStep(policy), (window,), step_path, opset, ["features"], ["actions"],
                     {"features": {0: "batch", 1: "window"}, "actions": {0: "batch"}})
    encoder, step = onnx.load(str(enc_path)), onnx.load(str(step_path))
    if fp16:
        encoder, step = ox.to_fp16(encoder), ox.to_fp16(step)
    return encoder, step


def batched_parity(reference, encoder: Path, step: Path, batch: int, atol: float,
                   camera: dict | None = None) -> dict:
    """ONNX Runtime (CPU) on the written graphs vs PyTorch, row by row, at batch 1 and ``batch``.

    Returns ``{"passed", "max_abs": {"feature", "actions"}, "atol", "batches"}``. A camera-input
    encoder gets camera frames; PyTorch gets them resized by PIL.
    """
    import onnxruntime as ort

    from ..core.preprocess import to_model_input

    spec = reference.spec
    enc = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    stp = ort.InferenceSession(str(step), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = {"feature": 0.0, "actions": 0.0}
    shape, swap = (spec.image_size, spec.image_size), "rgb"
    if camera is not None:
        shape = (camera["camera_size"][1], camera["camera_size"][0])
        swap = "bgr" if camera["camera_order"] != camera["channel_order"] else "rgb"
    for b in sorted({1, batch}):
        images = rng.integers(0, 256, (b, *shape, 3), dtype=np.uint8)
        for text in ("go to the red box", "turn left"):
            ids = np.asarray(reference.tokenizer.encode(text), np.int64)
            got = enc.run(None, {"image": images, "text_ids": np.repeat(ids[None], b, 0)})[0]
            for row in range(b):
                image = images[row] if camera is None else to_model_input(
                    images[row], spec.image_size, swap, camera["resize_filter"])
                want = reference.encode(image, ids)
                worst["feature"] = max(worst["feature"], float(np.abs(got[row] - want).max()))
        for t in sorted({1, spec.window_size}):
            window = rng.standard_normal((b, t, spec.feature_dim)).astype(np.float32)
            got = stp.run(None, {"features": window})[0]
            for row in range(b):
                want = reference.decode(window[row])
                worst["actions"] = max(worst["actions"], float(np.abs(got[row] - want).max()))
    return {"passed": all(v <= atol for v in worst.values()), "max_abs": worst, "atol": atol,
            "batches": sorted({1, batch}), "reference": "torch fp32 cpu",
            "candidate": "onnxruntime CPUExecutionProvider"}


# --- repository -----------------------------------------------------------------------------

def write_model(repo: Path, name: str, role: str, spec, *, file: Path, filename: str,
                max_batch: int, backend: str = "", platform: str = "", instance_kind: str,
                instances: int, gpus: list | None, queue_delay_us: int,
                parameters: dict | None, camera: dict | None = None) -> Path:
    """Write ``repo/name/config.pbtxt`` and ``repo/name/1/filename`` (moved from ``file``)."""
    inputs, outputs = serving_io(spec, camera)[role]
    folder = repo / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.move(str(file), folder / "1" / filename)
    data = file.with_name(file.name + ".data")
    if data.exists():
        shutil.move(str(data), folder / "1" / (filename + ".data"))
    (folder / "config.pbtxt").write_text(model_config(
        name, inputs=inputs, outputs=outputs, max_batch=max_batch, backend=backend,
        platform=platform, instance_kind=instance_kind, instances=instances, gpus=gpus,
        queue_delay_us=queue_delay_us, parameters=parameters))
    return folder


def trt_profiles(spec, max_batch: int, max_text_len: int, camera: dict | None = None) -> dict:
    """TensorRT optimization profiles with the batch axis (1 .. max_batch)."""
    s, b = spec, max(max_batch, 1)
    img = serving_io(spec, camera)["encoder"][0]["image"][1]
    opt_text = min(24, max_text_len)
    return {
        "encoder": {"image": {"min": (1, *img), "opt": (b, *img), "max": (b, *img)},
                    "text_ids": {"min": (1, 1), "opt": (b, opt_text), "max": (b, max_text_len)}},
        "step": {"features": {"min": (1, 1, s.feature_dim),
                              "opt": (b, s.window_size, s.feature_dim),
                              "max": (b, s.window_size, s.feature_dim)}},
    }


def build_plans(repo: Path, name: str, spec, onnx_files: dict, args, parameters: dict,
                log) -> list[Path]:
    """TensorRT plans of both serving graphs as ``NAME_trt_encoder`` / ``NAME_trt_step``."""
    try:
        import tensorrt as trt

        from . import tensorrt as builder
    except ImportError as exc:
        raise RuntimeError(f"--tensorrt needs TensorRT ({exc}); build the plans on the serving "
                           "GPU machine (JetPack or pip install tensorrt)") from exc
    max_text = int(parameters.get("max_text_len") or 64)
    camera = getattr(args, "_camera", None)
    profiles = trt_profiles(spec, args.max_batch, min(max_text, 64), camera)
    logger = trt.Logger(trt.Logger.WARNING)
    written = []
    with tempfile.TemporaryDirectory(prefix="vla_triton_trt_") as tmp:
        for role, model in zip(("encoder", "step"), model_names(f"{name}_trt"), strict=True):
            plan = Path(tmp) / f"{role}.plan"
            builder.build_engine(trt, logger, onnx_files[role], plan, precision=args.tensorrt,
                                 profile=profiles[role], workspace_mb=args.workspace_mb,
                                 timing_cache=Path(tmp) / "timing.cache",
                                 progress=builder.BuildProgress(role, emit=log))
            written.append(write_model(
                repo, model, role, spec, file=plan, filename="model.plan",
                max_batch=args.max_batch, platform="tensorrt_plan", instance_kind="KIND_GPU",
                instances=args.instances, gpus=args.gpus, queue_delay_us=args.queue_delay_us,
                camera=camera if role == "encoder" else None,
                parameters=dict(parameters, precision=args.tensorrt) if role == "encoder"
                else {"format": FORMAT_VERSION, "role": role}))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vla_export triton``."""
    parser.add_argument("--preset", help="model preset (tiny, small, mobile-vla-kosmos2, ...)")
    parser.add_argument("--checkpoint", help="checkpoint file or model folder")
    parser.add_argument("--backbone-path", default="", help="local Kosmos-2 folder")
    parser.add_argument("--model-config", default="", help="the team's JSON training config")
    from .checkpoint_cli import add_image_arguments
    from .cli import add_camera_arguments, add_layout_arguments

    add_layout_arguments(parser)
    add_image_arguments(parser)
    add_camera_arguments(parser)
    parser.add_argument("--output", required=True, help="model repository folder (created)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help=f"model name prefix: NAME_encoder, NAME_step (default {DEFAULT_NAME}"
                             "; the node's triton_model)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"max_batch_size of both models (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                        help="dynamic batcher's max queue delay in microseconds (default "
                             f"{DEFAULT_QUEUE_DELAY_US})")
    parser.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu",
                        help="instance group kind (default gpu)")
    parser.add_argument("--instances", type=int, default=1, help="instances per model")
    parser.add_argument("--gpus", type=int, nargs="*", help="GPU ids of the instance group")
    parser.add_argument("--fp16", action="store_true", help="fp16 ONNX weights (I/O unchanged)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, help="parity tolerance (default 1e-4; fp16 1e-2)")
    parser.add_argument("--tensorrt", choices=("fp32", "fp16"),
                        help="also build TensorRT plans (NAME_trt_*; needs TensorRT and a GPU)")
    parser.add_argument("--workspace-mb", type=int, default=4096,
                        help="TensorRT builder workspace (with --tensorrt)")


def run(args: argparse.Namespace) -> int:
    """Export, check parity, write the repository; exit code 0/2/3 like ``vla_export onnx``."""
    from .cli import CliError

    try:
        return _run(args)
    except CliError as exc:  # handled here: under `python -m ...cli` that module is __main__
        print(f"vla_export triton: error: {exc}", file=sys.stderr)
        return exc.code


def _run(args: argparse.Namespace) -> int:
    from .cli import (
        EXIT_OK,
        EXIT_PARITY,
        CliError,
        Progress,
        _metadata,
        _source,
        image_params,
        load_reference,
    )
    from .onnx import camera_preprocess, max_text_len, save_model, set_metadata, weight_bytes

    if args.max_batch < 0 or args.instances < 1:
        raise CliError("--max-batch must be >= 0 and --instances >= 1")
    args.frames = None
    preset, checkpoint = _source(args)
    if args.tensorrt:  # fail before the export, not after it
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise CliError(f"--tensorrt needs TensorRT ({exc}); build the plans on the serving "
                           "GPU machine (JetPack or pip install tensorrt)") from exc
    repo = Path(args.output).expanduser()
    if repo.exists() and not repo.is_dir():
        raise CliError(f"output {str(repo)!r} exists and is not a folder")
    repo.mkdir(parents=True, exist_ok=True)
    atol = args.atol or ATOL[args.fp16]
    progress = Progress()
    what = f"checkpoint {checkpoint!r}" if checkpoint else f"preset {preset!r}"
    with progress.phase(f"loading policy ({what})"):
        reference = load_reference(preset, checkpoint, args.backbone_path,
                                   getattr(args, "model_config", ""),
                                   getattr(args, "token_layout", "auto"),
                                   getattr(args, "tokenizer_path", ""), image_params(args))
    policy, spec = reference.model, reference.spec
    ids = reference.tokenizer.encode("go to the red box")
    with tempfile.TemporaryDirectory(prefix="vla_triton_") as tmp:
        work = Path(tmp)
        camera = camera_preprocess(policy, getattr(args, "camera_size", None),
                                   getattr(args, "camera_order", "rgb"))
        args._camera = camera
        with progress.phase(f"exporting batched encoder and step (opset {args.opset})"):
            encoder, step = export_graphs(policy, ids, args.opset, work, args.fp16, camera)
        meta = _metadata(reference, args, preset, checkpoint, atol, max_text_len(policy),
                         weight_bytes(encoder) > 1_800_000_000, camera)
        export = json.loads(meta["export"])
        export["triton"] = {"max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us,
                            "instance_kind": args.instance_kind, "instances": args.instances,
                            "batch_axis": 0, "step_state": "zero inside the graph"}
        meta["export"] = json.dumps(export)
        files = {"encoder": work / "encoder.serve.onnx", "step": work / "step.serve.onnx"}
        set_metadata(encoder, dict(meta, role="encoder"))
        set_metadata(step, dict(meta, role="step"))
        save_model(encoder, files["encoder"])
        save_model(step, files["step"])
        del encoder, step
        with progress.phase(f"parity vs PyTorch at batch 1 and {max(args.max_batch, 1)}"):
            parity = batched_parity(reference, files["encoder"], files["step"],
                                    max(args.max_batch, 1), atol, camera)
        print(f"parity feature: max_abs={parity['max_abs']['feature']:.3e}  actions: max_abs="
              f"{parity['max_abs']['actions']:.3e}  atol={atol:g}  "
              f"{'PASS' if parity['passed'] else 'FAIL'}", flush=True)
        if not parity["passed"]:
            print(f"vla_export triton: error: parity FAILED (atol {atol:g}); nothing written to "
                  f"{repo}", file=sys.stderr)
            return EXIT_PARITY
        meta["parity"] = json.dumps(parity)
        params = dict(meta, role="encoder", max_text_len=str(max_text_len(policy) or ""))
        kind = "KIND_GPU" if args.instance_kind == "gpu" else "KIND_CPU"
        common = dict(max_batch=args.max_batch, backend="onnxruntime", instance_kind=kind,
                      instances=args.instances, gpus=args.gpus,
                      queue_delay_us=args.queue_delay_us)
        enc_name, step_name = model_names(args.name)
        trt_sources = {}
        if args.tensorrt:  # TensorRT parses the ONNX files, so keep copies until it is done
            for role, file in files.items():
                trt_sources[role] = work / f"{role}.trt-source.onnx"
                shutil.copy(file, trt_sources[role])
        with progress.phase(f"writing {repo}"):
            written = [
                write_model(repo, enc_name, "encoder", spec, file=files["encoder"],
                            filename="model.onnx", parameters=params, camera=camera, **common),
                write_model(repo, step_name, "step", spec, file=files["step"],
                            filename="model.onnx", parameters={"format": FORMAT_VERSION,
                                                               "role": "step"}, **common)]
        if args.tensorrt:
            with progress.phase(f"building TensorRT {args.tensorrt} plans"):
                try:
                    written += build_plans(repo, args.name, spec, trt_sources, args, params,
                                           progress.line)
                except RuntimeError as exc:
                    raise CliError(str(exc)) from exc
    for folder in written:
        progress.line(f"wrote {folder}/config.pbtxt")
    print(f"serve it: tritonserver --model-repository={repo.resolve()}  (node: backend triton, "
          f"triton_model {args.name})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``vla_export triton`` on its own (the export CLI wires the same functions)."""
    parser = argparse.ArgumentParser(prog="vla_export triton", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
