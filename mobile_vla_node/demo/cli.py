"""`vla_demo`: the node in its own process, fed by a synthetic camera and command publisher.

Runs for ``--duration`` seconds over real DDS (loopback only), then stops the node with SIGINT and
prints a summary: Twist rate, control jitter, the actions per instruction next to the scene's
correct velocity, latency percentiles (from the node's own /diagnostics), and the final zero Twist.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..core.timing import latency_summary
from ..ros.process import loopback_env, node_argv

SETTLE_S = 0.6  # ignore this long after each command change when scoring actions


def _parse(argv):
    p = argparse.ArgumentParser(prog="vla_demo", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of driving")
    p.add_argument("--fps", type=float, default=10.0, help="synthetic camera rate")
    p.add_argument("--control-rate-hz", type=float, default=20.0)
    p.add_argument("--backend", default="torch")
    p.add_argument("--model-path", default="", help="default: the embedded demo policy")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--json", help="also write the summary here")
    return p.parse_args(argv)


class DemoDriver:
    """Publishes the synthetic timeline and records what the node answers."""

    def __init__(self, args):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from ..ros.qos import profile
        from . import synthetic

        self.args = args
        rclpy.init()
        self.node = rclpy.create_node("vla_demo_driver")
        self.image_pub = self.node.create_publisher(Image, "/camera/image_raw", profile("camera"))
        self.command_pub = self.node.create_publisher(String, "/vla/command", profile("command"))
        self.lock = threading.Lock()
        self.twists: list = []  # (monotonic, instruction, target (3,), twist (3,))
        self.diagnostics: dict = {}
        self.instruction = ""
        self.target = np.zeros(3)
        self.node.create_subscription(Twist, "/cmd_vel", self._on_twist, profile("record"))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                      profile("diagnostics"))
        self.timeline = synthetic.demo_timeline(args.duration + 5.0, args.fps)
        self.synthetic = synthetic
        self._running = True
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()

    def _spin_loop(self):
        import rclpy

        while self._running:
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def _on_twist(self, msg):
        with self.lock:
            self.twists.append((time.monotonic(), self.instruction, self.target.copy(),
                                np.array([msg.linear.x, msg.linear.y, msg.angular.z])))

    def _on_diag(self, msg):
        with self.lock:
            self.diagnostics = {s.name: {kv.key: kv.value for kv in s.values} | {
                "_level": int.from_bytes(s.level, "little") if isinstance(s.level, bytes)
                else int(s.level), "_message": s.message} for s in msg.status}

    def ready(self) -> bool:
        """The node is loaded, warmed up and driving: its diagnostics say lifecycle "active".

        (A node without the lifecycle_state value is ready once it publishes Twists; a lifecycle
        node publishes zero Twists from the start, before it has loaded anything.)
        """
        with self.lock:
            control = self.diagnostics.get("vla_node: control")
            if not control:
                return False
            if control.get("lifecycle_state"):
                return control["lifecycle_state"] == "active"
            return bool(self.twists) and control.get("stop_reason") != "unconfigured"

    def wait_ready(self, proc, timeout: float) -> bool:
        """Wait until the node is `ready` (False if it exits or the timeout passes first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.1)
        return False

    def drive(self, duration: float) -> float:
        """Publish frames and commands in real time; return the start (monotonic)."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        start = time.monotonic()
        for t, scene in self.timeline:
            if t > duration:
                break
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = self.synthetic.render(scene, self.args.width, self.args.height)
            if scene.instruction != self.instruction:
                self.command_pub.publish(String(data=scene.instruction))
            with self.lock:
                self.instruction = scene.instruction
                self.target = self.synthetic.target_velocity(scene)
            msg = Image()
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.height, msg.width = frame.shape[:2]
            msg.encoding, msg.step = "rgb8", frame.shape[1] * 3
            msg.data = frame.tobytes()
            self.image_pub.publish(msg)
        return start

    def close(self):
        """Shut the driver's ROS context down."""
        import rclpy

        self._running = False
        self._spin.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def summarize(twists: list, start: float, diagnostics: dict, rate_hz: float) -> dict:
    """Rates, per-instruction actions vs targets, and the node's latency figures."""
    run = [t for t in twists if t[0] >= start]
    times = np.array([t[0] for t in run])
    summary: dict = {"twists": len(run)}
    if len(times) > 1:
        summary["twist_rate_hz"] = (len(times) - 1) / (times[-1] - times[0])
        gaps = np.diff(times) * 1e3
        summary["receive_gap_p99_ms"] = latency_summary(gaps, (99,), ())["p99"]
    per: dict = {}
    changed_at: dict = {}
    last = None
    for t, instr, target, twist in run:
        if instr != last:
            changed_at[instr], last = t, instr
        if t - changed_at[instr] < SETTLE_S:
            continue
        per.setdefault(instr, []).append((target, twist))
    rows = {}
    for instr, pairs in per.items():
        targets = np.array([p[0] for p in pairs])
        actual = np.array([p[1] for p in pairs])
        rows[instr] = {"target_mean": targets.mean(0).round(3).tolist(),
                       "twist_mean": actual.mean(0).round(3).tolist(),
                       "mae": float(np.abs(actual - targets).mean()), "ticks": len(pairs)}
    summary["per_instruction"] = rows
    if rows:
        summary["mae_overall"] = float(np.mean([r["mae"] for r in rows.values()]))
    control = diagnostics.get("vla_node: control", {})
    inference = diagnostics.get("vla_node: inference", {})
    inputs = diagnostics.get("vla_node: inputs", {})
    summary["node"] = {
        "control_rate_hz": control.get("control_rate_hz"),
        "control_jitter_p99_ms": control.get("jitter_p99_ms"),
        "deadline_misses": control.get("deadline_misses"),
        "backend": f"{inference.get('backend')} on {inference.get('device')} "
                   f"({inference.get('precision')}, {inference.get('provider')})",
        "weights": inference.get("model"),
        "frames_received": inputs.get("frames_received"),
        "frames_dropped": inputs.get("frames_dropped"),
        "latency_ms": {stage: {p: (inference | inputs | control).get(f"{stage}_{p}_ms")
                               for p in ("p50", "p95", "p99", "max")}
                       for stage in ("transport", "preprocess", "inference", "end_to_end")},
    }
    summary["control_rate_setting_hz"] = rate_hz
    return summary


def print_summary(s: dict, final_twist) -> None:
    """Human-readable summary."""
    node = s["node"]
    print("\n=== vla_demo summary ===")
    print(f"backend        : {node['backend']}")
    print(f"weights        : {node['weights']}")
    print(f"Twist rate     : {s.get('twist_rate_hz', 0):.2f} Hz received "
          f"(setting {s['control_rate_setting_hz']:g} Hz; node reports {node['control_rate_hz']} "
          f"Hz, control jitter p99 {node['control_jitter_p99_ms']} ms, deadline misses "
          f"{node['deadline_misses']})")
    print(f"frames         : {node['frames_received']} received, {node['frames_dropped']} dropped "
          "(newest-frame-only)")
    print("latency (ms)   :        p50      p95      p99      max")
    for stage, q in node["latency_ms"].items():
        print(f"  {stage:<12}: " + " ".join(f"{q[p] or 'n/a':>8}" for p in
                                            ("p50", "p95", "p99", "max")))
    print("actions per instruction (m/s, m/s, rad/s), after "
          f"{SETTLE_S} s settling:")
    for instr, row in s["per_instruction"].items():
        print(f"  {instr:<20} target {row['target_mean']}  published {row['twist_mean']}  "
              f"MAE {row['mae']:.3f}")
    if "mae_overall" in s:
        print(f"MAE overall    : {s['mae_overall']:.3f}")
    print(f"after shutdown : last Twist {final_twist}")


def start_node(params: dict, log: Path, env: dict) -> subprocess.Popen:
    """The node as its own process with ``params``; its output goes to ``log``."""
    print(f"starting node (log: {log}) on ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, loopback only")
    with open(log, "w") as out:
        return subprocess.Popen(node_argv(params), stdout=out, stderr=subprocess.STDOUT, env=env)


def drive(driver: DemoDriver, proc: subprocess.Popen, log: Path, args):
    """Wait until the node is active, then drive it.

    Returns (start, twists, diagnostics), or None if the node never became ready.
    """
    if not driver.wait_ready(proc, args.startup_timeout):
        print("node did not start; its log:\n" + log.read_text()[-3000:], file=sys.stderr)
        return None
    print(f"node ready; driving {args.duration:g} s of synthetic scenes at {args.fps:g} fps")
    start = driver.drive(args.duration)
    time.sleep(0.5)
    with driver.lock:
        return start, list(driver.twists), dict(driver.diagnostics)


def stop(driver: DemoDriver, proc: subprocess.Popen):
    """SIGINT the node as Ctrl-C does; the last Twist it published (a list), once it exited."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=15)
    time.sleep(0.3)
    with driver.lock:
        return driver.twists[-1][3].tolist() if driver.twists else None


def main(argv=None) -> int:
    """Run the demo; exit 0 when the node ran, answered and stopped with a zero Twist."""
    args = _parse(argv)
    env = loopback_env()
    log = Path(tempfile.mkdtemp(prefix="vla_demo_")) / "node.log"
    params = {"backend": args.backend, "control_rate_hz": args.control_rate_hz}
    if args.model_path:
        params["model_path"] = args.model_path
    proc = start_node(params, log, env)
    driver = DemoDriver(args)
    code = 1
    try:
        driven = drive(driver, proc, log, args)
        if driven is None:
            return 1
        start, twists, diagnostics = driven
        final = stop(driver, proc)
        summary = summarize(twists, start, diagnostics, args.control_rate_hz)
        summary["final_twist"] = final
        summary["node_exit_code"] = proc.returncode
        print_summary(summary, final)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        ok = proc.returncode == 0 and final == [0.0, 0.0, 0.0] and summary["twists"] > 0
        code = 0 if ok else 1
        if not ok:
            print("demo FAILED: node exit code, final zero Twist or Twist stream missing",
                  file=sys.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        driver.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
