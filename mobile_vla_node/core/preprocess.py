"""Image decoding and model-input preparation, independent of ROS message classes.

Raw ``sensor_msgs/Image`` fields or ``CompressedImage`` bytes -> RGB uint8 (H, W, 3) -> resized to
the model's input with the PIL filter it was trained with (bicubic: Kosmos-2's CLIP image
processor; bilinear: RoboVLMs' H5 training) -> channel order the model was trained with.
Normalization (/255, then none / CLIP / ImageNet / custom mean and std, from the policy config)
is part of the model (it runs on the model's device, and exported graphs carry it).
"""

from __future__ import annotations

import numpy as np

MAX_PIXELS = 4096 * 4096
MAX_COMPRESSED_BYTES = 32 * 1024 * 1024
# encoding -> bytes per pixel
RAW_ENCODINGS = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3,
    "mono16": 2, "16uc1": 2, "yuv422_yuy2": 2, "yuyv": 2, "uyvy": 2, "yuv422": 2,
}


YUV422_ENCODINGS = ("yuv422_yuy2", "yuyv", "uyvy", "yuv422")


class ImageError(ValueError):
    """A frame that cannot be decoded (bad size, step, encoding or data)."""


def check_raw(encoding: str, height: int, width: int, step: int, nbytes: int) -> int:
    """Validate raw image fields without decoding; return bytes per pixel or raise ImageError."""
    enc = encoding.lower()
    if enc not in RAW_ENCODINGS:
        raise ImageError(f"unsupported encoding {encoding!r}; supported: {sorted(RAW_ENCODINGS)}")
    if height <= 0 or width <= 0 or height * width > MAX_PIXELS:
        raise ImageError(f"bad image size {width}x{height}")
    bpp = RAW_ENCODINGS[enc]
    if enc in YUV422_ENCODINGS and width % 2:
        raise ImageError(f"{encoding} needs an even width (2 pixels share chroma), got {width}")
    if step < width * bpp:
        raise ImageError(f"step {step} < width {width} x {bpp} bytes for {encoding}")
    if nbytes != step * height:
        raise ImageError(f"data has {nbytes} bytes, expected step {step} x height {height} = "
                         f"{step * height}")
    return bpp


def decode_raw(encoding: str, height: int, width: int, step: int, data,
               is_bigendian: bool = False) -> np.ndarray:
    """Decode raw image fields to a contiguous RGB uint8 (H, W, 3) array."""
    enc = encoding.lower()
    buf = np.frombuffer(data, dtype=np.uint8)
    bpp = check_raw(encoding, height, width, step, buf.size)
    rows = buf.reshape(height, step)[:, : width * bpp]
    if enc in ("mono16", "16uc1"):
        pixels = rows.view(">u2" if is_bigendian else "<u2").reshape(height, width)
        gray = (pixels >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if bpp == 1:
        return np.repeat(rows.reshape(height, width, 1), 3, axis=2)
    import cv2

    img = rows.reshape(height, width, bpp)
    conversions = {
        "bgr8": cv2.COLOR_BGR2RGB, "8uc3": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
        "bgra8": cv2.COLOR_BGRA2RGB, "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
        "yuyv": cv2.COLOR_YUV2RGB_YUYV, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
        "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    }
    if enc == "rgb8":
        return np.ascontiguousarray(img)
    return cv2.cvtColor(np.ascontiguousarray(img), conversions[enc])


def decode_compressed(fmt: str, data) -> np.ndarray:
    """Decode ``CompressedImage`` bytes (jpeg/png, any format string naming them) to RGB."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0 or buf.size > MAX_COMPRESSED_BYTES:
        raise ImageError(f"compressed image of {buf.size} bytes (limit {MAX_COMPRESSED_BYTES})")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode compressed image (format {fmt!r}, {buf.size} bytes)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"compressed image too large: {img.shape[1]}x{img.shape[0]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


RESIZE_FILTERS = ("bicubic", "bilinear", "nearest")


def to_model_input(rgb: np.ndarray, size: int, channel_order: str = "rgb",
                   resize_filter: str = "bicubic") -> np.ndarray:
    """Resize RGB uint8 to (size, size, 3) with the model's PIL filter, apply its channel order.

    Bicubic is Kosmos-2's processor; bilinear is what RoboVLMs' H5 training used.
    """
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter {resize_filter!r} must be one of {RESIZE_FILTERS}")
    if rgb.shape[:2] != (size, size):
        # np.array: a writable copy, so backends can wrap it without another copy.
        pil_filter = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
                      "nearest": Image.NEAREST}[resize_filter]
        rgb = np.array(Image.fromarray(rgb).resize((size, size), pil_filter))
    if channel_order == "bgr":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def decode_message(msg) -> np.ndarray:
    """Decode an Image or CompressedImage message object (rclpy or rosbags) to RGB.

    Any failure of the decoder on the message's bytes is an ImageError (malformed input), never
    an inference error.
    """
    import cv2

    try:
        if hasattr(msg, "format"):
            return decode_compressed(msg.format, msg.data)
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                          bool(msg.is_bigendian))
    except (cv2.error, ValueError, TypeError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def validate_message(msg) -> None:
    """Cheap checks of an Image/CompressedImage message before any decoding (raises ImageError)."""
    if hasattr(msg, "format"):
        if not 0 < len(msg.data) <= MAX_COMPRESSED_BYTES:
            raise ImageError(f"compressed image of {len(msg.data)} bytes "
                             f"(limit {MAX_COMPRESSED_BYTES})")
        return
    check_raw(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
