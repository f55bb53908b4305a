"""``make triton-demo``: `vla_demo`, with the policy served by a local Triton Inference Server.

1. ``vla_export triton`` writes the embedded demo policy as a Triton model repository;
2. a real ``tritonserver`` (``make triton-env``) serves it on localhost over gRPC;
3. the node runs with ``backend:=triton`` and is driven by the synthetic camera and commands
   exactly as in `vla_demo`; the same summary is printed, plus the network round trip and the
   server's own request/queue/compute time (from Triton's statistics, via /diagnostics);
4. the server is killed for ``--outage`` seconds while the scenes keep coming: the summary shows
   the zero Twists, the diagnostics ERROR and the recovery once the server answers again;
5. the node is stopped with SIGINT (zero Twist) and the server is stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..export.triton_local_server import DEFAULT_ENV, LocalTriton, ServerError
from ..ros.process import loopback_env
from .cli import DemoDriver, drive, print_summary, start_node, stop, summarize

TRITON_KEYS = ("triton_rtt_p50_ms", "triton_rtt_p99_ms", "triton_server_request_ms",
               "triton_server_queue_ms", "triton_server_compute_ms", "triton_network_ms",
               "triton_server_avg_batch")


def _parse(argv):
    p = argparse.ArgumentParser(prog="vla_triton_demo", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of driving")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the server is down")
    p.add_argument("--fps", type=float, default=10.0, help="synthetic camera rate")
    p.add_argument("--control-rate-hz", type=float, default=20.0)
    p.add_argument("--timeout-ms", type=float, default=500.0, help="triton_timeout_ms")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--env", default=str(DEFAULT_ENV), help="server environment (make triton-env)")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--json", help="also write the summary here")
    return p.parse_args(argv)


def triton_figures(diagnostics: dict) -> dict:
    """The backend's Triton values from the node's inference status."""
    inference = diagnostics.get("vla_node: inference", {})
    return {key: inference.get(key, "n/a") for key in TRITON_KEYS} | {
        "server": inference.get("triton_server"), "url": inference.get("triton_url")}


def outage_report(twists: list, killed: float, back: float, statuses: list) -> dict:
    """Zeros after the kill, ERROR while down, first motion after the server is back."""
    def moving(twist):
        return bool(np.abs(twist).max() > 1e-3)

    after_kill = [t for t in twists if t[0] >= killed]
    first_zero = next((t[0] for t in after_kill if not moving(t[3])), None)
    down = [t for t in twists if first_zero is not None and first_zero <= t[0] < back]
    resumed = next((t[0] for t in twists if t[0] >= back and moving(t[3])), None)
    errors = [s for s in statuses if killed <= s[0] < (resumed or float("inf"))
              and s[1] == 2 and s[2].startswith("inference failing")]
    return {
        "zero_after_kill_s": None if first_zero is None else first_zero - killed,
        "ticks_while_down": len(down),
        "nonzero_ticks_while_down": sum(moving(t[3]) for t in down),
        "diagnostics_error": errors[0][2] if errors else None,
        "resumed_after_server_ready_s": None if resumed is None else resumed - back,
    }


def print_triton(figures: dict, outage: dict, seconds: float) -> None:
    """The Triton lines after the usual summary."""
    def ms(key):
        return figures.get(key, "n/a")

    print(f"served by      : {figures['server']} at {figures['url']} (local tritonserver, "
          "Python backend running ONNX Runtime)")
    print(f"round trip (ms): client step p50 {ms('triton_rtt_p50_ms')}  p99 "
          f"{ms('triton_rtt_p99_ms')} (encoder + step requests)")
    print(f"server (ms)    : request {ms('triton_server_request_ms')} = queue "
          f"{ms('triton_server_queue_ms')} + compute {ms('triton_server_compute_ms')} (+ "
          f"overhead); network+serialization {ms('triton_network_ms')}; avg batch "
          f"{ms('triton_server_avg_batch')}")
    zero = outage["zero_after_kill_s"]
    resumed = outage["resumed_after_server_ready_s"]
    print(f"server down    : {seconds:.1f} s (killed, restarted); first zero Twist "
          f"{'never' if zero is None else f'{zero * 1e3:.0f} ms'} after the kill; "
          f"{outage['ticks_while_down']} ticks while down, "
          f"{outage['nonzero_ticks_while_down']} of them non-zero")
    print(f"diagnostics    : {outage['diagnostics_error'] or 'no ERROR seen'}")
    print(f"recovery       : motion "
          f"{'did not resume' if resumed is None else f'resumed {resumed:.2f} s'} after the "
          "server was ready again")


def feed(driver: DemoDriver, stop: threading.Event) -> None:
    """`DemoDriver.drive`'s timeline, repeated until ``stop`` is set."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    start, synthetic = time.monotonic(), driver.synthetic
    span = driver.timeline[-1][0] if driver.timeline else 1.0
    while not stop.is_set():
        for t, scene in driver.timeline:
            if stop.wait(max(start + t - time.monotonic(), 0.0)):
                return
            frame = synthetic.render(scene, driver.args.width, driver.args.height)
            if scene.instruction != driver.instruction:
                driver.command_pub.publish(String(data=scene.instruction))
            with driver.lock:
                driver.instruction = scene.instruction
                driver.target = synthetic.target_velocity(scene)
            msg = Image()
            msg.header.stamp = driver.node.get_clock().now().to_msg()
            msg.height, msg.width = frame.shape[:2]
            msg.encoding, msg.step = "rgb8", frame.shape[1] * 3
            msg.data = frame.tobytes()
            driver.image_pub.publish(msg)
        start += span


class StatusRecorder:
    """Keeps (monotonic, level, message) of every inference status the driver receives."""

    def __init__(self, driver: DemoDriver):
        self.driver, self.statuses = driver, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        last = None
        while not self._stop.wait(0.05):
            with self.driver.lock:
                status = self.driver.diagnostics.get("vla_node: inference")
            if status is not None and status is not last:
                self.statuses.append((time.monotonic(), status["_level"], status["_message"]))
                last = status

    def close(self):
        """Stop recording."""
        self._stop.set()
        self._thread.join(timeout=1.0)


def export_repo(repo: Path) -> None:
    """The embedded demo policy as a CPU Triton repository (`vla_export triton`)."""
    from ..export.triton_repo import main as export

    code = export(["--preset", "tiny", "--output", str(repo), "--instance-kind", "cpu"])
    if code != 0:
        raise SystemExit(f"vla_export triton failed with exit code {code}")


def main(argv=None) -> int:
    """Run the Triton demo; exit 0 when the node drove, stopped on the outage and recovered."""
    args = _parse(argv)
    env = loopback_env()
    work = Path(tempfile.mkdtemp(prefix="vla_triton_demo_"))
    print(f"exporting the demo policy as a Triton model repository in {work / 'repo'}")
    export_repo(work / "repo")
    server = LocalTriton(work / "repo", work / "server", Path(args.env))
    try:
        server.start().wait_ready()
    except ServerError as exc:
        print(f"triton demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"tritonserver ready on {server.url} (log: {server.log_path})")
    log = work / "node.log"
    proc = start_node({"backend": "triton", "triton_url": server.url,
                       "triton_timeout_ms": args.timeout_ms, "triton_reconnect_max_s": 0.5,
                       "control_rate_hz": args.control_rate_hz, "diagnostics_period_s": 0.25},
                      log, env)
    driver = DemoDriver(args)
    recorder = StatusRecorder(driver)
    code = 1
    try:
        driven = drive(driver, proc, log, args)
        if driven is None:
            return 1
        start, twists, diagnostics = driven
        summary = summarize(twists, start, diagnostics, args.control_rate_hz)
        summary["triton"] = triton_figures(diagnostics)

        print(f"killing tritonserver for {args.outage:g} s while the scenes keep coming")
        feeding = threading.Event()
        phase = threading.Thread(target=feed, args=(driver, feeding), daemon=True)
        phase.start()
        time.sleep(1.0)
        killed = time.monotonic()
        server.kill()
        time.sleep(args.outage)
        server.start().wait_ready()
        back = time.monotonic()
        print(f"tritonserver back after {back - killed:.1f} s")
        deadline = back + 15.0
        while time.monotonic() < deadline:
            with driver.lock:
                if any(t[0] >= back and np.abs(t[3]).max() > 1e-3 for t in driver.twists):
                    break
            time.sleep(0.1)
        time.sleep(1.0)
        with driver.lock:
            twists = list(driver.twists)
        feeding.set()
        phase.join(timeout=5.0)
        outage = outage_report(twists, killed, back, recorder.statuses)
        summary["outage"] = outage
        final = stop(driver, proc)
        summary["final_twist"] = final
        summary["node_exit_code"] = proc.returncode
        print_summary(summary, final)
        print_triton(summary["triton"], outage, back - killed)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        ok = (proc.returncode == 0 and final == [0.0, 0.0, 0.0] and summary["twists"] > 0
              and outage["zero_after_kill_s"] is not None
              and outage["nonzero_ticks_while_down"] == 0
              and outage["resumed_after_server_ready_s"] is not None)
        code = 0 if ok else 1
        if not ok:
            print("triton demo FAILED: no zeros during the outage, no recovery, or no final zero "
                  "Twist", file=sys.stderr)
    finally:
        recorder.close()
        if proc.poll() is None:
            proc.kill()
        driver.close()
        server.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
