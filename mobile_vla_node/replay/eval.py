"""``vla_replay eval``: the node's core driven by bag time, offline and deterministic.

Time model ("zero latency"): an image received at bag time ``t`` is inferred at once and its
chunk is available at ``t``; control ticks run every ``1 / control_rate_hz`` of bag time. Eval
measures the policy, not the compute (wall-clock latencies go to summary.json only).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import NodeConfig
from ..core.control import ControlLoop
from ..core.inputs import InputRules
from ..core.pipeline import BAD_IMAGE, DISCARDED, INFERENCE_ERROR, FramePipeline
from ..core.progress import CountBar
from ..core.runtime import PolicyRuntime
from . import bagio
from .frames import BagError
from .metrics import latency, metrics
from .params import ReplayError
from .plot import write_plot

CSV_HEADER = ("t", "pred_linear_x", "pred_linear_y", "pred_angular_z", "ref_linear_x",
              "ref_linear_y", "ref_angular_z", "stop_reason", "command")
TIME_MODEL = ("zero-latency: each image is received, inferred and its chunk made available at its "
              "bag time; control ticks every 1/control_rate_hz of bag time from the first to the "
              "last message; messages at equal times: enable, command, image, reference, then "
              "the tick. Eval measures the policy, not the compute; wall-clock latencies are "
              "reported separately and are not deterministic.")
# Messages with equal timestamps are handled in this order (the tick at that time comes last).
PRIORITY = {"enable": 0, "command": 1, "image": 2, "reference": 3}


@dataclass
class EvalCounts:
    """What happened during an eval (all deterministic)."""

    images: int = 0
    bad_images: int = 0
    steps: int = 0
    discarded_steps: int = 0
    inference_errors: int = 0
    commands: int = 0
    rejected_commands: int = 0
    references: int = 0
    enables: int = 0
    ticks: int = 0


@dataclass
class Simulation:
    """The node's input handling around the shared core, driven by bag time (seconds).

    Uses `core.inputs.InputRules` and `core.pipeline.FramePipeline`, the same rules and frame
    pipeline as the node; an image's step runs at once (zero latency), so its chunk is ready at
    the image's bag time.
    """

    runtime: object
    control: object
    counts: EvalCounts = field(default_factory=EvalCounts)
    preprocess_ms: list = field(default_factory=list)
    inference_ms: list = field(default_factory=list)
    bad_image_errors: Counter = field(default_factory=Counter)
    inference_errors: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.rules = InputRules(self.runtime, self.control)
        self.pipeline = FramePipeline(self.rules)

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
        """Receive and process one image at bag time ``t`` (its chunk is ready at ``t``)."""
        self.counts.images += 1
        if not self.rules.receive_image(msg, t):
            self._bad_image(self.rules.last_input_error)
            return
        outcome = self.pipeline.process(msg, stamp=t, now=t, transport_ms=0.0)
        if outcome.status == BAD_IMAGE:
            self._bad_image(outcome.error)
        elif outcome.status == INFERENCE_ERROR:
            self.counts.inference_errors += 1
            self.inference_errors[outcome.error] += 1
        elif outcome.status == DISCARDED:
            self.counts.discarded_steps += 1
        else:
            self.counts.steps += 1
            self.preprocess_ms.append(outcome.meta.preprocess_ms)
            self.inference_ms.append(outcome.meta.inference_ms)

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
    topics = config.topics.absolute()  # a bag holds absolute names (relative ones: root ns)
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
    bag, out = Path(bag), Path(out)
    if not bag.exists():
        raise ReplayError(f"bag {str(bag)!r} does not exist")
    owned = backend is None
    command_topic = command_topic or config.topics.absolute().command_topic
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
            progress = CountBar(sum(c.msgcount for c in wanted), f"eval {bag.name}")
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
        "inference_errors": dict(sim.inference_errors.most_common(5)),
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
