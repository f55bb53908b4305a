"""Building TensorRT engines (export/tensorrt.py, export/calibration.py, `vla_export tensorrt`).

On a CPU: build options, the one-line errors without TensorRT / cuda-python / a GPU, build
progress, int8 calibration batches from a real rosbag2 bag, and the build glue and parity exit
codes on the fake TensorRT of fakes_tensorrt.py. On a GPU (`gpu`): a tiny engine is built,
checked against ONNX Runtime and run.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fakes_tensorrt import (
    TINY_SPEC,
    assert_one_line,
    export_tiny_onnx,
    fake_cudart,
    fake_encoder,
    fake_metadata,
    fake_step,
    fake_tensorrt,
    gpu,
    hide_cuda_python,
    hide_tensorrt,
    install_fakes,
    onnx_file,
    tokenizer_json,
)

from mobile_vla_node.backends import create_backend
from mobile_vla_node.backends import trt_manifest as tm
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.export import calibration
from mobile_vla_node.export import tensorrt as trt_build
from mobile_vla_node.export.parity import default_atol
from mobile_vla_node.model.tokenizer import PromptTokenizer


@pytest.fixture
def fakes(monkeypatch):
    """Fake ``tensorrt`` and cuda-python installed; (trt, cudart)."""
    return install_fakes(monkeypatch)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny preset exported to ONNX (GPU tests)."""
    return export_tiny_onnx(tmp_path_factory)


def test_build_options(tmp_path):
    with pytest.raises(tm.ManifestError, match="m.onnx' does not exist; export it with "
                                               "vla_export onnx"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None)
    (tmp_path / "m.onnx").write_bytes(b"graph")
    opts = trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="fp32")
    assert opts.output == tmp_path / "m.engine"
    assert opts.timing_cache == tmp_path / "trt_timing.cache" and opts.tolerance == 1e-3
    assert trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None).tolerance == 1e-2
    with pytest.raises(tm.ManifestError, match="'x.plan' must end in .engine"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=Path("x.plan"))
    with pytest.raises(tm.ManifestError, match="m.calib.cache' does not exist"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="int8")
    with pytest.raises(tm.ManifestError, match="--calib-batches 0 must be >= 1"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, calib_batches=0)
    with pytest.raises(tm.ManifestError, match="--atol -1.0 must be > 0"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, atol=-1.0)
    opts = trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="int8",
                                  calib=str(tmp_path), atol=0.2)
    assert opts.calib_cache == tmp_path / "m.calib.cache" and opts.tolerance == 0.2
    assert opts.build_args()["calib"] == str(tmp_path.resolve())


# ----------------------------------------------------------------------------- missing runtime

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    trt_build.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_without_tensorrt_exits_2(monkeypatch, capsys, tmp_path):
    hide_tensorrt(monkeypatch)
    code = trt_build.run(parse(["--onnx", onnx_file(tmp_path), "--precision", "fp16"]))
    assert code == trt_build.EXIT_UNAVAILABLE == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, "TensorRT is not available", "python3-libnvinfer",
                    "pip install tensorrt")
    assert captured.out == ""


def test_cli_without_cuda_python_exits_2(monkeypatch, capsys, tmp_path):
    fake_tensorrt(monkeypatch)
    hide_cuda_python(monkeypatch)
    assert trt_build.main(["--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "cuda-python is not available",
                    "pip install cuda-python")


def test_cli_without_cuda_device_exits_2(monkeypatch, capsys, tmp_path):
    fake_tensorrt(monkeypatch)
    fake_cudart(monkeypatch, devices=0)
    assert trt_build.main(["--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "no CUDA device (cudaErrorNoDevice")


def test_cli_bad_arguments_exit_2(capsys, tmp_path):
    assert trt_build.main(["--onnx", str(tmp_path / "m.onnx")]) == 2
    assert_one_line(capsys.readouterr().err, "m.onnx' does not exist")
    assert trt_build.main(["--onnx", onnx_file(tmp_path), "--precision", "int8"]) == 2
    assert_one_line(capsys.readouterr().err, "needs calibration data", "--calib")
    with pytest.raises(SystemExit) as exc:
        trt_build.main(["--onnx", "m.onnx", "--precision", "bf16"])
    assert exc.value.code == 2


def test_vla_export_tensorrt_without_tensorrt(monkeypatch, capsys, tmp_path):
    export = pytest.importorskip("mobile_vla_node.export.cli")
    hide_tensorrt(monkeypatch)
    assert export.main(["tensorrt", "--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "python3-libnvinfer", "pip install tensorrt")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here; this checks the real missing-package path")
def test_cli_subprocess_without_tensorrt_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.tensorrt", "--onnx",
                           onnx_file(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "pip install tensorrt")


# ----------------------------------------------------------------------------- progress

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_build_progress_lines():
    clock, lines = FakeClock(), []
    progress = trt_build.BuildProgress("encoder", emit=lines.append, clock=clock, interval_s=2.0)
    progress.phase_start("Building engine", None, 3)
    clock.now += 1.5
    progress.phase_start("Tactic selection", "Building engine", 10)
    progress.phase_start("Layer 7", "Tactic selection", 4)  # third level: no line
    assert progress.step_complete("Layer 7", 0)  # first step report is printed
    clock.now += 0.5
    assert progress.step_complete("Layer 7", 1)  # rate-limited
    clock.now += 2.0
    progress.step_complete("Tactic selection", 4)
    progress.phase_finish("Layer 7")
    progress.phase_finish("Tactic selection")
    assert lines == [
        "[    0.0 s] encoder: Building engine (3 steps)",
        "[    1.5 s] encoder: Building engine > Tactic selection (10 steps)",
        "[    1.5 s] encoder: Building engine > Tactic selection > Layer 7 1/4",
        "[    4.0 s] encoder: Building engine > Tactic selection 5/10",
        "[    4.0 s] encoder: Building engine > Tactic selection done",
    ]
    progress.cancel()
    assert progress.step_complete("Building engine", 1) is False


def test_progress_monitor_adapter():
    assert trt_build.make_progress_monitor(types.SimpleNamespace(), None) is None

    class Base:
        def __init__(self):
            pass

    fake = types.SimpleNamespace(IProgressMonitor=Base)
    lines = []
    progress = trt_build.BuildProgress("step", emit=lines.append, clock=FakeClock())
    monitor = trt_build.make_progress_monitor(fake, progress)
    assert isinstance(monitor, Base)
    monitor.phase_start("Building engine", None, 2)
    assert monitor.step_complete("Building engine", 0) is True
    monitor.phase_finish("Building engine")
    assert [line.split("step: ")[1] for line in lines] == [
        "Building engine (2 steps)", "Building engine 1/2", "Building engine done"]


# ----------------------------------------------------------------------------- calibration

COLORS = [(10 * i, 255 - 20 * i, 7 * i) for i in range(7)]


def write_image_bag(path: Path, colors=COLORS, size=(48, 64)) -> None:
    """A rosbag2 (sqlite3) bag of solid-colour rgb8 sensor_msgs/Image frames."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    image_t, header_t = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"]
    time_t = ts.types["builtin_interfaces/msg/Time"]
    h, w = size
    with Writer(path, version=8) as writer:
        conn = writer.add_connection("/camera/image_raw", image_t.__msgtype__, typestore=ts)
        for i, color in enumerate(colors):
            frame = np.empty((h, w, 3), np.uint8)
            frame[:] = color
            msg = image_t(header=header_t(stamp=time_t(sec=i, nanosec=0), frame_id="cam"),
                          height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                          data=frame.reshape(-1))
            writer.write(conn, (i + 1) * 100_000_000, ts.serialize_cdr(msg, image_t.__msgtype__))


def test_calibration_batches_from_bag(tmp_path):
    bag = tmp_path / "calib_bag"
    write_image_bag(bag)
    prompts = [np.array([0, 4, 9, 10, 11]), np.array([0, 4, 12])]
    batches = calibration.CalibrationBatches(bag, 32, prompts, batch_size=3, pad_id=1)
    assert batches.shapes() == {"image": (3, 32, 32, 3), "text_ids": (3, 5)}
    out = list(batches)
    assert len(out) == 2  # 7 frames -> 2 full batches of 3; the partial last batch is dropped
    for i, batch in enumerate(out):
        assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["text_ids"].shape == (3, 5) and batch["text_ids"].dtype == np.int64
        for row in range(3):
            frame = 3 * i + row
            np.testing.assert_array_equal(batch["image"][row], np.broadcast_to(
                np.array(COLORS[frame], np.uint8), (32, 32, 3)))  # frame order kept
            expected = [0, 4, 9, 10, 11] if frame % 2 == 0 else [0, 4, 12, 1, 1]  # padded
            assert batch["text_ids"][row].tolist() == expected
    limited = calibration.CalibrationBatches(bag, 32, prompts, batch_size=2, max_batches=1,
                                           dtypes={"text_ids": np.int32})
    (only,) = list(limited)
    assert only["text_ids"].dtype == np.int32 and only["image"].shape == (2, 32, 32, 3)
    assert list(calibration.CalibrationBatches(bag, 32, prompts[0], batch_size=8)) == []


def test_calibration_batches_image_folder_and_errors(tmp_path):
    import cv2

    for i, color in enumerate(COLORS[:4]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((20, 30, 3), color[::-1], np.uint8))
    (single,) = [b for b in calibration.CalibrationBatches(tmp_path, 16, np.array([0, 5]),
                                                         batch_size=4)]
    assert single["image"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(single["image"][1, 0, 0], np.array(COLORS[1], np.uint8))
    bgr = list(calibration.CalibrationBatches(tmp_path, 16, np.array([0]), channel_order="bgr"))
    np.testing.assert_array_equal(bgr[1]["image"][0, 0, 0], np.array(COLORS[1][::-1]))
    with pytest.raises(ValueError, match="batch_size 0"):
        calibration.CalibrationBatches(tmp_path, 16, [np.array([1])], batch_size=0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        calibration.CalibrationBatches(tmp_path, 16, [np.array([], np.int64)])


class FakeCuda:
    def __init__(self):
        self.memory, self.next = {}, 0x1000

    def malloc(self, nbytes):
        self.next += 0x1000
        self.memory[self.next] = None
        return self.next

    def copy_to_device(self, ptr, array):
        self.memory[ptr] = np.array(array)

    def free(self, ptr):
        del self.memory[ptr]


def test_calibrator_feeds_batches_and_caches(tmp_path):
    class Base:
        def __init__(self):
            pass

    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=Base)
    cuda = FakeCuda()
    batches = [{"image": np.full((1, 4, 4, 3), i, np.uint8), "text_ids": np.array([[0, i]])}
               for i in range(2)]
    cache = tmp_path / "sub" / "m.calib.cache"
    calib = calibration.make_calibrator(fake_trt, cuda, batches, cache, read_cache=False)
    assert calib.get_batch_size() == 1
    ptrs = calib.get_batch(["text_ids", "image"])
    assert cuda.memory[ptrs[0]].tolist() == [[0, 0]] and cuda.memory[ptrs[1]].shape == (1, 4, 4, 3)
    assert calib.get_batch(["image", "text_ids"]) is not None
    assert calib.get_batch(["image", "text_ids"]) is None  # exhausted
    assert calib.read_calibration_cache() is None  # recalibrating: the old table is not read
    calib.write_calibration_cache(memoryview(b"TRT-1001-EntropyCalibration2"))
    assert cache.read_bytes() == b"TRT-1001-EntropyCalibration2"
    reuse = calibration.make_calibrator(fake_trt, cuda, [], cache, read_cache=True)
    assert reuse.read_calibration_cache() == b"TRT-1001-EntropyCalibration2"
    assert reuse.get_batch(["image"]) is None
    calib.free()
    assert cuda.memory == {}
    broken = calibration.make_calibrator(fake_trt, cuda, batches, cache, read_cache=False)
    assert broken.get_batch(["missing"]) is None and isinstance(broken.error, KeyError)


def test_fake_build_engines_fp16(fakes, monkeypatch, tmp_path):
    trt, _ = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    lines = []
    options = trt_build.BuildOptions(onnx=onnx, output=None, precision="fp16", max_text_len=48)
    manifest = trt_build.build_engines(options, log=lines.append)
    engine = tmp_path / "policy.engine"
    assert engine.read_bytes().startswith(b"ENGINE-encoder")
    assert tm.step_engine_path(engine).read_bytes().startswith(b"ENGINE-step")
    assert tm.EngineManifest.load(tm.manifest_path(engine)) == manifest
    assert manifest.gpu_name == "NVIDIA H100 80GB HBM3" and manifest.step_precision == "fp16"
    assert manifest.builder_flags == {"encoder": ["FP16", "TIMING_CACHE(new)"],
                                      "step": ["FP16", "TIMING_CACHE(reused)"]}
    assert manifest.profiles["encoder"]["text_ids"]["max"] == [1, 48]
    encoder_profile = trt.configs[0].profiles[0].shapes
    assert encoder_profile["text_ids"] == ((1, 1), (1, 24), (1, 48))
    assert trt.configs[1].profiles[0].shapes["features"] == ((1, 1, 64), (1, 4, 64), (1, 4, 64))
    assert (tmp_path / "trt_timing.cache").read_bytes() == b"++"  # reused by the second build
    text = "\n".join(lines)
    assert "] encoder: Building engine (2 steps)" in text and "] step: Building engine" in text
    assert "built in" in text and "text_len 1/24/48" in text and "window 1/4/4" in text
    assert tm.rebuild_command(manifest, engine).endswith("--max-text-len 48")
    too_long = trt_build.BuildOptions(onnx=onnx, output=None, max_text_len=200)
    with pytest.raises(tm.ManifestError, match="max=200 exceeds the model's prompt limit of 108"):
        trt_build.build_engines(too_long, log=lines.append)


def test_fake_build_fp32_clears_tf32(fakes, monkeypatch, tmp_path):
    trt, _ = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    trt_build.build_engines(trt_build.BuildOptions(onnx=onnx, output=None, precision="fp32"),
                            log=lambda text: None)
    assert all(c.cleared == "TF32" and not c.flags for c in trt.configs)


def test_fake_build_int8_calibrates_encoder_only(fakes, monkeypatch, tmp_path):
    trt, cudart = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    bag = tmp_path / "bag"
    write_image_bag(bag)
    options = trt_build.BuildOptions(onnx=onnx, output=None, precision="int8", calib=str(bag),
                                     calib_batches=5)
    lines = []
    manifest = trt_build.build_engines(options, log=lines.append)
    assert trt.built == [("encoder", ["FP16", "INT8"]), ("step", ["FP16"])]
    assert manifest.precision == "int8" and manifest.step_precision == "fp16"
    cache = tmp_path / "policy.calib.cache"
    assert cache.read_bytes() == b"TRT-table"
    calib_shapes = trt.configs[0].calib_profile.shapes
    assert calib_shapes["image"][0] == (1, 224, 224, 3)
    assert calib_shapes["text_ids"][0] == calib_shapes["text_ids"][2]  # min = max
    assert "calibrating the encoder with 5 batches of 1 frame(s)" in "\n".join(lines)
    assert "keep the tiny step engine in fp16" in lines[0]
    assert cudart.buffers == {}  # calibration buffers freed
    # Without --calib the cache is reused.
    trt.built.clear()
    reuse = trt_build.BuildOptions(onnx=onnx, output=None, precision="int8")
    trt_build.build_engines(reuse, log=lines.append)
    assert trt.built[0] == ("encoder", ["FP16", "INT8"])
    assert "using the calibration cache" in "\n".join(lines)


def make_reference(offset: float):
    """A stand-in ONNX reference computing the fake engines' functions (+ offset on features)."""
    from mobile_vla_node.backends.base import BackendInfo, InferenceBackend, ModelSpec

    class Reference(InferenceBackend):
        name = "onnx"

        def load(self):
            self.spec = ModelSpec(**TINY_SPEC)
            self.tokenizer = PromptTokenizer.from_json(tokenizer_json())
            self.info = BackendInfo(name="onnx", device="cpu", precision="fp32")

        def encode(self, image, text_ids):
            out = fake_encoder({"image": image[None], "text_ids": text_ids[None]})["feature"]
            return out[0] + offset

        def decode(self, features):
            zeros = np.zeros((2, 1, 64), np.float32)
            return fake_step({"features": features[None], "h0": zeros, "c0": zeros})[
                "actions"][0]

    return Reference


@pytest.mark.parametrize("offset,code", [(0.0, 0), (0.5, 3)])
def test_fake_run_parity_exit_codes(fakes, monkeypatch, tmp_path, capsys, offset, code):
    pytest.importorskip("mobile_vla_node.export.parity")
    import mobile_vla_node.backends as backends

    onnx = fake_metadata(monkeypatch, tmp_path)
    real = backends.backend_class
    monkeypatch.setattr(backends, "backend_class", lambda name: make_reference(offset)
                        if name == "onnx" else real(name))
    assert trt_build.main(["--onnx", str(onnx), "--precision", "fp32"]) == code
    captured = capsys.readouterr()
    parity = tm.EngineManifest.load(tm.manifest_path(tmp_path / "policy.engine")).parity
    assert parity["passed"] is (code == 0) and parity["atol"] == 1e-3
    if code == 0:
        assert "parity passed at atol 0.001" in captured.out and captured.err == ""
    else:
        assert_one_line(captured.err, "parity FAILED at fp32: largest error in output "
                                      "'feature': max abs 0.5 > atol 0.001")


@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_build_parity_and_infer(tiny_onnx, precision, capsys):
    engine = tiny_onnx.with_name(f"tiny_{precision}.engine")
    code = trt_build.main(["--onnx", str(tiny_onnx), "--output", str(engine), "--precision",
                           precision])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity passed" in out and "built in" in out and " s] encoder:" in out
    manifest = tm.EngineManifest.load(tm.manifest_path(engine))
    assert manifest.parity["passed"] is True and tm.step_engine_path(engine).is_file()
    assert (tiny_onnx.parent / "trt_timing.cache").stat().st_size > 0

    onnx_ref = create_backend(BackendConfig(backend="onnx", model_path=str(tiny_onnx)))
    onnx_ref.load()
    results = {}
    for graph in (False, True):
        backend = create_backend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                               device="cuda:0", cuda_graph=graph))
        backend.load()
        info = backend.describe()
        assert info.provider.startswith("TensorRT ") and info.precision == precision
        if graph:
            assert info.extra["cuda_graph"].startswith("on"), info.extra["cuda_graph"]
        spec = backend.spec
        rng = np.random.default_rng(1)
        image = rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8)
        ids = backend.tokenizer.encode("go to the red box")
        history = rng.standard_normal((spec.window_size - 1, spec.feature_dim)).astype(np.float32)
        feature, actions = backend.infer(image, ids, history)
        assert feature.shape == (spec.feature_dim,) and actions.shape == (spec.chunk,
                                                                          spec.action_dim)
        ref_feature, ref_actions = onnx_ref.infer(image, ids, history)
        atol = default_atol(precision, "tensorrt")
        np.testing.assert_allclose(feature, ref_feature, atol=atol)
        np.testing.assert_allclose(actions, ref_actions, atol=atol)
        short = backend.decode(history[:1])  # a window shorter than the captured one
        assert short.shape == actions.shape
        results[graph] = actions
        backend.close()
    np.testing.assert_allclose(results[True], results[False], atol=1e-6)
    onnx_ref.close()
