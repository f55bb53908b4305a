"""The policy runtime shared by the node, replay and benchmarks.

Command -> prompt ids (tokenized once per command, never padded unless the model config says so).
Frame -> model input -> backend.infer(image, ids, history) -> feature appended to the history ring
(``window_size - 1`` previous features, so each frame is encoded exactly once) -> normalized action
chunk -> velocities. A new command or `reset` clears the history; a step that started under an
older command is discarded instead of mixing two commands' features.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..model import token_layouts
from .chunks import select_actions
from .config import ActionConfig
from .postprocess import ActionPostprocessor
from .preprocess import CpuResize, ImageError


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """The checks `to_model_input` makes, for a frame a backend resizes on its device."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or (
            rgb.dtype != np.uint8):
        raise ImageError(f"expected uint8 (H, W, 3), got {getattr(rgb, 'dtype', type(rgb))} "
                         f"{getattr(rgb, 'shape', '')}")
    return rgb


@dataclass
class StepResult:
    """One inference step: velocities (chunk, 3), raw normalized actions and stage timings."""

    velocities: np.ndarray
    actions: np.ndarray
    preprocess_ms: float
    inference_ms: float


class PolicyRuntime:
    """Backend + command + history window + post-processing (one stepping thread at a time)."""

    def __init__(self, backend, action: ActionConfig, max_command_chars: int = 512):
        self.backend = backend
        self.spec = backend.spec
        self.channel_order = action.channel_order
        self.post = ActionPostprocessor.for_spec(action, self.spec)
        self.resize_filter = self.spec.resize_filter
        # model-size graphs: the frame is resized here, on the CPU (backends that take the
        # camera frame, preprocesses_on_device, resize inside their graph)
        engine = getattr(getattr(backend, "config", None), "cpu_resize", "auto")
        self.resizer = CpuResize(self.spec.image_size, self.resize_filter, self.channel_order,
                                 engine if isinstance(engine, str) else "auto")
        info = getattr(backend, "info", None)
        if info is not None and not getattr(backend, "preprocesses_on_device", False):
            info.extra["cpu_resize"] = self.resizer.describe()   # shown in /diagnostics
        self.max_command_chars = max_command_chars
        self.history: deque = deque(maxlen=max(self.spec.window_size - 1, 0))
        self.action_mode = action.action_mode
        self.steps = 0   # accepted steps since the last reset (action_mode server: first is 0)
        self.command: str | None = None
        self.text_ids: np.ndarray | None = None
        self.generation = 0
        self._lock = threading.Lock()

    def set_command(self, text: str) -> None:
        """Tokenize a new instruction and reset the history; raises CommandError if unusable."""
        ids = self.backend.tokenizer.encode(text, max_chars=self.max_command_chars)
        with self._lock:
            self.command, self.text_ids = text.strip(), ids
            self.history.clear()
            self.steps = 0
            self.generation += 1

    def clear_command(self) -> None:
        """Drop the instruction (the robot stops until a new one arrives)."""
        with self._lock:
            self.command, self.text_ids = None, None
            self.history.clear()
            self.steps = 0
            self.generation += 1

    def reset(self) -> None:
        """Clear the observation history, keep the command."""
        with self._lock:
            self.history.clear()
            self.steps = 0
            self.generation += 1

    def layout_warning(self) -> str:
        """One line for node start when the token layout hides the instruction, else ""."""
        layout = self.spec.token_layout
        if layout != token_layouts.KOSMOS:
            return ""
        latent = int(self.spec.image_tokens)
        return (f"token_layout {layout}: instruction-blind: {token_layouts.BLIND_TEXT} (the "
                f"first {latent} prompt positions hold image tokens: every prompt of up to "
                f"{token_layouts.blind_limit(latent)} ids, <s> and </s> included, acts the same "
                "for equal lengths; docs/CHECKPOINTS.md)")

    def instruction_note(self) -> str:
        """Whether the current command's tokens reach the action token (diagnostics)."""
        with self._lock:
            ids = self.text_ids
        if ids is None:
            return "n/a (no command)"
        layout = self.spec.token_layout
        vis = token_layouts.visibility(layout, int(len(ids)),
                                       int(self.spec.image_tokens))
        return ("yes: " if vis.blind else "no: ") + vis.describe()

    def prepare(self, rgb: np.ndarray, order: str = "rgb") -> np.ndarray:
        """Frame (channel order ``order``) -> the model's uint8 input (size and channel order)."""
        return self.resizer(rgb, order)

    def step(self, rgb: np.ndarray, order: str = "rgb") -> StepResult | None:
        """Run one frame (uint8 (H, W, 3) in channel order ``order``, any strides).

        None without a command or if the command changed meanwhile. A backend with
        ``preprocesses_on_device`` gets the frame itself (`infer_raw`, told whether to swap
        channels): then ``preprocess_ms`` is only the frame check and the resize is inside
        ``inference_ms``.
        """
        t0 = time.perf_counter()
        on_device = getattr(self.backend, "preprocesses_on_device", False)
        image = check_rgb(rgb) if on_device else self.prepare(rgb, order)
        t1 = time.perf_counter()
        with self._lock:
            if self.text_ids is None:
                return None
            ids, generation, first = self.text_ids, self.generation, self.steps == 0
            history = (np.stack(self.history) if self.history
                       else np.zeros((0, self.spec.feature_dim), np.float32))
        if on_device:   # infer_raw's "bgr": swap the channels (frame and model orders differ)
            swap = "bgr" if order != self.channel_order else "rgb"
            feature, actions = self.backend.infer_raw(image, ids, history, swap)
        else:
            feature, actions = self.backend.infer(image, ids, history)
        t2 = time.perf_counter()
        with self._lock:
            if generation != self.generation:
                return None
            self.history.append(np.asarray(feature, dtype=np.float32))
            self.steps += 1
        velocities = select_actions(self.post(actions), self.action_mode, first)
        return StepResult(velocities, np.asarray(actions), (t1 - t0) * 1e3, (t2 - t1) * 1e3)
