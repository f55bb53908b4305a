"""The frame pipeline shared by the node and offline replay: decode -> step -> chunk -> control.

One received camera frame goes through `decode_view` (rgb8/bgr8: a view of the message
buffer, no copy), `PolicyRuntime.step`, becomes a `ChunkMeta` and is handed to the control loop
by `InputRules.step_done`. A malformed frame and a backend exception are recorded in the rules
(the robot stops until good input returns) and never raised. No clocks of its own: the caller
gives the image stamp, the transport delay and the time at which the step finished (a value, or
a callable read after inference), and the result says what happened so that the caller can log
and count.

Threads: decode and inference run without the caller's lock; every call into the rules (and
``on_step``) runs under it, so the node can run this on its inference worker thread while the
control thread ticks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .control import ChunkMeta
from .preprocess import ImageError, decode_view

if TYPE_CHECKING:  # pragma: no cover
    from .inputs import InputRules

OK, BAD_IMAGE, INFERENCE_ERROR, DISCARDED = "ok", "bad_image", "inference_error", "discarded"


@dataclass(frozen=True)
class FrameOutcome:
    """What one frame did: ``status`` is ok, bad_image, inference_error or discarded.

    ``meta`` (ok only) carries the stage timings; ``error`` names the problem of a bad image or
    a failed inference. ``discarded``: no command, or the command changed during inference.
    """

    status: str
    meta: ChunkMeta | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """The frame's chunk went to the control loop."""
        return self.status == OK


class FramePipeline:
    """Runs received frames through decode, the runtime (``rules.runtime``) and the rules.

    ``lock``: held around the rules calls (default: none). ``clock``: seconds, for the decode
    time. ``on_step(meta)``: called under the lock for every accepted step (the node's stats).
    """

    def __init__(self, rules: InputRules, lock=None,
                 clock: Callable[[], float] = time.perf_counter,
                 on_step: Callable[[ChunkMeta], None] | None = None):
        self.rules = rules
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.clock = clock
        self.on_step = on_step

    def process(self, msg, stamp: float, now: float | Callable[[], float],
                transport_ms: float = float("nan")) -> FrameOutcome:
        """One frame: ``stamp`` is its image time, ``now`` the time its step is done."""
        rules = self.rules
        t0 = self.clock()
        try:
            frame, order = decode_view(msg)   # rgb8/bgr8: a view of msg.data, no copy
            decode_ms = (self.clock() - t0) * 1e3
            result = rules.runtime.step(frame, order)
        except ImageError as exc:
            with self.lock:
                rules.bad_image(exc)
            return FrameOutcome(BAD_IMAGE, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a backend failure stops the robot, not the caller
            with self.lock:
                rules.inference_failed(exc)
                error = rules.last_error
            return FrameOutcome(INFERENCE_ERROR, error=error)
        with self.lock:  # the time is read under the lock, like every tick's
            done = now() if callable(now) else now
            meta = None
            if result is not None:
                meta = ChunkMeta(stamp, transport_ms, decode_ms + result.preprocess_ms,
                                 result.inference_ms)
            if not rules.step_done(result, done, meta):
                return FrameOutcome(DISCARDED)
            if self.on_step is not None:
                self.on_step(meta)
        return FrameOutcome(OK, meta)
