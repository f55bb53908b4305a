"""int8 calibration of the encoder engine: frame batches, the TensorRT calibrator, the cache.

Frames come from a rosbag2 bag or an image folder; the calibration table is cached beside the
engine and reused when no frames are given.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from ..model.tokenizer import PromptTokenizer

LOG = logging.getLogger(__name__)

# Prompts the encoder is calibrated with (frames carry the diversity; these vary the text).
CALIB_INSTRUCTIONS = ("go to the red box", "turn left", "move forward slowly", "stop",
                      "approach the chair and then stop")


class CalibrationError(RuntimeError):
    """Calibration cannot run: no usable frames, prompts too long for the engine."""


class CalibrationBatches:
    """Fixed-size encoder input batches for int8 calibration (pure Python, no TensorRT).

    Frames come from a rosbag2 bag or an image folder (`replay.frames.iter_frames`) and go through
    the node's own `to_model_input`; each batch is ``{"image": uint8 (B, S, S, 3), "text_ids":
    (B, L)}``. Prompts are assigned to frames round-robin and right-padded with ``pad_id`` to
    one length L (the encoder masks padding out of attention), so every batch has the same shape,
    which TensorRT's calibration profile needs. A partial last batch is DROPPED: padding it with
    repeated or blank frames would skew the activation histograms.
    """

    def __init__(self, source: str | Path, image_size: int, prompts, *, batch_size: int = 1,
                 max_batches: int | None = None, channel_order: str = "rgb",
                 topic: str | None = None, pad_id: int = 1, dtypes: dict | None = None,
                 resize_filter: str = "bicubic"):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches {max_batches} must be >= 1")
        prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in
                   ([prompts] if np.asarray(prompts[0]).ndim == 0 else prompts)]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("calibration needs at least one non-empty prompt")
        self.text_len = max(len(p) for p in prompts)
        self.prompts = np.stack([np.pad(p, (0, self.text_len - len(p)), constant_values=pad_id)
                                 for p in prompts])
        self.source, self.image_size, self.batch_size = source, int(image_size), batch_size
        self.max_batches, self.channel_order, self.topic = max_batches, channel_order, topic
        self.resize_filter = resize_filter   # the PIL filter the model was trained with
        self.dtypes = {"image": np.uint8, "text_ids": np.int64, **(dtypes or {})}

    def shapes(self) -> dict[str, tuple]:
        """Shape of each input in every batch."""
        size = self.image_size
        return {"image": (self.batch_size, size, size, 3),
                "text_ids": (self.batch_size, self.text_len)}

    def __iter__(self):
        """Yield batches in frame order; the remainder that does not fill a batch is dropped."""
        from ..core.preprocess import to_model_input
        from ..replay.frames import iter_frames

        limit = self.batch_size * self.max_batches if self.max_batches else None
        frames = iter_frames(self.source, topic=self.topic, limit=limit)
        prompt_index = itertools.cycle(range(len(self.prompts)))
        images, ids = [], []
        for frame in frames:
            images.append(to_model_input(frame, self.image_size, self.channel_order,
                                         self.resize_filter))
            ids.append(self.prompts[next(prompt_index)])
            if len(images) == self.batch_size:
                yield {"image": np.stack(images).astype(self.dtypes["image"], copy=False),
                       "text_ids": np.stack(ids).astype(self.dtypes["text_ids"])}
                images, ids = [], []


def make_calibrator(trt, cuda, batches: list[dict], cache: Path, read_cache: bool):
    """An ``IInt8EntropyCalibrator2`` over prepared batches, with a read/write table cache."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index, self.error = 0, None
            first = batches[0] if batches else {}
            self.device = {name: cuda.malloc(arr.nbytes) for name, arr in first.items()}

        def get_batch_size(self):
            return 1  # explicit-batch network: the batch is part of the input shapes

        def get_batch(self, names):
            if self.index >= len(batches):
                return None
            try:
                batch = batches[self.index]
                for name in names:
                    cuda.copy_to_device(self.device[name], batch[name])
                self.index += 1
                return [self.device[name] for name in names]
            except Exception as exc:  # noqa: BLE001 - surfaced after the build
                self.error = exc
                return None

        def read_calibration_cache(self):
            if read_cache and cache.is_file():
                LOG.info("using int8 calibration cache %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data):
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(data))

        def free(self):
            for ptr in self.device.values():
                cuda.free(ptr)
            self.device = {}

    return _Calibrator()


def calibrator_for(trt, cuda, options, meta: dict, text_max: int, log, inputs):
    """Calibrator + calibration-profile shapes for the encoder's parsed ``inputs`` (int8).

    ``options``: the build's `BuildOptions` (calib, calib_cache, calib_batches).
    """
    tokenizer = PromptTokenizer.from_json(meta["tokenizer"])
    batch = max(int(inputs["image"].shape[0]), 1)
    batches = CalibrationBatches(
        options.calib or "", int(meta["model_spec"]["image_size"]),
        [tokenizer.encode(text) for text in CALIB_INSTRUCTIONS], batch_size=batch,
        max_batches=options.calib_batches, pad_id=tokenizer.special_ids["<pad>"],
        channel_order=(meta.get("normalization") or {}).get("channel_order", "rgb"),
        resize_filter=meta["model_spec"].get("resize_filter", "bicubic"),
        dtypes={name: trt.nptype(t.dtype) for name, t in inputs.items()})
    if batches.text_len > text_max:
        raise CalibrationError(f"calibration prompts are {batches.text_len} ids long, more than "
                               f"--max-text-len {text_max}")
    if not options.calib:
        log(f"int8: using the calibration cache {options.calib_cache} (no --calib given; if "
            "TensorRT rejects it, pass --calib to recalibrate)")
        return make_calibrator(trt, cuda, [], options.calib_cache, True), batches.shapes()
    prepared = list(batches)
    if not prepared:
        raise CalibrationError(f"--calib {options.calib} gave no full calibration batch of "
                               f"{batch} frame(s)")
    log(f"int8: calibrating the encoder with {len(prepared)} batches of {batch} frame(s) from "
        f"{options.calib}; table -> {options.calib_cache}")
    return make_calibrator(trt, cuda, prepared, options.calib_cache, False), batches.shapes()
