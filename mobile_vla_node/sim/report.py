"""Reports of sim runs: per-episode JSON, tables, a top-down trajectory plot, an onboard GIF."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from .suites import FOOTPRINT, Suite


def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def episode_table(results: list) -> str:
    """One line per episode: outcome and metrics, node rate and latency, zeros by cause."""
    head = (f"{'policy':<14} {'episode':<16} {'outcome':<10} {'t_goal':>6} {'path':>5} "
            f"{'coll':>4} {'clear':>5} {'final':>5} {'rate':>5} {'inf50':>6} {'e2e50':>6} "
            f"{'zeros':>5}  stops by cause")
    lines = [head, "-" * len(head)]
    for r in results:
        node = r.node or {}
        lines.append(
            f"{node.get('policy', 'expert'):<14} {r.name:<16} {r.outcome:<10} "
            f"{_fmt(r.time_to_goal_s, '.1f'):>6} {r.path_length_m:5.2f} {r.collisions:4d} "
            f"{_fmt(r.min_clearance_m):>5} {_fmt(r.final_distance_m):>5} "
            f"{_fmt(node.get('control_rate_hz'), '.1f'):>5} "
            f"{_fmt(node.get('inference_ms', {}).get('p50'), '.1f'):>6} "
            f"{_fmt(node.get('end_to_end_ms', {}).get('p50'), '.1f'):>6} "
            f"{node.get('zero_twists', '-'):>5}  "
            + ", ".join(f"{k}={v}" for k, v in sorted(node.get("stops_by_cause", {}).items())))
    return "\n".join(lines)


def success_table(by_policy: dict) -> str:
    """Success rate per instruction (rows) for each policy (columns)."""
    policies = list(by_policy)
    groups: list = []
    for results in by_policy.values():
        for r in results:
            if r.instruction not in groups:
                groups.append(r.instruction)
    width = max([len(g) for g in groups] + [11])
    head = f"{'instruction':<{width}} " + " ".join(f"{p:>16}" for p in policies)
    lines = [head, "-" * len(head)]
    for g in groups + ["all"]:
        cells = []
        for p in policies:
            rs = [r for r in by_policy[p] if g == "all" or r.instruction == g]
            ok = sum(r.success for r in rs)
            cells.append(f"{ok:>3}/{len(rs):<3} {100 * ok / max(len(rs), 1):5.1f} %")
        lines.append(f"{g:<{width}} " + " ".join(f"{c:>16}" for c in cells))
    for p in policies:
        causes = Counter(r.outcome for r in by_policy[p] if not r.success)
        if causes:
            lines.append(f"  {p} failures: " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(causes.items())))
    return "\n".join(lines)


def write_json(path: Path, results: list, meta: dict) -> None:
    """Per-episode results with the run's metadata."""
    path.write_text(json.dumps({"meta": meta, "episodes": [r.as_dict() for r in results]},
                               indent=1) + "\n")


def plot_trajectories(path: Path, suite: Suite, by_policy: dict, max_panels: int = 6) -> None:
    """Top-down: objects, start, success radius and each policy's path, one panel an episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = suite.episodes[:max_panels]
    cols = min(3, len(episodes))
    rows = math.ceil(len(episodes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    colors = {"basket": "0.55", "box_red": "tab:red", "box_green": "tab:green",
              "box_blue": "tab:blue", "obstacle": "peru"}
    styles = ["-", "--", ":", "-."]
    for ax, ep in zip(axes.flat, episodes, strict=False):
        x0, x1, y0, y1 = ep.arena
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1, color="k"))
        for o in ep.objects:
            ax.add_patch(plt.Circle((o.x, o.y), FOOTPRINT[o.kind] * 0.75,
                                    color=colors[o.kind]))
        t = ep.target_object
        ax.add_patch(plt.Circle((t.x, t.y), ep.success_radius, fill=False, ls="--",
                                color="k", lw=0.8))
        ax.plot(*ep.start[:2], "k^")
        for (name, results), style in zip(by_policy.items(), styles, strict=False):
            r = next((r for r in results if r.name == ep.name), None)
            if r is None or not r.trajectory:
                continue
            xy = np.array([p[1:3] for p in r.trajectory])
            ax.plot(xy[:, 0], xy[:, 1], style, lw=1.5, label=f"{name}: {r.outcome}")
        ax.set_title(f"{ep.name}: {ep.instruction}", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(x0 - 0.1, x1 + 0.1)
        ax.set_ylim(y0 - 0.1, y1 + 0.1)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(episodes):]:
        ax.axis("off")
    fig.suptitle(f"vla_sim {suite.name}: top-down (x forward, y left)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_gif(path: Path, frames: list, fps: float) -> None:
    """Onboard camera frames as an animated GIF (PIL)."""
    from PIL import Image

    if not frames:
        return
    images = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=128)
              for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)


def plot_sweep(path: Path, rows: list, xkey: str, title: str) -> None:
    """Success rate against one swept value (one line per series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for series in sorted({r["series"] for r in rows}):
        pts = sorted((r[xkey], 100 * r["success_rate"]) for r in rows if r["series"] == series)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=series)
    ax.set_xlabel(xkey)
    ax.set_ylabel("success %")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
