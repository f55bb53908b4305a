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


def moving(twist) -> bool:
    """A Twist that commands motion (any component above 1e-3)."""
    return bool(np.abs(twist).max() > 1e-3)


def outage_report(twists: list, marks: dict, statuses: list, stop_limit_s: float) -> dict:
    """The outage judged on the server's own record and the node's, not on the demo's polling.

    ``twists`` are ``(t, ..., twist)`` as the driver records them and ``statuses`` the node's
    ``(t, level, message)`` inference reports, both on ``time.monotonic()``. ``marks`` (same
    clock): ``killed`` (just before SIGKILL), ``served`` (the restarted server's first executed
    request, from its log: the earliest moment a fresh answer could exist), ``step_served`` (its
    first step-model request, the one that produces actions), ``back`` (the demo's ready check
    returned; informational only) and ``grpc_up`` (Triton's "Started GRPCInferenceService" log
    line after the kill, converted from wall time; informational).

    The claims: the robot stops within ``stop_limit_s`` of the kill; from that first zero until
    the server ran a request again every Twist is zero; the node reports ERROR and no other
    inference state in that stretch; motion resumes only after the step model ran.
    """
    killed, served = marks["killed"], marks.get("served")
    step_served = marks.get("step_served")
    after_kill = [t for t in twists if t[0] >= killed]
    first_zero = next((t[0] for t in after_kill if not moving(t[3])), None)
    before_zero = [t for t in after_kill if first_zero is None or t[0] < first_zero]
    end = served if served is not None else float("inf")
    down = [t for t in twists if first_zero is not None and first_zero <= t[0] <= end]
    resumed = next((t[0] for t in twists if first_zero is not None and t[0] > first_zero
                    and moving(t[3])), None)

    def failing(status):
        return status[1] == 2 and status[2].startswith("inference failing")

    first_error = next((s for s in statuses if s[0] >= killed and failing(s)), None)
    other_while_down = [s for s in statuses if first_error is not None
                        and first_error[0] < s[0] < end and not failing(s)]

    def rel(t):
        return None if t is None else round(t - killed, 4)

    return {
        "zero_after_kill_s": rel(first_zero),
        "stop_limit_s": round(stop_limit_s, 3),
        "motion_ticks_before_first_zero": sum(moving(t[3]) for t in before_zero),
        "grpc_up_after_kill_s": rel(marks.get("grpc_up")),
        "server_request_after_kill_s": rel(served),
        "server_step_request_after_kill_s": rel(step_served),
        "ready_check_after_kill_s": rel(marks.get("back")),
        "ticks_while_down": len(down),
        "nonzero_ticks_while_down": sum(moving(t[3]) for t in down),
        "diagnostics_error": first_error[2] if first_error else None,
        "other_states_while_down": [s[2][:120] for s in other_while_down],
        "resumed_after_kill_s": rel(resumed),
        "resumed_after_server_request_s": (None if resumed is None or served is None
                                           else round(resumed - served, 4)),
        "resumed_after_step_request_s": (None if resumed is None or step_served is None
                                         else round(resumed - step_served, 4)),
        "resumed_after_ready_check_s": (None if resumed is None or marks.get("back") is None
                                        else round(resumed - marks["back"], 4)),
    }


def outage_failures(outage: dict, recoveries) -> list:
    """The outage claims that do not hold (empty: all hold)."""
    failed = []
    zero = outage["zero_after_kill_s"]
    if zero is None:
        failed.append("no zero Twist after the kill")
    elif zero > outage["stop_limit_s"]:
        failed.append(f"first zero {zero * 1e3:.0f} ms after the kill > limit "
                      f"{outage['stop_limit_s'] * 1e3:.0f} ms")
    if outage["server_request_after_kill_s"] is None:
        failed.append("the restarted server logged no request (cannot judge the outage)")
    if outage["nonzero_ticks_while_down"]:
        failed.append(f"{outage['nonzero_ticks_while_down']} motion Twists between the first "
                      "zero and the restarted server's first request")
    if outage["diagnostics_error"] is None:
        failed.append("the node never reported ERROR 'inference failing'")
    if outage["other_states_while_down"]:
        failed.append(f"the node reported {outage['other_states_while_down'][0]!r} before the "
                      "server ran a request")
    after_step = outage["resumed_after_step_request_s"]
    if outage["resumed_after_kill_s"] is None:
        failed.append("motion did not resume")
    elif after_step is None or after_step <= 0:
        failed.append("motion resumed before the restarted server ran the step model")
    try:
        if int(recoveries) < 1:
            failed.append("the node counted no recovery (triton_recoveries 0)")
    except (TypeError, ValueError):
        failed.append(f"no triton_recoveries in the node's diagnostics ({recoveries!r})")
    return failed


def print_triton(figures: dict, outage: dict, seconds: float) -> None:
    """The Triton lines after the usual summary."""
    def ms(key):
        return figures.get(key, "n/a")

    def at(key):
        value = outage.get(key)
        return "n/a" if value is None else f"+{value:.2f} s"

    print(f"served by      : {figures['server']} at {figures['url']} (local tritonserver, "
          "Python backend running ONNX Runtime)")
    print(f"round trip (ms): client step p50 {ms('triton_rtt_p50_ms')}  p99 "
          f"{ms('triton_rtt_p99_ms')} (encoder + step requests)")
    print(f"server (ms)    : request {ms('triton_server_request_ms')} = queue "
          f"{ms('triton_server_queue_ms')} + compute {ms('triton_server_compute_ms')} (+ "
          f"overhead); network+serialization {ms('triton_network_ms')}; avg batch "
          f"{ms('triton_server_avg_batch')}")
    zero = outage["zero_after_kill_s"]
    print(f"server down    : {seconds:.1f} s (killed, restarted); first zero Twist "
          f"{'never' if zero is None else f'{zero * 1e3:.0f} ms'} after the kill (limit "
          f"{outage['stop_limit_s'] * 1e3:.0f} ms; {outage['motion_ticks_before_first_zero']} "
          "motion ticks before it, from the last answer before the kill)")
    print(f"restart        : gRPC up {at('grpc_up_after_kill_s')} (server log), first request "
          f"run {at('server_request_after_kill_s')}, first step request "
          f"{at('server_step_request_after_kill_s')} (server log, CLOCK_MONOTONIC), ready check "
          f"returned {at('ready_check_after_kill_s')}")
    print(f"while down     : {outage['ticks_while_down']} ticks from the first zero to the "
          f"server's first request, {outage['nonzero_ticks_while_down']} of them non-zero")
    print(f"diagnostics    : {outage['diagnostics_error'] or 'no ERROR seen'}; other states "
          f"before the server's first request: {len(outage['other_states_while_down'])}; "
          f"triton_recoveries {outage.get('triton_recoveries')}")
    after = outage["resumed_after_step_request_s"]
    resumed = ("did not resume" if outage["resumed_after_kill_s"] is None
               else f"resumed {at('resumed_after_kill_s')} after the kill")
    if after is not None:
        resumed += f", {after * 1e3:.0f} ms after the server ran the step model"
    print(f"recovery       : motion {resumed}")


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


def stop_limit(args) -> float:
    """Longest acceptable kill-to-first-zero: the next frame, one request timeout, two ticks."""
    return 1.0 / args.fps + args.timeout_ms / 1e3 + 2.0 / args.control_rate_hz


def outage_marks(server: LocalTriton, killed: float, killed_wall: float, back: float) -> dict:
    """`outage_report`'s marks on time.monotonic(), from the restarted server's log."""
    from ..backends.triton_backend import model_names

    encoder, step = model_names("mobile_vla")
    served = server.first_requests(after=killed)
    up = [t for t in server.grpc_started() if t > killed_wall]
    marks = {"killed": killed, "back": back,
             "grpc_up": killed + (up[0] - killed_wall) if up else None,
             "served": min((v[0] for v in served.values()), default=None),
             "step_served": served[step][0] if step in served else None}
    marks["encoder_served"] = served[encoder][0] if encoder in served else None
    return marks


def export_repo(repo: Path) -> None:
    """The embedded demo policy as a CPU Triton repository (`vla_export triton`)."""
    from ..export.triton_repo import main as export

    code = export(["--preset", "tiny", "--output", str(repo), "--instance-kind", "cpu"])
    if code != 0:
        raise SystemExit(f"vla_export triton failed with exit code {code}")


def main(argv=None) -> int:
    """Run the Triton demo; exit 0 when the node drove, stopped on the outage and recovered.

    The outage is judged by `outage_report` on the server's log and the node's own reports,
    never on when the demo's ready check happened to return.
    """
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
        killed, killed_wall = time.monotonic(), time.time()
        server.kill()
        time.sleep(args.outage)
        server.start().wait_ready()
        back = time.monotonic()
        print(f"tritonserver back after {back - killed:.1f} s (ready check)")
        deadline = back + 15.0
        while time.monotonic() < deadline:
            with driver.lock:
                if any(t[0] >= back and moving(t[3]) for t in driver.twists):
                    break
            time.sleep(0.1)
        time.sleep(1.0)
        with driver.lock:
            twists = list(driver.twists)
            inference = dict(driver.diagnostics.get("vla_node: inference") or {})
        feeding.set()
        phase.join(timeout=5.0)
        outage = outage_report(twists, outage_marks(server, killed, killed_wall, back),
                               recorder.statuses, stop_limit(args))
        outage["triton_recoveries"] = inference.get("triton_recoveries")
        outage["triton_state_after"] = inference.get("triton_state")
        summary["outage"] = outage
        final = stop(driver, proc)
        summary["final_twist"] = final
        summary["node_exit_code"] = proc.returncode
        print_summary(summary, final)
        print_triton(summary["triton"], outage, back - killed)
        failed = outage_failures(outage, outage["triton_recoveries"])
        if proc.returncode != 0:
            failed.append(f"node exit code {proc.returncode}")
        if final != [0.0, 0.0, 0.0]:
            failed.append(f"last Twist {final}, not zero")
        if not summary["twists"]:
            failed.append("no Twists")
        summary["failed"] = failed
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        code = 1 if failed else 0
        if failed:
            print("triton demo FAILED: " + "; ".join(failed), file=sys.stderr)
        else:
            print("triton demo PASSED: zeros from the first failed request until the restarted "
                  "server ran a request, ERROR meanwhile, motion only after a fresh answer")
    finally:
        recorder.close()
        if proc.poll() is None:
            proc.kill()
        driver.close()
        server.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
