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

`band_table` rearranges one axis's table for a float32 matmul that stays exact (what the in-graph
resize, `model.preprocessing`, bakes into the encoder for torch, ONNX, TensorRT and Triton).
Outputs are grouped in blocks of ``block``; each block reads one contiguous window of ``span``
input pixels, and its weights are a dense (span, block) integer matrix ``D`` (zero outside the
taps), split as ``D = hi * 2**shift + lo`` with ``lo`` in [-2**(shift-1), 2**(shift-1)). For
uint8 inputs every product and every partial sum of ``x @ hi`` and ``x @ lo`` is an integer below
2**24 in magnitude whatever the summation order (checked per output: 255 * sum|hi| and
255 * sum|lo| < 2**24), and every ``hi``/``lo`` has at most 11 significant bits, so float32 and
TF32 (10+1 bits per input, fp32 accumulation: TensorRT's and cuBLAS's default on Ampere and
later) compute both sums exactly. With ``H = x @ hi`` and ``L = x @ lo``, Pillow's
``(H * 2**shift + L + 2**21) >> 22`` equals ``floor((H + floor(L / 2**shift)) * 2**(shift-22)
+ 0.5)``, every term an exact float32 (powers of two scale exactly; the sum inside is an integer
below 2**24, also checked). The stored weights carry the scales: ``hi * 2**(shift-22)`` and
``lo * 2**-shift``. A table that fails a check (nearest, identity, or a downscale so large that
the window sums could reach 2**24: to 224 px, from ~20x for lanczos, ~30x for bicubic) is None,
and the caller keeps the integer gather formulation.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

PRECISION_BITS = 32 - 8 - 2       # Pillow's fixed-point precision for 8-bit images
ONE = 1 << PRECISION_BITS
HALF = 1 << (PRECISION_BITS - 1)
FLOAT32_EXACT = 1 << 24           # integers of smaller magnitude are exact in float32
TF32_BITS = 11                    # significant bits TF32 keeps of each matmul input
BAND_BLOCK = 16                   # outputs per block of `band_table` (measured: 8 to 32 alike)
BAND_SHIFTS = (11, 12, 13)        # the hi/lo splits tried, smallest lo first
# The in-graph resize's module name (`model.preprocessing.PilResize`): every traced node of it is
# named ``.../pil_resize/...`` (how the fp16 conversion and the TensorRT build find it)
GRAPH_SCOPE = "pil_resize"


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


class BandTable(NamedTuple):
    """One axis's table as banded float32 matmul weights (see the module docstring)."""

    starts: tuple      # first input pixel of each block's window (nb blocks)
    span: int          # window length (input pixels)
    block: int         # outputs per block; the last block is padded with zero-weight outputs
    n_out: int
    shift: int         # weight = hi * 2**shift + lo
    weights: np.ndarray  # float32 (nb, span, 2 * block): hi * 2**(shift-22) | lo * 2**-shift


def tf32_exact(values: np.ndarray) -> bool:
    """Whether every integer in ``values`` has at most `TF32_BITS` significant bits."""
    v = np.abs(np.asarray(values, np.int64)).ravel()
    v = v[v != 0]
    return bool(np.all(v // (v & -v) < (1 << TF32_BITS)))


def split_exact(hi: np.ndarray, lo: np.ndarray, shift: int) -> bool:
    """Whether ``hi``/``lo`` (int (n_out, span), one row per output) give exact float32 sums.

    For uint8 inputs: ``255 * sum|hi|`` and ``255 * sum|lo|`` below 2**24 (every partial sum
    of either matmul is an exact float32 integer, in any order), the combined integer
    ``H + floor(L / 2**shift) + 2**(21-shift)`` below 2**24, and TF32-exact weights.
    """
    s_hi = 255 * np.abs(hi).sum(axis=1)
    s_lo = 255 * np.abs(lo).sum(axis=1)
    combined = s_hi + s_lo // (1 << shift) + 1 + (1 << (PRECISION_BITS - 1 - shift))
    return bool(max(s_hi.max(), s_lo.max(), combined.max()) < FLOAT32_EXACT
                and tf32_exact(hi) and tf32_exact(lo))


def band_dense(n_in: int, n_out: int, resize_filter: str, block: int = BAND_BLOCK):
    """(starts, span, dense): each block's window and int64 (nb * block, span) weights."""
    index, weight = axis_table(n_in, n_out, resize_filter)
    nb = -(-n_out // block)
    used = weight != 0
    first = np.where(used, index, n_in).min(axis=1)
    last = np.where(used, index, -1).max(axis=1)
    pad = nb * block - n_out
    first = np.concatenate([first, np.full(pad, first[-1])]).reshape(nb, block).min(axis=1)
    last = np.concatenate([last, np.full(pad, last[-1])]).reshape(nb, block).max(axis=1)
    span = min(int((last - first).max()) + 1, n_in)
    starts = np.minimum(first, n_in - span)
    rows, taps = np.nonzero(used)
    dense = np.zeros((nb * block, span), np.int64)
    np.add.at(dense, (rows, index[rows, taps] - starts[rows // block]), weight[rows, taps])
    return tuple(int(v) for v in starts), span, dense


@lru_cache(maxsize=64)
def band_table(n_in: int, n_out: int, resize_filter: str,
               block: int = BAND_BLOCK) -> BandTable | None:
    """The axis as exact banded float32 matmul weights, or None where that is not exact.

    None: identity (no pass), nearest (a pure gather), or no split in `BAND_SHIFTS` passes
    `split_exact` (very large downscales). The weights array is cached and read-only.
    """
    check_filter(resize_filter)
    if n_in == n_out or resize_filter == "nearest":
        return None
    starts, span, dense = band_dense(n_in, n_out, resize_filter, block)
    for shift in BAND_SHIFTS:
        half = 1 << (shift - 1)
        lo = ((dense + half) & ((1 << shift) - 1)) - half
        hi = (dense - lo) >> shift
        if not split_exact(hi, lo, shift):
            continue
        nb = len(starts)
        scaled = np.stack([hi * 2.0 ** (shift - PRECISION_BITS), lo * 2.0 ** -shift], 1)
        # (nb * block, 2, span) -> (nb, span, 2 * block): columns hi of the block, then lo
        weights = scaled.reshape(nb, block, 2, span).transpose(0, 3, 2, 1).reshape(
            nb, span, 2 * block).astype(np.float32)
        weights.setflags(write=False)
        return BandTable(starts, span, block, n_out, shift, weights)
    return None
