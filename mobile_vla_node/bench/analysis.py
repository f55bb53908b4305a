"""Figures `vla_bench` derives from the children's results: parity, control budget, limits."""

from __future__ import annotations

import sys

import numpy as np

from ..core.timing import latency_summary
from ..export.parity import ATOL, default_atol
from . import limits

# Parity tolerance (max abs difference to torch fp32) by the candidate's precision; TensorRT fp32
# may use TF32 kernels.


def summarize(samples) -> dict:
    """mean, std, min, p50, p90, p99, max and count of millisecond samples (empty: count 0)."""
    return latency_summary(samples, (50, 90, 99), ("mean", "std", "min", "max"))


def parity(ref_path: str, cand_path: str, atol: float) -> dict:
    """Max abs, mean abs and worst-case cosine of feature and actions vs the reference."""
    from ..export.parity import ParityResult, summary

    ref, cand = np.load(ref_path), np.load(cand_path)
    results = []
    for name in ("feature", "actions"):
        r, c = ref[name].astype(np.float64), cand[name].astype(np.float64)
        finite = bool(np.isfinite(r).all() and np.isfinite(c).all())
        diff = np.abs(r - c)
        rn, cn = r.reshape(len(r), -1), c.reshape(len(c), -1)
        norms = np.linalg.norm(rn, axis=1) * np.linalg.norm(cn, axis=1)
        cos = np.where(norms > 0, (rn * cn).sum(1) / np.where(norms > 0, norms, 1), 1.0)
        max_abs = float(diff.max()) if finite else float("inf")
        results.append(ParityResult(name, max_abs, float(diff.mean()) if finite else float("inf"),
                                    float(cos.min()) if finite else float("nan"), atol,
                                    finite and max_abs <= atol))
    return summary(results, len(ref["actions"]))


def control_budget(samples_ms, rates: list[float]) -> dict:
    """Per rate: the share of the period the p99 step uses and the fraction of steps over it."""
    data = np.asarray(samples_ms, np.float64)
    data = data[np.isfinite(data)]
    p99 = float(np.percentile(data, 99)) if data.size else float("nan")
    out = {}
    for rate in rates:
        period = 1e3 / rate
        out[f"{rate:g}"] = {"period_ms": period, "p99_ms": p99, "p99_share": p99 / period,
                            "deadline_miss_rate": float(np.mean(data > period)) if data.size
                            else None}
    return out


def step_series(name: str, res: dict, mode: str) -> dict:
    """{label: samples} of the per-step time the budget and CDF use, for one backend."""
    if mode == "model":
        return {name: res["model"]["samples_ms"]}
    if mode == "pipeline":
        return {f"{name} {r}": v["samples_ms"] for r, v in res["pipeline"].items()}
    return {f"{name} {r}hz worker": v["samples_ms"]["worker"] for r, v in res["node"].items()}


def inference_p50(res: dict, mode: str) -> float | None:
    """Median model time (what the physical limit bounds) of one backend."""
    if mode == "model":
        return res["model"]["latency_ms"].get("p50")
    if mode == "pipeline":
        first = next(iter(res["pipeline"].values()))
        return first["stages_ms"]["inference"].get("p50")
    first = next(iter(res["node"].values()))
    return first["stages_ms"]["inference"].get("p50")


def physical_limits(args, config, prompt_len: int, results: dict, kinds: dict) -> dict:
    """Counts, the roofline on named specs, and measured/limit on the device that ran."""
    count = limits.count_step(config, prompt_len)
    out: dict = {"parameters": count.total_params, "params_by_component": count.params,
                 "flops_per_step": count.total_flops, "flops_by_component": count.flops,
                 "text_tokens": count.text_tokens, "prompt_len": prompt_len, "per_backend": {}}
    cpu_peaks: tuple | None = None
    for name, res in results.items():
        precision = res["info"]["precision"]
        if precision not in limits.BYTES_PER_ELEMENT:
            continue  # null backend: no model
        specs = list(args.specs)
        user = None
        if args.bandwidth_gbs or args.tflops:
            user = limits.DeviceSpec("user", args.bandwidth_gbs, {precision: args.tflops},
                                     "--bandwidth-gbs / --tflops")
            specs.append(user)
        current = None
        if kinds[name] == "cpu":
            cpu_peaks = cpu_peaks or (limits.measure_memcpy_gbs(), limits.measure_gemm_tflops())
            current = limits.DeviceSpec("this-cpu (measured)", cpu_peaks[0],
                                        {precision: cpu_peaks[1]},
                                        "measured here: best-of-5 numpy copy bandwidth (read + "
                                        "write bytes, 1 thread) and best-of-3 torch fp32 GEMM "
                                        "(used for every precision); achievable, not "
                                        "theoretical, peaks")
        elif "(" in res["info"]["device"]:
            spec_name = limits.spec_for_gpu(res["info"]["device"])
            current = limits.SPECS.get(spec_name) if spec_name else None
        if current is None and user is not None:
            specs.remove(user)
            current = user  # the device that ran is not a named one: the user's figures are it
        if current is not None:
            specs.insert(0, current)
        rows = limits.limits_table(count, precision, specs)
        measured = inference_p50(res, args.mode)
        if current is not None and rows[0]["bound_ms"] and measured:
            rows[0]["measured_p50_ms"] = measured
            rows[0]["measured_over_limit"] = measured / rows[0]["bound_ms"]
            if rows[0]["measured_over_limit"] < 1:
                print(f"[vla_bench] WARNING: {name} measured {measured:.3g} ms, below the "
                      f"'lower bound' {rows[0]['bound_ms']:.3g} ms of {current.name}: that "
                      "spec's peaks are too low for this device", file=sys.stderr)
        out["per_backend"][name] = {"precision": precision, "streamed_bytes":
                                    count.streamed_bytes(precision), "weight_bytes":
                                    count.weight_bytes(precision), "rows": rows,
                                    "current_device_spec": current.name if current else None}
    return out


def parity_report(args, results: dict, reference: dict | None) -> dict:
    """{backend: parity summary} against the torch fp32 reference outputs."""
    ref = reference or results.get("torch")
    if ref is None or "parity_outputs" not in ref:
        return {}
    out = {}
    for name, res in results.items():
        if "parity_outputs" not in res or res is ref:
            continue
        precision = res["info"]["precision"]
        atol = args.parity_atol or (default_atol(precision, name) if precision in ATOL
                                    else max(ATOL.values()))
        out[name] = parity(ref["parity_outputs"]["outputs_path"],
                           res["parity_outputs"]["outputs_path"], atol)
        out[name]["reference"] = f"torch fp32 on {ref['info']['device']}"
    return out
