"""The in-graph resize as exact banded float32 matmuls (`core.resize.band_table`,
`model.preprocessing.FramePreprocess`): PIL bit for bit in torch and ONNX Runtime, for all six
filters, up- and downscaling, odd sizes; the exactness bounds, and the integer gather
formulation kept where they do not hold; fp16 exports and fp16 TensorRT builds keep the resize
in fp32.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fakes_tensorrt import fake_metadata, install_fakes
from PIL import Image

from mobile_vla_node.core import resize as pil_resize
from mobile_vla_node.export import onnx as ox
from mobile_vla_node.model.preprocessing import FramePreprocess, PilResize

SIZE = 224
# (height, width): camera sizes, up- and downscaling, odd, 1 px, portrait; Pillow runs the
# vertical pass first for some of them (probed: vertical_first)
SIZES = [(480, 640), (720, 1280), (1, 1), (2, 3), (700, 3), (3, 700), (224, 640), (480, 224),
         (333, 129), (223, 225), (600, 100), (97, 901)]


def pil(rgb: np.ndarray, resize_filter: str) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE),
                                                  pil_resize.PIL_FILTERS[resize_filter]))


def frame(height: int, width: int, seed: int) -> np.ndarray:
    """Noise with a hard-edged gradient over part of it (extremes and flat areas both)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out[: height // 2, : width // 2] = (np.arange(width // 2) * 255 // max(width // 2 - 1, 1)
                                        ).astype(np.uint8)[None, :, None]
    out[height // 2:, width // 2:] = np.uint8(255) * (rng.random((1, 1, 3)) > 0.5)
    return out


@pytest.fixture
def no_gather(monkeypatch):
    """Fail if the integer gather formulation (`PilResize._pass`) is used."""

    def refuse(self, x, axis):
        raise AssertionError("the gather pass ran where the banded matmul should")

    monkeypatch.setattr(PilResize, "_pass", refuse)


@pytest.fixture
def gather_calls(monkeypatch):
    """Count the integer gather passes (they still run)."""
    calls = []
    original = PilResize._pass

    def spy(self, x, axis):
        calls.append(axis)
        return original(self, x, axis)

    monkeypatch.setattr(PilResize, "_pass", spy)
    return calls


# --- tables -----------------------------------------------------------------------------------

@pytest.mark.parametrize("resize_filter", [f for f in pil_resize.RESIZE_FILTERS if f != "nearest"])
def test_band_tables_rebuild_pillows_weights_within_the_bounds(resize_filter):
    for n_in in (1, 2, 7, 100, 223, 225, 333, 480, 640, 720, 1280, 1920):
        table = pil_resize.band_table(n_in, SIZE, resize_filter)
        if n_in == SIZE:
            assert table is None
            continue
        assert table is not None, n_in
        nb, span, block = len(table.starts), table.span, table.block
        assert nb * block >= SIZE > (nb - 1) * block and table.weights.shape == (
            nb, span, 2 * block)
        assert min(table.starts) >= 0 and max(table.starts) + span <= n_in
        # every stored weight is a TF32 number: float32 with the low 13 mantissa bits zero
        assert not np.any(table.weights.view(np.int32) & 0x1FFF)
        w = table.weights.astype(np.float64)
        hi = w[..., :block] * 2.0 ** (pil_resize.PRECISION_BITS - table.shift)
        lo = w[..., block:] * 2.0 ** table.shift
        assert np.array_equal(hi, np.round(hi)) and np.array_equal(lo, np.round(lo))
        assert np.abs(lo).max() <= 1 << (table.shift - 1)
        dense = (hi * 2.0 ** table.shift + lo).astype(np.int64)    # (nb, span, block)
        hi_rows = hi.transpose(0, 2, 1).reshape(nb * block, span).astype(np.int64)
        lo_rows = lo.transpose(0, 2, 1).reshape(nb * block, span).astype(np.int64)
        assert pil_resize.split_exact(hi_rows, lo_rows, table.shift)
        # the dense windows hold exactly Pillow's taps
        index, weight = pil_resize.axis_table(n_in, SIZE, resize_filter)
        for o in range(SIZE):
            k, j = divmod(o, block)
            got = np.zeros(n_in, np.int64)
            got[table.starts[k]:table.starts[k] + span] = dense[k, :, j]
            want = np.zeros(n_in, np.int64)
            np.add.at(want, index[o], weight[o])
            assert np.array_equal(got, want), (n_in, o)


def test_the_exactness_check_refuses_what_float32_or_tf32_would_round():
    ok = np.array([[2047, -1024, 3]])
    assert pil_resize.split_exact(ok, ok, 11)
    assert not pil_resize.split_exact(np.array([[4095]]), ok, 11)     # 12 significant bits
    assert pil_resize.split_exact(np.array([[4096]]), ok, 11)         # a power of two is fine
    wide = np.full((1, 66), 1000)                                      # 255 * 66000 > 2**24
    assert not pil_resize.split_exact(ok, wide, 11)
    assert not pil_resize.split_exact(wide, ok, 11)
    assert not pil_resize.tf32_exact(np.array([2049])) and pil_resize.tf32_exact(np.array([2048]))


def test_huge_downscales_and_nearest_have_no_band_table():
    # lanczos 8000 -> 224: ~215 taps per output, the lo sums would pass 2**24
    assert pil_resize.band_table(8000, SIZE, "lanczos") is None
    assert pil_resize.band_table(640, SIZE, "nearest") is None
    assert pil_resize.band_table(SIZE, SIZE, "bicubic") is None


# --- torch ------------------------------------------------------------------------------------

@pytest.mark.parametrize("resize_filter", [f for f in pil_resize.RESIZE_FILTERS if f != "nearest"])
def test_banded_resize_equals_pil_in_torch(resize_filter, no_gather):
    module = FramePreprocess(SIZE, resize_filter, (0.0,) * 3, (1.0,) * 3)
    for seed, (h, w) in enumerate(SIZES):
        rgb = frame(h, w, seed)
        out = module.resize(torch.from_numpy(rgb)[None])[0].numpy()
        np.testing.assert_array_equal(out, pil(rgb, resize_filter), err_msg=f"{w}x{h}")


def test_banded_resize_equals_pil_on_random_sizes_and_batches(no_gather):
    rng = np.random.default_rng(23)
    for i in range(10):
        h, w = (int(v) for v in rng.integers(1, 1000, 2))
        resize_filter = pil_resize.RESIZE_FILTERS[i % 6]
        if resize_filter == "nearest":
            resize_filter = "lanczos"
        module = FramePreprocess(SIZE, resize_filter, (0.0,) * 3, (1.0,) * 3)
        frames = np.stack([frame(h, w, 100 + i), frame(h, w, 200 + i)])
        out = module.resize(torch.from_numpy(frames)).numpy()
        for got, rgb in zip(out, frames, strict=True):
            np.testing.assert_array_equal(got, pil(rgb, resize_filter),
                                          err_msg=f"{w}x{h} {resize_filter}")


def test_nearest_and_huge_downscales_keep_the_gather_pass(gather_calls):
    module = FramePreprocess(SIZE, "nearest", (0.0,) * 3, (1.0,) * 3)
    rgb = frame(480, 640, 1)
    np.testing.assert_array_equal(module.resize(torch.from_numpy(rgb)[None])[0].numpy(),
                                  pil(rgb, "nearest"))
    assert gather_calls == [2, 1]
    gather_calls.clear()
    module = FramePreprocess(SIZE, "lanczos", (0.0,) * 3, (1.0,) * 3)
    rgb = frame(6, 8000, 2)          # 8000 px wide: no exact split; the 6 px axis has one
    np.testing.assert_array_equal(module.resize(torch.from_numpy(rgb)[None])[0].numpy(),
                                  pil(rgb, "lanczos"))
    assert sorted(gather_calls) == [1, 2]      # both passes: one formulation per frame


def test_bf16_matmuls_and_autocast_stay_exact(gather_calls):
    module = FramePreprocess(SIZE, "bicubic", (0.0,) * 3, (1.0,) * 3)
    rgb = frame(480, 640, 3)
    ref = pil(rgb, "bicubic")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")     # may run float32 matmuls in bf16
        np.testing.assert_array_equal(module.resize(torch.from_numpy(rgb)[None])[0].numpy(),
                                      ref)
        assert gather_calls == [2, 1]
    finally:
        torch.set_float32_matmul_precision(previous)
    gather_calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):     # matmuls switched to bf16
        np.testing.assert_array_equal(module.resize(torch.from_numpy(rgb)[None])[0].numpy(),
                                      ref)
    assert gather_calls == []


def test_forward_normalizes_the_resize_exactly_as_before():
    """forward() = normalize(resize()) bit for bit, in float32 and bf16, swapped or not."""
    module = FramePreprocess(SIZE, "bicubic", (0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    for shape in ((480, 640), (SIZE, SIZE)):
        frames = torch.from_numpy(frame(*shape, 6))[None]
        for dtype in (torch.float32, torch.bfloat16):
            for swap in (False, True):
                images = module.resize(frames)
                if swap:
                    images = images.flip(3)
                want = module.normalize(images, dtype)
                got = module(frames, swap_channels=swap, dtype=dtype)
                assert got.dtype == dtype and torch.equal(got, want), (shape, dtype, swap)


# --- ONNX Runtime -----------------------------------------------------------------------------

def export_resize(module: FramePreprocess, shape, path):
    class Resize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.preprocess = module

        def forward(self, frames):
            return self.preprocess.resize(frames)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Resize(), (torch.zeros((1, *shape, 3), dtype=torch.uint8),),
                          str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["out"])
    return onnx.load(str(path))


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("resize_filter,shape", [
    ("bicubic", (480, 640)), ("bilinear", (720, 1280)), ("lanczos", (333, 129)),
    ("box", (600, 100)), ("hamming", (97, 901)), ("bicubic", (2, 3)), ("lanczos", (224, 640)),
    ("nearest", (480, 640))])
def test_banded_resize_equals_pil_in_onnx_runtime(tmp_path, resize_filter, shape):
    module = FramePreprocess(SIZE, resize_filter, (0.0,) * 3, (1.0,) * 3)
    model = export_resize(module, shape, tmp_path / "resize.onnx")
    ops = {node.op_type for node in model.graph.node}
    if resize_filter == "nearest":
        assert "MatMul" not in ops and "Div" in ops          # the integer gather formulation
    else:
        assert "MatMul" in ops and "Div" not in ops
    assert "Resize" not in ops
    run = session(model)
    for seed in range(3):
        rgb = frame(*shape, seed)
        np.testing.assert_array_equal(run.run(None, {"image": rgb[None]})[0][0],
                                      pil(rgb, resize_filter), err_msg=f"seed {seed}")


def test_fp16_conversion_leaves_the_resize_in_fp32(tmp_path):
    module = FramePreprocess(SIZE, "bicubic", (0.0,) * 3, (1.0,) * 3)
    model = export_resize(module, (480, 640), tmp_path / "resize.onnx")
    assert len(ox.resize_nodes(model.graph)) == len(model.graph.node) - 2   # + Transpose, Cast
    converted = ox.to_fp16(model)
    onnx.checker.check_model(converted)
    for node in ox.resize_nodes(converted.graph):
        assert not (node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT16)
        for attr in node.attribute:
            assert not (attr.HasField("t") and attr.t.data_type == onnx.TensorProto.FLOAT16)
    rgb = frame(480, 640, 4)
    np.testing.assert_array_equal(session(converted).run(None, {"image": rgb[None]})[0][0],
                                  pil(rgb, "bicubic"))


def test_fp16_camera_export_resizes_like_pil(tmp_path):
    """``vla_export onnx --fp16 --camera-size --camera-order bgr``: the resize is PIL's.

    The camera's channel swap (a Gather on the uint8 input) feeds the resize, and the exporter
    shares a Constant between the resize and the model: both survive the fp16 detour.
    """
    import contextlib
    import io

    from mobile_vla_node.export import cli

    path = tmp_path / "cam16.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["onnx", "--preset", "tiny", "--output", str(path), "--parity-cases", "2",
                       "--fp16", "--camera-size", "320x240", "--camera-order", "bgr"])
    assert rc == 0, out.getvalue()
    model = onnx.load(str(path))
    resize = ox.resize_nodes(model.graph)
    assert "MatMul" in {n.op_type for n in resize}
    assert all(f"/{pil_resize.GRAPH_SCOPE}/" in n.name or n.op_type == "Constant"
               for n in resize)
    inside = {n.name for n in resize}
    produced = {name for n in resize if n.op_type != "Constant" for name in n.output}
    read = {name for n in model.graph.node if n.name not in inside for name in n.input}
    (result,) = produced & read            # the planar float32 pixel values
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        result, onnx.TensorProto.FLOAT, [1, 3, SIZE, SIZE]))
    rgb = frame(240, 320, 5)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    ids = np.array([[0, 1, 2]], np.int64)
    got = session(model).run([result], {"image": bgr[None], "text_ids": ids})[0][0]
    np.testing.assert_array_equal(got.transpose(1, 2, 0), pil(rgb, "bicubic"))
    # every resize node computes in float32 (no fp16 Cast or constant inside it)
    for node in resize:
        assert not (node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT16)
        for attr in node.attribute:
            assert not (attr.HasField("t") and attr.t.data_type == onnx.TensorProto.FLOAT16)


# --- TensorRT ---------------------------------------------------------------------------------

class FakeLayer:
    def __init__(self, name, inputs, outputs):
        self.name, self.inputs, self.outputs = name, inputs, outputs
        self.precision, self.output_types = None, {}
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


def test_fp16_tensorrt_builds_pin_the_resize_to_fp32():
    from mobile_vla_node.export.tensorrt import pin_resize_fp32

    dt = types.SimpleNamespace(FLOAT="f32", HALF="f16", UINT8="u8", INT32="i32")
    trt = types.SimpleNamespace(DataType=dt)

    def t(dtype):
        return types.SimpleNamespace(dtype=dtype)

    layers = [FakeLayer("/pil_resize/Cast", [t(dt.UINT8)], [t(dt.FLOAT)]),
              FakeLayer("/preprocess/pil_resize/MatMul_3", [t(dt.FLOAT)], [t(dt.FLOAT)]),
              FakeLayer("/preprocess/pil_resize/Floor", [t(dt.FLOAT)], [t(dt.HALF)]),
              FakeLayer("/preprocess/pil_resize/Constant_2", [], [t(dt.INT32)]),
              FakeLayer("/preprocess/Div", [t(dt.FLOAT)], [t(dt.FLOAT)]),
              FakeLayer("/encoder/MatMul", [t(dt.FLOAT), None], [t(dt.FLOAT)]),
              FakeLayer("", [t(dt.FLOAT)], [t(dt.FLOAT)])]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    assert pin_resize_fp32(trt, network) == 3
    assert [layer.precision for layer in layers] == [dt.FLOAT] * 3 + [None] * 4
    assert all(layers[i].output_types == {0: dt.FLOAT} for i in range(3))
    # a model-size graph (no resize layers), and the fakes' network without layers
    plain = types.SimpleNamespace(num_layers=3, get_layer=layers[4:].__getitem__)
    assert pin_resize_fp32(trt, plain) == 0
    assert pin_resize_fp32(types.SimpleNamespace(), types.SimpleNamespace()) == 0


def test_traced_resize_nodes_carry_the_scope(tmp_path):
    """The fp16 conversion and the TensorRT build find the resize by its node names."""
    module = FramePreprocess(SIZE, "bilinear", (0.0,) * 3, (1.0,) * 3)
    model = export_resize(module, (480, 640), tmp_path / "resize.onnx")
    resize = ox.resize_nodes(model.graph)
    assert {n.op_type for n in resize} >= {"Cast", "MatMul", "Floor", "Max", "Min"}
    outside = [n for n in model.graph.node if n not in resize]
    assert [n.op_type for n in outside] == ["Transpose", "Cast"]   # resize(): back to uint8 NHWC
    # a model-size frame is not resized: no resize nodes in the graph
    path = tmp_path / "model_size.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros((1, SIZE, SIZE, 3), dtype=torch.uint8),),
                          str(path), dynamo=False, opset_version=17)
    assert ox.resize_nodes(onnx.load(str(path)).graph) == []


def test_fp16_build_obeys_the_pinned_precision(monkeypatch, tmp_path):
    from mobile_vla_node.export import tensorrt as trt_build

    trt, _ = install_fakes(monkeypatch)
    monkeypatch.setattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", "OBEY", raising=False)
    monkeypatch.setattr(trt_build, "pin_resize_fp32",
                        lambda trt, network: 5 if network.label == "encoder" else 0)
    onnx_path = fake_metadata(monkeypatch, tmp_path)
    manifest = trt_build.build_engines(trt_build.BuildOptions(
        onnx=onnx_path, output=None, precision="fp16"), log=lambda line: None)
    assert "OBEY" in trt.configs[0].flags and "OBEY" not in trt.configs[1].flags
    assert "OBEY_PRECISION_CONSTRAINTS(resize: 5 layers fp32)" in manifest.builder_flags[
        "encoder"]
