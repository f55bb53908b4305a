"""The torch backend on a CUDA GPU: parity with CPU fp32, CUDA graphs, resizing on the device.

Marker ``gpu``; every test skips without a CUDA device. `make gpu-check` (scripts/gpu_check.py)
runs them with ``VLA_GPU_REPORT=FILE``: each measured difference is written there (JSON) as soon as
it is measured.

Model: the full-size preset (``mobile-vla-kosmos2``, 1.7B parameters) with seeded RANDOM weights
built from its config (nothing is downloaded), built once on the CPU and copied to the GPU for
each precision. Chunked steps: the ``small`` preset with ``fwd_pred_next_n`` 10 (same code path,
a chunk of 10 actions; the full chunk10 preset would cost another full-size build).
Cases: `export.parity.make_cases` with ``window_size`` random/gradient images, so every window
length 1..window_size and several prompt lengths occur; the CPU fp32 backend is the reference.

Tolerances (max abs over all cases, actions in [-1, 1]; docs/GPU.md): CUDA fp32 1e-3 (cuDNN
convolutions use TF32 by default), bf16 5e-2, fp16 1e-2; CUDA graphs vs eager at the same
precision 1e-3 (the same kernels; expected 0); GPU resize vs PIL <= 2 uint8 levels, mean < 0.05.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from mobile_vla_node.backends.torch_backend import TorchBackend
from mobile_vla_node.core.config import ActionConfig, BackendConfig
from mobile_vla_node.core.preprocess import to_model_input
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.model import loader
from mobile_vla_node.model.presets import preset_config

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not HAS_CUDA, reason=f"needs a CUDA GPU (torch "
                                 f"{torch.__version__}: torch.cuda.is_available() is False)")]

FULL = "mobile-vla-kosmos2"
ATOL = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}
GRAPH_ATOL = 1e-3
RESIZE_MAX_LEVELS, RESIZE_MEAN_LEVELS = 2, 0.05
REPORT: dict = {}


def record(key: str, value) -> None:
    """Keep a measured figure and rewrite $VLA_GPU_REPORT (JSON) at once (a killed run keeps
    what was measured before)."""
    REPORT[key] = value
    path = os.environ.get("VLA_GPU_REPORT")
    if path and HAS_CUDA:
        REPORT.setdefault("device", torch.cuda.get_device_name(0))
        REPORT.setdefault("torch", torch.__version__)
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=2, default=str)


_ON_GPU: dict = {}  # id(CPU model) -> its fp32 copy on the GPU (copied from there per backend)


def make_backend(loaded, share: bool = False, **overrides) -> TorchBackend:
    """A loaded TorchBackend running ``loaded``'s weights (a copy unless ``share``)."""
    cfg = BackendConfig(model_preset=loaded.config.preset, **overrides)
    backend = TorchBackend(cfg)
    if share:
        policy = loaded
    elif cfg.device.startswith("cuda"):  # one host-to-device copy per model, then on the GPU
        if id(loaded.model) not in _ON_GPU:
            _ON_GPU[id(loaded.model)] = copy.deepcopy(loaded.model).to(cfg.device)
        policy = replace(loaded, model=copy.deepcopy(_ON_GPU[id(loaded.model)]))
    else:
        policy = replace(loaded, model=copy.deepcopy(loaded.model))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "load_policy", lambda source: policy)
        backend.load()
    return backend


def diffs(got, want) -> dict:
    """Max/mean abs of feature and actions over all cases."""
    out = {}
    for i, name in enumerate(("feature", "actions")):
        d = np.concatenate([np.abs(g[i].astype(np.float64) - w[i]).ravel()
                            for g, w in zip(got, want, strict=True)])
        out[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
    return out


def run_cases(backend, cases):
    return [backend.infer(c.image, c.text_ids, c.history) for c in cases]


def step_ms(backend, case, iters: int = 30) -> dict:
    """p50/p99 of backend.infer + synchronize on one full-window case (after 5 untimed)."""
    samples = []
    for i in range(iters + 5):
        t0 = time.perf_counter()
        backend.infer(case.image, case.text_ids, case.history)
        backend.synchronize()
        if i >= 5:
            samples.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(samples, 50)), "p99": float(np.percentile(samples, 99)),
            "iters": iters}


class Suite:
    """One model on the CPU (the fp32 reference) with its parity cases and reference outputs."""

    def __init__(self, loaded):
        from mobile_vla_node.export.parity import make_cases

        self.loaded = loaded
        self.cpu = make_backend(loaded, share=True)
        spec = self.cpu.spec
        self.cases = make_cases(self.cpu, n_random=spec.window_size, seed=0)
        windows = sorted({len(c.history) + 1 for c in self.cases})
        assert windows == list(range(1, spec.window_size + 1)), windows
        self.reference = run_cases(self.cpu, self.cases)


@pytest.fixture(scope="module")
def full():
    t0 = time.perf_counter()
    suite = Suite(loader.load_policy(loader.ModelSource(preset=FULL)))
    record("full_model", {"preset": FULL, "weights": "random (seed 0), built from the config",
                          "cases": len(suite.cases), "setup_s": time.perf_counter() - t0})
    return suite


@pytest.fixture(scope="module")
def chunked():
    small = loader.load_policy(loader.ModelSource(preset="small"))
    config = preset_config("small", fwd_pred_next_n=10, window_size=4)
    torch.manual_seed(0)
    model = loader.build_model(config, small.tokenizer).eval()
    return Suite(replace(small, model=model, config=config))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_matches_cpu_fp32(full, precision):
    backend = make_backend(full.loaded, device="cuda", precision=precision)
    try:
        assert backend.describe().device.startswith("cuda")
        got = run_cases(backend, full.cases)
        d = diffs(got, full.reference)
        d["atol_actions"] = ATOL[precision]
        d["eager_full_window_step_ms"] = step_ms(backend, full.cases[-1])
        record(f"full_{precision}_vs_cpu_fp32", d)
        assert all(np.isfinite(g[1]).all() for g in got)
        assert d["actions"]["max_abs"] <= ATOL[precision], d
    finally:
        backend.close()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_graphs_match_eager(full, precision):
    eager = make_backend(full.loaded, device="cuda", precision=precision)
    try:
        want = run_cases(eager, full.cases)
        eager_ms = step_ms(eager, full.cases[-1])
    finally:
        eager.close()
    graphed = make_backend(full.loaded, device="cuda", precision=precision, cuda_graph=True)
    try:
        graphed.warmup(1)
        first = run_cases(graphed, full.cases)  # captures the remaining prompt lengths
        again = run_cases(graphed, full.cases)  # pure replays
        cache = graphed._graphs
        state = graphed.describe().extra["cuda_graph"]
        assert not cache.failed, state
        window = graphed.spec.window_size
        assert {("step", t) for t in range(1, window + 1)} <= set(cache.graphs), state
        d = diffs(first, want)
        d_again = diffs(again, first)
        record(f"full_{precision}_graphs", {
            "vs_eager": d, "replay_vs_first": d_again, "state": state,
            "graph_full_window_step_ms": step_ms(graphed, full.cases[-1]),
            "eager_full_window_step_ms": eager_ms,
            "vs_cpu_fp32": diffs(again, full.reference)})
        assert d["actions"]["max_abs"] <= GRAPH_ATOL, d
        assert d_again["actions"]["max_abs"] == 0.0, d_again
        assert diffs(again, full.reference)["actions"]["max_abs"] <= ATOL[precision]
    finally:
        graphed.close()


def test_chunked_steps_on_cuda(chunked):
    spec = chunked.cpu.spec
    assert spec.chunk == 10
    for precision, graphs in (("fp32", False), ("bf16", True)):
        backend = make_backend(chunked.loaded, device="cuda", precision=precision,
                               cuda_graph=graphs)
        try:
            got = run_cases(backend, chunked.cases)
            assert all(g[1].shape == (10, spec.action_dim) for g in got)
            d = diffs(got, chunked.reference)
            record(f"chunk10_small_{precision}{'_graphs' if graphs else ''}_vs_cpu_fp32", d)
            assert d["actions"]["max_abs"] <= ATOL[precision], d
            if graphs:
                assert not backend._graphs.failed, backend.describe().extra["cuda_graph"]
        finally:
            backend.close()


def _scenes(n: int, seed: int = 5):
    from mobile_vla_node.demo import synthetic

    rng = np.random.default_rng(seed)
    scene = synthetic.random_scene(rng, "go to the red box")
    return [synthetic.render(s, 640, 480) for s in synthetic.drift(scene, rng, n)]


def test_gpu_resize_matches_pil():
    from mobile_vla_node.backends.torch_preprocess import resize_like_pil

    rows = {}
    for name, frames in (("scenes_640x480", _scenes(8)),
                         ("noise_1280x720", [np.random.default_rng(2).integers(
                             0, 256, (720, 1280, 3), dtype=np.uint8)])):
        d = np.concatenate([np.abs(
            to_model_input(f, 224).astype(np.int16)
            - resize_like_pil(torch.from_numpy(f).cuda()[None], 224)[0].cpu().numpy()
            .astype(np.int16)).ravel() for f in frames])
        rows[name] = {"max_levels": int(d.max()), "mean_levels": float(d.mean()),
                      "differing_fraction": float((d > 0).mean())}
    record("gpu_resize_vs_pil", rows)
    for row in rows.values():
        assert row["max_levels"] <= RESIZE_MAX_LEVELS and row["mean_levels"] < RESIZE_MEAN_LEVELS


def test_gpu_in_graph_resize_equals_pil():
    """The torch backend's CUDA resize (model.preprocessing, int32 tables): PIL bit for bit."""
    from mobile_vla_node.model.preprocessing import FramePreprocess

    frames = _scenes(4) + [np.random.default_rng(2).integers(0, 256, (720, 1280, 3),
                                                             dtype=np.uint8)]
    for resize_filter in ("bicubic", "bilinear", "lanczos", "nearest"):
        module = FramePreprocess(224, resize_filter, (0.0,) * 3, (1.0,) * 3)
        for f in frames:
            got = module.resize(torch.from_numpy(f).cuda()[None])[0].cpu().numpy()
            np.testing.assert_array_equal(got, to_model_input(f, 224,
                                                              resize_filter=resize_filter))
    record("gpu_in_graph_resize_vs_pil", {"filters": 4, "frames": len(frames),
                                           "max_levels": 0})


def test_runtime_raw_frames_on_gpu_with_graphs_match_cpu_pil_path(full):
    """Windowed steps through PolicyRuntime: GPU resize + graphs (bf16) vs PIL + CPU fp32."""
    frames = _scenes(full.cpu.spec.window_size + 3)
    cpu_rt = PolicyRuntime(full.cpu, ActionConfig())
    gpu = make_backend(full.loaded, device="cuda", precision="bf16", cuda_graph=True)
    try:
        assert gpu.preprocesses_on_device, gpu.describe().extra["preprocess"]
        gpu_rt = PolicyRuntime(gpu, ActionConfig())
        for rt in (cpu_rt, gpu_rt):
            rt.set_command("go to the red box")
        worst = 0.0
        for rgb in frames:
            want, got = cpu_rt.step(rgb), gpu_rt.step(rgb)
            worst = max(worst, float(np.abs(got.actions - want.actions).max()))
        record("runtime_raw_frames_bf16_graphs_vs_cpu_fp32_pil", {
            "steps": len(frames), "actions_max_abs": worst,
            "cuda_graph": gpu.describe().extra["cuda_graph"],
            "preprocess": gpu.describe().extra["preprocess"]})
        assert len(gpu_rt.history) == gpu.spec.window_size - 1
        assert not gpu._graphs.failed, gpu.describe().extra["cuda_graph"]
        assert worst <= ATOL["bf16"]
    finally:
        gpu.close()
