"""Camera frame -> model input with torch ops, so a GPU backend does the per-pixel work.

`resize_like_pil` reproduces what `core.preprocess.to_model_input` does with PIL
(``Image.resize(..., Image.BICUBIC)``: antialiased bicubic, a = -0.5, horizontal pass first, each
pass rounded half up and clipped to uint8) with ``F.interpolate(mode="bicubic",
antialias=True)``, whose antialiased kernels follow PIL's. It runs the two passes separately and
rounds between them as PIL does. Computed in float32 the result differs from PIL by at most
1 uint8 level on camera-like images and 2 on sharp synthetic edges, on under 5 % of the pixels
(measured on the CPU; docs/GPU.md has the table). float64 gets closer still (at most 1 level).

Everything here is a pure function of tensors on any device with static shapes (no host sync,
no data-dependent shapes), so it can sit inside a captured CUDA graph.
"""

from __future__ import annotations

# PIL filter names (as policy configs may spell them) -> torch interpolate modes with antialias
# that match PIL's filter of that name.
PIL_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


def unsupported_reason(resize_filter: str) -> str | None:
    """Why a resize filter cannot run on the device (None: it can)."""
    if str(resize_filter).lower() in PIL_MODES:
        return None
    return (f"resize filter {resize_filter!r} has no antialiased torch equivalent here "
            f"(supported: {sorted(PIL_MODES)})")


def _pass(torch, x, size: tuple[int, int], mode: str):
    y = torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=True,
                                        align_corners=False)
    return torch.clamp(torch.floor(y + 0.5), 0.0, 255.0)  # PIL: round half up, clip to uint8


def resize_like_pil(images, size: int, resize_filter: str = "bicubic",
                    channel_order: str = "rgb", compute_dtype=None):
    """uint8 (B, H, W, 3) RGB -> uint8 (B, size, size, 3) in ``channel_order`` (rgb or bgr).

    Same result as `core.preprocess.to_model_input` within the tolerance in the module docstring;
    a frame already at (size, size) is not resampled (PIL does not resample it either).
    ``compute_dtype``: float dtype of the passes (default float32).
    """
    import torch

    reason = unsupported_reason(resize_filter)
    if reason:
        raise ValueError(reason)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B, H, W, 3), got {images.dtype} "
                         f"{tuple(images.shape)}")
    mode = PIL_MODES[str(resize_filter).lower()]
    height, width = int(images.shape[1]), int(images.shape[2])
    out = images
    if (height, width) != (size, size):
        x = images.permute(0, 3, 1, 2).to(compute_dtype or torch.float32)
        if width != size:
            x = _pass(torch, x, (height, size), mode)
        if height != size:
            x = _pass(torch, x, (size, size), mode)
        out = x.to(torch.uint8).permute(0, 2, 3, 1)
    if channel_order == "bgr":
        out = out.flip(-1)
    elif channel_order != "rgb":
        raise ValueError(f"channel_order {channel_order!r} must be rgb or bgr")
    return out.contiguous()
