"""``vla_bench``: compare inference backends on ONE device, each in its own process.

Modes: ``model`` (``backend.infer`` on prepared inputs), ``pipeline`` (raw rgb8 frames through
decode, resize, inference and post-processing), ``node`` (the real node over DDS; see
`bench_node`). Every backend runs in a child process (`bench_child`); the parent exports the ONNX
model when needed, checks that every backend really ran on the same device (from
`BackendInfo.device` after load), compares outputs against the PyTorch fp32 reference, and adds the
control-period budget and the physical lower bound (`bench_limits`) beside each measurement.

Exit codes: 0 ok, 1 a backend/export/node failed, 2 bad arguments, 3 backends on different devices
(without --allow-mixed-devices), 4 a backend failed the parity check (figures are still written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..export.parity import ATOL
from ..ros.process import profile_variable
from . import limits
from .analysis import control_budget, parity_report, physical_limits, step_series
from .child import PROMPT
from .environment import environment
from .render import markdown_report, write_plots

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MIXED, EXIT_PARITY = 0, 1, 2, 3, 4
BACKENDS = ("torch", "onnx", "tensorrt", "null")
MODES = ("model", "pipeline", "node")
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_RATES = "10,20,50,100"
NODE_DEFAULT_RATES = "50"
RESOLUTIONS = ((640, 480), (1280, 720))
CHECKPOINT_DEFAULT_PRESET = "mobile-vla-kosmos2"
LOW_DELIVERY = 0.9
NO_MODEL_DEVICE = "none (null backend: no model)"


class BenchError(Exception):
    """A one-line failure with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _rates(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--control-rate-hz {text!r}: {exc}") from exc
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"--control-rate-hz {text!r} must list rates > 0")
    return values


def _backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--backends {text!r}: give distinct names from "
                                         f"{list(BACKENDS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The ``vla_bench`` command line."""
    p = argparse.ArgumentParser(prog="vla_bench", description=__doc__.split("\n")[0])
    p.add_argument("--preset", help="model preset (tiny, small, mobile-vla-kosmos2, ...); with "
                   "--checkpoint: its architecture when no config JSON is beside it")
    p.add_argument("--checkpoint", help="PyTorch checkpoint file or model folder")
    p.add_argument("--backends", type=_backends, required=True,
                   help="comma-separated: torch,onnx,tensorrt (null: no model, node overhead)")
    p.add_argument("--mode", choices=MODES, required=True,
                   help="(also: fleet, N robots vs one Triton server, own options: "
                        "vla_bench --mode fleet --help)")
    p.add_argument("--iters", type=int, required=True, help="timed steps (node: frames)")
    p.add_argument("--warmup", type=int, required=True, help="untimed steps before them")
    p.add_argument("--json", required=True, type=Path, help="write every figure here")
    p.add_argument("--plots", type=Path, help="folder for PNG plots")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (all backends)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--reference", default="torch", choices=("torch", "none"),
                   help="parity reference: torch fp32 on --device (none: skip parity)")
    p.add_argument("--parity-atol", type=float,
                   help=f"max abs difference allowed (default by precision: {ATOL})")
    p.add_argument("--control-rate-hz", type=_rates,
                   help=f"control rates for the budget (default {DEFAULT_RATES}; node mode: "
                        f"the node's rate(s), default {NODE_DEFAULT_RATES})")
    p.add_argument("--image-rate-hz", type=float, default=30.0,
                   help="node mode: camera rate fed to the node (default 30)")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME=VALUE",
                   help="node mode: extra node parameter (repeatable), e.g. intra_op_threads=1")
    p.add_argument("--backend-param", action="append", default=[], metavar="NAME=VALUE",
                   help="model/pipeline modes: BackendConfig field for every backend "
                        "(repeatable), e.g. cuda_graph=true, device_preprocess=false")
    p.add_argument("--device-spec", default=",".join(limits.SPECS),
                   help=f"named specs for the physical limit ({', '.join(limits.SPECS)})")
    p.add_argument("--bandwidth-gbs", type=float, help="user-given memory bandwidth, GB/s")
    p.add_argument("--tflops", type=float, help="user-given dense peak at --precision, TFLOPS")
    p.add_argument("--allow-mixed-devices", action="store_true",
                   help="compare anyway when backends run on different devices (rows marked)")
    p.add_argument("--image-encoding", choices=("rgb8", "bgr8", "jpeg"), default="rgb8",
                   help="node mode: the 640x480 frames sent: rgb8 or bgr8 sensor_msgs/Image, or "
                        "jpeg (quality 90) sensor_msgs/CompressedImage on the compressed topic "
                        "(the node then runs with image_transport compressed)")
    p.add_argument("--camera-input", action="store_true",
                   help="node mode: preprocessing in the graph: exports take the 640x480 camera "
                        "frame (vla_export --camera-size) and the null backend takes it as "
                        "received; default: model-size graphs, the node resizes on the CPU")
    p.add_argument("--twist-listeners", choices=("both", "normal", "realtime"), default="both",
                   help="node mode: the Twist-only /cmd_vel listeners beside the node: one at "
                        "normal scheduling, one at SCHED_FIFO (a real-time base controller), or "
                        "both (default; they receive each Twist at the same moment, so on a "
                        "small machine each delays the other a little)")
    p.add_argument("--onnx-path", type=Path, help="existing export NAME.onnx (else exported)")
    p.add_argument("--engine-path", type=Path, help="existing TensorRT FILE.engine (else built "
                   "from the ONNX export)")
    return p


def backend_params(items: list[str]) -> dict:
    """``NAME=VALUE`` strings -> BackendConfig overrides, typed like each field's default."""
    from dataclasses import MISSING, fields

    from ..core.config import BackendConfig

    known = {f.name: f for f in fields(BackendConfig)}
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--backend-param {item!r} must be NAME=VALUE with NAME one of "
                             f"{sorted(known)}")
        f = known[name]
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--backend-param {item!r}: {name} takes true or false")
            out[name] = text.lower() in ("true", "1")
        elif isinstance(default, (int, float)):
            try:
                out[name] = type(default)(text)
            except ValueError as exc:
                raise ValueError(f"--backend-param {item!r}: {exc}") from exc
        elif isinstance(default, list):
            out[name] = [v for v in text.split(",") if v]
        else:
            out[name] = text
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and cross-check the options; errors name the bad value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.preset and not args.checkpoint:
        parser.error("give --preset NAME or --checkpoint PATH")
    if args.iters < 1 or args.warmup < 0:
        parser.error(f"--iters {args.iters} must be >= 1 and --warmup {args.warmup} >= 0")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device {args.device!r} must be cpu, cuda or cuda:N")
    if args.mode != "node" and "null" in args.backends and len(args.backends) == 1:
        parser.error("backend null has no model; use it with --mode node (or beside others)")
    if args.image_encoding != "rgb8" and args.mode != "node":
        parser.error("--image-encoding is a node-mode option")
    if args.camera_input and args.mode != "node":
        parser.error("--camera-input is a node-mode option (its frames are 640x480)")
    if args.twist_listeners != "both" and args.mode != "node":
        parser.error("--twist-listeners is a node-mode option")
    if args.camera_input and (args.onnx_path or args.engine_path):
        parser.error("--camera-input exports its own camera-input models; drop --onnx-path / "
                     "--engine-path")
    if args.precision == "bf16" and {"onnx", "tensorrt"} & set(args.backends):
        parser.error("--precision bf16: ONNX exports and TensorRT engines are fp32 or fp16")
    try:
        args.specs = [limits.SPECS[n] for n in limits.parse_spec_names(args.device_spec)]
    except ValueError as exc:
        parser.error(str(exc))
    args.node_params = {}
    for item in args.node_param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--node-param {item!r} must be NAME=VALUE")
        args.node_params[name] = value
    try:
        args.backend_params = backend_params(args.backend_param)
    except ValueError as exc:
        parser.error(str(exc))
    args.rates = args.control_rate_hz or _rates(NODE_DEFAULT_RATES if args.mode == "node"
                                                else DEFAULT_RATES)
    args.preset = args.preset or CHECKPOINT_DEFAULT_PRESET
    return args


def policy_config(args):
    """The PolicyConfig of the benchmarked model (preset, or the checkpoint's config)."""
    from ..model.loader import ModelSource, resolve_paths
    from ..model.presets import load_config_file, preset_config

    if not args.checkpoint:
        return preset_config(args.preset)
    _, config_file, _ = resolve_paths(ModelSource(args.preset, str(args.checkpoint)))
    return load_config_file(config_file, args.preset) if config_file else preset_config(
        args.preset)


def prompt_length(args, config) -> int:
    """Ids of the benchmark prompt with the tokenizer the model loads (as `load_policy` picks)."""
    from ..model.loader import ModelSource, resolve_paths
    from ..model.tokenizer import PromptTokenizer, load_tokenizer

    _, _, folder = resolve_paths(ModelSource(args.preset, str(args.checkpoint or "")))
    path = folder / "tokenizer.json" if folder and (folder / "tokenizer.json").is_file() else None
    return len(PromptTokenizer(load_tokenizer(path), config.prompt_template,
                               config.pad_to).encode(PROMPT))


def _run_tool(cmd: list[str], what: str, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise BenchError(f"{what} failed (exit {code}): {' '.join(cmd)}\n"
                         f"{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def _export_onnx(args, path: Path, fp16: bool) -> dict:
    cmd = [sys.executable, "-m", "mobile_vla_node.export.cli", "onnx", "--output", str(path),
           "--preset", args.preset, "--parity-cases", "1"]
    cmd += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
    cmd += ["--fp16"] if fp16 else []
    if getattr(args, "camera_input", False):
        from .node_mode import HEIGHT, WIDTH

        cmd += ["--camera-size", f"{WIDTH}x{HEIGHT}"]
    seconds = _run_tool(cmd, "ONNX export", path.with_suffix(".log"))
    return {"path": str(path), "seconds": seconds, "command": " ".join(cmd),
            "note": "wall time of the export CLI: Python start-up, model build, export, checker "
                    "and a 1-case parity check"}


def prepare_models(args, workdir: Path) -> dict:
    """Export ONNX and build TensorRT engines that backends need and no path was given.

    The onnx backend gets an export at --precision; TensorRT builds from an fp32 export.
    """
    out: dict = {}
    if "onnx" in args.backends and not args.onnx_path:
        out["onnx"] = _export_onnx(args, workdir / "model.onnx", args.precision == "fp16")
        args.onnx_path = Path(out["onnx"]["path"])
    if "tensorrt" in args.backends and not args.engine_path:
        source = args.onnx_path
        if source is None or ("onnx" in out and args.precision == "fp16"):
            out["onnx_for_tensorrt"] = _export_onnx(args, workdir / "trt_source.onnx", False)
            source = out["onnx_for_tensorrt"]["path"]
        path = workdir / "model.engine"
        cmd = [sys.executable, "-m", "mobile_vla_node.export.cli", "tensorrt", "--onnx",
               str(source), "--output", str(path), "--precision", args.precision]
        seconds = _run_tool(cmd, "TensorRT engine build", workdir / "trt_build.log")
        args.engine_path = path
        out["tensorrt"] = {"path": str(path), "seconds": seconds, "command": " ".join(cmd)}
    return out


def model_path(args, backend: str) -> str:
    """What the backend's ``model_path`` is for this run."""
    if backend == "onnx":
        return str(args.onnx_path)
    if backend == "tensorrt":
        return str(args.engine_path)
    return str(args.checkpoint or "")


def run_child(job: dict, workdir: Path) -> dict:
    """Run one backend in a child process and return its result (raise on its failure)."""
    tag = f"{job['backend']}_{job['mode']}"
    job_path, result_path = workdir / f"{tag}.job.json", workdir / f"{tag}.result.json"
    job_path.write_text(json.dumps(job))
    log = workdir / f"{tag}.log"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "mobile_vla_node.bench.child",
                               str(job_path), str(result_path)], stdout=out,
                              stderr=subprocess.STDOUT).returncode
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if code != 0 or "error" in result:
        raise BenchError(f"backend {job['backend']} failed in its process (exit {code}): "
                         f"{result.get('error', '')}\n{log.read_text()[-3000:]}")
    return result


def device_kind(device: str) -> str:
    """The comparable part of a device: ``"cuda (NVIDIA H100)"`` -> ``"cuda:0"``, ``"cpu"``."""
    head = device.strip().split(" ")[0].split("(")[0].lower()
    if head in ("cuda", "gpu"):
        return "cuda:0"
    return head or "unknown"


def check_devices(infos: dict, requested: str) -> tuple[dict, str]:
    """Each backend's actual device kind, and a message when they (or the request) differ.

    The null backend runs no model, so its device takes no part in the check.
    """
    kinds = {name: NO_MODEL_DEVICE if name == "null" else device_kind(info.get("device") or "")
             for name, info in infos.items()}
    compared = {kind for name, kind in kinds.items() if name != "null"}
    if not compared or len(compared | {device_kind(requested)}) == 1:
        return kinds, ""
    lines = [f"backends ran on different devices (requested --device {requested}):"]
    for name, info in infos.items():
        lines.append(f"  {name}: {info.get('device')} (provider {info.get('provider')})"
                     + "".join(f"\n    warning: {w}" for w in info.get("warnings") or []))
    return kinds, "\n".join(lines)


def _check_same_model(config, results: dict) -> None:
    want = config.to_dict()
    for name, res in results.items():
        got = res.get("policy_config")
        if got is None or name == "null":
            continue
        diff = sorted(k for k in set(want) | set(got) if k != "preset" and want.get(k) !=
                      got.get(k))
        if diff:
            raise BenchError(f"backend {name} runs a different model than {config.preset!r}: "
                             f"config differs in {diff} (does --onnx-path/--engine-path come "
                             "from this preset/checkpoint?)", EXIT_USAGE)


def run_children(args, workdir: Path) -> dict:
    """Model/pipeline modes: the reference first, then each backend; parity outputs saved."""
    jobs = []
    base = {"preset": args.preset, "device": args.device, "mode": args.mode, "iters": args.iters,
            "warmup": args.warmup, "seed": 0, "prompt": PROMPT,
            "resolutions": [list(r) for r in RESOLUTIONS],
            "backend_params": args.backend_params}
    want_parity = args.reference == "torch" and any(b != "torch" or args.precision != "fp32"
                                                    for b in args.backends if b != "null")
    cases = str(workdir / "parity_cases.npz")
    ref_in_run = "torch" in args.backends and args.precision == "fp32"
    if want_parity and not ref_in_run:
        jobs.append(dict(base, backend="torch", precision="fp32", mode="reference",
                         backend_params={},  # the reference runs with the defaults
                         model_path=model_path(args, "torch"), cases_path=cases,
                         make_cases=True, outputs_path=str(workdir / "reference.npz")))
    order = sorted(args.backends, key=lambda b: b != "torch")
    for backend in order:
        job = dict(base, backend=backend, precision=args.precision,
                   model_path=model_path(args, backend))
        if want_parity and backend != "null":
            job.update(cases_path=cases, outputs_path=str(workdir / f"{backend}.npz"),
                       make_cases=ref_in_run and backend == "torch")
        jobs.append(job)
    results = {}
    for job in jobs:
        print(f"[vla_bench] {job['backend']} ({job['mode']}) on {job['device']} ...",
              file=sys.stderr, flush=True)
        results["reference" if job["mode"] == "reference" else job["backend"]] = run_child(
            job, workdir)
    return results


def main(argv=None) -> int:
    """Entry point of ``vla_bench``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--mode=fleet" in argv or any(a == "--mode" and b == "fleet"
                                     for a, b in zip(argv, argv[1:], strict=False)):
        from .fleet import main as fleet_main  # N robots vs one Triton server (own options)

        return fleet_main(argv)
    args = parse_args(argv)
    try:
        return _main(args, argv)
    except BenchError as exc:
        print(f"[vla_bench] ERROR: {exc}", file=sys.stderr)
        return exc.code


def _main(args, argv: list[str]) -> int:
    config = policy_config(args)
    params = limits.count_parameters(config)
    print(f"[vla_bench] model {config.preset!r}: {params:,} parameters; backends "
          f"{args.backends} on {args.device}, mode {args.mode}", file=sys.stderr, flush=True)
    report: dict = {"tool": "vla_bench", "schema": 1, "mode": args.mode, "preset": config.preset,
                    "checkpoint": str(args.checkpoint or ""), "parameters": params,
                    "precision": args.precision, "requested_device": args.device,
                    "iters": args.iters, "warmup": args.warmup, "prompt": PROMPT,
                    "backend_params": args.backend_params,
                    "camera_input": bool(getattr(args, "camera_input", False)),
                    "image_encoding": getattr(args, "image_encoding", "rgb8"),
                    "twist_listeners": getattr(args, "twist_listeners", "both"),
                    "control_rates_hz": args.rates, "environment": environment(argv)}
    with tempfile.TemporaryDirectory(prefix="vla_bench_") as tmp:
        workdir = Path(tmp)
        report["export"] = prepare_models(args, workdir)
        if args.mode == "node":
            results = run_node_mode(args, workdir)
            infos = {n: r["info"] for n, r in results.items()}
        else:
            results = run_children(args, workdir)
            reference = results.pop("reference", None)
            infos = {n: r["info"] for n, r in results.items()}
            if reference is not None:
                infos["reference (torch fp32)"] = reference["info"]
            _check_same_model(config, results)
            report["parity"] = parity_report(args, results, reference)
    kinds, mixed = check_devices(infos, args.device)
    report.update(devices=kinds, mixed_devices=bool(mixed), backends=results)
    report["environment"]["loadavg_end"] = list(os.getloadavg())
    simulated = [n for n, r in results.items() if r.get("simulated_device")]
    if simulated:
        print(f"[vla_bench] WARNING: device of {simulated} is SIMULATED (test hook)",
              file=sys.stderr)
    if mixed and not args.allow_mixed_devices:
        report["status"] = "refused: backends on different devices"
        _write_json(args.json, report)
        raise BenchError(mixed + "\nrefusing to compare them; fix the provider/device or pass "
                         "--allow-mixed-devices (rows are then marked MIXED-DEVICE)", EXIT_MIXED)
    report["status"] = "ok"
    precisions = {n: r["info"]["precision"] for n, r in results.items() if n != "null"}
    report["precisions"] = precisions
    if any(p != args.precision for p in precisions.values()):
        print(f"[vla_bench] WARNING: backends ran at precisions {precisions} (--precision "
              f"{args.precision}); the table compares them as they ran", file=sys.stderr)
    for name, res in results.items():
        for warning in res["info"].get("warnings") or []:
            print(f"[vla_bench] {name}: {warning}", file=sys.stderr)
    prompt_len = next((r["prompt_len"] for r in results.values() if "prompt_len" in r),
                      None) or prompt_length(args, config)
    report["limits"] = physical_limits(args, config, prompt_len, results, kinds)
    actual = {n: r.get("parameters_actual") for n, r in results.items()
              if r.get("parameters_actual") is not None}
    if any(v != params for v in actual.values()):
        raise BenchError(f"parameter count mismatch: counted {params:,} from the config, the "
                         f"loaded model has {actual}")
    report["control_budget"] = {label: control_budget(s, args.rates) for n, r in results.items()
                                for label, s in step_series(n, r, args.mode).items()}
    if args.plots:
        report["plots"] = write_plots(args.plots, report)
    _write_json(args.json, report)
    print(markdown_report(report))
    failed = [n for n, p in (report.get("parity") or {}).items() if not p.get("passed", True)]
    if failed:
        print(f"[vla_bench] PARITY FAILED for {failed} (see the table and JSON)", file=sys.stderr)
        return EXIT_PARITY
    return EXIT_OK


def run_node_mode(args, workdir: Path) -> dict:
    """Node mode: one node process per backend and control rate."""
    from .node_mode import run_node

    results = {}
    for backend in args.backends:
        job = {"backend": backend, "preset": args.preset, "device": args.device,
               "precision": args.precision, "model_path": model_path(args, backend),
               "iters": args.iters, "warmup": args.warmup, "seed": 0,
               "extra_params": args.node_params, "image_encoding": args.image_encoding,
               "twist_listeners": args.twist_listeners}
        if backend == "null":   # the same preprocessing as the models it is compared with
            job["extra_params"] = {"device_preprocess": args.camera_input} | args.node_params
        runs = {}
        for rate in args.rates:
            print(f"[vla_bench] node with {backend} at {rate:g} Hz ...", file=sys.stderr,
                  flush=True)
            try:
                runs[f"{rate:g}"] = run_node(job, rate, args.image_rate_hz, workdir)
            except (RuntimeError, TimeoutError) as exc:
                raise BenchError(str(exc)) from exc
            runs[f"{rate:g}"].pop("node_log", None)
            delivered = runs[f"{rate:g}"]["delivered_fraction"]
            if delivered is not None and delivered < LOW_DELIVERY:
                print(f"[vla_bench] WARNING: DDS delivered only {100 * delivered:.0f}% of the "
                      "640x480 frames to the node (best-effort QoS); with Fast DDS set "
                      f"{profile_variable()} to config/fastdds_large_images.xml "
                      "(docs/BENCHMARKS.md, docs/DISTROS.md)", file=sys.stderr)
        first = next(iter(runs.values()))
        results[backend] = {"info": first["backend_info"] | {
            "warnings": [w for w in first["backend_warnings"].split("; ") if w]}, "node": runs}
    return results


def _clean(value):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
