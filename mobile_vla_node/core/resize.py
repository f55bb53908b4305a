"""PIL's resize, as tables: the exact per-axis weights of ``Image.resize`` (numpy only).

Pillow resamples a uint8 image in two separable passes (horizontal first, then vertical; a pass
is skipped when that axis keeps its size). For each output index ``i`` of an axis of ``n_in``
pixels resized to ``n_out``, with ``scale = n_in / n_out`` and the filter stretched by
``max(scale, 1)`` (that stretch is the antialiasing), it sums at most ``K`` neighbouring input
pixels with weights normalized to 1 and stored as 22-bit fixed point, then rounds half up and
clips to uint8 between the passes (Pillow ``src/libImaging/Resample.c``: ``precompute_coeffs``,
``normalize_coeffs_8bpc``, ``ImagingResampleHorizontal_8bpc``). `axis_table` reproduces that
table: ``index`` (n_out, K) int64 and ``weight`` (n_out, K) int64 fixed point (unused taps: index
of a valid pixel, weight 0). NEAREST is a table too (one tap of weight 1, at Pillow's affine
nearest-neighbour position). Pillow runs the vertical pass first when the width grows and the
height shrinks (`vertical_first`).

`resize_exact` applies the tables in integer arithmetic and equals PIL bit for bit (tested).
The same tables, in float32, are what the in-graph resize (`model.preprocessing`) bakes into the
encoder for torch, ONNX, TensorRT and Triton: floating-point sums differ from the integer ones by
at most 1 uint8 level (measured in scripts/preprocess_parity.py, tested).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2       # Pillow's fixed-point precision for 8-bit images
ONE = 1 << PRECISION_BITS
HALF = 1 << (PRECISION_BITS - 1)


def _box(x):
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_F54, _F46 = float(np.float32(0.54)), float(np.float32(0.46))


def _hamming(x):
    x = np.abs(x)
    px = np.pi * x
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sin(px) / px * (_F54 + _F46 * np.cos(px))   # Pillow: 0.54f + 0.46f * cos(x)
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, w))


def _bicubic(x, a: float = -0.5):
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sin(np.pi * x) / (np.pi * x)
    return np.where(x == 0.0, 1.0, s)


def _lanczos(x):
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


# name -> (filter function, support) exactly as Pillow defines them; nearest is separate.
FILTERS = {"box": (_box, 0.5), "bilinear": (_bilinear, 1.0), "hamming": (_hamming, 1.0),
           "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}
RESIZE_FILTERS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")
# Pillow's Image.Resampling values of the names above
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def check_filter(resize_filter: str) -> str:
    """The filter name, or ValueError listing the known ones."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter {resize_filter!r} must be one of {list(RESIZE_FILTERS)}")
    return resize_filter


@lru_cache(maxsize=64)
def axis_table(n_in: int, n_out: int, resize_filter: str) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) of one axis: int64 (n_out, K) each; weights in 22-bit fixed point.

    Identity (n_in == n_out) gives one tap of weight ``ONE`` per pixel, whatever the filter.
    The arrays are cached and read-only.
    """
    check_filter(resize_filter)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize an axis of {n_in} pixels to {n_out}")
    if n_in == n_out:
        index, weight = np.arange(n_out)[:, None], np.full((n_out, 1), ONE, np.int64)
    elif resize_filter == "nearest":
        # ImagingScaleAffine: xo = 0.5 * scale, then xo += scale per pixel (rounding included)
        scale, xo, picks = n_in / n_out, 0.0, []
        xo = 0.5 * scale
        for _ in range(n_out):
            picks.append(min(int(xo), n_in - 1))
            xo += scale
        index = np.array(picks, np.int64)[:, None]
        weight = np.full((n_out, 1), ONE, np.int64)
    else:
        index, weight = _filter_table(n_in, n_out, resize_filter)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _filter_table(n_in: int, n_out: int, resize_filter: str):
    func, support = FILTERS[resize_filter]
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(n_out) + 0.5) * scale
    # Pillow: (int)(center -/+ support + 0.5), i.e. truncation, then clamped to the axis.
    xmin = np.clip(np.trunc(centers - support + 0.5), 0, None).astype(np.int64)
    xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), n_in) - xmin
    taps = np.arange(ksize)
    valid = taps[None, :] < xmax[:, None]
    w = func((taps[None, :] + xmin[:, None] - centers[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(valid, w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0.0)
    # normalize_coeffs_8bpc: round half away from zero to fixed point
    fixed = np.where(w < 0, np.ceil(w * ONE - 0.5), np.floor(w * ONE + 0.5)).astype(np.int64)
    index = np.minimum(xmin[:, None] + taps[None, :], n_in - 1)
    used = int(valid.sum(axis=1).max())      # drop all-zero tail taps
    return np.ascontiguousarray(index[:, :used]), np.ascontiguousarray(fixed[:, :used])


def tables(height: int, width: int, size: int, resize_filter: str):
    """((row index, row weight), (column index, column weight)) for (H, W) -> (size, size)."""
    return axis_table(height, size, resize_filter), axis_table(width, size, resize_filter)


@lru_cache(maxsize=64)
def vertical_first(height: int, width: int, size: int, resize_filter: str) -> bool:
    """Whether Pillow runs the vertical pass first for this size (both passes needed).

    Pillow's C code (``ImagingResampleInner``) runs horizontal first, and so does Pillow 13 for
    landscape camera frames; for some portrait and upscaled sizes Pillow 13 was measured to run
    vertical first. The installed Pillow decides: one probe frame of this size is resized both
    ways and compared with it (once per size, cached). Without Pillow: horizontal first.
    """
    if width == size or height == size or resize_filter == "nearest":
        return False
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of the package
        return False
    probe = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(probe).resize((size, size), PIL_FILTERS[resize_filter]))
    (ri, rw), (ci, cw) = tables(height, width, size, resize_filter)
    horizontal = _pass(_pass(probe, ci, cw, 1), ri, rw, 0)
    if np.array_equal(horizontal, ref):
        return False
    return bool(np.array_equal(_pass(_pass(probe, ri, rw, 0), ci, cw, 1), ref))


def _pass(x: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """One exact pass along ``axis`` of a uint8 array: Pillow's fixed-point sum, round, clip."""
    acc = np.full(x.shape[:axis] + (index.shape[0],) + x.shape[axis + 1:], HALF, np.int64)
    shape = [1] * x.ndim
    shape[axis] = index.shape[0]
    for k in range(index.shape[1]):
        acc += np.take(x, index[:, k], axis=axis).astype(np.int64) * weight[:, k].reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_exact(rgb: np.ndarray, size: int, resize_filter: str = "bicubic") -> np.ndarray:
    """uint8 (H, W, C) -> (size, size, C), equal to PIL's ``Image.resize`` bit for bit."""
    height, width = rgb.shape[:2]
    (ri, rw), (ci, cw) = tables(height, width, size, resize_filter)
    passes = [(ci, cw, 1)] if width != size else []
    if height != size:
        first = vertical_first(height, width, size, resize_filter)
        passes.insert(0 if first else len(passes), (ri, rw, 0))
    out = rgb
    for index, weight, axis in passes:
        out = _pass(out, index, weight, axis)
    return np.ascontiguousarray(out)
