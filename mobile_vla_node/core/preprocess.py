"""Image decoding and model-input preparation, independent of ROS message classes.

Raw ``sensor_msgs/Image`` fields or ``CompressedImage`` bytes -> uint8 (H, W, 3) -> resized to
the model's input with the PIL filter it was trained with -> channel order the model was trained
with. Normalization (/255, then the image pipeline's mean and std) is part of the model (it runs
on the model's device, and exported graphs carry it).

Zero copy: `decode_view` returns rgb8, bgr8 and 8UC3 frames as a numpy view of the message's
buffer (``np.frombuffer`` on ``msg.data``; padded rows stay a strided view) together with their
channel order; only other encodings (alpha, mono, YUV, compressed) are converted, on the CPU.
The channel swap of a bgr frame happens after the resize (3 channels of the small image) or
inside the encoder graph.

Resize on the CPU (`CpuResize`, for backends whose graph takes the model-size image): Pillow is
the reference; torch's uint8 antialiased kernel (a port of Pillow-SIMD) is about 5x faster,
within 1 uint8 level for bilinear but up to 2 for bicubic, so the default (node parameter
``cpu_resize: auto``) takes it for bilinear only; ``fast`` takes it for bicubic too, ``exact``
never (docs/BENCHMARKS.md, "Preprocessing"). `core.resize` has the exact tables.
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
        # A strided 16-bit view of the padded rows (no .view() of a non-contiguous array, which
        # numpy < 1.23 rejects: "array must be C-contiguous").
        pixels = np.ndarray((height, width), dtype=">u2" if is_bigendian else "<u2",
                            buffer=buf, strides=(step, 2))
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


# encodings handed on as a view of the message buffer: encoding -> channel order
VIEW_ENCODINGS = {"rgb8": "rgb", "bgr8": "bgr", "8uc3": "bgr"}


def view_raw(encoding: str, height: int, width: int, step: int, data) -> tuple[np.ndarray, str]:
    """rgb8/bgr8/8UC3 fields -> (uint8 (H, W, 3) view of ``data``, channel order); no copy.

    Padded rows (``step > 3 * width``) give a strided view. Other encodings: `decode_raw`.
    """
    order = VIEW_ENCODINGS[encoding.lower()]
    buf = np.frombuffer(data, dtype=np.uint8)
    check_raw(encoding, height, width, step, buf.size)
    return np.ndarray((height, width, 3), np.uint8, buffer=buf, strides=(step, 3, 1)), order


def decode_compressed(fmt: str, data) -> np.ndarray:
    """Decode ``CompressedImage`` bytes (jpeg/png, any format string naming them) to RGB."""
    import cv2

    return cv2.cvtColor(decode_compressed_bgr(fmt, data), cv2.COLOR_BGR2RGB)


def decode_compressed_bgr(fmt: str, data) -> np.ndarray:
    """`decode_compressed` without the channel conversion: OpenCV's BGR frame."""
    import cv2

    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0 or buf.size > MAX_COMPRESSED_BYTES:
        raise ImageError(f"compressed image of {buf.size} bytes (limit {MAX_COMPRESSED_BYTES})")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode compressed image (format {fmt!r}, {buf.size} bytes)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"compressed image too large: {img.shape[1]}x{img.shape[0]}")
    return img


PIL_FILTER_IDS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
RESIZE_FILTERS = tuple(PIL_FILTER_IDS)
TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}   # torch's PIL-like uint8 kernels
# Filters whose torch kernel stayed within 1 uint8 level of Pillow on every measured frame
# (scripts/preprocess_parity.py: bilinear max 1; bicubic max 2, on 2 pixels of one 640x480 scene:
# torch's kernel keeps ~15-bit coefficients where Pillow keeps 22).
TORCH_WITHIN_ONE_LEVEL = ("bilinear",)
CPU_RESIZE_ENGINES = ("auto", "exact", "fast", "torch", "pil")


def to_model_input(rgb: np.ndarray, size: int, channel_order: str = "rgb",
                   resize_filter: str = "bicubic") -> np.ndarray:
    """Resize RGB uint8 to (size, size, 3) with the model's PIL filter, apply its channel order.

    The reference (Pillow itself). Bicubic is Kosmos-2's processor and the team's inference
    server; bilinear is what RoboVLMs' H5 training used.
    """
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter {resize_filter!r} must be one of {RESIZE_FILTERS}")
    if rgb.shape[:2] != (size, size):
        # np.array: a writable copy, so backends can wrap it without another copy.
        rgb = np.array(Image.fromarray(rgb).resize((size, size), PIL_FILTER_IDS[resize_filter]))
    if channel_order == "bgr":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def decode_view(msg) -> tuple[np.ndarray, str]:
    """An Image/CompressedImage message -> (uint8 (H, W, 3) frame, its channel order).

    rgb8/bgr8/8UC3 frames are a view of ``msg.data`` (no copy); every other encoding is
    converted to RGB. A compressed frame is decoded to OpenCV's BGR and handed on as "bgr" (the
    swap then happens on the resized image, or in the graph). Failures are ImageError, as in
    `decode_message`.
    """
    if hasattr(msg, "format"):
        import cv2

        try:
            return decode_compressed_bgr(msg.format, msg.data), "bgr"
        except (cv2.error, ValueError, TypeError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    if msg.encoding.lower() in VIEW_ENCODINGS:
        try:
            return view_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    return decode_message(msg), "rgb"


class CpuResize:
    """uint8 (H, W, 3) frame (any strides) -> (size, size, 3) in the model's channel order.

    ``engine``: ``auto`` (torch's antialiased uint8 kernel where it keeps within 1 uint8 level of
    Pillow -- bilinear --, else Pillow), ``exact`` / ``pil`` (Pillow itself, bit-exact),
    ``fast`` / ``torch`` (torch's kernel for bilinear and bicubic: ~5x faster than Pillow,
    bicubic up to 2 levels off, effect on the demo policy's actions <= 5.3e-4; else Pillow).
    A node whose backend is not torch runs torch's resize on one intra-op thread: a second
    OpenMP thread spinning after each call would take the control thread's core on a small CPU.
    """

    def __init__(self, size: int, resize_filter: str = "bicubic", channel_order: str = "rgb",
                 engine: str = "auto"):
        if resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"resize_filter {resize_filter!r} must be one of {RESIZE_FILTERS}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order {channel_order!r} must be rgb or bgr")
        self.size, self.resize_filter, self.channel_order = int(size), resize_filter, channel_order
        if engine not in CPU_RESIZE_ENGINES:
            raise ValueError(f"cpu resize engine {engine!r} must be one of {CPU_RESIZE_ENGINES}")
        self._torch = None
        wanted = (resize_filter in TORCH_MODES if engine in ("fast", "torch") else
                  resize_filter in TORCH_WITHIN_ONE_LEVEL if engine == "auto" else False)
        if wanted:
            import sys

            torch_loaded = "torch" in sys.modules
            try:
                import torch
            except ImportError:
                if engine == "torch":
                    raise
            else:
                if not torch_loaded:
                    torch.set_num_threads(1)
                self._torch = torch
        elif engine == "torch":
            raise ValueError(f"resize_filter {resize_filter!r} has no torch kernel; use pil")
        self.engine = "torch" if self._torch is not None else "pil"

    def describe(self) -> str:
        """For diagnostics: engine and filter."""
        if self.engine == "torch":
            bound = 1 if self.resize_filter in TORCH_WITHIN_ONE_LEVEL else 2
            return (f"cpu: torch {self._torch.__version__} uint8 antialiased "
                    f"{self.resize_filter} (within {bound} level{'s' if bound > 1 else ''} of "
                    "PIL, measured)")
        return f"cpu: PIL {self.resize_filter} (the reference)"

    def __call__(self, frame: np.ndarray, order: str = "rgb") -> np.ndarray:
        """Resize ``frame`` (channel order ``order``) and put it in the model's channel order."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ImageError(f"expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        swap = order != self.channel_order
        if frame.shape[:2] == (self.size, self.size):
            out = frame
        elif self.engine == "torch":
            out = self._resize_torch(frame)
        else:
            from PIL import Image

            out = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(
                (self.size, self.size), PIL_FILTER_IDS[self.resize_filter]))
        if swap:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    def _resize_torch(self, frame: np.ndarray) -> np.ndarray:
        torch = self._torch
        if not frame.flags.writeable:   # torch wants writable memory; it only reads it
            frame = frame.copy()
        x = torch.from_numpy(frame).permute(2, 0, 1)[None]   # channels-last (1, 3, H, W) view
        y = torch.nn.functional.interpolate(x, size=(self.size, self.size),
                                            mode=TORCH_MODES[self.resize_filter],
                                            antialias=True, align_corners=False)
        return y[0].permute(1, 2, 0).numpy()


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
