"""The encoder's image preprocessing as a module: camera frame -> normalized model input.

`FramePreprocess` takes uint8 (B, H, W, 3) frames as the camera sends them (any size; rgb or
bgr channel order) and does what the team's training did with PIL, inside the model graph:

1. resize to (size, size) with Pillow's filter (`PilResize`), as two separable passes in
   Pillow's order, equal to Pillow bit for bit. Each pass is a **banded float32 matmul** over the
   tables of `core.resize.band_table`: the frame is made channel-planar (B, 3, H, W); the outputs
   of an axis are grouped in blocks of 16, each block reads one contiguous window of input
   pixels (a Slice per block for the horizontal pass, one row Gather for the vertical pass) and
   multiplies it by its (span, 2 x 16) weights: Pillow's 22-bit fixed-point weights split as
   ``hi * 2**shift + lo``, small enough that both window sums are exact in float32 and in TF32
   (TensorRT's and cuBLAS's default on Ampere and later). Elementwise ops then do Pillow's
   ``(sum + 2**21) >> 22`` exactly (Floor, Mul, Add, Add, Floor) and clip to 0..255 (Max, Min);
   proof and bounds in `core.resize`. Traced ops: Cast, Transpose, Slice, Gather, MatMul, Concat,
   Reshape, Floor, Mul, Add, Max, Min, all on float32 (the uint8 frame is cast first: TensorRT
   takes uint8 only as a network input or output), all supported by ONNX Runtime and by
   TensorRT's ONNX parser (its Resize cannot do this: no antialiasing, no cubic mode;
   docs/BENCHMARKS.md, "Preprocessing"). Cost, 640x480 -> 224 bicubic, one CPU thread: ~3 ms in
   torch and in ONNX Runtime (the integer gather formulation before it: ~13 and ~20 ms).
   Where float matmuls would not be exact the resize keeps that **integer gather formulation**:
   K ``index_select`` gathers of int32 pixels times the int32 weights (`core.resize.axis_table`),
   summed, ``+ HALF``, clipped, ``// ONE``: for ``nearest``, for a table `band_table` refuses
   (huge downscales), and in torch where float32 matmuls may run in bf16
   (``torch.set_float32_matmul_precision("medium")``). Autocast is switched off around the
   matmuls. In exported graphs the resize's nodes are named ``.../pil_resize/...``: the fp16
   ONNX conversion leaves them in float32 (`export.onnx.to_fp16`) and fp16 TensorRT builds pin
   them to fp32 (`export.tensorrt.pin_resize_fp32`);
2. swap channels when the camera's order differs from the model's (an index, no copy);
3. /255, then the pipeline's mean/std, in the model's dtype. The resize hands its float32
   values (integers 0 to 255) straight to this step; ``resize`` gives the uint8 image.

A frame already at (size, size) is not resampled (PIL does not resample it either), nor is an
axis already at ``size``. The tables depend on the frame size only; they are built on first use
of a size and cached per device (a traced graph bakes the tables of the size it was traced with;
a CUDA graph's warm-up runs build them before its capture).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..core import resize as pil_resize


def _float32_matmul_exact() -> bool:
    """False where torch may run float32 matmuls in bf16 (8 bits: the banded sums need 11).

    ``set_float32_matmul_precision("medium")`` allows bf16 (oneDNN on CPUs that have it);
    "high" (TF32) and "highest" keep the sums exact.
    """
    if torch.get_float32_matmul_precision() == "medium":
        return False
    for name in ("cuda", "mkldnn"):
        matmul = getattr(getattr(torch.backends, name, None), "matmul", None)
        if getattr(matmul, "fp32_precision", None) == "bf16":
            return False
    return True


class PilResize(nn.Module):
    """uint8 (B, H, W, 3) frames -> float32 (B, 3, size, size) holding Pillow's uint8 result.

    The resize of `FramePreprocess`, a child module named ``pil_resize`` so that every node of
    it in a traced graph is named ``.../pil_resize/...`` (`core.resize.GRAPH_SCOPE`: how
    `export.onnx.resize_nodes` and the TensorRT build find it). Channel-planar float output:
    what the normalization reads, with no uint8 tensor inside the graph (TensorRT takes uint8
    only as a network input or output).

    ``banded`` (class default True): the banded matmul resize where it is exact; False: always
    the integer gather formulation (the same pixels; kept for measurements and comparisons).
    """

    banded = True

    def __init__(self, size: int, resize_filter: str):
        super().__init__()
        self.size = int(size)
        self.resize_filter = pil_resize.check_filter(resize_filter)
        self._tables: dict = {}

    def _table(self, n_in: int, device):
        """(index, weight) tensors of one axis on ``device``, built once.

        A CUDA graph's warm-up runs build them before its capture. Tensors made under a fake
        mode (a tensor subclass) are used for that call only, never cached.
        """
        key = (n_in, str(device))
        cached = self._tables.get(key)
        if cached is not None:
            return cached
        index, weight = pil_resize.axis_table(n_in, self.size, self.resize_filter)
        table = (torch.tensor(index, device=device),
                 torch.tensor(weight, dtype=torch.int32, device=device))
        if type(table[0]) is torch.Tensor:
            self._tables[key] = table
        return table

    def _pass(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """One Pillow pass along ``axis`` (1: rows, 2: columns) of an int32 (B, H, W, 3).

        One gather per tap, multiplied by that tap's weights and summed (K taps; about twice
        as fast on a CPU as one gather of all taps, the same result).
        """
        index, weight = self._table(int(x.shape[axis]), x.device)
        shape = [1] * x.dim()
        shape[axis] = self.size
        acc = None
        for k in range(weight.shape[1]):
            term = x.index_select(axis, index[:, k]) * weight[:, k].reshape(shape)
            acc = term if acc is None else acc + term
        acc = acc + pil_resize.HALF
        # acc >> 22, clipped to uint8: non-negative before the (truncating) division
        acc = torch.maximum(acc, torch.zeros((), dtype=acc.dtype, device=acc.device))
        acc = torch.div(acc, pil_resize.ONE, rounding_mode="trunc")
        return torch.minimum(acc, torch.full((), 255, dtype=acc.dtype, device=acc.device))

    def _band(self, n_in: int, device):
        """The banded matmul weights of one axis on ``device`` (None: not exact), built once.

        (table, per-block (span, 2 * block) weights, (nb, 2 * block, span) weights, window row
        index): the first for the horizontal pass, the other two for the vertical one. Cached
        as `_table` is (fake-mode tensors are not).
        """
        key = ("band", n_in, str(device))
        if key in self._tables:
            return self._tables[key]
        table = pil_resize.band_table(n_in, self.size, self.resize_filter)
        if table is None:
            self._tables[key] = None
            return None
        weights = torch.tensor(table.weights, device=device)
        rows = torch.tensor([s + j for s in table.starts for j in range(table.span)],
                            device=device)
        band = (table, [w.contiguous() for w in weights.unbind(0)],
                weights.transpose(1, 2).contiguous(), rows)
        if type(weights) is torch.Tensor:
            self._tables[key] = band
        return band

    @staticmethod
    def _round(hi: torch.Tensor, lo: torch.Tensor, shift: int) -> torch.Tensor:
        """Pillow's ``clip((H * 2**shift + L + HALF) >> 22, 0, 255)`` from the scaled sums.

        ``hi`` = H * 2**(shift-22), ``lo`` = L / 2**shift (exact): (H + floor(L / 2**shift))
        * 2**(shift-22) + 0.5 is exact and its floor is the shifted sum (`core.resize`).
        """
        x = torch.floor(lo) * (2.0 ** (shift - pil_resize.PRECISION_BITS)) + hi
        x = torch.floor(x + 0.5)
        x = torch.maximum(x, torch.zeros((), dtype=x.dtype, device=x.device))
        return torch.minimum(x, torch.full((), 255.0, dtype=x.dtype, device=x.device))

    def _columns(self, x: torch.Tensor, band) -> torch.Tensor:
        """The horizontal pass of a channel-planar (B, 3, A, W) frame -> float (B, 3, A, size).

        A Slice of each block's window, (B, 3, A, span) @ (span, 2 * block) per block: large
        matmuls with constant weights, no gather along the contiguous axis.
        """
        table, blocks, _, _ = band
        nb, block, span, rows = len(table.starts), table.block, table.span, int(x.shape[2])
        parts = [torch.matmul(x[..., s:s + span].float(), w)
                 for s, w in zip(table.starts, blocks, strict=True)]
        y = torch.cat(parts, -1).reshape(-1, 3, rows, nb, 2, block)
        out = self._round(y[..., 0, :], y[..., 1, :], table.shift)
        return out.reshape(-1, 3, rows, nb * block)[..., :self.size]

    def _rows(self, x: torch.Tensor, band) -> torch.Tensor:
        """The vertical pass of a channel-planar (B, 3, H, C) frame -> float (B, 3, size, C).

        One Gather of the blocks' window rows, (nb, 2 * block, span) @ (B, 3, nb, span, C).
        """
        table, _, weights, rows = band
        nb, block, span, cols = len(table.starts), table.block, table.span, int(x.shape[3])
        window = x.index_select(2, rows).float().reshape(-1, 3, nb, span, cols)
        y = torch.matmul(weights, window).reshape(-1, 3, nb, 2, block, cols)
        out = self._round(y[:, :, :, 0], y[:, :, :, 1], table.shift)
        return out.reshape(-1, 3, nb * block, cols)[:, :, :self.size]

    def _banded(self, frames: torch.Tensor, passes: list, sizes: dict):
        """The banded matmul resize, or None where it would not be exact (see the docstring)."""
        if not self.banded or not _float32_matmul_exact():
            return None
        bands = {axis: self._band(sizes[axis], frames.device) for axis in passes}
        if any(band is None for band in bands.values()):
            return None
        device_type = frames.device.type
        guard = (torch.autocast(device_type, enabled=False)
                 if torch.is_autocast_enabled(device_type) else contextlib.nullcontext())
        with guard:
            if torch.jit.is_tracing():
                # the graph: Cast first (TensorRT has no uint8 Transpose/Slice), then planar
                x = frames.float().permute(0, 3, 1, 2)
            else:
                # eager: the uint8 copy is the cheaper one; each window is cast on its own
                x = frames.permute(0, 3, 1, 2).contiguous()
            for axis in passes:
                x = self._rows(x, bands[axis]) if axis == 1 else self._columns(x, bands[axis])
            return x

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, size, size), Pillow's values (0 to 255)."""
        height, width = int(frames.shape[1]), int(frames.shape[2])
        if (height, width) == (self.size, self.size):
            return frames.float().permute(0, 3, 1, 2)
        passes = [2] if width != self.size else []
        if height != self.size:
            first = pil_resize.vertical_first(height, width, self.size, self.resize_filter)
            passes.insert(0 if first else len(passes), 1)
        out = self._banded(frames, passes, {1: height, 2: width})
        if out is not None:
            return out
        x = frames.to(torch.int32)
        for axis in passes:
            x = self._pass(x, axis)
        return x.float().permute(0, 3, 1, 2)


class FramePreprocess(nn.Module):
    """uint8 (B, H, W, 3) frames -> normalized float (B, 3, size, size) in the model's dtype."""

    def __init__(self, size: int, resize_filter: str, mean, std):
        super().__init__()
        self.size = int(size)
        self.resize_filter = pil_resize.check_filter(resize_filter)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)
                             .view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)
                             .view(1, 3, 1, 1), persistent=False)
        self.pil_resize = PilResize(size, resize_filter)   # the name is GRAPH_SCOPE

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> uint8 (B, size, size, 3), Pillow's result."""
        if (int(frames.shape[1]), int(frames.shape[2])) == (self.size, self.size):
            return frames
        return self.pil_resize(frames).permute(0, 2, 3, 1).to(torch.uint8)

    def normalize(self, images: torch.Tensor, dtype=None) -> torch.Tensor:
        """uint8 (B, S, S, 3) in the model's channel order -> normalized (B, 3, S, S)."""
        x = images.permute(0, 3, 1, 2).to(dtype or self.mean.dtype) / 255.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, frames: torch.Tensor, swap_channels: bool = False,
                dtype=None) -> torch.Tensor:
        """Camera frames -> model input; ``swap_channels``: rgb <-> bgr before normalizing.

        The same values as ``normalize(resize(frames))`` (integers 0 to 255 are exact in every
        float dtype), without the uint8 round trip in the graph.
        """
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3) frames, got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        if (int(frames.shape[1]), int(frames.shape[2])) == (self.size, self.size):
            x = frames.float().permute(0, 3, 1, 2)   # no resize (and no pil_resize nodes)
        else:
            x = self.pil_resize(frames)          # float32 (B, 3, S, S), Pillow's values
        if swap_channels:   # a Gather of 3 channels (Slice with a negative step avoided)
            x = x.index_select(1, torch.tensor([2, 1, 0], device=x.device))
        dtype = dtype or self.mean.dtype
        x = (x if x.dtype == dtype else x.to(dtype)) / 255.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
