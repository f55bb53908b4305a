"""One `vla_bench` backend run in its own process: ``python -m mobile_vla_node.bench.child``.

The parent writes a JSON job file and reads the JSON result this process writes; separate
processes keep peak RSS, allocator peaks and warm caches apart. Timed regions end after the backend
returned numpy outputs (a device-to-host copy) and after ``backend.synchronize()`` where the
backend has one, so queued device work is always inside the measurement. Clock:
``time.perf_counter``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from .analysis import summarize
from .environment import vm_hwm_mb

# Test hook (documented in docs/BENCHMARKS.md): "onnx=cuda:0" makes the onnx child REPORT that
# device, so the parent's mixed-device refusal can be tested on a CPU-only machine. The result is
# flagged ``simulated_device`` and the parent prints a warning; nothing runs on that device.
# The instruction every mode runs with (model, pipeline and the node's /vla/command).
PROMPT = "go to the red box"
SIMULATE_ENV = "VLA_BENCH_SIMULATE_DEVICE"
N_MODEL_IMAGES = 8
N_PIPELINE_FRAMES = 4
PARITY_RANDOM_CASES = 4


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss() -> dict:
    """Peak RSS of the calling process in MB, and where the figure comes from.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image only.
    ``ru_maxrss`` is NOT used there: Linux carries the pre-exec high-water mark over ``execve``,
    so a child spawned by a 500 MB parent reports >= 500 MB whatever it loads.
    """
    hwm = vm_hwm_mb()
    if hwm is not None:
        return {"rss_peak_mb": hwm, "rss_peak_source": "VmHWM (/proc/self/status)"}
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB elsewhere
    return {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
            "rss_peak_source": "ru_maxrss (may include the parent's peak before exec)"}


def backend_config(job: dict):
    """The `BackendConfig` a job describes."""
    from ..core.config import BackendConfig

    on_cuda = job["device"].startswith("cuda")
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if on_cuda
                 else ["CPUExecutionProvider"])
    values = dict(
        backend=job["backend"], model_preset=job["preset"], model_path=job.get("model_path", ""),
        device=job["device"], precision=job["precision"], warmup_iters=0, providers=providers,
        # A dropped CUDA provider then shows up as a CPU device, which the parent refuses to
        # compare against a GPU backend (instead of failing here with a less useful message).
        allow_provider_fallback=on_cuda)
    values.update(job.get("backend_params", {}))  # vla_bench --backend-param
    return BackendConfig(**values)


def _plain(extra: dict) -> dict:
    """JSON-safe copy of BackendInfo.extra (numbers, bools and None kept; the rest as text)."""
    return {k: v if isinstance(v, (int, float, bool)) or v is None else str(v)
            for k, v in extra.items()}


def _sync(backend) -> None:
    sync = getattr(backend, "synchronize", None)
    if sync is not None:
        sync()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run_model(backend, job: dict, rng: np.random.Generator, text_ids: np.ndarray) -> dict:
    """backend.infer alone on prepared model-size images and a full window of history."""
    spec = backend.spec
    images = [rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8)
              for _ in range(N_MODEL_IMAGES)]
    history = (rng.standard_normal((spec.window_size - 1, spec.feature_dim)) * 0.1).astype(
        np.float32)

    def step(i: int) -> None:
        backend.infer(images[i % len(images)], text_ids, history)
        _sync(backend)

    for i in range(job["warmup"]):
        step(i)
    samples = [_timed(lambda i=i: step(i)) for i in range(job["iters"])]
    return {"window": int(spec.window_size), "latency_ms": summarize(samples),
            "samples_ms": samples, "throughput_steps_s": 1e3 / float(np.mean(samples))}


def run_pipeline(backend, job: dict, rng: np.random.Generator, prompt: str) -> dict:
    """decode_raw + PolicyRuntime.step (resize, infer, post-process) from raw rgb8 frames.

    Untimed steps are at least ``window_size - 1`` so every timed step decodes a full window
    (the steady state); the extra ones are reported as ``history_fill_steps``.
    """
    from ..core.config import ActionConfig
    from ..core.preprocess import decode_raw
    from ..core.runtime import PolicyRuntime

    out = {}
    for width, height in job["resolutions"]:
        runtime = PolicyRuntime(backend, ActionConfig())
        runtime.set_command(prompt)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
                  for _ in range(N_PIPELINE_FRAMES)]
        stages: dict = {k: [] for k in ("decode", "preprocess", "inference", "postprocess",
                                        "total")}
        untimed = max(job["warmup"], backend.spec.window_size - 1)
        for i in range(untimed + job["iters"]):
            t0 = time.perf_counter()
            rgb = decode_raw("rgb8", height, width, width * 3, frames[i % len(frames)])
            t1 = time.perf_counter()
            result = runtime.step(rgb)
            _sync(backend)
            t2 = time.perf_counter()
            if result is None:
                raise RuntimeError("PolicyRuntime.step returned None with a command set")
            if i < untimed:
                continue
            step_ms = (t2 - t1) * 1e3
            stages["decode"].append((t1 - t0) * 1e3)
            stages["preprocess"].append(result.preprocess_ms)
            stages["inference"].append(result.inference_ms)
            stages["postprocess"].append(step_ms - result.preprocess_ms - result.inference_ms)
            stages["total"].append((t2 - t0) * 1e3)
        out[f"{width}x{height}"] = {
            "stages_ms": {k: summarize(v) for k, v in stages.items()},
            "samples_ms": stages["total"],
            "throughput_steps_s": 1e3 / float(np.mean(stages["total"])),
            "history_len": len(runtime.history),
            "history_fill_steps": untimed - job["warmup"]}
    return out


def save_cases(path: Path, cases) -> None:
    """Parity cases -> one .npz (variable-length prompts and histories as separate keys)."""
    arrays = {}
    for i, c in enumerate(cases):
        arrays[f"image_{i}"], arrays[f"ids_{i}"], arrays[f"hist_{i}"] = (c.image, c.text_ids,
                                                                           c.history)
    np.savez(path, n=np.int64(len(cases)), **arrays)


def load_cases(path: Path):
    """Inverse of `save_cases`."""
    from ..export.parity import ParityCase

    data = np.load(path)
    return [ParityCase(data[f"image_{i}"], data[f"ids_{i}"], data[f"hist_{i}"])
            for i in range(int(data["n"]))]


def run_parity_outputs(backend, job: dict) -> dict:
    """Run the shared parity cases (making them first when this is the reference) and save."""
    from ..export.parity import make_cases

    cases_path = Path(job["cases_path"])
    if job.get("make_cases"):
        save_cases(cases_path, make_cases(backend, n_random=PARITY_RANDOM_CASES,
                                          seed=job["seed"]))
    cases = load_cases(cases_path)
    outputs = [backend.infer(c.image, c.text_ids, c.history) for c in cases]
    np.savez(job["outputs_path"], feature=np.stack([o[0] for o in outputs]),
             actions=np.stack([o[1] for o in outputs]))
    return {"cases": len(cases), "outputs_path": job["outputs_path"]}


def device_memory(backend, info) -> dict:
    """Peak device memory from torch's allocator (torch on CUDA) and NVML, or why not."""
    out: dict = {}
    on_cuda = info.device.startswith("cuda") and not info.extra.get("simulated_device")
    if not on_cuda:
        reason = f"n/a: backend runs on {info.device}"
        return {"torch_max_allocated_mb": reason, "nvml_process_used_mb": reason}
    torch = getattr(backend, "torch", None)
    if torch is not None and getattr(backend, "device", None) is not None:
        out["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated(backend.device) / 2**20
        out["torch_max_reserved_mb"] = torch.cuda.max_memory_reserved(backend.device) / 2**20
    else:
        out["torch_max_allocated_mb"] = "n/a: this backend does not allocate through torch"
    try:
        import pynvml
    except ImportError:
        out["nvml_process_used_mb"] = "n/a: pynvml not importable (pip install nvidia-ml-py)"
        return out
    try:
        pynvml.nvmlInit()
        index = int(info.device.split(" ")[0].partition(":")[2] or 0)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        used = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory]
        out["nvml_process_used_mb"] = (used[0] / 2**20 if used else
                                       "n/a: NVML lists no memory for this process (container "
                                       "PID namespace?)")
        out["nvml_note"] = "sampled after the timed loop (NVML has no per-process peak)"
    except Exception as exc:  # NVML errors are their own class hierarchy
        out["nvml_process_used_mb"] = f"n/a: NVML failed: {exc}"
    return out


def run(job: dict) -> dict:
    """Load, time the first inference, warm up, time ``iters`` steps, save parity outputs."""
    from ..backends import create_backend

    result: dict = {"backend": job["backend"], "pid": os.getpid(),
                    "loadavg_start": list(os.getloadavg()),
                    "rss_after_import_mb": _rss_mb()}
    backend = create_backend(backend_config(job))
    t0 = time.perf_counter()
    backend.load()
    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_mb"] = _rss_mb()
    info = backend.describe()
    simulated = os.environ.get(SIMULATE_ENV, "")
    name, _, device = simulated.partition("=")
    if name == job["backend"] and device:
        info.device = f"{device} (SIMULATED by {SIMULATE_ENV}; really {info.device})"
        info.extra["simulated_device"] = True
    result["info"] = {"name": info.name, "device": info.device, "precision": info.precision,
                      "provider": info.provider, "model": info.model,
                      "warnings": list(info.warnings),
                      "extra": _plain(info.extra)}
    result["simulated_device"] = bool(info.extra.get("simulated_device"))
    config = getattr(getattr(backend, "model", None), "config", None)
    meta = getattr(backend, "meta", None)
    result["policy_config"] = (config.to_dict() if config is not None
                               else (meta or {}).get("policy_config"))
    if hasattr(backend, "model") and backend.model is not None:
        result["parameters_actual"] = int(sum(p.numel() for p in backend.model.parameters()))
    torch = sys.modules.get("torch")
    if torch is not None:
        result["torch_threads"] = torch.get_num_threads()
    rng = np.random.default_rng(job["seed"])
    text_ids = backend.tokenizer.encode(job["prompt"])
    result["prompt_len"] = int(text_ids.shape[0])
    spec = backend.spec
    cold_image = rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8)
    cold_history = np.zeros((spec.window_size - 1, spec.feature_dim), np.float32)
    result["first_inference_ms"] = _timed(
        lambda: (backend.infer(cold_image, text_ids, cold_history), _sync(backend)))
    if job["mode"] == "model":
        result["model"] = run_model(backend, job, rng, text_ids)
    elif job["mode"] == "pipeline":
        result["pipeline"] = run_pipeline(backend, job, rng, job["prompt"])
    if job.get("cases_path"):
        result["parity_outputs"] = run_parity_outputs(backend, job)
    # State after the runs (e.g. which CUDA graphs were captured, or why some run eagerly).
    result["info"]["extra"].update(_plain(backend.describe().extra))
    result["memory"] = {"rss_after_import_mb": result.pop("rss_after_import_mb"),
                        "rss_after_load_mb": result.pop("rss_after_load_mb"),
                        **peak_rss(), **device_memory(backend, info)}
    backend.close()
    return result


def main(argv=None) -> int:
    """``bench_child JOB.json RESULT.json``: exit 0 with a result, 1 with an error in it."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run(job)
        code = 0
    except Exception as exc:  # reported to the parent, which names the backend
        import traceback

        result = {"backend": job.get("backend"), "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
        code = 1
    Path(argv[1]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
