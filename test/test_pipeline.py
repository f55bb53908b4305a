"""core.pipeline.FramePipeline (the node's and replay's frame path) and the one latency summary."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from mobile_vla_node.backends import create_backend
from mobile_vla_node.core.config import ActionConfig, BackendConfig, ControlConfig, SafetyConfig
from mobile_vla_node.core.control import ControlLoop
from mobile_vla_node.core.inputs import InputRules
from mobile_vla_node.core.pipeline import FramePipeline
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.core.timing import LatencyWindow, latency_summary


def make_rules(backend=None) -> InputRules:
    if backend is None:
        backend = create_backend(BackendConfig(backend="null"))
        backend.load()
    runtime = PolicyRuntime(backend, ActionConfig())
    return InputRules(runtime, ControlLoop(ControlConfig(), SafetyConfig(), 0.1))


def frame(width=8, height=6, data_len=None):
    data = np.arange(width * height * 3, dtype=np.uint8).tobytes()
    return SimpleNamespace(encoding="rgb8", height=height, width=width, step=width * 3,
                           is_bigendian=0,
                           data=data if data_len is None else data[:data_len])


class CountingLock:
    def __init__(self):
        self.lock = threading.Lock()
        self.entered = 0

    def __enter__(self):
        self.lock.acquire()
        self.entered += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_good_frame_reaches_the_control_loop_with_its_timings():
    rules = make_rules()
    rules.command("move forward")
    lock, seen, reads = CountingLock(), [], []

    def now():
        reads.append(rules.counters["steps"])  # read after inference, before step_done
        return 12.5

    pipeline = FramePipeline(rules, lock=lock, on_step=lambda meta: seen.append(
        (meta, lock.lock.locked())))
    out = pipeline.process(frame(), stamp=12.0, now=now, transport_ms=3.0)
    assert out.ok and out.status == "ok" and out.error == ""
    assert out.meta.image_stamp == 12.0 and out.meta.transport_ms == 3.0
    assert out.meta.preprocess_ms >= 0 and out.meta.inference_ms >= 0
    assert reads == [0] and rules.counters["steps"] == 1
    assert seen == [(out.meta, True)]  # on_step runs under the caller's lock
    assert lock.entered == 1 and not lock.lock.locked()
    assert rules.control.fault is None


def test_without_a_command_the_step_is_discarded():
    rules = make_rules()
    out = FramePipeline(rules).process(frame(), stamp=1.0, now=1.0)
    assert out.status == "discarded" and out.meta is None
    assert rules.counters["discarded_steps"] == 1 and rules.counters["steps"] == 0


def test_malformed_frame_is_recorded_not_raised():
    rules = make_rules()
    rules.command("move forward")
    out = FramePipeline(rules).process(frame(data_len=10), stamp=1.0, now=1.0)
    assert out.status == "bad_image" and "10" in out.error
    assert rules.control.fault == "bad_image" and rules.counters["malformed_images"] == 1


def test_backend_exception_is_an_inference_error():
    backend = create_backend(BackendConfig(backend="null"))
    backend.load()

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    backend.infer = broken
    rules = make_rules(backend)
    rules.command("move forward")
    lock = CountingLock()
    out = FramePipeline(rules, lock=lock).process(frame(), stamp=1.0, now=1.0)
    assert out.status == "inference_error" and out.error == "RuntimeError: device lost"
    assert rules.control.fault == "inference_error" and rules.counters["inference_errors"] == 1
    assert lock.entered == 1
    # a good step clears the fault again
    backend.infer = type(backend).infer.__get__(backend)
    assert FramePipeline(rules).process(frame(), stamp=2.0, now=2.0).ok
    assert rules.control.fault is None


def test_latency_summary_is_the_window_summary():
    rng = np.random.default_rng(1)
    data = list(rng.lognormal(2.0, 0.4, 50))
    window = LatencyWindow(100)
    for v in data:
        window.add(v)
    assert window.summary() == latency_summary(data)
    full = latency_summary(data + [None, float("nan")], (50, 90, 99), ("mean", "std", "min",
                                                                         "max"))
    assert full["count"] == 50 and full["p90"] == pytest.approx(np.percentile(data, 90))
    assert full["std"] == pytest.approx(np.std(data)) and full["min"] == min(data)
    assert latency_summary([1.23456, 2.0], (50,), ("max",), digits=2) == {
        "p50": 1.62, "max": 2.0, "count": 2}
    assert latency_summary([]) == {"count": 0} and LatencyWindow().summary() == {}


def test_the_runtime_gets_a_view_of_the_message_buffer():
    rules = make_rules()
    rules.runtime.set_command("go")
    seen = []
    step = rules.runtime.step

    def spy(frame, order="rgb"):
        seen.append((frame, order))
        return step(frame, order)

    rules.runtime.step = spy
    msg = frame()
    msg.data = bytearray(msg.data)   # rclpy hands uint8[] over as a writable buffer
    FramePipeline(rules).process(msg, 1.0, 1.1)
    (got, order), = seen
    assert order == "rgb" and np.shares_memory(got, np.frombuffer(msg.data, np.uint8))
