"""core.cdr reads serialized camera messages exactly as rclpy's deserializer does."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_vla_node.core import cdr
from mobile_vla_node.core.preprocess import decode_message, decode_view, validate_message

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402


def image(frame_id: str, encoding: str, height: int, width: int, step: int, bigendian=0,
          seed=0) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 987_654_321
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = height, width, encoding, step
    msg.is_bigendian = bigendian
    msg.data = np.random.default_rng(seed).integers(0, 256, height * step,
                                                    dtype=np.uint8).tobytes()
    return msg


# frame_id and encoding lengths 0..4 move every later field across the alignment boundaries.
@pytest.mark.parametrize("frame_id", ["", "c", "ca", "cam", "cam0", "camera_optical_frame"])
@pytest.mark.parametrize("encoding,width,step,big", [
    ("rgb8", 5, 15, 0), ("bgr8", 5, 16, 0), ("mono16", 3, 8, 1), ("8UC3", 4, 12, 0),
    ("rgba8", 2, 8, 0)])
def test_image_fields_match_rclpy(frame_id, encoding, width, step, big):
    msg = image(frame_id, encoding, 3, width, step, big)
    raw = serialize_message(msg)
    ref = deserialize_message(raw, Image)
    got = cdr.parse_image(raw)
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (ref.header.stamp.sec,
                                                                 ref.header.stamp.nanosec)
    assert got.header.frame_id == ref.header.frame_id
    assert (got.height, got.width, got.encoding, got.is_bigendian, got.step) == (
        ref.height, ref.width, ref.encoding, ref.is_bigendian, ref.step)
    assert bytes(got.data) == bytes(ref.data)
    assert np.array_equal(decode_message(got), decode_message(ref))


def test_image_data_is_a_view_of_the_serialized_bytes():
    raw = serialize_message(image("cam", "rgb8", 480, 640, 1920))
    got = cdr.parse_image(raw)
    assert got.data.obj is raw and got.data.nbytes == 480 * 1920
    frame, order = decode_view(got)
    assert order == "rgb" and frame.shape == (480, 640, 3)
    assert np.shares_memory(frame, np.frombuffer(raw, np.uint8))  # no copy of the pixels
    validate_message(got)


def test_compressed_image_matches_rclpy():
    cv2 = pytest.importorskip("cv2")
    ok, png = cv2.imencode(".png", np.full((6, 7, 3), 40, np.uint8))
    for fmt in ("png", "rgb8; png compressed bgr8", ""):
        msg = CompressedImage()
        msg.header.stamp.sec, msg.header.frame_id, msg.format = 5, "cam", fmt
        msg.data = png.tobytes()
        raw = serialize_message(msg)
        got = cdr.parse_compressed_image(raw)
        ref = deserialize_message(raw, CompressedImage)
        assert got.format == ref.format and got.header.stamp.sec == 5
        assert bytes(got.data) == bytes(ref.data)
        if fmt:
            assert np.array_equal(decode_message(got), decode_message(ref))


def test_big_endian_encapsulation():
    # The same Image serialized by hand big-endian (encapsulation CDR_BE): rclpy only writes
    # little-endian here, so build it from the little-endian bytes' fields.
    import struct

    msg = image("ab", "rgb8", 2, 2, 6)
    le = cdr.parse_image(serialize_message(msg))
    body = struct.pack(">iI", le.header.stamp.sec, le.header.stamp.nanosec)
    body += struct.pack(">I", 3) + b"ab\0"
    body += b"\0" * (-len(body) % 4) + struct.pack(">II", 2, 2)
    body += struct.pack(">I", 5) + b"rgb8\0" + b"\0"          # is_bigendian = 0
    body += b"\0" * (-len(body) % 4) + struct.pack(">I", 6)
    body += struct.pack(">I", 12) + bytes(le.data)
    got = cdr.parse_image(b"\x00\x00\x00\x00" + body)
    assert (got.height, got.width, got.encoding, got.step) == (2, 2, "rgb8", 6)
    assert bytes(got.data) == bytes(le.data) and got.header.frame_id == "ab"


@pytest.mark.parametrize("bad,match", [
    (b"", "no CDR encapsulation"), (b"\x00\x03\x00\x00" + b"\0" * 40, "not plain"),
])
def test_refuses_what_it_cannot_read(bad, match):
    with pytest.raises(cdr.CdrError, match=match):
        cdr.parse_image(bad)


def test_refuses_a_length_past_the_end():
    raw = serialize_message(image("cam", "rgb8", 4, 4, 12))
    with pytest.raises(cdr.CdrError, match="past the end"):
        cdr.parse_image(raw[:-5])
