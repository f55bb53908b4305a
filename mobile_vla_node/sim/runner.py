"""Closed loop: the real node, in its own process over DDS, drives the simulated robot.

Time. The sim owns ``/clock``; the node runs with ``use_sim_time`` and ticks on it. Two modes:

* **lockstep** (default): the sim advances ``/clock`` one control period at a time and waits for
  the node's Twist of that tick; after publishing a camera frame it waits until the node reports
  the frame processed (its ``/diagnostics`` counters: steps + discarded + errors, published every
  ``diagnostics_period_s`` = 0.05 s of steady time) before moving the clock on. Inference then
  takes no sim time: a frame taken at tick k drives the robot from tick k + 1 on, plus any
  ``latency_ms`` added between camera and node (in sim time). The outcome no longer depends on
  CPU load, so the same seed gives the same episode on every run. ``real_time_factor`` is then an
  upper bound (the sim never runs faster than that). While it waits, the sim nudges ``/clock`` by
  1 us every 0.2 s so the node's stall detection (``/clock`` paused longer than
  ``image_timeout_s`` of steady time) does not fire during a slow inference.
* **free-running** (``lockstep=False``): the sim keeps ``real_time_factor`` on the wall clock and
  never waits; the node's real inference time and the machine's load then shape the episode
  (used to measure the largest real_time_factor this machine sustains).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .episode import EpisodeResult, Judge
from .suites import Episode, Suite
from .world import BaseLimits, SimError, World

CLOCK_START_NS = 1_000_000_000
OFFSET_NS = 500_000  # ticks are published 0.5 ms after their deadline (float-safe scheduling)
NUDGE_S = 0.05  # while waiting for the node, /clock moves by 1 us this often (stall detector)


@dataclass
class SimConfig:
    """How the sim runs (parameters of `vla_sim`)."""

    width: int = 320
    height: int = 240
    camera_hz: float = 10.0
    control_rate_hz: float = 20.0
    real_time_factor: float = 1.0
    lockstep: bool = True
    latency_ms: float = 0.0
    camera_noise: float = 0.0       # std of per-pixel sensor noise (uint8 levels), seeded
    seed: int = 0
    dropout: tuple | None = None    # (start_s, duration_s): no camera frames
    estop: tuple | None = None      # (start_s, duration_s): /vla/enable false, then true
    limits: BaseLimits = field(default_factory=BaseLimits)
    sync_timeout_s: float = 30.0
    frames_out: int = 0             # keep this many onboard frames (GIF) of the first episode

    def __post_init__(self):
        if not 0.01 <= self.real_time_factor <= 100:
            raise SimError(f"real_time_factor={self.real_time_factor!r} must be in 0.01..100")
        if not 0.5 <= self.camera_hz <= 100 or not 1 <= self.control_rate_hz <= 200:
            raise SimError(f"camera_hz={self.camera_hz!r} (0.5..100) or control_rate_hz="
                           f"{self.control_rate_hz!r} (1..200) out of range")
        ratio = self.control_rate_hz / self.camera_hz
        if abs(ratio - round(ratio)) > 1e-6:
            raise SimError(f"control_rate_hz {self.control_rate_hz:g} must be a whole multiple "
                           f"of camera_hz {self.camera_hz:g} (the sim steps per control period)")
        if self.latency_ms < 0:
            raise SimError(f"latency_ms={self.latency_ms!r} must be >= 0")

    @property
    def control_dt(self) -> float:
        """Seconds per control period."""
        return 1.0 / self.control_rate_hz

    @property
    def ticks_per_frame(self) -> int:
        """Control periods per camera frame."""
        return int(round(self.control_rate_hz / self.camera_hz))


def node_params(cfg: SimConfig, backend: str, model_path: str, extra: dict | None = None) -> dict:
    """The node's parameters for a sim run: robot.yaml's, plus sim time and these."""
    params = {"use_sim_time": True, "backend": backend, "control_rate_hz": cfg.control_rate_hz,
              "diagnostics_period_s": 0.05, "control_thread_priority": 0}
    if model_path:
        params["model_path"] = model_path
    params.update(extra or {})
    return params


def robot_params_file() -> Path | None:
    """config/robot.yaml (source tree or installed share/), the robot's parameters."""
    import sys

    for p in (Path(__file__).resolve().parents[2] / "config" / "robot.yaml",
              Path(sys.prefix) / "share" / "mobile_vla_node" / "config" / "robot.yaml"):
        if p.is_file():
            return p
    return None


class NodeProcess:
    """The node under test in its own process (``ros/process.py`` helpers)."""

    def __init__(self, params: dict, log_dir: Path, env: dict):
        import subprocess

        from ..ros.process import node_argv

        extra = []
        robot = robot_params_file()
        if robot is not None:
            extra = ["--params-file", str(robot)]
        self.log = log_dir / "node.log"
        self.params = params
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(node_argv(params, extra), stdout=out,
                                         stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> int:
        """SIGINT like Ctrl-C; kill if it hangs."""
        from ..ros.process import stop_node

        return stop_node(self.proc, timeout=15.0)


INPUT_COUNTERS = ("frames_received", "frames_dropped")


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _stop_counts(text: str) -> dict:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text or "")}


class ClosedLoop:
    """Steps the world and the node's clock together; one instance per node process."""

    def __init__(self, bridge, world: World, cfg: SimConfig, node: NodeProcess | None = None):
        self.bridge, self.world, self.cfg, self.node = bridge, world, cfg, node
        self.dt_ns = int(round(cfg.control_dt * 1e9))
        self.k = 0                      # control periods since the clock started
        self.frames_sent = 0
        self.frames_done_base = 0
        self.wall0 = time.monotonic()
        self.sim0 = 0.0
        self.queue: list = []           # (release_ns, image msg) for added latency
        self.rng = np.random.default_rng(cfg.seed)

    # -- time ---------------------------------------------------------------------------------
    def now_ns(self) -> int:
        """ROS time of the current tick."""
        return CLOCK_START_NS + self.k * self.dt_ns + (OFFSET_NS if self.k else 0)

    def frames_done(self) -> int:
        """Frames the node finished (any outcome), from its diagnostics."""
        b = self.bridge
        total = 0
        for status, key in (("inference", "steps"), ("inference", "discarded_steps"),
                            ("inference", "inference_errors"), ("inputs", "malformed_images")):
            try:
                total += int(b.diag_value(status, key, 0))
            except (TypeError, ValueError):
                pass
        return total

    def _alive(self) -> None:
        if self.node is not None and not self.node.alive():
            raise SimError("the node exited; its log:\n" + self.node.tail())

    def start(self, timeout: float) -> None:
        """Wait for the node to be active, then start the clock (first tick)."""
        b = self.bridge
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._alive()
            if b.diag_value("control", "lifecycle_state") == "active":
                break
            time.sleep(0.1)
        else:
            raise SimError(f"the node did not become active in {timeout:g} s; its log:\n" +
                           (self.node.tail() if self.node else ""))
        n = b.twist_count
        b.publish_clock(self.now_ns())
        if not b.wait(lambda: b.twist_count > n, 10.0):
            raise SimError("the node published no Twist after the first /clock")
        self.frames_done_base = self.frames_done()
        self.wall0, self.sim0 = time.monotonic(), self.k * self.cfg.control_dt

    def tick(self) -> np.ndarray:
        """Advance ``/clock`` one control period; the Twist the node published for it."""
        b, cfg = self.bridge, self.cfg
        self.k += 1
        if cfg.real_time_factor > 0:  # never faster than real_time_factor
            due = self.wall0 + (self.k * cfg.control_dt - self.sim0) / cfg.real_time_factor
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        n = b.twist_count
        b.publish_clock(self.now_ns())
        if cfg.lockstep:
            end = time.monotonic() + cfg.sync_timeout_s
            while not b.wait(lambda: b.twist_count > n, 0.5):
                self._alive()
                if time.monotonic() > end:
                    raise SimError(f"no Twist from the node for tick {self.k} in "
                                   f"{cfg.sync_timeout_s:g} s")
                b.publish_clock(self.now_ns())  # /clock is best effort: send it again
        with b.cond:
            return b.twist.copy()

    def send_frame(self, rgb: np.ndarray) -> None:
        """Stamp a camera frame now; publish it now or after the added latency."""
        if self.cfg.camera_noise > 0:
            noise = self.rng.normal(0.0, self.cfg.camera_noise, rgb.shape)
            rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
        stamp = self.now_ns()
        msg = self.bridge.image_msg(rgb, stamp)
        self.queue.append((stamp + int(round(self.cfg.latency_ms * 1e6)), msg))
        self.release_frames()

    def release_frames(self) -> None:
        """Publish the queued frames whose time has come (lockstep: wait until processed)."""
        now = self.now_ns()
        while self.queue and self.queue[0][0] <= now + OFFSET_NS:
            _, msg = self.queue.pop(0)
            self._publish_frame(msg)

    def _publish_frame(self, msg) -> None:
        b, cfg = self.bridge, self.cfg
        self.frames_sent += 1
        b.publish_image(msg)
        if not cfg.lockstep:
            return
        want = self.frames_done_base + self.frames_sent
        end = time.monotonic() + cfg.sync_timeout_s
        nudge = 0
        resent = False
        while not b.wait(lambda: self.frames_done() >= want, NUDGE_S):
            self._alive()
            if time.monotonic() > end:
                raise SimError(f"the node did not process frame {self.frames_sent} in "
                               f"{cfg.sync_timeout_s:g} s")
            nudge += 1
            b.publish_clock(self.now_ns() + nudge * 1000)  # keep the stall detector quiet
            if nudge % int(10 / NUDGE_S) == 0:  # 10 s: the frame (best effort) was lost? resend
                print(f"    (resending frame {self.frames_sent}: done {self.frames_done()} of "
                      f"{want})", flush=True)
                b.publish_image(msg)
                resent = True
        if resent:  # the first copy may still be processed: count from what the node says
            time.sleep(0.5)
            self.frames_done_base = self.frames_done() - self.frames_sent

    def settle_diagnostics(self, check, timeout: float = 10.0) -> bool:
        """Wait until the node's diagnostics satisfy ``check()`` (lockstep bookkeeping)."""
        end = time.monotonic() + timeout
        nudge = 0
        while time.monotonic() < end:
            if check():
                return True
            self._alive()
            time.sleep(0.02)
            nudge += 1
            if nudge % 3 == 0:
                self.bridge.publish_clock(self.now_ns() + nudge * 1000)
        return False

    # -- one episode --------------------------------------------------------------------------
    def prepare(self, episode: Episode) -> None:
        """E-stop, reset the history, send the instruction, place the world, enable."""
        b = self.bridge
        self.queue.clear()
        b.publish_enable(False)
        self.settle_diagnostics(lambda: b.diag_value("control", "enabled") == "False")
        for _ in range(3):  # zeros through the node's limiter
            self.tick()
        b.publish_command(episode.instruction)
        self.settle_diagnostics(lambda: b.diag_value("inputs", "command") ==
                                episode.instruction)
        if not b.reset_history():
            raise SimError("the node's ~/reset service did not answer")
        self.world.reset(episode)
        b.publish_enable(True)
        self.settle_diagnostics(lambda: b.diag_value("control", "enabled") == "True")
        self.tick()
        self.frames_done_base = self.frames_done() - self.frames_sent

    def run(self, suite: str, episode: Episode, frames: list | None = None) -> EpisodeResult:
        """One episode through the node; ``frames`` collects onboard images if given."""
        b, cfg, world = self.bridge, self.cfg, self.world
        wall = time.perf_counter()
        self.prepare(episode)
        judge = Judge(suite, episode)
        timing0 = len(b.timings)
        sent0 = self.frames_sent
        twists0 = b.twist_count
        counts0 = _stop_counts(b.diag_value("control", "stop_counts", ""))
        inputs0 = {k2: _int(b.diag_value("inputs", k2)) for k2 in INPUT_COUNTERS}
        zeros = 0
        k = 0
        estopped = False
        while True:
            t = k * cfg.control_dt
            if k % cfg.ticks_per_frame == 0:
                dropped = cfg.dropout is not None and \
                    cfg.dropout[0] <= t < cfg.dropout[0] + cfg.dropout[1]
                if not dropped:
                    rgb = world.render()
                    if frames is not None and len(frames) < cfg.frames_out:
                        frames.append(rgb)
                    self.send_frame(rgb)
                elif not any(e["event"] == "dropout" for e in judge.result.events):
                    judge.result.events.append({"t": round(t, 3), "event": "dropout"})
            self.release_frames()
            if cfg.estop is not None:
                want_stop = cfg.estop[0] <= t < cfg.estop[0] + cfg.estop[1]
                if want_stop != estopped:
                    estopped = want_stop
                    b.publish_enable(not want_stop)
                    if cfg.lockstep:
                        self.settle_diagnostics(lambda s=want_stop: b.diag_value(
                            "control", "enabled") == str(not s))
                    judge.result.events.append({"t": round(t, 3), "event": "estop" if
                                                want_stop else "enable"})
            world.step(cfg.control_dt)
            k += 1
            outcome = judge.update(world, k * cfg.control_dt)
            if outcome:
                break
            twist = self.tick()
            zeros += int(not np.any(twist))
            world.set_command(twist)
            judge.result.trajectory[-1].append([round(float(v), 4) for v in twist])
        r = judge.result
        timings = np.array(b.timings[timing0:], dtype=np.float64).reshape(-1, 4)
        counts1 = _stop_counts(b.diag_value("control", "stop_counts", ""))
        ticks = b.twist_count - twists0
        sent = self.frames_sent - sent0
        r.node = {
            "ticks": ticks,
            "control_rate_hz": round(ticks / max(r.time_s, 1e-9), 2),
            "steps": int(len(timings)),
            "zero_twists": zeros,
            "frames_sent": sent,
            **{k2: _int(b.diag_value("inputs", k2)) - inputs0[k2] for k2 in INPUT_COUNTERS},
            "stops_by_cause": {k2: counts1.get(k2, 0) - counts0.get(k2, 0) for k2 in counts1
                               if counts1.get(k2, 0) - counts0.get(k2, 0) > 0},
        }
        # The node saw /clock stand still longer than image_timeout_s of steady time (a loaded
        # machine): it published stall zeros and reset its limiter, so this episode may differ
        # from an unloaded run of the same seed.
        r.node["reproducible"] = "clock_stalled" not in r.node["stops_by_cause"]
        for i, stage in enumerate(("transport", "preprocess", "inference", "end_to_end")):
            col = timings[:, i] if len(timings) else np.zeros(0)
            col = col[np.isfinite(col)]
            if len(col):
                r.node[f"{stage}_ms"] = {"p50": round(float(np.percentile(col, 50)), 2),
                                         "p95": round(float(np.percentile(col, 95)), 2),
                                         "max": round(float(col.max()), 2)}
        r.wall_s = round(time.perf_counter() - wall, 3)
        return r


@dataclass
class Policy:
    """Which backend and weights the node runs."""

    name: str
    backend: str = "torch"
    model_path: str = ""

    @property
    def label(self) -> str:
        """Name for tables."""
        return self.name if self.backend == "torch" else f"{self.name} ({self.backend})"


def policy(name: str, backend: str = "torch", workdir: Path | None = None) -> Policy:
    """``sim`` (the sim-trained policy), ``demo``, ``random``, ``zero`` or a model path."""
    from ..model.presets import DEMO_POLICY_DIR

    sim_dir = DEMO_POLICY_DIR.parent / "sim_policy"
    if name == "zero":
        return Policy("zero", "null")
    if name == "sim":
        path = sim_dir
    elif name == "demo":
        path = DEMO_POLICY_DIR
    elif name == "random":
        path = random_weights(workdir or Path(tempfile.mkdtemp(prefix="vla_sim_")))
    else:
        path = Path(name)
        if not path.exists():
            raise SimError(f"policy {name!r} is not sim, demo, random, zero or an existing path")
    if backend == "onnx":
        path = export_onnx(Path(path), workdir or Path(tempfile.mkdtemp(prefix="vla_sim_")))
    elif backend != "torch":
        raise SimError(f"backend {backend!r}: vla_sim runs torch or onnx here")
    return Policy(name, backend, str(path))


def random_weights(folder: Path) -> Path:
    """The ``tiny`` model with seeded random weights, as a model folder the node loads."""
    import json

    import torch

    from ..model.checkpoint import save_safetensors
    from ..model.loader import RANDOM_SEED
    from ..model.policy import MobileVLAPolicy
    from ..model.presets import DEMO_POLICY_DIR
    from ..model.tokenizer import PromptTokenizer, builtin_tokenizer

    out = folder / "random_policy"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = json.loads((DEMO_POLICY_DIR / "config.json").read_text())
    from ..model.presets import PolicyConfig

    config = PolicyConfig.from_dict(cfg_dict)
    tok = PromptTokenizer(builtin_tokenizer(), config.prompt_template, config.pad_to)
    torch.manual_seed(RANDOM_SEED)
    model = MobileVLAPolicy(config, tok.prefix_ids, tok.image_end_id, tok.special_ids["<pad>"])
    save_safetensors(model, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    tok.tokenizer.save(str(out / "tokenizer.json"))
    return out


def export_onnx(folder: Path, workdir: Path) -> Path:
    """The model folder exported with ``vla_export onnx`` (cached in ``workdir``)."""
    import subprocess
    import sys

    out = workdir / f"{folder.name}.onnx"
    if not out.is_file():
        cmd = [sys.executable, "-m", "mobile_vla_node.export.cli", "onnx", "--checkpoint",
               str(folder), "--output", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            raise SimError(f"ONNX export failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    return out


def reserve_domain() -> int:
    """A ROS domain no test run or other sim holds (ros/process.py reserve_domain)."""
    from ..ros.process import reserve_domain as reserve

    domain = reserve()
    if domain is None:
        raise SimError("no free ROS domain (1..101) on this machine")
    return domain


def sim_env(domain: int | None = None) -> dict:
    """Loopback-only DDS in ``domain`` (default: $ROS_DOMAIN_ID, else a reserved one)."""
    import os

    from ..ros.process import loopback_env

    if domain is None:
        domain = int(os.environ.get("ROS_DOMAIN_ID") or reserve_domain())
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    return loopback_env(domain)


def run_suite(suite: Suite, pol: Policy, cfg: SimConfig, domain: int | None = None,
              workdir: Path | None = None, episodes: list | None = None, log=print,
              frames: list | None = None, node_extra: dict | None = None) -> list:
    """Start the node on ``pol``, run the suite's episodes through it, stop it; the results."""
    from .bridge import SimBridge

    workdir = workdir or Path(tempfile.mkdtemp(prefix="vla_sim_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = sim_env(domain)
    node = NodeProcess(node_params(cfg, pol.backend, pol.model_path, node_extra), workdir, env)
    world = World(cfg.width, cfg.height, cfg.limits)
    bridge = None
    results = []
    try:
        bridge = SimBridge()
        loop = ClosedLoop(bridge, world, cfg, node)
        loop.start(timeout=240.0)
        for ep in episodes or suite.episodes:
            r = loop.run(suite.name, ep, frames)
            r.node["policy"] = pol.label
            results.append(r)
            log(f"  {pol.label:<14} {ep.name:<16} {r.outcome:<10} t={r.time_s:5.2f} s  "
                f"d={r.final_distance_m:.2f} m  wall {r.wall_s:.1f} s")
    finally:
        if bridge is not None:
            try:
                bridge.publish_enable(False)
            except Exception:  # noqa: BLE001 - the context may already be shut down (Ctrl-C)
                pass
        code = node.stop()
        world.close()
        if bridge is not None:
            bridge.close()
        log(f"  node exited with {code} (log {node.log})")
    return results


def with_overrides(cfg: SimConfig, **changes) -> SimConfig:
    """A copy with some fields changed (validated again)."""
    return replace(cfg, **changes)


def success_rate(results: list) -> float:
    """Share of successful episodes (nan for none)."""
    return sum(r.success for r in results) / len(results) if results else math.nan
