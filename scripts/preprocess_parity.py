"""Camera frame -> model input, every path against PIL: pixels, effect on actions, and cost.

    PYTHONPATH=. python scripts/preprocess_parity.py --json out.json [--iters 100] [--quick]
        [--cost-only]
    PYTHONPATH=. python scripts/preprocess_parity.py --device cpu|cuda|cuda:N [--json out.json]
        [--iters 100] [--quick] [--cost-only]

Frames: synthetic demo scenes (mobile_vla_node.demo.synthetic), one uniform-noise frame and one
gradient with hard wrap-around edges, at 640x480 (and 1280x720 without --quick).

Pixels (max uint8 levels vs ``PIL.Image.resize``, share of pixels that differ), per filter:

* ``exact tables`` -- `core.resize.resize_exact` (numpy, integer; the tables the graphs bake);
* ``in-graph torch`` -- `model.preprocessing.FramePreprocess` (banded float32 matmuls, CPU;
  the integer gather formulation for nearest);
* ``in-graph ONNX`` -- the same module exported to ONNX, run by ONNX Runtime (CPU);
* ``cpu torch uint8`` -- torch's antialiased uint8 kernel (`core.preprocess.CpuResize`), the
  runtime's CPU path for bilinear/bicubic;
* ``onnx Resize ...`` -- ONNX's own Resize op with ``antialias=1`` (opset 18), in the variants
  that matter: uint8 or float input, ``exclude_outside`` 0 (the default) or 1, cubic a = -0.5;
* ``torch float (old device path)`` -- `backends.torch_preprocess.resize_like_pil` (what the torch
  backend used on CUDA before), bicubic/bilinear;
* ``cv2 INTER_AREA`` / ``cv2 INTER_LINEAR`` -- OpenCV, for reference (no PIL parity claimed).

Actions: the shipped demo policy (tiny, trained), with a custom pipeline of each filter and CLIP
mean/std, fp32 CPU, a window of 8 copies of the frame's feature (a still robot), PIL's input vs
each path's input; through ONNX: a camera-input export (in-graph resize) vs a model-size export
fed PIL's input.

Cost (p50/p99 ms, one thread where the path allows, machine load recorded): decode (zero-copy
view of rgb8 / bgr8, the old copying decode of bgr8, JPEG), each CPU resize, and the ONNX step with
and without the in-graph resize (the cost moved into the graph). The in-graph resize, old integer
gather formulation vs banded float32 matmuls, in torch and in ONNX Runtime, at 640x480 and
1280x720, bicubic and bilinear (`--iters` each), and the ONNX step of camera-input exports of
both formulations at both sizes. ``--cost-only`` skips the pixel and action tables.

``--device``: only the in-graph resize (`model.preprocessing.FramePreprocess`), run on that
device (what `make gpu-check` runs, ``--device cuda``); tables, each starting with a
``| resolution`` (or ``| filter``) header:

* pixels vs PIL per filter at 640x480 and 1280x720 (640x480 only with ``--quick``): max uint8
  levels, share of pixels differing, the formulation taken (banded float32 matmuls, or the
  integer gather); on CUDA also with ``torch.backends.cuda.matmul.allow_tf32 = True``, which the
  banded weights are built to survive bit for bit (`core.resize.band_table`: weights split to 11
  significant bits);
* actions: the shipped demo policy moved to the device, the camera frame into ``encode_frame``
  (in-graph resize) vs PIL's input, both on the device (0 when the resize is exact), and, off the
  CPU, the device's actions vs the CPU's (fp32, PIL input), for scale;
* cost p50/p99 (``--iters``) of PIL on the CPU and of the in-graph preprocessing (resize and
  normalization, bicubic) on the device; on CUDA ``torch.cuda.synchronize()`` before and after
  each timed call, the upload of the pinned uint8 frame timed alone and with the preprocessing,
  and the preprocessing with TF32 on.

Exit 1 (after printing everything) when any resize differs from PIL, 2 when the device is not
there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobile_vla_node.core import resize as pil_resize  # noqa: E402
from mobile_vla_node.core.image_pipeline import CLIP_MEAN, CLIP_STD  # noqa: E402
from mobile_vla_node.core.preprocess import (  # noqa: E402
    PIL_FILTER_IDS,
    CpuResize,
    decode_compressed,
    decode_message,
    decode_view,
)

SIZE = 224
FILTERS = pil_resize.RESIZE_FILTERS


def frames(width: int, height: int, n_scenes: int) -> dict[str, np.ndarray]:
    """Named test frames at one resolution."""
    from mobile_vla_node.demo import synthetic

    rng = np.random.default_rng(7)
    out = {f"scene_{i}": synthetic.render(synthetic.random_scene(rng), width, height)
           for i in range(n_scenes)}
    out["noise"] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    out["gradient_wrap"] = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1),
                                     (xx + yy) % 256], -1).astype(np.uint8)
    return out


def pil(rgb: np.ndarray, resize_filter: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), PIL_FILTER_IDS[resize_filter]))


def timing(fn, iters: int, sync=None) -> dict:
    """p50/p99 in ms of ``fn`` (after 5 warm-up calls); ``sync()`` before and after each call."""
    sync = sync or (lambda: None)
    for _ in range(5):
        fn()
    samples = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(samples, 50)),
            "p99_ms": float(np.percentile(samples, 99)), "iters": iters}


# --- paths ------------------------------------------------------------------------------------

def onnx_resize_module(torch, resize_filter: str, shape, workdir: Path, banded: bool = True):
    """`FramePreprocess.resize` exported to ONNX for one frame shape; an ORT session.

    ``banded`` False: the integer gather formulation (the old graph).
    """
    import onnxruntime as ort

    from mobile_vla_node.model.preprocessing import FramePreprocess

    module = FramePreprocess(SIZE, resize_filter, CLIP_MEAN, CLIP_STD)
    module.pil_resize.banded = banded

    class Resize(torch.nn.Module):
        def forward(self, frames):
            return module.resize(frames)

    path = workdir / f"resize_{resize_filter}_{shape[0]}x{shape[1]}_{int(banded)}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Resize(), (torch.zeros((1, *shape, 3), dtype=torch.uint8),), str(path),
                          dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["out"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_resize_op(mode: str, uint8: bool, exclude_outside: int, shape):
    """ONNX's Resize op with antialias=1 (opset 18) on NHWC frames; a callable rgb -> uint8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = TensorProto.UINT8 if uint8 else TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", elem, [1, *shape, 3])
    y = helper.make_tensor_value_info("y", elem, None)
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, SIZE, SIZE, 3])
    attrs = {"mode": mode, "antialias": 1, "exclude_outside": exclude_outside}
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.5
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    model = helper.make_model(helper.make_graph([node], "resize", [x], [y], initializer=[sizes]),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])

    def run(rgb):
        inp = rgb[None] if uint8 else rgb[None].astype(np.float32)
        out = session.run(None, {"x": inp})[0][0]
        return out if uint8 else np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)

    return run


def paths(torch, resize_filter: str, shape, workdir: Path) -> dict:
    """name -> callable(rgb) -> uint8 (224, 224, 3), the paths that exist for this filter."""
    import cv2

    from mobile_vla_node.model.preprocessing import FramePreprocess

    module = FramePreprocess(SIZE, resize_filter, CLIP_MEAN, CLIP_STD)
    session = onnx_resize_module(torch, resize_filter, shape, workdir)
    out = {
        "exact tables (numpy)": lambda rgb: pil_resize.resize_exact(rgb, SIZE, resize_filter),
        "in-graph torch": lambda rgb: module.resize(torch.from_numpy(rgb)[None])[0].numpy(),
        "in-graph ONNX (ORT CPU)": lambda rgb: session.run(None, {"image": rgb[None]})[0][0],
    }
    if resize_filter in ("bicubic", "bilinear"):
        from mobile_vla_node.backends.torch_preprocess import resize_like_pil

        fast = CpuResize(SIZE, resize_filter, engine="torch")
        out["cpu torch uint8 kernel"] = fast
        mode = {"bicubic": "cubic", "bilinear": "linear"}[resize_filter]
        for uint8, excl in ((True, 0), (True, 1), (False, 1)):
            out[f"onnx Resize antialias {'uint8' if uint8 else 'float'} exclude_outside={excl}"] \
                = onnx_resize_op(mode, uint8, excl, shape)
        out["torch float (old device path)"] = lambda rgb: resize_like_pil(
            torch.from_numpy(rgb)[None], SIZE, resize_filter)[0].numpy()
    if resize_filter == "bilinear":
        out["cv2 INTER_AREA (no parity claimed)"] = lambda rgb: cv2.resize(
            rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        out["cv2 INTER_LINEAR (no parity claimed)"] = lambda rgb: cv2.resize(
            rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return out


def pixel_table(torch, named: dict, shape, workdir: Path) -> list:
    rows = []
    for resize_filter in FILTERS:
        refs = {k: pil(v, resize_filter).astype(np.int16) for k, v in named.items()}
        for name, fn in paths(torch, resize_filter, shape, workdir).items():
            d = np.concatenate([np.abs(np.asarray(fn(rgb)).astype(np.int16) - refs[k]).ravel()
                                for k, rgb in named.items()])
            rows.append({"filter": resize_filter, "path": name, "frames": len(named),
                         "max_levels": int(d.max()), "differing_fraction": float((d > 0).mean())})
    return rows


# --- actions ----------------------------------------------------------------------------------

WINDOW = 8   # the demo policy's window: one frame's feature fills it


def window_actions(torch, model, ids, image, device="cpu") -> np.ndarray:
    """The policy's actions for one uint8 frame (any size: `encode_frame` resizes in the graph)
    whose feature fills the window, on ``device``."""
    feature = model.encode_frame(torch.from_numpy(np.array(image)).to(device)[None],
                                 ids.to(device))
    actions, _, _ = model.decode(feature[:, None].expand(1, WINDOW, -1), *model.zero_state(1))
    return actions[0].float().cpu().numpy()


def action_effect(torch, scenes: dict) -> list:
    """Per filter: the demo policy on PIL's input vs the CPU torch kernel's and in-graph input."""
    from mobile_vla_node.core.image_pipeline import ImageChoice
    from mobile_vla_node.model.loader import ModelSource, load_policy

    rows = []
    for resize_filter in ("bicubic", "bilinear", "lanczos", "nearest"):
        loaded = load_policy(ModelSource("tiny", image=ImageChoice(
            "custom", resize_filter, 0, CLIP_MEAN, CLIP_STD)))
        model, tok = loaded.model, loaded.tokenizer
        candidates = {"in-graph (camera frame into encode_frame)": None}
        if resize_filter in ("bicubic", "bilinear"):
            candidates["cpu torch uint8 kernel"] = CpuResize(SIZE, resize_filter, engine="torch")
        with torch.inference_mode():
            ids = torch.from_numpy(tok.encode("go to the red box"))[None]

            def act(image, model=model, ids=ids):
                return window_actions(torch, model, ids, image)

            ref = {k: act(pil(rgb, resize_filter)) for k, rgb in scenes.items()}
            for name, fn in candidates.items():
                d = np.stack([np.abs(act(rgb if fn is None else fn(rgb)) - ref[k])
                              for k, rgb in scenes.items()])
                rows.append({"filter": resize_filter, "path": name, "frames": len(scenes),
                             "through": "torch fp32 cpu", "actions_max_abs": float(d.max()),
                             "actions_mean_abs": float(d.mean())})
    return rows


def export_onnx(path: Path, extra: list, banded: bool = True) -> Path:
    """The tiny demo policy exported to ONNX (``banded`` False: the old gather resize)."""
    from mobile_vla_node.export import cli
    from mobile_vla_node.model.preprocessing import PilResize

    saved = PilResize.banded
    PilResize.banded = banded
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = cli.main(["onnx", "--preset", "tiny", "--output", str(path), "--parity-cases",
                           "2", *extra])
    finally:
        PilResize.banded = saved
    if rc != 0:
        raise RuntimeError(f"vla_export onnx {extra} exited {rc}")
    return path


def export_pair(workdir: Path, width: int, height: int) -> tuple[Path, Path]:
    """The tiny demo policy as a model-size and a camera-input ONNX export."""
    return (export_onnx(workdir / "model.onnx", []),
            export_onnx(workdir / "camera.onnx", ["--camera-size", f"{width}x{height}"]))


def onnx_backends(*paths: Path):
    from mobile_vla_node.backends.onnx_backend import OnnxBackend
    from mobile_vla_node.core.config import BackendConfig

    out = []
    for path in paths:
        backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(path),
                                            intra_op_threads=1, warmup_iters=0))
        backend.load()
        out.append(backend)
    return out


def onnx_action_effect(model_b, camera_b, scenes: dict) -> dict:
    ids = model_b.tokenizer.encode("go to the red box")
    history = np.zeros((model_b.spec.window_size - 1, model_b.spec.feature_dim), np.float32)
    diffs = []
    for rgb in scenes.values():
        _, a_ref = model_b.infer(pil(rgb, "bicubic"), ids, history)
        _, a_cam = camera_b.infer_raw(rgb, ids, history, "rgb")
        diffs.append(np.abs(a_ref - a_cam))
    d = np.stack(diffs)
    return {"filter": "bicubic", "path": "in-graph ONNX camera export vs model-size export fed "
            "PIL", "frames": len(scenes), "through": "onnxruntime CPU",
            "actions_max_abs": float(d.max()), "actions_mean_abs": float(d.mean())}


# --- cost -------------------------------------------------------------------------------------

def cost(torch, rgb: np.ndarray, iters: int, model_b, camera_b) -> dict:
    import cv2

    from mobile_vla_node.model.preprocessing import FramePreprocess

    h, w = rgb.shape[:2]

    def msg(encoding, pixels, pad=0):
        rows = pixels.reshape(h, -1)
        if pad:
            rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
        return SimpleNamespace(encoding=encoding, height=h, width=w, step=rows.shape[1],
                               is_bigendian=0, data=bytearray(rows.tobytes()))

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    m_rgb, m_bgr = msg("rgb8", rgb), msg("bgr8", bgr)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    graph = FramePreprocess(SIZE, "bicubic", CLIP_MEAN, CLIP_STD)
    frame_t = torch.from_numpy(rgb)[None]
    ids = model_b.tokenizer.encode("go to the red box")
    history = np.zeros((model_b.spec.window_size - 1, model_b.spec.feature_dim), np.float32)
    model_in = pil(rgb, "bicubic")
    cpu = {e: CpuResize(SIZE, "bicubic", engine=e) for e in ("torch", "pil")}
    out = {
        "decode_view rgb8 (zero copy)": timing(lambda: decode_view(m_rgb), iters),
        "decode_view bgr8 (zero copy)": timing(lambda: decode_view(m_bgr), iters),
        "decode_message bgr8 (old: full-frame cvtColor copy)": timing(
            lambda: decode_message(m_bgr), iters),
        "decode jpeg (cv2.imdecode, q90)": timing(lambda: decode_compressed("jpeg", jpeg), iters),
        "resize bicubic: cpu torch uint8 kernel": timing(lambda: cpu["torch"](rgb), iters),
        "resize bicubic: cpu torch uint8 kernel, bgr frame + swap": timing(
            lambda: cpu["torch"](bgr, "bgr"), iters),
        "resize bicubic: PIL": timing(lambda: cpu["pil"](rgb), iters),
        "resize bicubic: exact tables (numpy)": timing(
            lambda: pil_resize.resize_exact(rgb, SIZE, "bicubic"), max(iters // 5, 5)),
        "resize bicubic: in-graph torch, banded float32 matmuls (cpu)": timing(
            lambda: graph.resize(frame_t), iters),
        "resize bilinear: cv2 INTER_AREA (no parity)": timing(
            lambda: cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA), iters),
        "onnx step (1 thread), model-size export, PIL input": timing(
            lambda: model_b.infer(model_in, ids, history), iters),
        "onnx step (1 thread), camera export (resize in the graph)": timing(
            lambda: camera_b.infer_raw(rgb, ids, history, "rgb"), iters),
    }
    return out


def resize_cost(torch, iters: int, workdir: Path, model_b) -> dict:
    """The in-graph resize, old gather vs banded matmuls, torch and ORT; the ONNX steps."""
    from mobile_vla_node.model.preprocessing import FramePreprocess

    out = {}
    ids = model_b.tokenizer.encode("go to the red box")
    history = np.zeros((model_b.spec.window_size - 1, model_b.spec.feature_dim), np.float32)
    for width, height in ((640, 480), (1280, 720)):
        rgb = frames(width, height, 1)["scene_0"]
        frame_t = torch.from_numpy(rgb)[None]
        rows = {}
        for resize_filter in ("bicubic", "bilinear"):
            cpu = CpuResize(SIZE, resize_filter, engine="pil")
            rows[f"{resize_filter}: PIL"] = timing(lambda cpu=cpu, rgb=rgb: cpu(rgb), iters)
            for banded, label in ((False, "int32 gather (old)"), (True, "banded matmuls")):
                module = FramePreprocess(SIZE, resize_filter, CLIP_MEAN, CLIP_STD)
                module.pil_resize.banded = banded
                session = onnx_resize_module(torch, resize_filter, (height, width), workdir,
                                             banded)
                for name, fn in ((f"in-graph torch, {label}", module.resize),
                                 (f"in-graph ONNX Runtime, {label}",
                                  lambda x, s=session: s.run(None, {"image": x.numpy()})[0])):
                    got = np.asarray(fn(frame_t)[0])
                    if not np.array_equal(got, pil(rgb, resize_filter)):
                        raise AssertionError(f"{name} {resize_filter} {width}x{height} != PIL")
                    with torch.inference_mode():
                        rows[f"{resize_filter}: {name}"] = timing(
                            lambda f=fn, x=frame_t: f(x), iters)
        model_in = pil(rgb, "bicubic")
        rows["onnx step (1 thread), model-size export, PIL input (without the resize)"] = \
            timing(lambda x=model_in: model_b.infer(x, ids, history), iters)
        for banded, label in ((False, "int32 gather (old)"), (True, "banded matmuls")):
            path = export_onnx(workdir / f"camera_{width}x{height}_{int(banded)}.onnx",
                               ["--camera-size", f"{width}x{height}"], banded)
            (camera_b,) = onnx_backends(path)
            rows[f"onnx step (1 thread), camera export, bicubic {label} in the graph"] = timing(
                lambda b=camera_b, x=rgb: b.infer_raw(x, ids, history, "rgb"), iters)
        out[f"{width}x{height}"] = rows
    return out


# --- --device: the in-graph resize on one device ----------------------------------------------

DEVICE_RESIZE_ACTION_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest")


def device_arg(text: str) -> str:
    """argparse type of ``--device``: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")
    return text


@contextlib.contextmanager
def matmul_tf32(torch, on: bool | None):
    """``torch.backends.cuda.matmul.allow_tf32 = on`` inside (None: unchanged), restored after."""
    if on is None:
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved, saved_precision = matmul.allow_tf32, getattr(matmul, "fp32_precision", None)
    matmul.allow_tf32 = on
    try:
        yield
    finally:
        matmul.allow_tf32 = saved
        if saved_precision is not None:
            with contextlib.suppress(Exception):
                matmul.fp32_precision = saved_precision


def formulation(resize_filter: str, height: int, width: int) -> str:
    """Which formulation `PilResize` takes for this frame size under the current settings."""
    from mobile_vla_node.model.preprocessing import PilResize, _float32_matmul_exact

    axes = [n for n in (height, width) if n != SIZE]
    if (PilResize.banded and _float32_matmul_exact()
            and all(pil_resize.band_table(n, SIZE, resize_filter) is not None for n in axes)):
        return "banded matmuls"
    return "int32 gather"


def device_pixels(torch, device, named: dict, refs: dict, resize_filter: str,
                  tf32: bool | None) -> dict:
    """`FramePreprocess.resize` on ``device`` vs PIL (``refs``, per frame) at one resolution."""
    from mobile_vla_node.model.preprocessing import FramePreprocess

    module = FramePreprocess(SIZE, resize_filter, CLIP_MEAN, CLIP_STD).to(device)
    diffs = []
    with matmul_tf32(torch, tf32), torch.inference_mode():
        height, width = next(iter(named.values())).shape[:2]
        used = formulation(resize_filter, height, width)
        for k, rgb in named.items():
            got = module.resize(torch.from_numpy(rgb).to(device)[None])[0].cpu().numpy()
            diffs.append(np.abs(got.astype(np.int16) - refs[k]).ravel())
    d = np.concatenate(diffs)
    return {"formulation": used, "frames": len(named), "max_levels": int(d.max()),
            "differing_fraction": float((d > 0).mean())}


def device_actions(torch, device, scenes: dict) -> list:
    """The demo policy on ``device``: camera frame (in-graph resize) vs PIL's input."""
    from mobile_vla_node.core.image_pipeline import ImageChoice
    from mobile_vla_node.model.loader import ModelSource, load_policy

    rows = []
    for resize_filter in DEVICE_RESIZE_ACTION_FILTERS:
        loaded = load_policy(ModelSource("tiny", image=ImageChoice(
            "custom", resize_filter, 0, CLIP_MEAN, CLIP_STD)))
        model = loaded.model
        ids = torch.from_numpy(loaded.tokenizer.encode("go to the red box"))[None]

        def act(image, on, model=model, ids=ids):
            return window_actions(torch, model, ids, image, on)

        with torch.inference_mode():
            inputs = {k: pil(rgb, resize_filter) for k, rgb in scenes.items()}
            cpu_ref = ({k: act(x, "cpu") for k, x in inputs.items()}
                       if device.type != "cpu" else None)
            model.to(device)
            ref = {k: act(x, device) for k, x in inputs.items()}
            d = np.stack([np.abs(act(rgb, device) - ref[k]) for k, rgb in scenes.items()])
        row = {"filter": resize_filter, "frames": len(scenes),
               "through": f"torch fp32 {device}", "actions_max_abs": float(d.max()),
               "actions_mean_abs": float(d.mean())}
        if cpu_ref is not None:
            row["device_vs_cpu_max_abs"] = float(max(np.abs(ref[k] - cpu_ref[k]).max()
                                                     for k in ref))
        rows.append(row)
    return rows


def device_cost(torch, device, rgb: np.ndarray, iters: int) -> dict:
    """p50/p99 of PIL (CPU) and of the in-graph preprocessing on ``device``, bicubic."""
    from mobile_vla_node.model.preprocessing import FramePreprocess

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None
    module = FramePreprocess(SIZE, "bicubic", CLIP_MEAN, CLIP_STD).to(device)
    host = torch.from_numpy(rgb)[None]
    if cuda:
        host = host.pin_memory()
    resident = host.to(device)
    label = "in-graph preprocess bicubic (resize + normalize, fp32)"
    rows = {"PIL bicubic (CPU)": timing(lambda: pil(rgb, "bicubic"), iters)}
    with torch.inference_mode():
        if cuda:
            rows["upload uint8 frame (pinned, non_blocking)"] = timing(
                lambda: host.to(device, non_blocking=True), iters, sync)
        rows[f"{label}, frame on {device}"] = timing(lambda: module(resident), iters, sync)
        if cuda:
            rows[f"upload + {label}"] = timing(
                lambda: module(host.to(device, non_blocking=True)), iters, sync)
            with matmul_tf32(torch, True):
                rows[f"{label}, frame on {device}, TF32 on"] = timing(
                    lambda: module(resident), iters, sync)
    return rows


def device_main(torch, args) -> int:
    """``--device``: the in-graph resize on one device, vs PIL; Markdown tables, JSON."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"preprocess_parity: --device {args.device} but torch {torch.__version__} sees no "
              "CUDA device", file=sys.stderr)
        return 2
    if cuda and (device.index or 0) >= torch.cuda.device_count():
        print(f"preprocess_parity: --device {args.device} but torch sees "
              f"{torch.cuda.device_count()} CUDA devices", file=sys.stderr)
        return 2
    if cuda:
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        name = torch.cuda.get_device_name(index)
    else:
        torch.set_num_threads(1)
        name = f"{platform.processor() or platform.machine()}, 1 torch thread"
    result = {"device": str(device), "device_name": name,
              "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
              "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "command": "scripts/preprocess_parity.py " + " ".join(args.argv),
              "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "matmul_allow_tf32_default": torch.backends.cuda.matmul.allow_tf32,
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
              "loadavg_start": list(os.getloadavg()), "pixels": {}, "actions": [], "cost": {}}
    resolutions = ((640, 480),) if args.quick else ((640, 480), (1280, 720))
    for width, height in resolutions:
        named = frames(width, height, args.scenes)
        res = f"{width}x{height}"
        if not args.cost_only:
            rows = []
            for resize_filter in FILTERS:
                refs = {k: pil(rgb, resize_filter).astype(np.int16) for k, rgb in named.items()}
                row = {"filter": resize_filter,
                       **device_pixels(torch, device, named, refs, resize_filter,
                                       False if cuda else None)}
                if cuda:
                    row["tf32"] = device_pixels(torch, device, named, refs, resize_filter, True)
                rows.append(row)
            result["pixels"][res] = rows
            if (width, height) == (640, 480):
                result["actions"] = device_actions(
                    torch, device, {k: v for k, v in named.items() if k.startswith("scene_")})
        result["cost"][res] = device_cost(torch, device, named["scene_0"], args.iters)
    result["loadavg_end"] = list(os.getloadavg())

    bad = []
    if result["pixels"]:
        print(f"| resolution | filter | resize on {device} | frames | max diff (uint8 levels) "
              "| pixels differing | TF32 on: formulation, max diff, differing |")
        print("|---|---|---|---|---|---|---|")
    for res, rows in result["pixels"].items():
        for r in rows:
            tf32 = r.get("tf32")
            tf32_text = (f"{tf32['formulation']}, {tf32['max_levels']}, "
                         f"{100 * tf32['differing_fraction']:.3f} %" if tf32
                         else "n/a (not CUDA)")
            print(f"| {res} | {r['filter']} | {r['formulation']} | {r['frames']} | "
                  f"{r['max_levels']} | {100 * r['differing_fraction']:.3f} % | {tf32_text} |")
            if r["max_levels"]:
                bad.append(f"{res} {r['filter']} ({r['formulation']})")
            if tf32 and tf32["max_levels"]:
                bad.append(f"{res} {r['filter']} with TF32 ({tf32['formulation']})")
    if result["actions"]:
        print(f"\n| filter | actions on {device}: camera frame vs PIL input, max abs | mean abs "
              "| device vs CPU fp32 (PIL input), max abs |\n|---|---|---|---|")
    for r in result["actions"]:
        vs_cpu = r.get("device_vs_cpu_max_abs")
        print(f"| {r['filter']} | {r['actions_max_abs']:.2e} | {r['actions_mean_abs']:.2e} | "
              f"{'n/a' if vs_cpu is None else f'{vs_cpu:.2e}'} |")
    print(f"\n| resolution | cost, {args.iters} calls | p50 ms | p99 ms |\n|---|---|---|---|")
    for res, rows in result["cost"].items():
        for path, t in rows.items():
            print(f"| {res} | {path} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} |")
    result["not_bit_exact"] = bad
    verdict = ("bit-exact vs PIL: every filter and size" + (", TF32 on and off" if cuda else "")
               if not bad else "NOT bit-exact vs PIL: " + "; ".join(bad))
    if args.cost_only:
        verdict = "pixels not compared (--cost-only)"
    loads = [" ".join(f"{x:.2f}" for x in result[k]) for k in ("loadavg_start", "loadavg_end")]
    print(f"\n{verdict}\n{device} ({name}), torch {torch.__version__}, {result['machine']}, "
          f"{result['date_utc']} UTC, load average {loads[0]} at the start, {loads[1]} at the end")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if bad else 0


def main(argv=None) -> int:
    """Measure and print Markdown tables; write JSON with --json."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, help="timed calls per cost row (default 100; 20 with "
                   "--quick)")
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--quick", action="store_true",
                   help="640x480 only, 4 scenes, 20 iterations unless --iters")
    p.add_argument("--json", type=Path)
    p.add_argument("--cost-only", action="store_true",
                   help="only the cost tables (no pixel and action tables)")
    p.add_argument("--device", type=device_arg,
                   help="cpu, cuda or cuda:N: only the in-graph torch resize, on that device "
                   "(pixels vs PIL per filter, TF32 on CUDA, actions, cost)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.scenes = 4
    if args.iters is None:
        args.iters = 20 if args.quick else 100
    if args.device is not None:
        return device_main(torch, args)
    torch.set_num_threads(1)
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
              "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "command": "scripts/preprocess_parity.py " + " ".join(argv or sys.argv[1:]),
              "torch": torch.__version__, "torch_threads": 1,
              "loadavg_start": list(os.getloadavg()), "pixels": {}, "actions": []}
    resolutions = ((640, 480),) if args.quick else ((640, 480), (1280, 720))
    with tempfile.TemporaryDirectory(prefix="preprocess_parity_") as tmp:
        work = Path(tmp)
        for width, height in resolutions:
            named = frames(width, height, args.scenes)
            if not args.cost_only:
                result["pixels"][f"{width}x{height}"] = pixel_table(torch, named,
                                                                    (height, width), work)
            if (width, height) == (640, 480):
                scenes = {k: v for k, v in named.items() if k.startswith("scene_")}
                model_b, camera_b = onnx_backends(*export_pair(work, width, height))
                if not args.cost_only:
                    result["actions"] = action_effect(torch, scenes)
                    result["actions"].append(onnx_action_effect(model_b, camera_b, scenes))
                result["cost_640x480"] = cost(torch, named["scene_0"], args.iters, model_b,
                                              camera_b)
        result["resize_cost"] = resize_cost(torch, args.iters, work, model_b)
    result["loadavg_end"] = list(os.getloadavg())
    for res, rows in result["pixels"].items():
        print(f"\n### pixels vs PIL, {res} ({rows[0]['frames']} frames)\n")
        print("| filter | path | max diff (uint8 levels) | pixels differing |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['filter']} | {r['path']} | {r['max_levels']} | "
                  f"{100 * r['differing_fraction']:.3f} % |")
    if result["actions"]:
        print("\n### effect on actions (demo policy, 640x480 scenes)\n")
        print("| filter | path | through | max abs | mean abs |\n|---|---|---|---|---|")
    for r in result["actions"]:
        print(f"| {r['filter']} | {r['path']} | {r['through']} | {r['actions_max_abs']:.2e} | "
              f"{r['actions_mean_abs']:.2e} |")
    print("\n### cost at 640x480 (ms)\n\n| step | p50 | p99 |\n|---|---|---|")
    for name, t in result["cost_640x480"].items():
        print(f"| {name} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} |")
    print("\n### in-graph resize, old vs banded (ms, p50 / p99; 1 thread)\n")
    sizes = list(result["resize_cost"])
    print("| step | " + " | ".join(sizes) + " |\n|---|" + "---|" * len(sizes))
    for name in result["resize_cost"][sizes[0]]:
        cells = [result["resize_cost"][res][name] for res in sizes]
        print(f"| {name} | " + " | ".join(f"{c['p50_ms']:.3f} / {c['p99_ms']:.3f}"
                                          for c in cells) + " |")
    print(f"\nmachine {result['machine']}, {result['date_utc']} UTC, load average start "
          f"{result['loadavg_start']} end {result['loadavg_end']}, torch {torch.__version__} "
          "(1 thread)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
