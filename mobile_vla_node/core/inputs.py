"""Input rules shared by the node and offline replay, so the two cannot drift apart.

What a camera frame, a command, an enable flag and an inference result do to the runtime and
the control loop, and what gets counted. No threads and no clocks: the caller passes times and,
in the node, holds its lock around these calls (never around `PolicyRuntime.step`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..model.tokenizer import CommandError
from .commands import CommandFilter, Verdict
from .control import ChunkMeta, ControlLoop
from .preprocess import ImageError, validate_message
from .runtime import PolicyRuntime, StepResult


class InputRules:
    """Applies inputs to a `PolicyRuntime` and a `ControlLoop`; counts into ``counters``."""

    def __init__(self, runtime: PolicyRuntime, control: ControlLoop,
                 counters: Counter | None = None, command_filter: CommandFilter | None = None):
        self.runtime = runtime
        self.control = control
        self.counters = counters if counters is not None else Counter()
        self.command_filter = command_filter or CommandFilter()
        self._last_text: str | None = None
        self._last_outcome = ""
        self.last_input_error = ""
        self.last_error = ""

    def command(self, text: str) -> str:
        """Apply an instruction: "unchanged", "accepted", "stopped" or "rejected".

        The same text as the previous message costs one string comparison ("unchanged": history
        kept, nothing counted twice), so a command republished at 100 Hz is cheap. A stop phrase
        stops the robot at once without inference ("stopped"). A rejected command clears the
        current one, so the robot stops ("no_command") until a good command arrives; it does not
        touch an unrelated image or inference fault.
        """
        if text == self._last_text:
            return "unchanged"
        self._last_text = text
        if len(text) > self.runtime.max_command_chars:  # before any per-character work
            verdict = Verdict("reject", f"{len(text)} characters (limit "
                                        f"{self.runtime.max_command_chars}, max_command_chars)")
        else:
            verdict = self.command_filter.check(text)
        if verdict.action == "stop":
            self.runtime.clear_command()
            self.control.on_command(False, stop=True)
            self.counters["stop_commands"] += 1
            self.last_input_error = f"stop command: {verdict.reason}"
            return "stopped"
        if verdict.action == "drive" and text.strip() == (self.runtime.command or ""):
            return "unchanged"
        try:
            if verdict.action == "reject":
                raise CommandError(verdict.reason)
            self.runtime.set_command(text)
        except CommandError as exc:
            self.runtime.clear_command()
            self.control.on_command(False)
            self.counters["rejected_commands"] += 1
            self.last_input_error = f"command rejected: {exc}"
            return "rejected"
        self.control.on_command(True)
        return "accepted"

    def enable(self, enabled: bool) -> None:
        """Enable, or e-stop on false."""
        self.control.set_enabled(enabled)

    def receive_image(self, msg, now: float) -> bool:
        """Validate a frame cheaply at receipt; a good one refreshes the image clock."""
        try:
            validate_message(msg)
        except ImageError as exc:
            self.bad_image(exc)
            return False
        self.counters["frames_received"] += 1
        self.control.on_image(now)
        return True

    def bad_image(self, exc: Exception) -> None:
        """A malformed frame: counted, and the robot stops until a frame is processed again."""
        self.counters["malformed_images"] += 1
        self.control.fault = "bad_image"
        self.last_input_error = str(exc)

    def inference_failed(self, exc: Exception) -> None:
        """The backend raised: counted, and the robot stops until a step succeeds.

        The history is cleared too: after an outage (a lost Triton server, a device error) the
        window must not mix frames from before it with the frames after.
        """
        self.counters["inference_errors"] += 1
        self.control.fault = "inference_error"
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.runtime.reset()

    def step_done(self, result: StepResult | None, now: float, meta: ChunkMeta) -> bool:
        """Hand a finished step's chunk to the control loop; False if it was discarded."""
        if result is None:
            self.counters["discarded_steps"] += 1
            return False
        if not np.all(np.isfinite(result.velocities)):
            self.counters["non_finite_actions"] += 1  # the finite gate stops on it
        self.control.fault = None
        self.counters["steps"] += 1
        self.control.on_chunk(result.velocities, now, meta)
        return True
