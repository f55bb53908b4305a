"""The GPU path's logic, on the CPU: graph cache and fallbacks, device-style resize vs PIL.

What needs a real GPU (capture, replay, CUDA parity) is in test_gpu.py (marker ``gpu``). Here:

* `GraphCache` keying, LRU eviction and remembered capture failures, with a stand-in capture whose
  "replay" re-runs the function into the same static output tensors (a graph's contract);
* the torch backend's graph wiring through that stand-in: every window length and two prompt
  lengths give the eager results, under the keys docs/GPU.md describes;
* ``cuda_graph: true`` on the CPU is reported unavailable, with the same results;
* the captured functions run under ``FakeTensorMode`` (a data-dependent op or host sync there would
  raise, and would break a CUDA graph capture);
* `resize_like_pil` vs PIL on synthetic scenes within the documented tolerance, and the runtime
  handing raw frames to a backend that preprocesses on its device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobile_vla_node.backends.base import InferenceBackend
from mobile_vla_node.backends.torch_backend import TorchBackend
from mobile_vla_node.backends.torch_cuda_graphs import (
    CapturedCall,
    GraphCache,
    format_key,
    unavailable_reason,
)
from mobile_vla_node.backends.torch_preprocess import resize_like_pil, unsupported_reason
from mobile_vla_node.core.config import ActionConfig, BackendConfig
from mobile_vla_node.core.preprocess import ImageError, to_model_input
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.demo import synthetic

COMMANDS = ("go to the red box", "turn left")  # different prompt lengths


class ReplayOnCPU:
    """A CUDA graph stand-in: replay re-runs fn on the static inputs into the static outputs."""

    def __init__(self, fn, static_inputs, static_output):
        self.fn, self.static_inputs, self.static_output = fn, static_inputs, static_output

    def replay(self):
        self.static_output.copy_(self.fn(*self.static_inputs))


def cpu_capture(log=None):
    def capture(fn, inputs):
        static = tuple(x.clone() for x in inputs)
        out = fn(*static)
        if log is not None:
            log.append(tuple(tuple(x.shape) for x in inputs))
        return CapturedCall(ReplayOnCPU(fn, static, out), static, out)
    return capture


def test_graph_cache_captures_once_per_key_and_replays_new_inputs():
    log = []
    cache = GraphCache(cpu_capture(log))
    double = lambda x: x * 2  # noqa: E731
    a = cache.run("k1", double, torch.tensor([1.0, 2.0]))
    assert a.tolist() == [2.0, 4.0]
    b = cache.run("k1", double, torch.tensor([5.0, 6.0]))
    assert b.tolist() == [10.0, 12.0]
    assert b is a  # the static output, overwritten by the replay
    cache.run("k2", double, torch.tensor([1.0]))
    assert cache.captures == 2 and len(log) == 2 and cache.eager_calls == 0
    assert list(cache.graphs) == ["k1", "k2"]
    assert cache.graphs["k1"].replays == 2


def test_graph_cache_evicts_least_recently_used():
    cache = GraphCache(cpu_capture(), max_graphs=2)
    for key in ("a", "b", "a", "c"):
        cache.run(key, torch.neg, torch.ones(1))
    assert list(cache.graphs) == ["a", "c"]  # "b" was least recently used
    assert cache.evictions == 1 and cache.captures == 3
    with pytest.raises(ValueError, match="max_graphs"):
        GraphCache(cpu_capture(), max_graphs=0)


def test_graph_cache_failed_capture_runs_eagerly_and_is_not_retried(caplog):
    calls = []

    def failing(fn, inputs):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    cache = GraphCache(failing)
    for value in (1.0, 2.0, 3.0):
        out = cache.run(("step", 3), torch.neg, torch.tensor([value]))
        assert out.tolist() == [-value]
    assert len(calls) == 1 and cache.eager_calls == 3 and not cache.graphs
    assert cache.failed == {("step", 3): "RuntimeError: operation not permitted when stream is "
                                         "capturing"}
    summary = cache.summary()
    assert "eager for step T=3: RuntimeError: operation not permitted" in summary
    assert "capture failed for step T=3" in caplog.text


def test_captured_call_refuses_other_shapes():
    cache = GraphCache(cpu_capture())
    cache.run("k", torch.neg, torch.ones(2))
    with pytest.raises(ValueError, match="does not match the captured"):
        cache.graphs["k"](torch.ones(3))
    with pytest.raises(ValueError, match="takes 1 inputs"):
        cache.graphs["k"](torch.ones(2), torch.ones(2))


def test_format_key_and_unavailable_reason():
    assert format_key(("step", 4)) == "step T=4"
    assert format_key(("encoder", (1, 224, 224, 3), "model", 9)) == "encoder 1x224x224x3 model L=9"
    assert unavailable_reason(torch, torch.device("cpu")) == (
        "cuda_graph unavailable on cpu: CUDA graphs need a CUDA device")


@pytest.fixture(scope="module")
def eager():
    backend = TorchBackend(BackendConfig(model_preset="tiny"))
    backend.load()
    return backend


def _steps(backend, rng):
    """Outputs for every window length 1..W under two prompts (history of the backend's own)."""
    spec = backend.spec
    outs = []
    for command in COMMANDS:
        ids = backend.tokenizer.encode(command)
        history = np.zeros((0, spec.feature_dim), np.float32)
        for _ in range(spec.window_size + 1):
            image = rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8)
            feature, actions = backend.infer(image, ids, history)
            outs.append((feature, actions))
            history = np.concatenate([history, feature[None]])[-(spec.window_size - 1):]
    return outs


def test_graph_wiring_matches_eager_for_every_window_and_prompt_length(eager):
    graphed = TorchBackend(BackendConfig(model_preset="tiny"))
    graphed.load()
    graphed._graphs = GraphCache(cpu_capture())  # what load() makes on CUDA, with a CPU capture
    want = _steps(eager, np.random.default_rng(3))
    got = _steps(graphed, np.random.default_rng(3))
    for (wf, wa), (gf, ga) in zip(want, got, strict=True):
        np.testing.assert_allclose(gf, wf, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ga, wa, rtol=0, atol=1e-6)
    window = eager.spec.window_size
    lengths = sorted({len(eager.tokenizer.encode(c)) for c in COMMANDS})
    assert len(lengths) == 2
    assert set(graphed._graphs.graphs) == (
        {("step", t) for t in range(1, window + 1)}
        | {("encoder", (1, 224, 224, 3), "model", n) for n in lengths})
    assert not graphed._graphs.failed


def test_cuda_graph_on_cpu_is_reported_unavailable_and_runs_eagerly(eager):
    backend = TorchBackend(BackendConfig(model_preset="tiny", cuda_graph=True))
    backend.load()
    info = backend.describe()
    reason = "cuda_graph unavailable on cpu: CUDA graphs need a CUDA device"
    assert info.extra["cuda_graph"] == f"off ({reason})"
    assert reason in info.warnings
    assert backend._graphs is None and not backend.preprocesses_on_device
    assert info.extra["preprocess"].startswith("cpu (runtime resize")
    rng = np.random.default_rng(0)
    for (wf, wa), (gf, ga) in zip(_steps(eager, rng), _steps(backend, np.random.default_rng(0)),
                                  strict=True):
        np.testing.assert_array_equal(gf, wf)
        np.testing.assert_array_equal(ga, wa)


def test_captured_functions_have_no_data_dependent_ops(eager):
    """FakeTensorMode raises on host syncs / data-dependent shapes, as a graph capture would."""
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
        FakeTensorMode,
    )

    spec = eager.spec
    ids = torch.from_numpy(eager.tokenizer.encode(COMMANDS[0]))[None]
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        frame = torch.zeros((1, 480, 640, 3), dtype=torch.uint8)
        feature = eager._raw_encoder("bgr")(frame, ids)
        history = torch.zeros((1, spec.window_size - 1, spec.feature_dim))
        actions = eager._window_step(history, feature)
        assert tuple(actions.shape) == (1, spec.chunk, spec.action_dim)
        with pytest.raises(DataDependentOutputException):
            bool((frame > 0).all())  # the kinds of op that would break a capture
        with pytest.raises(DynamicOutputShapeException):
            torch.nonzero(frame)


# -- preprocessing on the device (measured here on CPU tensors) -------------------------------

@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(11)
    return [synthetic.render(synthetic.random_scene(rng), 640, 480) for _ in range(6)]


def test_resize_like_pil_within_documented_tolerance(scenes):
    diffs = []
    for rgb in scenes + [np.random.default_rng(1).integers(0, 256, (720, 1280, 3), np.uint8)]:
        ref = to_model_input(rgb, 224).astype(np.int16)
        got = resize_like_pil(torch.from_numpy(rgb)[None], 224)[0].numpy().astype(np.int16)
        diffs.append(np.abs(ref - got))
    d = np.concatenate([x.ravel() for x in diffs])
    assert d.max() <= 1, d.max()  # docs/GPU.md: <= 1 level on camera-like frames (2: sharp edges)
    assert d.mean() < 0.01, d.mean()


def test_resize_like_pil_channel_order_identity_and_errors(scenes):
    rgb = torch.from_numpy(scenes[0])[None]
    out = resize_like_pil(rgb, 224)
    assert out.shape == (1, 224, 224, 3) and out.dtype == torch.uint8
    assert torch.equal(resize_like_pil(rgb, 224, channel_order="bgr"), out.flip(-1))
    small = torch.from_numpy(to_model_input(scenes[0], 224))[None]
    assert torch.equal(resize_like_pil(small, 224), small)  # no resampling at the target size
    with pytest.raises(ValueError, match="expected uint8"):
        resize_like_pil(rgb.float(), 224)
    with pytest.raises(ValueError, match="channel_order"):
        resize_like_pil(rgb, 224, channel_order="yuv")
    assert unsupported_reason("lanczos") and not unsupported_reason("BICUBIC")


def test_torch_backend_infer_raw_on_device_path_matches_pil_path(eager, scenes):
    """The device path's functions (run here on CPU tensors) against PIL + infer."""
    ids = eager.tokenizer.encode(COMMANDS[0])
    history = np.zeros((eager.spec.window_size - 1, eager.spec.feature_dim), np.float32)
    eager.preprocesses_on_device = True
    try:
        for order in ("rgb", "bgr"):
            f_dev, a_dev = eager.infer_raw(scenes[1], ids, history, order)
            f_cpu, a_cpu = eager.infer(to_model_input(scenes[1], 224, order), ids, history)
            np.testing.assert_allclose(a_dev, a_cpu, atol=1e-3)
            np.testing.assert_allclose(f_dev, f_cpu, atol=1e-2)
    finally:
        eager.preprocesses_on_device = False
    # off: the base class's CPU resize, exactly
    f_off, a_off = eager.infer_raw(scenes[1], ids, history, "bgr")
    f_cpu, a_cpu = eager.infer(to_model_input(scenes[1], 224, "bgr"), ids, history)
    np.testing.assert_array_equal(a_off, a_cpu)


class RawSpy(InferenceBackend):
    """Records which entry point the runtime used."""

    name = "spy"

    def __init__(self, inner):
        super().__init__(inner.config)
        self.inner, self.spec, self.tokenizer = inner, inner.spec, inner.tokenizer
        self.preprocesses_on_device = True
        self.raw_calls = []

    def load(self):
        pass

    def encode(self, image, text_ids):
        raise AssertionError("the runtime must not call encode on a device-preprocessing backend")

    def decode(self, features):
        raise AssertionError("the runtime must not call decode on a device-preprocessing backend")

    def infer(self, image, text_ids, history):
        raise AssertionError("the runtime must call infer_raw on a device-preprocessing backend")

    def infer_raw(self, rgb, text_ids, history, channel_order="rgb"):
        self.raw_calls.append((rgb.shape, channel_order, len(history)))
        return InferenceBackend.infer_raw(self.inner, rgb, text_ids, history, channel_order)


def test_runtime_hands_raw_frames_to_a_device_preprocessing_backend(eager, scenes):
    spy = RawSpy(eager)
    runtime = PolicyRuntime(spy, ActionConfig(channel_order="bgr"))
    runtime.set_command(COMMANDS[0])
    for rgb in scenes[:3]:
        assert runtime.step(rgb) is not None
    assert spy.raw_calls == [((480, 640, 3), "bgr", 0), ((480, 640, 3), "bgr", 1),
                             ((480, 640, 3), "bgr", 2)]
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ImageError, match="expected uint8"):
            runtime.step(bad)
    assert len(spy.raw_calls) == 3
