"""Image decoding (raw encodings, padding, compressed) and model-input resizing."""

from __future__ import annotations

import array
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from mobile_vla_node.core.preprocess import (
    CpuResize,
    ImageError,
    decode_compressed,
    decode_message,
    decode_raw,
    decode_view,
    to_model_input,
)

# A 2 x 3 RGB image with a distinct value in every channel of every pixel.
RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                [[10, 20, 30], [200, 100, 50], [1, 2, 254]]], dtype=np.uint8)
GRAY = np.array([[0, 17, 255], [128, 64, 3]], dtype=np.uint8)


def raw(img: np.ndarray, pad: int = 0) -> tuple[int, bytes]:
    """(step, data) of an (H, W, C) or (H, W) uint8/uint16 array with ``pad`` bytes per row."""
    rows = img.reshape(img.shape[0], -1).view(np.uint8) if img.dtype != np.uint8 else \
        img.reshape(img.shape[0], -1)
    if pad:
        filler = np.full((rows.shape[0], pad), 0xEE, np.uint8)
        rows = np.concatenate([rows, filler], axis=1)
    return rows.shape[1], rows.tobytes()


def yuv601(y, u, v):
    """BT.601 limited-range YUV -> RGB (what OpenCV's YUV422 conversions implement)."""
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    rgb = np.array([c + 1.596 * e, c - 0.392 * d - 0.813 * e, c + 2.017 * d])
    return np.clip(np.round(rgb), 0, 255)


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("8UC3", RGB[:, :, ::-1]),
    ("rgba8", np.concatenate([RGB, np.full((2, 3, 1), 77, np.uint8)], axis=2)),
    ("bgra8", np.concatenate([RGB[:, :, ::-1], np.full((2, 3, 1), 9, np.uint8)], axis=2)),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_color_encodings_decode_to_rgb(encoding, pixels, pad):
    step, data = raw(np.ascontiguousarray(pixels), pad)
    assert step == 3 * pixels.shape[2] + pad
    out = decode_raw(encoding, 2, 3, step, data)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
@pytest.mark.parametrize("pad", [0, 3])
def test_mono8(encoding, pad):
    step, data = raw(GRAY, pad)
    out = decode_raw(encoding, 2, 3, step, data)
    np.testing.assert_array_equal(out, np.repeat(GRAY[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 2])
def test_mono16_both_endiannesses(bigendian, pad):
    values = np.array([[0x0000, 0x12FF, 0xFFFF], [0x8001, 0x00FF, 0x4080]], dtype=np.uint16)
    stored = values.astype(">u2" if bigendian else "<u2")
    step, data = raw(stored, pad)
    out = decode_raw("mono16", 2, 3, step, data, is_bigendian=bigendian)
    high = np.array([[0x00, 0x12, 0xFF], [0x80, 0x00, 0x40]], np.uint8)
    np.testing.assert_array_equal(out, np.repeat(high[:, :, None], 3, axis=2))


def test_mono16_endianness_matters():
    values = np.array([[0x1234, 0xAB01]], dtype="<u2")
    step, data = raw(values)
    little = decode_raw("16UC1", 1, 2, step, data, is_bigendian=False)[:, :, 0]
    big = decode_raw("16UC1", 1, 2, step, data, is_bigendian=True)[:, :, 0]
    np.testing.assert_array_equal(little, [[0x12, 0xAB]])
    np.testing.assert_array_equal(big, [[0x34, 0x01]])


# Two rows of two YUYV macro-pixels (4 pixels per row): (Y0, U, Y1, V) each.
YUV_PIXELS = [[(16, 128, 235, 128), (81, 90, 145, 240)],
              [(128, 128, 60, 128), (200, 60, 41, 180)]]


@pytest.mark.parametrize("encoding, order", [("yuyv", "yuyv"), ("yuv422_yuy2", "yuyv"),
                                             ("uyvy", "uyvy"), ("yuv422", "uyvy")])
@pytest.mark.parametrize("pad", [0, 4])
def test_yuv422_decodes_with_bt601(encoding, order, pad):
    rows, expected = [], []
    for row in YUV_PIXELS:
        data_row, rgb_row = [], []
        for y0, u, y1, v in row:
            data_row += [y0, u, y1, v] if order == "yuyv" else [u, y0, v, y1]
            rgb_row += [yuv601(y0, u, v), yuv601(y1, u, v)]
        rows.append(data_row)
        expected.append(rgb_row)
    step, data = raw(np.array(rows, np.uint8), pad)
    out = decode_raw(encoding, 2, 4, step, data)
    assert out.shape == (2, 4, 3)
    expected = np.array(expected)
    assert np.abs(out.astype(int) - expected).max() <= 1, (out, expected)
    # sanity of the hand-made values: black, white, red, mid grey
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert out[0, 2, 0] >= 250 and out[0, 2, 1] <= 2 and out[0, 2, 2] <= 2


def test_bytearray_and_array_data_are_accepted():
    step, data = raw(RGB)
    np.testing.assert_array_equal(decode_raw("rgb8", 2, 3, step, bytearray(data)), RGB)
    np.testing.assert_array_equal(decode_raw("rgb8", 2, 3, step, array.array("B", data)), RGB)


@pytest.mark.parametrize("kwargs, words", [
    (dict(encoding="rgb8", height=2, width=3, step=8, nbytes=16), ["step 8", "width 3",
                                                                   "3 bytes"]),
    (dict(encoding="mono16", height=2, width=3, step=5, nbytes=10), ["step 5", "width 3",
                                                                     "2 bytes"]),
    (dict(encoding="rgb8", height=2, width=3, step=9, nbytes=17), ["17 bytes", "step 9",
                                                                   "height 2", "= 18"]),
    (dict(encoding="rgb8", height=2, width=3, step=9, nbytes=0), ["0 bytes", "= 18"]),
    (dict(encoding="rgb8", height=0, width=3, step=9, nbytes=0), ["bad image size 3x0"]),
    (dict(encoding="rgb8", height=2, width=-1, step=9, nbytes=18), ["bad image size -1x2"]),
    (dict(encoding="rgb8", height=5000, width=5000, step=15000, nbytes=18),
     ["bad image size 5000x5000"]),
    (dict(encoding="bayer_rggb8", height=2, width=3, step=3, nbytes=6), ["bayer_rggb8",
                                                                         "supported", "rgb8"]),
])
def test_malformed_raw_images_raise_with_numbers(kwargs, words):
    data = bytes(kwargs.pop("nbytes"))
    with pytest.raises(ImageError) as err:
        decode_raw(data=data, **kwargs)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_png_round_trip_is_exact():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    out = decode_compressed("png", buf.tobytes())
    np.testing.assert_array_equal(out, img)


def test_jpeg_round_trip_is_close():
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, np.full_like(xx, 200)], axis=2).astype(np.uint8)
    img[10:30, 20:40] = (220, 30, 30)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    out = decode_compressed("rgb8; jpeg compressed bgr8", buf.tobytes())
    assert out.shape == img.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff.mean() < 4.0, diff.mean()
    swapped = np.abs(out[:, :, ::-1].astype(int) - img.astype(int))
    assert swapped.mean() > 30.0
    # channel order survived: the red box is red
    r, g, b = out[20, 30]
    assert r > 180 and g < 70 and b < 70


def test_corrupt_and_empty_compressed_data_raise():
    with pytest.raises(ImageError, match=r"0 bytes"):
        decode_compressed("jpeg", b"")
    junk = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match=r"cannot decode.*'jpeg'.*500 bytes"):
        decode_compressed("jpeg", junk)
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageError, match="cannot decode"):
        decode_compressed("png", buf.tobytes()[:20])


def test_to_model_input_shape_dtype_and_identity():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = to_model_input(frame, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    same = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(same, 32), same)


def test_channel_order_bgr_flips():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    rgb = to_model_input(frame, 32, "rgb")
    bgr = to_model_input(frame, 32, "bgr")
    assert bgr.flags.c_contiguous
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    assert not np.array_equal(bgr, rgb)
    # also without a resize
    np.testing.assert_array_equal(to_model_input(frame[:32, :32], 32, "bgr"),
                                  frame[:32, :32, ::-1])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32)])
def test_to_model_input_rejects_non_rgb_uint8(bad):
    with pytest.raises(ImageError, match="expected uint8"):
        to_model_input(bad, 8)


def _clip_resizer():
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    if not hasattr(Image, "Resampling"):  # Ubuntu 22.04's Pillow 9.0.1 (make test-py310)
        pytest.skip("transformers' image processors need Pillow >= 9.1 (Image.Resampling)")
    kwargs = dict(size={"height": 224, "width": 224}, do_center_crop=False,
                  do_normalize=False, do_rescale=False)
    # transformers >= 5 without torchvision falls back to the PIL processor (with a warning);
    # ask for it by name when it exists so the test does not depend on torchvision.
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kwargs)


def test_resize_matches_kosmos2_clip_processor():
    # Kosmos-2's processor resizes with CLIPImageProcessor (PIL bicubic) to 224x224; we use the
    # same PIL call, so the result is exact. (A torchvision-backed processor would antialias
    # differently and could differ by one level, which the tolerance allows.)
    yy, xx = np.mgrid[0:480, 0:640]
    rng = np.random.default_rng(5)
    frame = np.stack([(xx * 255) // 639, (yy * 255) // 479, (xx + yy) % 256], axis=2)
    frame = np.clip(frame + rng.integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)
    frame[100:300, 200:400] = (230, 40, 40)
    processor = _clip_resizer()
    ref = processor(images=frame, return_tensors="np")["pixel_values"][0]
    ref = np.asarray(ref).transpose(1, 2, 0).astype(np.float64)
    ours = to_model_input(frame, 224).astype(np.float64)
    assert ref.shape == ours.shape == (224, 224, 3)
    assert np.abs(ref - ours).max() <= 1.0


def test_decode_message_raw_and_compressed():
    step, data = raw(RGB[:, :, ::-1])
    image = SimpleNamespace(encoding="bgr8", height=2, width=3, step=step,
                            data=array.array("B", data), is_bigendian=0)
    np.testing.assert_array_equal(decode_message(image), RGB)
    mono = np.array([[0x0102, 0xFF00]], dtype=">u2")
    step, data = raw(mono)
    image16 = SimpleNamespace(encoding="mono16", height=1, width=2, step=step, data=data,
                              is_bigendian=1)
    np.testing.assert_array_equal(decode_message(image16)[:, :, 0], [[0x01, 0xFF]])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    compressed = SimpleNamespace(format="png", data=buf.tobytes())
    np.testing.assert_array_equal(decode_message(compressed), RGB)
    bad = SimpleNamespace(encoding="rgb8", height=2, width=3, step=9, data=b"\x00" * 10,
                          is_bigendian=0)
    with pytest.raises(ImageError, match="10 bytes"):
        decode_message(bad)


# --- zero copy and the CPU resize (issue 19) --------------------------------------------------

def _msg(encoding, pixels, pad=0, kind=array.array):
    step, data = raw(np.ascontiguousarray(pixels), pad)
    buf = kind("B", data) if kind is array.array else kind(data)
    return SimpleNamespace(encoding=encoding, height=pixels.shape[0], width=pixels.shape[1],
                           step=step, is_bigendian=0, data=buf)


@pytest.mark.parametrize("encoding, order", [("rgb8", "rgb"), ("bgr8", "bgr"), ("8UC3", "bgr")])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("kind", [array.array, bytearray, bytes])
def test_decode_view_hands_on_the_message_buffer_without_a_copy(encoding, order, pad, kind):
    pixels = RGB if order == "rgb" else RGB[:, :, ::-1]
    msg = _msg(encoding, pixels, pad, kind)
    frame, got = decode_view(msg)
    assert got == order and frame.shape == (2, 3, 3) and frame.dtype == np.uint8
    assert np.shares_memory(frame, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(frame, pixels)
    assert frame.flags.c_contiguous == (pad == 0)   # padded rows: a strided view


@pytest.mark.parametrize("encoding", ["rgba8", "mono8", "mono16", "yuv422"])
def test_decode_view_converts_other_encodings(encoding):
    bpp = {"rgba8": 4, "mono8": 1, "mono16": 2, "yuv422": 2}[encoding]
    msg = SimpleNamespace(encoding=encoding, height=2, width=4, step=4 * bpp + 2,
                          is_bigendian=0, data=bytes(range(2 * (4 * bpp + 2))))
    frame, order = decode_view(msg)
    assert order == "rgb" and frame.shape == (2, 4, 3)
    assert not np.shares_memory(frame, np.frombuffer(msg.data, np.uint8))


def test_decode_view_rejects_a_short_buffer_as_an_image_error():
    msg = _msg("rgb8", RGB)
    msg.data = msg.data[:-1]
    with pytest.raises(ImageError, match="expected step"):
        decode_view(msg)


def test_padded_mono16_needs_no_view_of_non_contiguous_memory():
    # numpy < 1.23 refuses .view('<u2') of a row-sliced array; the decoder reads the padded rows
    # through a strided 16-bit array over the buffer instead (runs on numpy 1.21 too)
    values = np.array([[0x0102, 0xA0B0, 0xFFFF]] * 3, dtype="<u2")
    step, data = raw(values, 6)
    out = decode_raw("mono16", 3, 3, step, bytearray(data))
    np.testing.assert_array_equal(out[:, :, 0], np.array([[0x01, 0xA0, 0xFF]] * 3, np.uint8))


def _scene(width, height):
    from mobile_vla_node.demo import synthetic

    return synthetic.render(synthetic.random_scene(np.random.default_rng(5)), width, height)


@pytest.mark.parametrize("resize_filter, engine, bound", [
    ("bilinear", "auto", 1), ("bicubic", "fast", 2)])
def test_cpu_resize_torch_engine_bounds(resize_filter, engine, bound):
    """auto takes torch's kernel only where it stays within 1 level (bilinear); fast also for
    bicubic, measured up to 2 levels (scripts/preprocess_parity.py)."""
    pytest.importorskip("torch", reason="the torch engine needs torch (make test-py310 has none)")
    fast = CpuResize(224, resize_filter, engine=engine)
    assert fast.engine == "torch" and f"within {bound} level" in fast.describe()
    from mobile_vla_node.demo import synthetic

    rng = np.random.default_rng(7)   # the parity script's scenes: scene_4 is the worst one
    scenes = [synthetic.render(synthetic.random_scene(rng), 640, 480) for _ in range(5)]
    for rgb in [*scenes, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)]:
        ref = to_model_input(rgb, 224, resize_filter=resize_filter).astype(int)
        assert np.abs(fast(rgb).astype(int) - ref).max() <= bound


def test_cpu_resize_auto_keeps_pil_where_torch_is_off_by_two():
    assert CpuResize(224, "bicubic").engine == "pil"
    assert CpuResize(224, "bilinear", engine="exact").engine == "pil"
    assert CpuResize(224, "lanczos", engine="fast").engine == "pil"
    with pytest.raises(ValueError, match="engine 'turbo'"):
        CpuResize(224, "bicubic", engine="turbo")


@pytest.mark.parametrize("resize_filter", ["bicubic", "nearest", "lanczos"])
def test_cpu_resize_pil_engine_and_channel_swap(resize_filter):
    rgb = _scene(640, 480)
    ref = to_model_input(rgb, 224, resize_filter=resize_filter)
    exact = CpuResize(224, resize_filter, engine="pil")
    np.testing.assert_array_equal(exact(rgb), ref)
    # a bgr camera frame (a view with padded rows) for an rgb model: swapped after the resize
    bgr = _msg("bgr8", rgb[:, :, ::-1], pad=4)
    frame, order = decode_view(bgr)
    np.testing.assert_array_equal(exact(frame, order), ref)
    bgr_model = CpuResize(224, resize_filter, "bgr", engine="pil")
    np.testing.assert_array_equal(bgr_model(frame, order), ref[:, :, ::-1])
    # auto: PIL for these filters (torch's bicubic kernel is up to 2 levels off)
    assert CpuResize(224, resize_filter).engine == "pil"


def test_decode_view_hands_a_compressed_frame_on_as_bgr():
    rgb = _scene(64, 48)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    frame, order = decode_view(SimpleNamespace(format="png", data=png.tobytes()))
    assert order == "bgr"
    np.testing.assert_array_equal(frame[:, :, ::-1], rgb)
    np.testing.assert_array_equal(CpuResize(32, "bicubic", engine="pil")(frame, order),
                                  to_model_input(rgb, 32))
    with pytest.raises(ImageError, match="cannot decode"):
        decode_view(SimpleNamespace(format="jpeg", data=b"\x00" * 16))


def test_an_rclpy_image_message_is_viewed_not_copied():
    msgs = pytest.importorskip("sensor_msgs.msg")
    msg = msgs.Image(height=2, width=3, encoding="bgr8", step=9, data=bytes(range(18)))
    frame, order = decode_view(msg)
    assert order == "bgr" and frame.flags.writeable   # rclpy's uint8[] is an array.array
    assert np.shares_memory(frame, np.frombuffer(msg.data, np.uint8))
