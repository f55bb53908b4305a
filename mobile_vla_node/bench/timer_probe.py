"""The bare timer of `vla_bench --mode node`: this machine's timer jitter floor, in the same run.

Its own process, started by the bench beside the node: one Python thread, no ROS, no GIL
contention, a loop that sleeps to absolute deadlines at the node's control rate with the node's
scheduling (SCHED_FIFO at the control thread's priority where allowed). Whatever delays its
wake-ups (other processes on the same cores, a kernel that does not preempt, a hypervisor that
deschedules the VM's CPUs) delays the node's control thread as much; whatever delays only the
node is the node's. The node's jitter p99 is judged beside this floor.

Protocol: ``python -m mobile_vla_node.bench.timer_probe RATE_HZ PRIORITY``; it prints one line,
``ready <scheduling>``, then ticks until stdin closes and prints one JSON line
``{"ticks": [monotonic_s, ...], "scheduling": "..."}`` (``time.monotonic()``, the clock of the
bench's window).
"""

from __future__ import annotations

import json
import sys
import threading
import time

from ..ros.control_thread import set_realtime


def run(rate_hz: float, priority: int, done: threading.Event) -> tuple[list[float], str]:
    """Tick at ``rate_hz`` until ``done``; return the tick times and the scheduling obtained."""
    scheduling = set_realtime(priority)
    print(f"ready {scheduling}", flush=True)
    period, ticks = 1.0 / rate_hz, []
    deadline = time.monotonic() + period
    while not done.is_set():
        wait = deadline - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now = time.monotonic()
        ticks.append(now)
        deadline += period
        if now > deadline:   # late by a whole period: restart the schedule, as the node does
            deadline = now + period
    return ticks, scheduling


def main(argv=None) -> int:
    """Tick until stdin closes, then print the record."""
    args = list(argv if argv is not None else sys.argv[1:])
    rate_hz, priority = float(args[0]), int(args[1])
    done = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    ticks, scheduling = run(rate_hz, priority, done)
    print(json.dumps({"ticks": ticks, "scheduling": scheduling}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
