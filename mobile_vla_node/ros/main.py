"""Entry point of ``vla_node``: init, (auto) configure + activate, spin, one shutdown sequence.

Shutdown, whatever asked for it (SIGINT, SIGTERM, a second or third signal, the lifecycle
``shutdown`` transition, a fatal error), runs once and in this order:

1. the control thread stops and no policy Twist can be published any more;
2. three zero Twists go out, and further signals are ignored from here on;
3. the inference worker is joined within a bound (its measured p99, at most 30 s);
4. the backend is closed, the node destroyed, rclpy shut down. Exit code 0 (2 for a start-up
   error, with one ``FATAL`` line on stderr).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from .shutdown import ShutdownRequest

EXIT_FATAL = 2
SPIN_SLICE_S = 0.1
# glibc: allocations above this size are mmapped and handed back to the OS when freed. Setting it
# fixes the threshold (glibc otherwise raises it after each large free, after which camera-sized
# buffers come from the heap and fragment it: RSS grew 534 -> 756 MB in a malformed-frame flood).
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3


def _fix_malloc_threshold() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _fatal(message: str) -> int:
    print(f"[vla_node] FATAL: {message}", file=sys.stderr, flush=True)
    return EXIT_FATAL


def _autostart(node, request: ShutdownRequest, failure: list) -> None:
    """Configure (load + warm up) and activate, off the main thread so it keeps spinning."""
    node.trigger_configure()
    if node.lifecycle != "inactive":
        failure.append(node.startup_error or "configure failed")
        request.request()
    elif not request.is_set():
        node.trigger_activate()


def main(args=None) -> int:
    """Run the node until a signal or the lifecycle shutdown transition; return the exit code."""
    from rclpy.signals import SignalHandlerOptions

    from .node import VlaNode

    _fix_malloc_threshold()
    request = ShutdownRequest()
    request.install()
    # rclpy's own handlers would shut the context down before the final zero Twist.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = VlaNode()
    except Exception as exc:  # a bad parameter: one clear line, nothing was published
        rclpy.try_shutdown()
        return _fatal(f"{type(exc).__name__}: {exc}")
    node.shutdown_request = request
    failure: list[str] = []
    starter = None
    if node.config.control.autostart:
        starter = threading.Thread(target=_autostart, args=(node, request, failure),
                                   name="vla_autostart", daemon=True)
        starter.start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # Short slices: a recorded signal is noticed even when nothing else wakes the executor
        # (use_sim_time with /clock paused).
        while not request.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
    except ExternalShutdownException:
        pass
    request.ignore_further()
    node.publish_zeros()
    if starter is not None and starter.is_alive():
        # Still loading the model (no policy Twist was ever published): loading cannot be
        # interrupted, and tearing down under it can abort, so leave now that the zeros are out.
        _flush_and_exit(0)
    clean = node.release()
    code = _fatal(failure[0]) if failure else 0
    if not clean:
        # The worker is inside a native inference call; tearing the interpreter down under it
        # aborts in C++. The zero Twists are already out, so leave at once.
        _flush_and_exit(code)
    node.destroy_node()
    rclpy.try_shutdown()
    return code


def _flush_and_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
