"""The receiving side of `vla_stress`, in its own process so the load cannot starve it.

`Recorder` starts `recorder_main` (spawn), which subscribes to ``/cmd_vel`` and ``/diagnostics``
with its own rclpy context and stamps every message with ``time.monotonic()`` on arrival
(CLOCK_MONOTONIC is system-wide, so the stress process and publishers share the time base).
A health thread in the same process sleeps 10 ms at a time and records how late it wakes: if
the recorder itself is starved, that lag says by how much its Twist times can be off.

`NodeSampler` samples the node's RSS and CPU time with psutil in a thread of the stress process.
"""

from __future__ import annotations

import os
import threading
import time
from array import array

HEALTH_TICK_S = 0.01
GRAPH_PERIOD_S = 0.5
# More than one publisher on /cmd_vel means another node shares the ROS domain and the figures
# are not the node's alone; it is reported, not hidden.
WATCHED_TOPICS = ("/cmd_vel", "/camera/image_raw", "/vla/command")
STATUS_NAMES = ("control", "inputs")


class Recorder:
    """Handle of the recorder process; queries go over a pipe, live counters are shared values."""

    def __init__(self, ctx, node_name: str = "vla_node", nice: int = -10):
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self.n_twists = ctx.Value("q", 0, lock=False)
        self.last_twist_t = ctx.Value("d", 0.0, lock=False)
        self.last_nonzero_t = ctx.Value("d", 0.0, lock=False)
        self.ready = ctx.Event()
        self.process = ctx.Process(
            target=recorder_main, name="stress-recorder", daemon=True,
            args=(child, self.ready, self.n_twists, self.last_twist_t, self.last_nonzero_t,
                  node_name))
        self.process.start()
        self.nice = _renice(self.process.pid, nice)

    def _ask(self, *request, timeout: float = 30.0):
        with self._lock:
            self._conn.send(request)
            if not self._conn.poll(timeout):
                raise RuntimeError(f"recorder did not answer {request[0]!r}")
            return self._conn.recv()

    def twists(self, since: float = 0.0, until: float = float("inf")) -> list:
        """``[(t, lx, ly, az), ...]`` received in ``[since, until]``."""
        return self._ask("twists", since, until)

    def diagnostics(self, since: float = 0.0, until: float = float("inf")) -> list:
        """``[(t, {status_name: {level, message, values}}), ...]`` received in the window."""
        return self._ask("diags", since, until)

    def diagnostics_at(self, t: float) -> dict | None:
        """The newest snapshot received at or before ``t``."""
        return self._ask("diag_at", t)

    def publishers(self, since: float, until: float = float("inf")) -> dict:
        """Most publishers seen per watched topic in the window (>1 on /cmd_vel: another node)."""
        return self._ask("pubs", since, until)

    def health(self, since: float, until: float) -> dict:
        """The recorder's own scheduling lag in the window (ms), to judge the receiver by."""
        return self._ask("health", since, until)

    def close(self) -> None:
        """Stop the process."""
        try:
            self._ask("stop", timeout=5.0)
        except (RuntimeError, OSError, EOFError):
            pass
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.terminate()


def _renice(pid: int, nice: int) -> int | None:
    """Give the recorder a higher priority if allowed (root/CAP_SYS_NICE); its niceness."""
    import psutil

    try:
        proc = psutil.Process(pid)
        try:
            proc.nice(nice)
        except psutil.AccessDenied:
            pass
        return proc.nice()
    except psutil.Error:
        return None


def parse_diagnostics(msg, prefix: str) -> dict:
    """A DiagnosticArray as ``{name: {level, message, values}}`` (the node's statuses only)."""
    out = {}
    for s in msg.status:
        if not s.name.startswith(prefix):
            continue
        level = int.from_bytes(s.level, "little") if isinstance(s.level, bytes) else int(s.level)
        out[s.name] = {"level": level, "message": s.message,
                       "values": {kv.key: kv.value for kv in s.values}}
    return out


def health_summary(times, lags, since: float, until: float) -> dict:
    """p50/p99/max of the health thread's wake-up lag in a window, in ms."""
    window = sorted(lag for t, lag in zip(times, lags, strict=False) if since <= t <= until)
    if not window:
        return {"samples": 0}

    def pct(q):
        return round(window[min(len(window) - 1, int(q * len(window)))] * 1e3, 2)

    return {"samples": len(window), "lag_p50_ms": pct(0.5), "lag_p99_ms": pct(0.99),
            "lag_max_ms": round(window[-1] * 1e3, 2)}


def recorder_main(conn, ready, n_twists, last_twist_t, last_nonzero_t, node_name) -> None:
    """Process entry: subscribe, record, answer queries until told to stop."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import Twist
    from rclpy.executors import SingleThreadedExecutor

    from ..ros.qos import profile

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("vla_stress_recorder", context=ctx)
    lock = threading.Lock()
    twists: list = []
    diags: list = []
    h_times, h_lags = array("d"), array("d")
    graph: list = []  # (t, {topic: publisher count})
    running = threading.Event()
    running.set()

    def on_twist(msg):
        t = time.monotonic()
        v = (msg.linear.x, msg.linear.y, msg.angular.z)
        with lock:
            twists.append((t, *v))
        n_twists.value += 1
        last_twist_t.value = t
        if any(x != 0.0 for x in v):
            last_nonzero_t.value = t

    def on_diag(msg):
        t = time.monotonic()
        snapshot = parse_diagnostics(msg, node_name)
        if snapshot:
            with lock:
                diags.append((t, snapshot))

    node.create_subscription(Twist, "/cmd_vel", on_twist, profile("record"))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, profile("diagnostics"))

    def health():
        while running.is_set():
            t0 = time.monotonic()
            time.sleep(HEALTH_TICK_S)
            t1 = time.monotonic()
            h_times.append(t1)
            h_lags.append(max(t1 - t0 - HEALTH_TICK_S, 0.0))

    def serve():
        while running.is_set():
            try:
                request = conn.recv()
            except (EOFError, OSError):
                running.clear()
                return
            kind = request[0]
            with lock:
                if kind == "twists":
                    reply = [t for t in twists if request[1] <= t[0] <= request[2]]
                elif kind == "diags":
                    reply = [d for d in diags if request[1] <= d[0] <= request[2]]
                elif kind == "diag_at":
                    before = [d for d in diags if d[0] <= request[1]]
                    reply = before[-1][1] if before else None
                elif kind == "pubs":
                    reply = {}
                    for t, counts in graph:
                        if request[1] <= t <= request[2]:
                            for topic, n in counts.items():
                                reply[topic] = max(reply.get(topic, 0), n)
                elif kind == "health":
                    reply = health_summary(h_times, h_lags, request[1], request[2])
                    reply["nice"] = os.nice(0)
                else:
                    running.clear()
                    reply = "stopped"
            conn.send(reply)

    threading.Thread(target=health, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    ready.set()
    next_graph = 0.0
    while running.is_set() and ctx.ok():
        executor.spin_once(timeout_sec=0.05)
        if time.monotonic() >= next_graph:  # is anyone else on this domain? (see docstring)
            next_graph = time.monotonic() + GRAPH_PERIOD_S
            counts = {topic: node.count_publishers(topic) for topic in WATCHED_TOPICS}
            with lock:
                graph.append((time.monotonic(), counts))
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


class NodeSampler:
    """RSS (MB) and CPU seconds of one process every ``period_s``, in a thread."""

    def __init__(self, pid: int, period_s: float = 0.25):
        import psutil

        self.samples: list = []  # (monotonic, rss_mb, cpu_s)
        self._proc = psutil.Process(pid)
        self._period = period_s
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while self._running:
            try:
                with self._proc.oneshot():
                    rss = self._proc.memory_info().rss / 2**20
                    cpu = self._proc.cpu_times()
                self.samples.append((time.monotonic(), rss, cpu.user + cpu.system))
            except psutil.Error:
                return
            time.sleep(self._period)

    def stop(self) -> list:
        """Stop sampling; the samples so far."""
        self._running = False
        self._thread.join(timeout=2.0)
        return list(self.samples)
