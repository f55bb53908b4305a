"""``vla_replay``: evaluate a policy on a rosbag offline, play a bag to the live node, make bags.

Subcommands:

* ``eval BAG --out DIR``: offline and deterministic. The bag's image, command, enable and
  reference-Twist messages are processed in bag-time order by the node's own core
  (`PolicyRuntime` + `ControlLoop`), with control ticks every ``1 / control_rate_hz`` of bag time.
  Time model ("zero latency"): an image received at bag time ``t`` is inferred at once and its
  chunk is available at ``t``; eval measures the policy, not the compute (measured wall-clock
  latencies are reported in summary.json only). Writes ticks.csv (byte-identical for the same bag,
  model and settings), summary.json and plot.png.
* ``play BAG``: publishes the node's inputs with rclpy at their recorded timing and QoS,
  re-stamping headers to "now" (see `PlayClock`), optionally publishing /clock and recording the
  node's /cmd_vel and /diagnostics into a new bag.
* ``from-h5 EPISODE.h5... --out BAG``: converts the team's HDF5 episodes to a bag.
* ``make-sample --out BAG``: a synthetic bag from `mobile_vla_node.synthetic`.

Errors in the inputs (missing bag, damaged file, bad dataset, unknown parameter) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, NodeConfig
from . import bagio
from .frames import BagError

AXES = ("linear_x", "linear_y", "angular_z")
CSV_HEADER = ("t", "pred_linear_x", "pred_linear_y", "pred_angular_z", "ref_linear_x",
              "ref_linear_y", "ref_angular_z", "stop_reason", "command")
TIME_MODEL = ("zero-latency: each image is received, inferred and its chunk made available at its "
              "bag time; control ticks every 1/control_rate_hz of bag time from the first to the "
              "last message; messages at equal times: enable, command, image, reference, then "
              "the tick. Eval measures the policy, not the compute; wall-clock latencies are "
              "reported separately and are not deterministic.")
# Messages with equal timestamps are handled in this order (the tick at that time comes last).
PRIORITY = {"enable": 0, "command": 1, "image": 2, "reference": 3}
DEFAULT_START_S = 1_700_000_000  # bag time of generated bags (fixed: same input, same bag)
LATENCY_PERCENTILES = (50, 90, 95, 99)


class ReplayError(RuntimeError):
    """A user-facing error (bad option, input file or bag): one line, exit status 2."""


# -- configuration ---------------------------------------------------------------------------
def load_params_file(path: str | Path) -> dict:
    """Flat parameters from a ROS 2 params YAML (``/**:`` or ``vla_node:`` -> ros__parameters)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ReplayError(f"cannot read params file {str(path)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ReplayError(f"params file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ReplayError(f"params file {str(path)!r} has no '<node>: ros__parameters:' mapping")
    params: dict = {}
    found = False
    # Wildcards first, then node-specific sections override them (as rcl does).
    for key in sorted(data, key=lambda k: "*" not in str(k)):
        section = data[key]
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            if str(key).strip("/").split("/")[-1] not in ("**", "vla_node"):
                continue
            found = True
            for name, value in section["ros__parameters"].items():
                if isinstance(value, dict):
                    raise ReplayError(f"params file {str(path)!r}: nested parameter {name!r} is "
                                      "not a vla_node parameter")
                params[name] = value
    if not found:
        raise ReplayError(f"params file {str(path)!r} has no '/**:' or 'vla_node:' section with "
                          "ros__parameters")
    return params


def build_config(params_file: str | None, overrides: dict, extra: list[str]) -> NodeConfig:
    """NodeConfig from a params file (or defaults), then CLI options, then ``--param k=v``."""
    import yaml

    params = load_params_file(params_file) if params_file else {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    for item in extra:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ReplayError(f"--param {item!r} must look like NAME=VALUE")
        params[name.strip()] = yaml.safe_load(text)
    try:
        return NodeConfig.from_params(params)
    except ConfigError as exc:
        raise ReplayError(str(exc)) from exc


# -- progress --------------------------------------------------------------------------------
class Progress:
    """tqdm on a terminal (else a plain one-line counter); silent when stderr is no TTY."""

    def __init__(self, total: int, desc: str, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.done, self.bar = total, desc, 0, None
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, unit="msg", file=self.stream, leave=False)

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` messages."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last > 0.25:
            self._last = time.monotonic()
            pct = 100.0 * self.done / max(self.total, 1)
            self.stream.write(f"\r{self.desc}: {self.done}/{self.total} ({pct:.0f}%)")
            self.stream.flush()

    def close(self) -> None:
        """Remove the bar/line."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


# -- eval ------------------------------------------------------------------------------------
@dataclass
class EvalCounts:
    """What happened during an eval (all deterministic)."""

    images: int = 0
    bad_images: int = 0
    steps: int = 0
    discarded_steps: int = 0
    commands: int = 0
    rejected_commands: int = 0
    references: int = 0
    enables: int = 0
    ticks: int = 0


@dataclass
class Simulation:
    """The node's input handling around the shared core, driven by bag time (seconds).

    Uses `core.inputs.InputRules`, the same rules as ``VlaNode``; an image's step runs at once
    (zero latency), so its chunk is ready at the image's bag time.
    """

    runtime: object
    control: object
    counts: EvalCounts = field(default_factory=EvalCounts)
    preprocess_ms: list = field(default_factory=list)
    inference_ms: list = field(default_factory=list)
    bad_image_errors: Counter = field(default_factory=Counter)

    def __post_init__(self):
        from ..core.inputs import InputRules

        self.rules = InputRules(self.runtime, self.control)

    def on_command(self, text: str) -> None:
        """As the node: same command again keeps the history; a rejected one clears it."""
        outcome = self.rules.command(text)
        if outcome == "accepted":
            self.counts.commands += 1
        elif outcome == "rejected":
            self.counts.rejected_commands += 1

    def on_enable(self, enabled: bool) -> None:
        """The enable topic (false = e-stop)."""
        self.counts.enables += 1
        self.rules.enable(bool(enabled))

    def on_image(self, msg, t: float) -> None:
        """Receive, decode and infer one image at bag time ``t`` (its chunk is ready at ``t``)."""
        from ..core.control import ChunkMeta
        from ..core.preprocess import ImageError, decode_message

        self.counts.images += 1
        t0 = time.perf_counter()
        if not self.rules.receive_image(msg, t):
            self._bad_image(self.rules.last_input_error)
            return
        try:
            rgb = decode_message(msg)
        except ImageError as exc:
            self.rules.bad_image(exc)
            self._bad_image(str(exc))
            return
        decode_ms = (time.perf_counter() - t0) * 1e3
        result = self.runtime.step(rgb)
        meta = None
        if result is not None:
            meta = ChunkMeta(t, 0.0, decode_ms + result.preprocess_ms, result.inference_ms)
        if not self.rules.step_done(result, t, meta):
            self.counts.discarded_steps += 1
            return
        self.counts.steps += 1
        self.preprocess_ms.append(meta.preprocess_ms)
        self.inference_ms.append(meta.inference_ms)

    def _bad_image(self, error: str) -> None:
        self.counts.bad_images += 1
        self.bad_image_errors[error] += 1


@dataclass
class EvalTopics:
    """The connections an eval reads, by role."""

    image: str
    command: str | None
    reference: str | None
    enable: str | None
    connections: dict  # role -> list of connections


def select_topics(reader, config: NodeConfig, image_topic: str | None,
                  command_topic: str | None, reference_topic: str | None,
                  use_bag_commands: bool) -> EvalTopics:
    """Pick the bag connections for each role; the image topic must exist."""
    topics = config.topics
    images = [c for c in reader.connections if c.msgtype in bagio.IMAGE_TYPES]
    present = sorted({c.topic for c in images})
    if image_topic:
        candidates = [image_topic]
    elif topics.image_transport == "compressed":
        candidates = [topics.compressed_image_topic, topics.image_topic]
    else:
        candidates = [topics.image_topic, topics.compressed_image_topic]
    chosen = next((t for t in candidates if t in present), None)
    if chosen is None:
        table = [f"{t} [{m}] x{n}" for t, m, n in bagio.topic_table(reader)]
        raise ReplayError(f"no image topic {' or '.join(candidates)} in bag; image topics: "
                          f"{present or 'none'}; all topics: {table}; pass --image-topic")

    def pick(topic, msgtype):
        return [c for c in reader.connections if c.topic == topic and c.msgtype == msgtype]

    command_topic = command_topic or topics.command_topic
    reference_topic = reference_topic or "/cmd_vel"
    conns = {"image": [c for c in images if c.topic == chosen],
             "command": pick(command_topic, bagio.STRING) if use_bag_commands else [],
             "reference": pick(reference_topic, bagio.TWIST),
             "enable": pick(topics.enable_topic, bagio.BOOL)}
    return EvalTopics(chosen, command_topic if conns["command"] else None,
                      reference_topic if conns["reference"] else None,
                      topics.enable_topic if conns["enable"] else None, conns)


def _fmt(v: float, digits: int = 6) -> str:
    s = f"{v:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def tick_times(start_ns: int, rate_hz: float):
    """Endless tick times (ns) every 1/rate from ``start_ns``, each rounded from k / rate."""
    k = 0
    while True:
        yield start_ns + round(k * 1e9 / rate_hz)
        k += 1


class EvalLoop:
    """Bag messages in, control ticks out: the event loop of `run_eval` (bag time in ns)."""

    def __init__(self, sim: Simulation, rate_hz: float, command: str | None):
        self.sim, self.rate, self.command = sim, rate_hz, command
        self.start: int | None = None
        self.last: int | None = None
        self.ref: tuple | None = None
        self._ticks = None
        self._next: int | None = None
        self.group: list = []
        self.rows: list[tuple] = []
        self.preds, self.refs, self.stops, self.commands = [], [], [], []
        self.changes: list[tuple[float, str]] = []

    def seconds(self, t_ns: int) -> float:
        """Bag time relative to the first message."""
        return (t_ns - self.start) / 1e9

    def add(self, t_ns: int, role: str, conn, raw, reader) -> None:
        """Queue a message; a new timestamp first handles the previous group."""
        if self.start is None:
            self.start = t_ns
            self._ticks = tick_times(t_ns, self.rate)
            self._next = next(self._ticks)
            if self.command is not None:
                self.sim.on_command(self.command)
        if self.group and self.group[0][0] != t_ns:
            self.flush(reader)
        self.group.append((t_ns, PRIORITY[role], len(self.group), role, conn, raw))

    def flush(self, reader) -> None:
        """Ticks before this timestamp, then the group's messages in priority order."""
        if not self.group:
            return
        t_ns = self.group[0][0]
        self.tick_until(t_ns, inclusive=False)
        for _, _, _, role, conn, raw in sorted(self.group, key=lambda g: (g[1], g[2])):
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - a corrupt message, reported by name
                raise BagError(f"cannot deserialize a {conn.msgtype} message on {conn.topic} "
                               f"at {t_ns} ns: {exc}") from exc
            self.handle(role, self.seconds(t_ns), msg)
        self.last = t_ns
        self.group.clear()

    def handle(self, role: str, t: float, msg) -> None:
        """One message at bag time ``t``."""
        if role == "image":
            self.sim.on_image(msg, t)
        elif role == "command":
            self.sim.on_command(msg.data)
        elif role == "enable":
            self.sim.on_enable(msg.data)
        else:
            self.sim.counts.references += 1
            self.ref = bagio.twist_values(msg)

    def tick_until(self, limit_ns: int, inclusive: bool) -> None:
        """Run the control ticks before (or up to) ``limit_ns`` and record them."""
        while self._next < limit_ns or (inclusive and self._next == limit_ns):
            t = self.seconds(self._next)
            result = self.sim.control.tick(t)
            cmd = self.sim.runtime.command or ""
            if not self.commands or self.commands[-1] != cmd:
                self.changes.append((t, cmd))
            self.preds.append(result.twist.copy())
            self.refs.append(self.ref if self.ref is not None else (math.nan,) * 3)
            self.stops.append(result.stop_reason or "")
            self.commands.append(cmd)
            ref_text = (_fmt(v) for v in self.ref) if self.ref is not None else ("", "", "")
            self.rows.append((_fmt(t, 4), *(_fmt(v) for v in result.twist), *ref_text,
                              result.stop_reason or "", cmd))
            self._next = next(self._ticks)

    def csv_text(self) -> str:
        """ticks.csv: fixed formatting, no wall-clock values."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(self.rows)
        return buf.getvalue()


def load_backend(config: NodeConfig):
    """Create, load and warm up the configured backend (errors -> ReplayError)."""
    from ..backends import BackendError, create_backend
    from ..model.checkpoint import CheckpointError

    try:
        backend = create_backend(config.backend)
        backend.load()
        backend.warmup(config.backend.warmup_iters)
    except (BackendError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise ReplayError(f"cannot load backend {config.backend.backend!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    return backend


def run_eval(bag: str | Path, out: str | Path, config: NodeConfig, *,
             image_topic: str | None = None, command_topic: str | None = None,
             reference_topic: str | None = None, command: str | None = None,
             direction_threshold: float = 0.05, plot: bool = True,
             log=print, backend=None) -> dict:
    """Evaluate the configured policy on a bag; write ticks.csv, summary.json, plot.png.

    ``backend``: an already loaded backend to reuse (it is not closed); default: build one from
    ``config.backend``.
    """
    from ..core.control import ControlLoop
    from ..core.runtime import PolicyRuntime

    bag, out = Path(bag), Path(out)
    if not bag.exists():
        raise ReplayError(f"bag {str(bag)!r} does not exist")
    owned = backend is None
    command_topic = command_topic or config.topics.command_topic
    with bagio.reading(bag) as reader:  # the bag is checked before the model is loaded
        sel = select_topics(reader, config, image_topic, command_topic, reference_topic,
                            use_bag_commands=command is None)
        ignored = sum(c.msgcount for c in reader.connections if c.topic == command_topic)
        if command is not None and ignored:
            log(f"--command {command!r}: ignoring {ignored} command messages in the bag")
        if command is None and not sel.connections["command"]:
            raise ReplayError(f"bag {str(bag)!r} has no {bagio.STRING} messages on "
                              f"{command_topic}; pass --command TEXT (or --command-topic)")
        backend = load_backend(config) if owned else backend
        try:
            info = backend.describe()
            log(f"backend: {info.name} on {info.device}, {info.precision}; weights: "
                f"{info.model}")
            sim = Simulation(
                PolicyRuntime(backend, config.action, config.control.max_command_chars),
                ControlLoop(config.control, config.safety, backend.spec.chunk_step_period_s))
            loop = EvalLoop(sim, config.control.control_rate_hz, command)
            role_of = {(c.topic, c.msgtype): role for role, cs in sel.connections.items()
                       for c in cs}
            wanted = [c for cs in sel.connections.values() for c in cs]
            progress = Progress(sum(c.msgcount for c in wanted), f"eval {bag.name}")
            try:
                for conn, t_ns, raw in bagio.iter_messages(reader, wanted, bag):
                    loop.add(t_ns, role_of[(conn.topic, conn.msgtype)], conn, raw, reader)
                    progress.update()
                loop.flush(reader)
            finally:
                progress.close()
            if loop.start is None:
                raise ReplayError(f"bag {str(bag)!r} has no messages on {sel.image}")
            loop.tick_until(loop.last, inclusive=True)
        finally:
            if owned:
                backend.close()
    sim.counts.ticks = len(loop.rows)

    out.mkdir(parents=True, exist_ok=True)
    (out / "ticks.csv").write_text(loop.csv_text(), encoding="utf-8")
    pred = np.array(loop.preds).reshape(-1, 3)
    ref = np.array(loop.refs, dtype=np.float64).reshape(-1, 3)
    summary = {
        "bag": str(bag), "out": str(out), "time_model": TIME_MODEL,
        "topics": {"image": sel.image, "command": sel.command, "command_override": command,
                   "reference": sel.reference, "enable": sel.enable},
        "start_time_ns": loop.start, "duration_s": loop.seconds(loop.last),
        "control_rate_hz": loop.rate, "backend": info.as_values(),
        "counts": vars(sim.counts).copy(),
        "bad_image_errors": dict(sim.bad_image_errors.most_common(5)),
        "metrics": metrics(pred, ref, loop.commands, direction_threshold),
        "stops": {"events": dict(sorted(sim.control.stop_counts.items())),
                  "ticks": dict(sorted(Counter(s for s in loop.stops if s).items()))},
        "command_changes": [{"t": round(t, 4), "command": c} for t, c in loop.changes],
        "latency_ms": {"note": "wall clock on this machine; not deterministic, not in ticks.csv",
                       "preprocess": latency(sim.preprocess_ms),
                       "inference": latency(sim.inference_ms)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if plot:
        t_axis = np.array([float(r[0]) for r in loop.rows])
        write_plot(out / "plot.png", t_axis, pred, ref, loop.stops, loop.changes,
                   f"{bag.name}: {info.name} {config.backend.model_preset}")
    return summary


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
    """Percentiles (ms) of wall-clock samples."""
    if not samples:
        return {}
    data = np.asarray(samples, dtype=np.float64)
    out = {f"p{p}": round(float(v), 3)
           for p, v in zip(LATENCY_PERCENTILES, np.percentile(data, LATENCY_PERCENTILES),
                           strict=True)}
    out.update(max=round(float(data.max()), 3), mean=round(float(data.mean()), 3),
               count=int(data.size))
    return out


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
    if lat["inference"]:
        lines.append(f"latency ms (wall clock): preprocess p50 {lat['preprocess']['p50']:.1f} "
                     f"p95 {lat['preprocess']['p95']:.1f}; inference p50 "
                     f"{lat['inference']['p50']:.1f} p95 {lat['inference']['p95']:.1f}")
    lines.append(f"wrote {summary['out']}/ticks.csv, summary.json, plot.png")
    return "\n".join(lines)


# -- make-sample -----------------------------------------------------------------------------
def make_sample(out: str | Path, storage: str = "mcap", duration: float = 12.0,
                fps: float = 10.0, encoding: str = "rgb8", width: int = 320, height: int = 240,
                seed: int = 0, start_s: float = DEFAULT_START_S) -> dict:
    """A synthetic bag: instructions on /vla/command, frames, and the target Twist per frame."""
    from .. import synthetic

    timeline = synthetic.demo_timeline(duration, fps, seed)
    topic = ("/camera/image_raw/compressed" if encoding in bagio.COMPRESSED_FORMATS
             else "/camera/image_raw")
    base = int(round(start_s * 1e9))
    last = None
    counts: Counter = Counter()
    with _writer(out, storage) as w:
        for t, scene in timeline:
            t_ns = base + int(round(t * 1e9))
            if scene.instruction != last:
                w.write("/vla/command", bagio.STRING, t_ns, bagio.string_msg(scene.instruction))
                last = scene.instruction
                counts["/vla/command"] += 1
            msgtype, msg = bagio.frame_message(synthetic.render(scene, width, height),
                                               encoding, t_ns)
            w.write(topic, msgtype, t_ns, msg)
            w.write("/cmd_vel", bagio.TWIST, t_ns,
                    bagio.twist_msg(synthetic.target_velocity(scene)))
            counts[topic] += 1
            counts["/cmd_vel"] += 1
        w.writer.set_custom_data("vla_replay.source", f"make-sample seed={seed} "
                                 f"duration={duration} fps={fps} {width}x{height} {encoding}")
    return dict(counts)


def _writer(out, storage: str) -> bagio.BagWriter:
    try:
        return bagio.BagWriter(out, storage)
    except (FileExistsError, ValueError) as exc:
        raise ReplayError(str(exc)) from exc


# -- from-h5 ---------------------------------------------------------------------------------
@dataclass
class Episode:
    """One validated HDF5 episode (images are read lazily, frame by frame)."""

    path: Path
    name: str
    frames: int
    instruction: str | None
    events: list


def _h5_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        flat = [_h5_text(v) for v in value.reshape(-1)]
        return next((v for v in flat if v.strip()), "")
    return str(value)


def read_episode(f, path: Path, instruction: str | None) -> Episode:
    """Validate an open h5py file in the team's format; errors name the file and the key."""
    def bad(key: str, why: str) -> ReplayError:
        return ReplayError(f"{path}: dataset {key!r} {why}")

    for key in ("images", "actions"):
        if key not in f:
            raise bad(key, f"is missing (found: {sorted(f.keys())})")
        if not hasattr(f[key], "shape"):
            raise bad(key, "is a group, not a dataset")
    images, actions = f["images"], f["actions"]
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise bad("images", f"must be uint8 (T, H, W, 3) BGR, got {images.dtype} {images.shape}")
    if actions.ndim != 2 or actions.shape[1] != 3 or actions.dtype.kind != "f":
        raise bad("actions", f"must be float (T, 3) [linear_x, linear_y, angular_z], got "
                             f"{actions.dtype} {actions.shape}")
    frames = images.shape[0]
    if frames == 0:
        raise bad("images", "has no frames")
    if actions.shape[0] != frames:
        raise bad("actions", f"has {actions.shape[0]} rows but 'images' has {frames} frames")
    events: list = []
    if "action_event_types" in f:
        ds = f["action_event_types"]
        if ds.ndim != 1 or ds.shape[0] != frames:
            raise bad("action_event_types", f"must be ({frames},) strings, got {ds.shape}")
        events = [_h5_text(v) for v in ds[()]]
    if instruction is None:
        if "language_instruction" in f:
            instruction = _h5_text(f["language_instruction"][()]) or None
        elif "language_instruction" in f.attrs:
            instruction = _h5_text(f.attrs["language_instruction"]) or None
    name = _h5_text(f.attrs.get("episode_name", path.stem)) or path.stem
    return Episode(path, name, frames, instruction, events)


def convert_h5(paths: list[str | Path], out: str | Path, hold_s: float = 0.4,
               storage: str = "mcap", compress: str = "none", instruction: str | None = None,
               gap_s: float = 2.0, start_s: float = DEFAULT_START_S, log=print) -> dict:
    """Episodes -> one bag: frame i at t0 + i*hold, action i as /cmd_vel then a zero Twist."""
    import h5py

    if hold_s <= 0 or gap_s < 0:
        raise ReplayError(f"--hold-s {hold_s} must be > 0 and --gap-s {gap_s} >= 0")
    if compress not in ("none", "jpeg"):
        raise ReplayError(f"--compress {compress!r} must be none or jpeg")
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise ReplayError(f"h5 file {str(p)!r} does not exist")
    # Validate every file before writing anything.
    episodes = []
    for p in files:
        try:
            with h5py.File(p, "r") as f:
                episodes.append(read_episode(f, p, instruction))
        except OSError as exc:
            raise ReplayError(f"{p}: cannot open as HDF5: {exc}") from exc
    topic = "/camera/image_raw/compressed" if compress == "jpeg" else "/camera/image_raw"
    hold_ns, t_ns = int(round(hold_s * 1e9)), int(round(start_s * 1e9))
    report = {"episodes": [], "bag": str(out)}
    writer = _writer(out, storage)
    try:
        with writer as w:
            for ep in episodes:
                if not ep.instruction:
                    log(f"warning: {ep.path}: no language_instruction (dataset or attribute) "
                        "and no --instruction; the bag has no command for this episode")
                end = _write_episode(w, ep, t_ns, hold_ns, topic, compress)
                report["episodes"].append({"file": str(ep.path), "name": ep.name,
                                           "frames": ep.frames, "instruction": ep.instruction,
                                           "start_s": t_ns / 1e9, "end_s": end / 1e9,
                                           "events": dict(Counter(ep.events))})
                t_ns = end + int(round(gap_s * 1e9))
            w.writer.set_custom_data("vla_replay.source", json.dumps(
                [e["file"] for e in report["episodes"]]))
    except BaseException:
        shutil.rmtree(writer.path, ignore_errors=True)  # no half-written bag (we created it)
        raise
    return report


def _write_episode(w: bagio.BagWriter, ep: Episode, t0: int, hold_ns: int, topic: str,
                   compress: str) -> int:
    """Command at t0, frame + reference Twist every hold, zero Twist at the end; return end."""
    import h5py

    if ep.instruction:
        w.write("/vla/command", bagio.STRING, t0, bagio.string_msg(ep.instruction))
    with h5py.File(ep.path, "r") as f:
        images, actions = f["images"], np.asarray(f["actions"][()], dtype=np.float64)
        for i in range(ep.frames):
            t = t0 + i * hold_ns
            try:
                bgr = np.asarray(images[i])
            except OSError as exc:
                raise ReplayError(f"{ep.path}: dataset 'images' frame {i} cannot be read "
                                  f"(damaged file?): {exc}") from exc
            if compress == "jpeg":
                data, fmt = bagio.encode_bgr(bgr, "jpeg")
                w.write(topic, bagio.COMPRESSED, t, bagio.compressed_msg(data, fmt, t))
            else:
                w.write(topic, bagio.IMAGE, t, bagio.raw_image_msg(bgr, "bgr8", t))
            w.write("/cmd_vel", bagio.TWIST, t, bagio.twist_msg(actions[i]))
    end = t0 + ep.frames * hold_ns
    w.write("/cmd_vel", bagio.TWIST, end, bagio.twist_msg((0.0, 0.0, 0.0)))
    return end


# -- play ------------------------------------------------------------------------------------
def _require(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReplayError(f"{module} is not importable ({exc}); {hint}") from exc


def ros_qos(kind: str):
    """The node's QoS (node.py CAMERA_QOS / LATCHED_QOS; others reliable; record: depth 100)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if kind == "camera":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
    if kind == "latched":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100 if kind == "record" else 10,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def ros_class(msgtype: str):
    """The rclpy message class for 'pkg/msg/Name', or None if that package is not installed."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        return None


@dataclass
class PlayClock:
    """Playback time: bag time of the first played message + (wall elapsed x rate).

    Header stamps are re-stamped to "now" by default because the live node measures transport
    and end-to-end latency as (its clock at receipt - header stamp) and reports them in
    diagnostics: recorded stamps are minutes to months old and would read as huge latencies.
    "Now" is the playback time when /clock is published (the node then runs on it with
    use_sim_time), otherwise the system time (the node's clock). Recorded messages are stamped
    with playback time, so a --record bag lines up with the played bag and with eval's ticks.csv.
    """

    bag_start_ns: int
    rate: float
    wall0: float = 0.0

    def start(self) -> None:
        """Playback time starts now at ``bag_start_ns``."""
        self.wall0 = time.monotonic()

    def now_ns(self) -> int:
        """Current playback time."""
        return self.bag_start_ns + int((time.monotonic() - self.wall0) * self.rate * 1e9)

    def wall_at(self, playback_ns: int) -> float:
        """Monotonic wall time at which ``playback_ns`` is reached."""
        return self.wall0 + (playback_ns - self.bag_start_ns) / 1e9 / self.rate


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_play(args) -> int:
    """Publish a bag's node inputs live; optionally /clock and a recording of the outputs."""
    rclpy = _require("rclpy", "source ROS 2 (apt: ros-humble-rclpy) or pip install ros-rclpy")
    if args.clock is not None:
        _require("rosgraph_msgs.msg", "--clock needs rosgraph_msgs, a dependency of rclpy "
                 "(apt: ros-humble-rosgraph-msgs, pip: ros-rosgraph-msgs)")
    if args.rate <= 0 or (args.clock is not None and args.clock <= 0):
        raise ReplayError(f"--rate {args.rate} and --clock {args.clock} must be > 0")
    bag = Path(args.bag)
    config = build_config(args.params_file, {}, [])
    with bagio.reading(bag) as reader:
        conns, skipped = _play_connections(reader, args, config)
        first_ns, end_ns = reader.start_time, reader.end_time
        recorder = _writer(args.record, args.record_storage) if args.record else None
        start_ns = first_ns + int(round(args.start_offset * 1e9))
        clock = PlayClock(start_ns, args.rate)
        published: Counter = Counter()
        recorded: Counter = Counter()
        interrupted = False
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        # Our own SIGINT handling: rclpy's would shut the context down before the recording's
        # trailing second; SIGTERM ends the same way.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Ctrl-C even where SIGINT was inherited as ignored (a background job of a script).
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        node = None
        try:
            node = rclpy.create_node("vla_replay_play")
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            publishers = {}
            for c in conns:
                if c.topic not in publishers:
                    kind = bagio.qos_kind(c.topic, c.msgtype, config.topics.command_topic)
                    publishers[c.topic] = node.create_publisher(ros_class(c.msgtype), c.topic,
                                                                ros_qos(kind))
            clock_pub = None
            if args.clock is not None:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", ros_qos("reliable"))
            if recorder is not None:
                recorder.open()
                _record(node, recorder, args.record_topics, config, clock, recorded)
            player = _Player(publishers, clock, clock_pub, args, node, executor, published)
            try:
                _wait_for_peers(node, executor, publishers, args, config, recorder is not None)
                clock.start()
                loop = 0
                while True:
                    player.play_pass(reader, conns, start_ns,
                                     loop * (end_ns - start_ns + int(0.1e9)))
                    loop += 1
                    if not args.loop:
                        break
            except KeyboardInterrupt:
                interrupted = True
                print("interrupted; stopping", file=sys.stderr)
            try:
                player.spin_until(time.monotonic() + args.tail_s)  # trailing outputs
            except KeyboardInterrupt:
                interrupted = True
        finally:
            if recorder is not None:
                recorder.close()
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    played = ", ".join(f"{t} {n}" for t, n in sorted(published.items()))
    print(f"played {sum(published.values())} messages ({played}) from {bag} at rate "
          f"{args.rate:g}{' (interrupted)' if interrupted else ''}")
    if recorder is not None:
        rec = ", ".join(f"{t} {recorded[t]}" for t in args.record_topics)
        print(f"recorded {sum(recorded.values())} messages ({rec}) to {args.record} "
              f"({args.record_storage}, stamped with playback time)")
    if skipped:
        print(f"not played: {skipped} (use --topics to choose)")
    return 130 if interrupted else 0


def _play_connections(reader, args, config) -> tuple[list, list]:
    """The connections to publish (default: the node's inputs) and the topics left out."""
    table = bagio.topic_table(reader)
    default = {config.topics.image_topic, config.topics.compressed_image_topic,
               config.topics.command_topic, config.topics.enable_topic}
    wanted = set(args.topics) if args.topics else default
    conns = [c for c in reader.connections if c.topic in wanted and ros_class(c.msgtype)]
    missing = sorted(set(args.topics or ()) - {c.topic for c in conns})
    if missing:
        raise ReplayError(f"--topics {missing} not in bag or their message packages are not "
                          f"importable; bag topics: {[f'{t} [{m}]' for t, m, _ in table]}")
    if not conns:
        raise ReplayError(f"none of the node's input topics {sorted(default)} is in bag "
                          f"{str(args.bag)!r}; bag topics: {[t for t, _, _ in table]}; use "
                          "--topics")
    if args.record and set(args.topics or ()) & set(args.record_topics):
        print("warning: playing a topic that is also recorded; the recording mixes both",
              file=sys.stderr)
    played = {c.topic for c in conns}
    return conns, sorted({t for t, _, _ in table} - played)


def _record(node, recorder, topics: list[str], config, clock, recorded: Counter) -> None:
    """Raw subscriptions writing straight into the output bag at playback time."""
    types = {config.topics.cmd_vel_topic: bagio.TWIST, "/diagnostics": bagio.DIAGNOSTICS}
    for topic in topics:
        msgtype = types.get(topic) or _graph_type(node, topic)
        if msgtype is None or ros_class(msgtype) is None:
            raise ReplayError(f"--record-topics {topic!r}: unknown message type (only "
                              f"{sorted(types)} are known before the topic appears)")

        def on_msg(data, topic=topic, msgtype=msgtype):
            if clock.wall0:  # recording starts with playback
                recorder.write_raw(topic, msgtype, clock.now_ns(), data)
                recorded[topic] += 1

        node.create_subscription(ros_class(msgtype), topic, on_msg, ros_qos("record"), raw=True)


def _graph_type(node, topic: str) -> str | None:
    for name, types in node.get_topic_names_and_types():
        if name == topic and types:
            return types[0]
    return None


def _wait_for_peers(node, executor, publishers, args, config, recording: bool) -> None:
    """Up to --wait-for-subscribers s: every input publisher matched (and /cmd_vel published)."""
    if args.wait_for_subscribers <= 0:
        return
    deadline = time.monotonic() + args.wait_for_subscribers
    while time.monotonic() < deadline:
        ready = all(p.get_subscription_count() > 0 for p in publishers.values())
        if recording:
            ready = ready and node.count_publishers(config.topics.cmd_vel_topic) > 0
        if ready:
            end = time.monotonic() + 0.5  # let the matching settle both ways
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            return
        executor.spin_once(timeout_sec=0.05)
    print(f"warning: no subscriber on {sorted(publishers)} after {args.wait_for_subscribers:g} s;"
          " playing anyway", file=sys.stderr)


class _Player:
    """Publishes one pass of the bag at playback time, spinning (recording, /clock) meanwhile."""

    def __init__(self, publishers, clock: PlayClock, clock_pub, args, node, executor,
                 published: Counter):
        from rclpy.serialization import deserialize_message

        self.publishers, self.clock, self.clock_pub = publishers, clock, clock_pub
        self.args, self.node, self.executor, self.published = args, node, executor, published
        self.deserialize = deserialize_message
        self.clock_period = 1.0 / args.clock if args.clock else 0.0
        self.next_clock = 0.0

    def publish_clock(self, ns: int) -> None:
        """One rosgraph_msgs/Clock."""
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(ns // 10**9), int(ns % 10**9)
        self.clock_pub.publish(msg)

    def spin_until(self, wall_target: float) -> None:
        """Serve subscriptions (and publish /clock) until the monotonic time ``wall_target``."""
        while True:
            now = time.monotonic()
            if self.clock_pub is not None and now >= self.next_clock:
                self.publish_clock(self.clock.now_ns())
                self.next_clock = now + self.clock_period
            remaining = wall_target - now
            if remaining <= 0:
                return
            wait = min(remaining, 0.01)
            if self.clock_pub is not None:
                wait = min(wait, max(self.next_clock - now, 0.0))
            self.executor.spin_once(timeout_sec=wait)

    def send(self, conn, raw, playback_ns: int) -> None:
        """Deserialize, re-stamp (unless --keep-stamps) and publish one message."""
        msg = self.deserialize(bytes(raw), ros_class(conn.msgtype))
        if not self.args.keep_stamps and hasattr(msg, "header"):
            ns = (playback_ns if self.clock_pub is not None
                  else self.node.get_clock().now().nanoseconds)
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(ns // 10**9), int(ns % 10**9)
        self.publishers[conn.topic].publish(msg)
        self.published[conn.topic] += 1

    def play_pass(self, reader, conns, start_ns: int, offset: int) -> None:
        """One pass; the newest latched message before --start-offset is sent at the start."""
        latched: dict = {}
        group: list = []

        def flush():
            playback_ns = group[0][1] + offset
            self.spin_until(self.clock.wall_at(playback_ns))
            if self.clock_pub is not None:
                self.publish_clock(playback_ns)
            for conn, _, raw in sorted(group, key=lambda g: _play_priority(g[0])):
                self.send(conn, raw, playback_ns)
            group.clear()

        for conn, t_ns, raw in bagio.iter_messages(reader, conns, self.args.bag):
            if t_ns < start_ns:
                if self.publishers[conn.topic].qos_profile.durability.name == "TRANSIENT_LOCAL":
                    latched[conn.topic] = (conn, raw)
                continue
            for conn0, raw0 in latched.values():
                self.send(conn0, raw0, start_ns + offset)
            latched.clear()
            if group and group[0][1] != t_ns:
                flush()
            group.append((conn, t_ns, raw))
        if group:
            flush()


def _play_priority(conn) -> int:
    if conn.msgtype in bagio.IMAGE_TYPES:
        return PRIORITY["image"]
    return PRIORITY["command"] if conn.msgtype == bagio.STRING else PRIORITY["enable"]


# -- CLI -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The vla_replay argument parser."""
    parser = argparse.ArgumentParser(prog="vla_replay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    ev = sub.add_parser("eval", help="evaluate the policy on a bag offline (deterministic)",
                        description=TIME_MODEL)
    ev.add_argument("bag", help="bag folder or .mcap/.db3 file")
    ev.add_argument("--out", required=True, help="output folder (ticks.csv, summary.json, "
                                                 "plot.png)")
    ev.add_argument("--params-file", help="ROS 2 params YAML (/**: ros__parameters:)")
    ev.add_argument("--backend", help="torch, onnx, tensorrt or null")
    ev.add_argument("--model-preset")
    ev.add_argument("--model-path")
    ev.add_argument("--device")
    ev.add_argument("--control-rate-hz", type=float)
    ev.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any node parameter (YAML value), repeatable")
    ev.add_argument("--image-topic", help="default: the node's image topic, then the compressed "
                                          "one")
    ev.add_argument("--command-topic", help="default: the node's command topic (/vla/command)")
    ev.add_argument("--reference-topic", default="/cmd_vel",
                    help="recorded Twist to compare with (default /cmd_vel)")
    ev.add_argument("--command", help="instruction to use from the start (bag commands are "
                                      "then ignored); needed when the bag has none")
    ev.add_argument("--direction-threshold", type=float, default=0.05,
                    help="|reference| above which direction agreement is counted")
    ev.add_argument("--no-plot", action="store_true")

    pl = sub.add_parser("play", help="publish a bag's node inputs live (rclpy)")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0)
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--start-offset", type=float, default=0.0, metavar="S")
    pl.add_argument("--clock", type=float, nargs="?", const=100.0, default=None, metavar="HZ",
                    help="publish /clock (default 100 Hz) for nodes with use_sim_time:=true")
    pl.add_argument("--keep-stamps", action="store_true",
                    help="publish recorded header stamps instead of re-stamping to now")
    pl.add_argument("--topics", nargs="+", help="topics to play (default: the node's inputs "
                                                "present in the bag: images, command, enable)")
    pl.add_argument("--params-file", help="node params YAML (topic names)")
    pl.add_argument("--record", metavar="OUT", help="record the node's outputs into bag OUT")
    pl.add_argument("--record-storage", choices=bagio.STORAGES, default="mcap")
    pl.add_argument("--record-topics", nargs="+", default=["/cmd_vel", "/diagnostics"])
    pl.add_argument("--tail-s", type=float, default=1.0,
                    help="keep recording this long after the last message")
    pl.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                    help="wait up to S s for the node to subscribe before playing")

    h5 = sub.add_parser("from-h5", help="convert HDF5 episodes to a bag")
    h5.add_argument("episodes", nargs="+", help="EPISODE.h5 files, played one after another")
    h5.add_argument("--out", required=True, help="output bag folder")
    h5.add_argument("--hold-s", type=float, default=0.4, help="seconds each key press is held")
    h5.add_argument("--gap-s", type=float, default=2.0, help="pause between episodes")
    h5.add_argument("--storage", choices=bagio.STORAGES, default="mcap")
    h5.add_argument("--compress", choices=("none", "jpeg"), default="none")
    h5.add_argument("--instruction", help="instruction for all episodes (overrides the files')")

    ms = sub.add_parser("make-sample", help="write a synthetic sample bag")
    ms.add_argument("--out", required=True)
    ms.add_argument("--storage", choices=bagio.STORAGES, default="mcap")
    ms.add_argument("--duration", type=float, default=12.0)
    ms.add_argument("--fps", type=float, default=10.0)
    ms.add_argument("--encoding", choices=bagio.RAW_ENCODINGS + bagio.COMPRESSED_FORMATS,
                    default="rgb8")
    ms.add_argument("--width", type=int, default=320)
    ms.add_argument("--height", type=int, default=240)
    ms.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla_replay``."""
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "eval":
            config = build_config(args.params_file, {
                "backend": args.backend, "model_preset": args.model_preset,
                "model_path": args.model_path, "device": args.device,
                "control_rate_hz": args.control_rate_hz}, args.param)
            summary = run_eval(args.bag, args.out, config, image_topic=args.image_topic,
                               command_topic=args.command_topic,
                               reference_topic=args.reference_topic, command=args.command,
                               direction_threshold=args.direction_threshold,
                               plot=not args.no_plot,
                               log=lambda s: print(s, file=sys.stderr))
            print(format_summary(summary))
        elif args.cmd == "play":
            return run_play(args)
        elif args.cmd == "from-h5":
            report = convert_h5(args.episodes, args.out, args.hold_s, args.storage,
                                args.compress, args.instruction, args.gap_s,
                                log=lambda s: print(s, file=sys.stderr))
            t0 = report["episodes"][0]["start_s"]
            for ep in report["episodes"]:
                events = ", ".join(f"{k} {v}" for k, v in ep["events"].items())
                print(f"{ep['file']}: {ep['frames']} frames at {ep['start_s'] - t0:.1f}-"
                      f"{ep['end_s'] - t0:.1f} s, instruction {ep['instruction']!r}"
                      + (f", events: {events}" if events else ""))
            print(f"wrote {report['bag']} ({args.storage}, {len(report['episodes'])} episodes)")
        else:
            counts = make_sample(args.out, args.storage, args.duration, args.fps, args.encoding,
                                 args.width, args.height, args.seed)
            print(f"wrote {args.out} ({args.storage}): " + ", ".join(
                f"{t} {n}" for t, n in sorted(counts.items())))
    except (ReplayError, BagError) as exc:
        print(f"vla_replay {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla_replay {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
