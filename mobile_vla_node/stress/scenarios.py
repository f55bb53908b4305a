"""The named scenarios of `vla_stress`.

Each starts the node as its own process, drives it with 640x480 frames at 20 fps and a command,
applies one load or event, and returns a result dict (the JSON written per scenario; `report`
evaluates and prints it).
"""

from __future__ import annotations

import datetime
import multiprocessing
import platform
import random
import signal
import subprocess
import time
from pathlib import Path

from . import analysis
from .load import COMMAND, CpuHogs, Stream, StreamSpec
from .recorder import NodeSampler, Recorder

LOAD_SCENARIOS = ("camera-1080p", "command-100hz", "clock-100hz", "malformed-flood", "soak")
SCENARIOS = LOAD_SCENARIOS[:-1] + ("signals", "clock-jump", "soak")
SETTLE_S = 2.0
SIGNAL_KINDS = (("SIGINT",), ("SIGTERM",), ("SIGINT", "SIGINT"), ("SIGINT", "SIGTERM"),
                ("SIGTERM", "SIGINT"), ("SIGINT", "SIGINT", "SIGINT"))
MAX_ATTEMPTS = 3  # a signal run that another node's /cmd_vel polluted is repeated
JUMPS = (("none", 0.0), ("back-10s", -10.0), ("forward-10s", 10.0))


class StartupError(RuntimeError):
    """The node did not start (its log tail is in the message)."""


def _die_with_parent() -> None:
    """SIGTERM the node if the stress process dies (runs in the child, Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Rig:
    """Processes of one scenario: hogs, recorder, publisher streams and the node."""

    def __init__(self, opts, name: str):
        from ..ros.process import loopback_env

        self.opts = opts
        self.name = name
        self.ctx = multiprocessing.get_context("spawn")
        self.env = loopback_env(opts.domain)  # also applied here, so spawned children inherit it
        self.log_dir = Path(opts.out) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hogs = CpuHogs(self.ctx, opts.cpu_hogs)
        self.recorder = Recorder(self.ctx)
        self.streams: dict = {}
        self.sampler: NodeSampler | None = None
        self.proc: subprocess.Popen | None = None
        if not self.recorder.ready.wait(120.0):
            raise StartupError("recorder process did not start")

    # -- streams -------------------------------------------------------------------------------
    def stream(self, spec: StreamSpec, **kwargs) -> Stream:
        """Start a publisher process (idle until ``go``)."""
        s = Stream(self.ctx, spec, **kwargs)
        self.streams[spec.name] = s
        return s

    def wait_streams(self) -> None:
        """Wait until every stream has built its messages."""
        for s in self.streams.values():
            if not s.wait_ready(120.0):
                raise StartupError(f"publisher {s.spec.name} did not start")

    def stream_reports(self) -> dict:
        """Stop every stream; their reports by name."""
        return {name: s.stop() for name, s in self.streams.items()}

    # -- node ----------------------------------------------------------------------------------
    def node_params(self, sim_time: bool = False) -> dict:
        """Default node parameters plus the backend, sim time and ``--param`` overrides."""
        params = {"backend": self.opts.backend}
        if sim_time:
            params["use_sim_time"] = True
        params.update(self.opts.params)
        return params

    def start_node(self, params: dict, tag: str = "") -> subprocess.Popen:
        """Start the node process and its RSS/CPU sampler."""
        from ..ros.process import node_argv

        self.log_path = self.log_dir / f"{self.name}{tag}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(node_argv(params), env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        self.node_start_t = time.monotonic()
        self.sampler = NodeSampler(self.proc.pid)
        return self.proc

    def wait_driving(self, timeout: float | None = None, moving: bool = True) -> str:
        """`_wait_driving` with the hogs paused (SIGSTOP) during the start-up only."""
        self.hogs.pause()
        try:
            return self._wait_driving(timeout, moving)
        finally:
            self.hogs.resume()

    def _wait_driving(self, timeout: float | None = None, moving: bool = True) -> str:
        """Wait for the node's first non-zero Twist ("moving"), else any Twist ("publishing").

        With ``moving`` False, or a backend that only outputs zeros (null), the first Twist
        after start counts. Raises `StartupError` if the node exits or never publishes.
        """
        timeout = timeout or self.opts.startup_timeout
        t0, end = self.node_start_t, time.monotonic() + timeout
        seen_any = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise StartupError(f"node exited with {self.proc.returncode} during start-up; "
                                   f"log tail:\n{self.log_tail()}")
            if self.recorder.last_nonzero_t.value > t0:
                return "moving"
            if self.recorder.last_twist_t.value > t0:
                seen_any = seen_any or time.monotonic()
                if not moving or self.opts.backend == "null" or time.monotonic() - seen_any > 15:
                    return "publishing"
            time.sleep(0.02)
        raise StartupError(f"node did not publish within {timeout:g} s; log tail:\n"
                           f"{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop_node(self, timeout: float = 20.0) -> dict:
        """SIGINT the node (as Ctrl-C), wait, SIGKILL if hung; exit code and shutdown order."""
        from ..ros.process import stop_node

        t_sig = time.monotonic()
        code = stop_node(self.proc, timeout=timeout)
        t_exit = time.monotonic()
        time.sleep(0.5)
        samples = self.sampler.stop() if self.sampler else []
        out = analysis.after_first_zero(self.recorder.twists(t_sig - 5.0), t_sig)
        out.update({"exit_code": code, "exit_s": round(t_exit - t_sig, 3),
                    "killed": code == -9})
        self.samples = samples
        return out

    def close(self) -> None:
        """Stop everything this rig started."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sampler:
            self.sampler.stop()
        for s in self.streams.values():
            s.stop(timeout=5.0)
        self.recorder.close()
        self.hogs.stop()


def machine() -> dict:
    """Where it ran: CPU count, load average, kernel, Python, date."""
    import os

    import psutil

    return {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def _period(opts) -> float:
    return 1.0 / float(opts.params.get("control_rate_hz", 20.0))


def _base(opts, name: str, rig: Rig) -> dict:
    hogs = rig.hogs.describe()
    hogs["paused_during_node_startup"] = True
    return {"scenario": name, "machine": machine(), "cpu_hogs": hogs,
            "backend": opts.backend, "domain": opts.domain,
            "control_rate_hz": 1.0 / _period(opts), "node_params": rig.node_params(),
            "command": COMMAND}


# -- load scenarios ----------------------------------------------------------------------------
def run_load(opts, name: str) -> dict:
    """camera-1080p, command-100hz, clock-100hz, malformed-flood or soak."""
    rig = Rig(opts, name)
    try:
        return _run_load(rig, opts, name)
    finally:
        rig.close()


def _run_load(rig: Rig, opts, name: str) -> dict:
    period = _period(opts)
    duration = opts.minutes * 60.0 if name == "soak" else opts.duration
    tail = 0.0 if name == "soak" else opts.tail
    sim = name == "clock-100hz"
    if sim:
        rig.stream(StreamSpec("clock", "clock", 100.0))
    cam = rig.stream(StreamSpec("camera-640x480", "camera", opts.fps, sim_time=sim))
    rig.stream(StreamSpec("command", "command", 0.0))
    load, after = [], []
    if name == "camera-1080p":
        load.append(rig.stream(StreamSpec("camera-1920x1080", "camera", opts.fps, 1920, 1080)))
        after.append(rig.stream(StreamSpec("camera-640x480-after", "camera", opts.fps)))
    elif name == "command-100hz":
        load.append(rig.stream(StreamSpec("command-100hz", "command", 100.0)))
    elif name == "malformed-flood":
        load.append(rig.stream(StreamSpec("flood", "flood", opts.fps)))
    rig.wait_streams()
    for s in rig.streams.values():
        if s not in load and s not in after:
            s.go()
    params = rig.node_params(sim_time=sim)
    rig.start_node(params)
    state = rig.wait_driving()
    time.sleep(SETTLE_S)
    t0 = time.monotonic()
    for s in load:  # the new camera starts before the old one stops: no gap in frames
        s.go()
    if name == "camera-1080p":
        cam.stop()
    load_avg = _soak_wait(rig, opts, t0, duration) if name == "soak" else None
    if load_avg is None:
        time.sleep(duration)
    t1 = time.monotonic()
    for s in after:
        s.go()
    for s in load:
        s.stop()
    time.sleep(tail)
    t2 = time.monotonic()
    diag_first, diag_load, diag_end = (rig.recorder.diagnostics_at(t) for t in (t0, t1, t2))
    shutdown = rig.stop_node()
    twists = rig.recorder.twists(t0 - 1.0, t2 + 1.0)
    times = [t[0] for t in twists]
    result = _base(opts, name, rig)
    result.update({
        "node_params": params, "start_state": state,
        "durations_s": {"load": round(t1 - t0, 2), "tail": round(t2 - t1, 2),
                        "settle_before": SETTLE_S},
        "twists": {"load": analysis.timing(times, period, t0, t1),
                   "tail": analysis.timing(times, period, t1, t2),
                   "whole": analysis.timing(times, period, t0, t2),
                   "fewest_in_one_second": analysis.worst_second(times, t0, t2)},
        "rss": analysis.rss_summary(rig.samples, t0, t2, settle_s=round(t2 - t1, 2)),
        "rss_series": analysis.rss_series(rig.samples, t0),
        "diagnostics": {"end_of_load": analysis.diagnostics_summary(diag_first, diag_load),
                        "end": analysis.diagnostics_summary(diag_first, diag_end)},
        "recorder": rig.recorder.health(t0, t2),
        "graph_publishers_max": rig.recorder.publishers(t0, t2),
        "publishers": rig.stream_reports(),
        "shutdown": shutdown,
        "node_log": str(rig.log_path),
    })
    result["rss"]["load_cpu_pct"] = analysis.rss_summary(rig.samples, t0, t1).get("cpu_pct")
    if name == "soak":
        warmup = min(opts.warmup_min * 60.0, duration)
        result["soak"] = {
            "minutes": opts.minutes, "window_s": opts.window_s, "warmup_s": warmup,
            "windows": analysis.windows(times, period, t0, t1, opts.window_s),
            "rss_after_warmup": analysis.rss_growth(rig.samples, t0 + warmup, t1),
            "load_avg": load_avg,
        }
    return result


def _soak_wait(rig: Rig, opts, t0: float, duration: float) -> list:
    """Sleep through the soak; every window: load average sampled, one progress line printed.

    Returns ``[[seconds from t0, load 1 min, 5 min, 15 min], ...]`` (``uptime``'s figures: the
    machine is shared, so the outside load belongs next to the soak's rates).
    """
    import os

    samples, end = [], t0 + duration
    last_count, last_t = rig.recorder.n_twists.value, t0
    while True:
        now = time.monotonic()
        samples.append([round(now - t0, 1), *(round(x, 2) for x in os.getloadavg())])
        count = rig.recorder.n_twists.value
        rss = rig.sampler.samples[-1][1] if rig.sampler and rig.sampler.samples else None
        rate = (f"{(count - last_count) / (now - last_t):6.2f} Hz received"
                if now - last_t >= 1.0 else "start")
        print(f"  soak +{now - t0:7.1f} s: {rate}, node RSS "
              f"{rss if rss is None else round(rss, 1)} MB, load avg "
              f"{samples[-1][1]:.2f} {samples[-1][2]:.2f} {samples[-1][3]:.2f}", flush=True)
        last_count, last_t = count, now
        if now >= end:
            return samples
        time.sleep(min(opts.window_s, end - now))


# -- signals -----------------------------------------------------------------------------------
def run_signals(opts) -> dict:
    """N runs: drive, then SIGINT/SIGTERM (single, double 5-60 ms apart, triple) at random."""
    rig = Rig(opts, "signals")
    rng = random.Random(opts.seed)
    runs, discarded = [], []
    try:
        rig.stream(StreamSpec("camera-640x480", "camera", opts.fps))
        rig.stream(StreamSpec("command", "command", 0.0))
        rig.wait_streams()
        for s in rig.streams.values():
            s.go()
        for i in range(opts.runs):
            kinds = SIGNAL_KINDS[i % len(SIGNAL_KINDS)]
            for _attempt in range(MAX_ATTEMPTS):
                r = _signal_run(rig, opts, i, kinds, rng)
                if not foreign(r):
                    break
                discarded.append(r)
                print(f"  run {i + 1:3d}: another /cmd_vel publisher on this ROS domain; run "
                      "discarded and repeated", flush=True)
            runs.append(r)
            print(f"  run {i + 1:3d}/{opts.runs} {'+'.join(kinds):<22} exit {r['exit_code']!s:>4} "
                  f"non-zero after zero {r['nonzero_after_zero']} last zero {r['last_zero']}",
                  flush=True)
        result = _base(opts, "signals", rig)
        result["publishers"] = rig.stream_reports()
    finally:
        rig.close()
    result["runs"] = runs
    result["discarded_runs"] = discarded
    result["summary"] = signals_summary(runs)
    return result


def _signal_run(rig: Rig, opts, i: int, kinds: tuple, rng: random.Random) -> dict:
    rig.start_node(rig.node_params(), tag=f"_{i:03d}")
    try:
        state = rig.wait_driving()
    except StartupError as exc:
        rig.proc.kill()
        rig.proc.wait()
        rig.sampler.stop()
        return {"run": i, "signals": list(kinds), "error": str(exc)[:400], "exit_code": None,
                "nonzero_after_zero": 0, "last_zero": False, "first_zero_s": None}
    time.sleep(rng.uniform(0.0, opts.max_signal_delay))
    t_sig = time.monotonic()
    gaps = []
    for k, kind in enumerate(kinds):
        if k:
            gap = rng.uniform(0.005, 0.060)
            gaps.append(round(gap * 1e3, 1))
            time.sleep(gap)
        if rig.proc.poll() is None:
            rig.proc.send_signal(getattr(signal, kind))
    try:
        code = rig.proc.wait(timeout=opts.exit_timeout)
        hung = False
    except subprocess.TimeoutExpired:
        rig.proc.kill()
        code = rig.proc.wait()
        hung = True
    t_exit = time.monotonic()
    time.sleep(0.3)  # Twists still in flight
    rig.sampler.stop()
    twists = rig.recorder.twists(rig.node_start_t)
    out = {"run": i, "signals": list(kinds), "gaps_ms": gaps, "start_state": state,
           "exit_code": code, "hung_killed": hung, "exit_s": round(t_exit - t_sig, 3),
           "delay_s": round(t_sig - rig.node_start_t, 3),
           "graph_publishers_max": rig.recorder.publishers(rig.node_start_t)}
    out.update(analysis.after_first_zero(twists, t_sig))
    if code != 0 or out["nonzero_after_zero"] or not out["last_zero"]:
        out["log_tail"] = rig.log_tail(1500)
        out["node_log"] = str(rig.log_path)
    else:
        rig.log_path.unlink(missing_ok=True)
    return out


def foreign(run: dict) -> bool:
    """True if more than one node published /cmd_vel during the run (a shared ROS domain)."""
    return (run.get("graph_publishers_max") or {}).get("/cmd_vel", 0) > 1


def signals_summary(runs: list) -> dict:
    """Totals over the runs, and per signal pattern."""
    def totals(rs):
        done = [r for r in rs if r.get("exit_code") is not None]
        codes: dict = {}
        for r in done:
            codes[str(r["exit_code"])] = codes.get(str(r["exit_code"]), 0) + 1
        first = sorted(r["first_zero_s"] for r in done if r.get("first_zero_s") is not None)
        return {"runs": len(rs), "started": len(done),
                "runs_with_nonzero_after_zero": sum(1 for r in done if r["nonzero_after_zero"]),
                "nonzero_after_zero_total": sum(r["nonzero_after_zero"] for r in done),
                "exit_codes": codes,
                "exit_0": sum(1 for r in done if r["exit_code"] == 0),
                "last_zero": sum(1 for r in done if r["last_zero"]),
                "no_zero_at_all": sum(1 for r in done if r.get("first_zero_s") is None),
                "hung_killed": sum(1 for r in done if r.get("hung_killed")),
                "runs_with_foreign_publishers": sum(1 for r in done if foreign(r)),
                "first_zero_max_s": first[-1] if first else None}

    by_kind: dict = {}
    for r in runs:
        by_kind.setdefault("+".join(r["signals"]), []).append(r)
    return {"all": totals(runs), "by_pattern": {k: totals(v) for k, v in by_kind.items()}}


# -- clock jump ----------------------------------------------------------------------------------
def run_clock_jump(opts) -> dict:
    """use_sim_time; drive; at the moment the camera stops, /clock jumps (or not)."""
    period = _period(opts)
    timeout = float(opts.params.get("image_timeout_s", 0.5))
    variants = []
    result = None
    for repeat in range(opts.repeats):
        for label, jump in JUMPS:
            rig = Rig(opts, "clock-jump")
            try:
                variants.append(_jump_run(rig, opts, label, jump, repeat))
                if result is None:
                    result = _base(opts, "clock-jump", rig)
            finally:
                rig.close()
            v = variants[-1]
            print(f"  {label:<12} first zero {v.get('first_zero_ms')} ms after the last frame "
                  f"(moving at last frame: {v.get('moving_at_last_frame')})", flush=True)
    result = result or {"scenario": "clock-jump", "machine": machine()}
    result.update({"image_timeout_s": timeout, "period_s": period,
                   "limit_ms": round((timeout + period) * 1e3, 1), "variants": variants})
    return result


def _jump_run(rig: Rig, opts, label: str, jump: float, repeat: int) -> dict:
    stopped = rig.ctx.Event()
    rig.stream(StreamSpec("clock", "clock", 100.0, jump_s=jump), jump_event=stopped)
    cam = rig.stream(StreamSpec("camera-640x480", "camera", opts.fps, sim_time=True),
                     stopped_event=stopped)
    rig.stream(StreamSpec("command", "command", 0.0))
    rig.wait_streams()
    for s in rig.streams.values():
        s.go()
    params = rig.node_params(sim_time=True)
    rig.start_node(params, tag=f"_{label}_{repeat}")
    out = {"variant": label, "jump_s": jump, "repeat": repeat}
    try:
        out["start_state"] = rig.wait_driving()
    except StartupError as exc:
        out["error"] = str(exc)[:400]
        return out
    time.sleep(opts.jump_drive_s)
    cam_report = cam.stop()
    t_last = cam_report.get("last_publish_t")
    if t_last is None:
        out["error"] = f"the camera published nothing: {cam_report.get('error', '')}"
        out["camera"] = cam_report
        return out
    wait_end = time.monotonic() + float(params.get("image_timeout_s", 0.5)) + abs(jump) + 3.0
    while time.monotonic() < wait_end:
        zeros = [t for t in rig.recorder.twists(t_last) if analysis.is_zero(t)]
        if zeros:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    out["last_frame_t"] = t_last
    twists = rig.recorder.twists(rig.node_start_t)
    out.update(analysis.first_zero_after(twists, t_last))
    out["trace_ms"] = [[round((t[0] - t_last) * 1e3, 1), *(round(x, 3) for x in t[1:])]
                       for t in twists if t_last - 0.3 <= t[0] <= t_last + 3.0][:80]
    out["graph_publishers_max"] = rig.recorder.publishers(rig.node_start_t)
    out["clock"] = rig.streams["clock"].stop()
    out["camera"] = cam_report
    out["shutdown"] = rig.stop_node()
    return out
