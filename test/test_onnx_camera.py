"""Preprocessing inside the exported graph (issue 19): camera-input ONNX exports (format 2).

The encoder takes the camera's uint8 frame and resizes it in-graph with PIL's tables; the ONNX
backend is handed the frame as the node received it; old (format 1) exports keep the CPU resize.
Pixels: equal to PIL (the in-graph resize) or within 1 uint8 level (the CPU fast path); actions:
within 1e-3 of the PIL reference, per filter, through torch and ONNX.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from mobile_vla_node.backends.onnx_backend import OnnxBackend
from mobile_vla_node.backends.onnx_format import (
    ExportFormatError,
    camera_input,
    parse_props,
    read_export_metadata,
)
from mobile_vla_node.core.config import ActionConfig, BackendConfig
from mobile_vla_node.core.image_pipeline import CLIP_MEAN, CLIP_STD, ImageChoice
from mobile_vla_node.core.preprocess import CpuResize, ImageError, decode_view, to_model_input
from mobile_vla_node.core.resize import RESIZE_FILTERS
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.export import cli
from mobile_vla_node.model.loader import ModelSource, load_policy
from mobile_vla_node.model.preprocessing import FramePreprocess

W, H = 320, 240   # a small camera keeps the exports quick


def export(path, *extra):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["onnx", "--preset", "tiny", "--output", str(path), "--parity-cases", "2",
                       *extra])
    assert rc == 0, out.getvalue()
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_camera")
    return {"model": export(d / "model.onnx"),
            "rgb": export(d / "rgb.onnx", "--camera-size", f"{W}x{H}"),
            "bgr": export(d / "bgr.onnx", "--camera-size", f"{W}x{H}", "--camera-order", "bgr")}


def load(path):
    backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(path), warmup_iters=0))
    backend.load()
    return backend


def scene(width=W, height=H, seed=0):
    from mobile_vla_node.demo import synthetic

    return synthetic.render(synthetic.random_scene(np.random.default_rng(seed)), width, height)


def message(rgb, encoding="rgb8", pad=0):
    pixels = rgb if encoding == "rgb8" else np.ascontiguousarray(rgb[:, :, ::-1])
    rows = pixels.reshape(pixels.shape[0], -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], axis=1)
    from types import SimpleNamespace

    return SimpleNamespace(encoding=encoding, height=rgb.shape[0], width=rgb.shape[1],
                           step=rows.shape[1], is_bigendian=0, data=bytearray(rows.tobytes()))


def test_metadata_says_what_the_graph_takes(exports):
    meta = read_export_metadata(exports["rgb"])
    assert meta["format"] == "2"
    pre = camera_input(meta)
    assert pre["camera_size"] == [W, H] and pre["camera_order"] == "rgb"
    assert pre["resize_filter"] == "bicubic" and pre["image_pipeline"] == "package"
    assert camera_input(read_export_metadata(exports["model"])) is None   # format 1: old graph
    graph = onnx.load(str(exports["rgb"]), load_external_data=False).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, H, W, 3]
    ops = {n.op_type for n in graph.node}
    # TensorRT's ONNX parser has no antialiased Resize: the graph must not need one
    assert "Resize" not in ops and {"Gather", "Mul", "Div", "Max", "Min"} <= ops


def test_a_camera_export_without_its_record_or_an_unknown_format_is_refused():
    props = {"mobile_vla.format": "2", "mobile_vla.role": "encoder"}
    with pytest.raises(ExportFormatError, match="without mobile_vla.preprocess"):
        parse_props(props, "x.onnx")
    with pytest.raises(ExportFormatError, match=r"format '3'.*re-export"):
        parse_props({"mobile_vla.format": "3"}, "x.onnx")


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_camera_export_runs_the_frame_view_like_the_reference(exports, order):
    """The node's path: message -> view -> runtime -> in-graph resize, vs PIL + torch."""
    backend = load(exports[order])
    assert backend.preprocesses_on_device
    assert "in the encoder graph" in backend.describe().extra["preprocess"]
    reference = load(exports["model"])   # format 1: the runtime resizes with PIL's filter
    frame_rgb = scene()
    ids = backend.tokenizer.encode("go to the red box")
    history = np.zeros((0, backend.spec.feature_dim), np.float32)
    for encoding in ("rgb8", "bgr8"):
        msg = message(frame_rgb, encoding)
        frame, got = decode_view(msg)
        assert np.shares_memory(frame, np.frombuffer(msg.data, np.uint8))
        runtime = PolicyRuntime(backend, ActionConfig())
        swap = "bgr" if got != runtime.channel_order else "rgb"
        feature, actions = backend.infer_raw(frame, ids, history, swap)
        ref_f, ref_a = reference.infer(to_model_input(frame_rgb, 224), ids, history)
        assert np.abs(feature - ref_f).max() < 1e-4 and np.abs(actions - ref_a).max() < 1e-4


def test_runtime_hands_the_camera_export_its_frame_and_old_exports_still_resize(exports):
    frame_rgb = scene()
    results = {}
    for name in ("rgb", "model"):
        runtime = PolicyRuntime(load(exports[name]), ActionConfig())
        runtime.set_command("go to the red box")
        frame, order = decode_view(message(frame_rgb, "bgr8", pad=4))   # strided view
        results[name] = runtime.step(frame, order)
    assert results["rgb"].actions.shape == results["model"].actions.shape
    # in-graph (PIL-exact) vs the CPU fast path (within 1 level): the actions agree
    assert np.abs(results["rgb"].actions - results["model"].actions).max() < 1e-3


def test_a_frame_of_another_size_is_a_bad_image_that_names_the_export(exports):
    backend = load(exports["rgb"])
    ids = backend.tokenizer.encode("go")
    with pytest.raises(ImageError, match=f"takes uint8 \\({H}, {W}, 3\\).*--camera-size"):
        backend.infer_raw(scene(640, 480), ids, np.zeros((0, backend.spec.feature_dim),
                                                         np.float32))


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
def test_onnx_resize_graph_equals_pil(tmp_path, resize_filter):
    """The exported resize subgraph of every filter in ONNX Runtime: PIL bit for bit."""
    module = FramePreprocess(224, resize_filter, CLIP_MEAN, CLIP_STD)

    class Resize(torch.nn.Module):
        def forward(self, frames):
            return module.resize(frames)

    rgb = scene(640, 480, seed=1)
    path = tmp_path / "resize.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Resize(), (torch.from_numpy(rgb)[None],), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["out"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": rgb[None]})[0][0]
    pil = {"bicubic": 3, "bilinear": 2, "nearest": 0, "box": 4, "hamming": 5, "lanczos": 1}
    ref = np.asarray(Image.fromarray(rgb).resize((224, 224), pil[resize_filter]))
    np.testing.assert_array_equal(out, ref)


@pytest.fixture(scope="module")
def demo_policies():
    """The trained demo policy with each torch-kernel filter (custom pipeline, CLIP mean/std)."""
    out = {}
    for resize_filter in ("bicubic", "bilinear"):
        choice = ImageChoice("custom", resize_filter, 0, CLIP_MEAN, CLIP_STD)
        out[resize_filter] = load_policy(ModelSource("tiny", image=choice))
    return out


@pytest.mark.parametrize("resize_filter", ["bicubic", "bilinear"])
def test_cpu_fast_path_moves_actions_by_at_most_1e_3(demo_policies, resize_filter):
    """The CPU path (torch's uint8 kernel, within 1 level of PIL): action effect per filter."""
    loaded = demo_policies[resize_filter]
    model, tok = loaded.model, loaded.tokenizer
    fast = CpuResize(224, resize_filter, engine="fast")
    assert fast.engine == "torch"
    ids = torch.from_numpy(tok.encode("go to the red box"))[None]
    window = loaded.config.window_size
    worst = 0.0
    with torch.inference_mode():
        for seed in range(6):
            rgb = scene(640, 480, seed)
            outs = []
            for image in (to_model_input(rgb, 224, resize_filter=resize_filter), fast(rgb)):
                feature = model.encode_frame(torch.from_numpy(image)[None], ids)
                actions, _, _ = model.decode(feature[:, None].expand(1, window, -1),
                                             *model.zero_state(1))
                outs.append(actions[0].numpy())
            worst = max(worst, float(np.abs(outs[0] - outs[1]).max()))
    assert worst <= 1e-3, worst


def test_parity_record_of_a_camera_export(exports):
    meta = read_export_metadata(exports["bgr"])
    parity = meta["parity"] if isinstance(meta["parity"], dict) else json.loads(meta["parity"])
    assert parity["passed"] is True


def test_tensorrt_profiles_and_manifest_carry_the_camera_input(exports):
    from mobile_vla_node.backends import trt_manifest as tm

    meta = tm.normalize_metadata(read_export_metadata(exports["bgr"]))
    profiles = tm.make_profiles(meta["model_spec"], meta["policy_config"],
                                camera=camera_input(meta))
    assert profiles["encoder"]["image"]["opt"] == [1, H, W, 3] or \
        tuple(profiles["encoder"]["image"]["opt"]) == (1, H, W, 3)
    record = tm._export_record(meta)
    assert record["preprocess"]["camera_order"] == "bgr"
    old = tm.normalize_metadata(read_export_metadata(exports["model"]))
    assert "preprocess" not in tm._export_record(old)
    assert tuple(tm.make_profiles(old["model_spec"], old["policy_config"])["encoder"]["image"]
                 ["opt"]) == (1, 224, 224, 3)
