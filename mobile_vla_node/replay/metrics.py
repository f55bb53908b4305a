"""Error metrics of predicted vs reference Twists, latency percentiles, the terminal summary."""

from __future__ import annotations

import numpy as np

from ..core.timing import latency_summary

AXES = ("linear_x", "linear_y", "angular_z")
LATENCY_PERCENTILES = (50, 90, 95, 99)


def metrics(pred: np.ndarray, ref: np.ndarray, commands: list[str],
            threshold: float) -> dict:
    """MAE/RMSE per axis vs the reference (ticks where it exists), zero baseline, direction."""
    mask = np.all(np.isfinite(ref), axis=1)
    out: dict = {"axes": list(AXES), "n": int(mask.sum()), "direction_threshold": threshold}
    if not mask.any():
        out["note"] = "no reference Twist in the bag: no error metrics"
        return out
    err = pred[mask] - ref[mask]
    mae = np.abs(err).mean(0)
    zero = np.abs(ref[mask]).mean(0)
    moving = np.abs(ref[mask]) > threshold
    agree = np.sign(pred[mask]) == np.sign(ref[mask])
    out.update(
        mae=[round(float(v), 6) for v in mae], mae_mean=round(float(mae.mean()), 6),
        rmse=[round(float(v), 6) for v in np.sqrt((err ** 2).mean(0))],
        zero_baseline_mae=[round(float(v), 6) for v in zero],
        zero_baseline_mae_mean=round(float(zero.mean()), 6),
        direction_agreement=[round(float(agree[:, i][moving[:, i]].mean()), 4)
                             if moving[:, i].any() else None for i in range(3)],
        direction_n=[int(n) for n in moving.sum(0)],
    )
    cmds = np.array(commands, dtype=object)[mask]
    out["per_command"] = {
        (c or "<none>"): {"n": int((cmds == c).sum()),
                          "mae": [round(float(v), 6) for v in np.abs(err[cmds == c]).mean(0)]}
        for c in sorted(set(cmds))}
    return out


def latency(samples: list) -> dict:
    """Percentiles (ms) of wall-clock samples (`core.timing.latency_summary`)."""
    return latency_summary(samples, LATENCY_PERCENTILES, ("max", "mean"), digits=3)


def format_summary(summary: dict) -> str:
    """A few lines for the terminal."""
    c, m = summary["counts"], summary["metrics"]
    lines = [f"eval {summary['bag']}: {c['images']} images ({c['steps']} steps, "
             f"{c['bad_images']} bad), {c['ticks']} ticks over {summary['duration_s']:.2f} s at "
             f"{summary['control_rate_hz']:g} Hz, commands {c['commands']}"]
    if "mae" in m:
        lines.append("MAE  [linear_x linear_y angular_z] = " + " ".join(
            f"{v:.4f}" for v in m["mae"]) + f"  (mean {m['mae_mean']:.4f}; zero-velocity "
            f"baseline {m['zero_baseline_mae_mean']:.4f}; {m['n']} ticks)")
        lines.append("RMSE [linear_x linear_y angular_z] = " + " ".join(
            f"{v:.4f}" for v in m["rmse"]))
        lines.append("direction agreement = " + " ".join(
            "n/a" if v is None else f"{v:.2f}" for v in m["direction_agreement"])
            + f"  (|ref| > {m['direction_threshold']:g})")
        width = max(len(c) for c in m["per_command"])
        for cmd, v in m["per_command"].items():
            lines.append(f"  {cmd:<{width}}  {v['n']:4d} ticks  MAE " + " ".join(
                f"{x:.4f}" for x in v["mae"]))
    else:
        lines.append(m.get("note", "no metrics"))
    stops = summary["stops"]["events"]
    lines.append("stop events: " + (", ".join(f"{k} {v}" for k, v in stops.items()) or "none"))
    lat = summary["latency_ms"]
    if lat["inference"].get("count"):
        lines.append(f"latency ms (wall clock): preprocess p50 {lat['preprocess']['p50']:.1f} "
                     f"p95 {lat['preprocess']['p95']:.1f}; inference p50 "
                     f"{lat['inference']['p50']:.1f} p95 {lat['inference']['p95']:.1f}")
    lines.append(f"wrote {summary['out']}/ticks.csv, summary.json, plot.png")
    return "\n".join(lines)
