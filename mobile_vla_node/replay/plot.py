"""plot.png of an eval: predicted vs reference per axis, stops shaded, command changes marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import AXES


def _spans(t: np.ndarray, stops: list[str]) -> list[tuple[float, float, str]]:
    spans, start = [], None
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.05
    for i, reason in enumerate(stops + [""]):
        if reason and start is None:
            start = i
        elif start is not None and (not reason or reason != stops[start]):
            spans.append((t[start], t[i - 1] + step, stops[start]))
            start = i if reason else None
    return spans


def write_plot(path: Path, t: np.ndarray, pred: np.ndarray, ref: np.ndarray,
               stops: list[str], changes: list, title: str) -> None:
    """Predicted vs reference per axis over time, stop spans shaded, command changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = ("m/s", "m/s", "rad/s")
    fig, axes = plt.subplots(3, 1, figsize=(12, 7.5), sharex=True)
    spans = _spans(t, stops)
    for i, ax in enumerate(axes):
        for j, (a, b, _) in enumerate(spans):
            ax.axvspan(a, b, color="0.85", lw=0, label="stopped" if j == 0 and i == 0 else None)
        if np.isfinite(ref[:, i]).any():
            ax.plot(t, ref[:, i], color="C1", lw=1.4, ls="--", label="reference")
        ax.plot(t, pred[:, i], color="C0", lw=1.2, label="predicted")
        for tc, _ in changes:
            ax.axvline(tc, color="0.4", lw=0.6, ls=":")
        ax.set_ylabel(f"{AXES[i]} [{units[i]}]")
        ax.grid(alpha=0.3)
    for tc, cmd in changes:
        axes[0].annotate(cmd or "(no command)", (tc, 1.0), xycoords=("data", "axes fraction"),
                         fontsize=7, rotation=20, va="bottom", ha="left")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("bag time [s]")
    fig.suptitle(title, y=0.995, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
