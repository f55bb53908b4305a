"""The encoder's image preprocessing as a module: camera frame -> normalized model input.

`FramePreprocess` takes uint8 (B, H, W, 3) frames as the camera sends them (any size; rgb or
bgr channel order) and does what the team's training did with PIL, inside the model graph:

1. resize to (size, size) with Pillow's filter, as two separable passes over precomputed tables
   (`core.resize.axis_table`: gather ``K`` neighbours, multiply by 22-bit fixed-point weights,
   sum, round half up, clip to uint8). The arithmetic is int32, as in Pillow, so the result is
   Pillow's bit for bit, and the traced ops (Cast, Gather, Mul, Add, Div, Max, Min) are all
   supported by ONNX Runtime and by TensorRT's ONNX parser (its Resize cannot do this:
   no antialiasing, no cubic mode; docs/BENCHMARKS.md, "Preprocessing");
2. swap channels when the camera's order differs from the model's (an index, no copy);
3. /255, then the pipeline's mean/std, in the model's dtype.

A frame already at (size, size) is not resampled (PIL does not resample it either). The tables
depend on the frame size only; they are built on first use of a size and cached (a traced graph
bakes the tables of the size it was traced with).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import resize as pil_resize


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

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> uint8 (B, size, size, 3), Pillow's result."""
        height, width = int(frames.shape[1]), int(frames.shape[2])
        if (height, width) == (self.size, self.size):
            return frames
        passes = [2] if width != self.size else []
        if height != self.size:
            first = pil_resize.vertical_first(height, width, self.size, self.resize_filter)
            passes.insert(0 if first else len(passes), 1)
        x = frames.to(torch.int32)
        for axis in passes:
            x = self._pass(x, axis)
        return x.to(torch.uint8)

    def normalize(self, images: torch.Tensor, dtype=None) -> torch.Tensor:
        """uint8 (B, S, S, 3) in the model's channel order -> normalized (B, 3, S, S)."""
        x = images.permute(0, 3, 1, 2).to(dtype or self.mean.dtype) / 255.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, frames: torch.Tensor, swap_channels: bool = False,
                dtype=None) -> torch.Tensor:
        """Camera frames -> model input; ``swap_channels``: rgb <-> bgr before normalizing."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B, H, W, 3) frames, got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        images = self.resize(frames)
        if swap_channels:   # a Gather of 3 channels (Slice with a negative step avoided)
            images = images.index_select(3, torch.tensor([2, 1, 0], device=images.device))
        return self.normalize(images, dtype)
