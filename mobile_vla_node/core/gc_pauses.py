"""Python garbage-collector pauses: measured, and kept away from the control loop.

A full (generation 2) collection walks every tracked object while holding the GIL. With torch
and transformers loaded that is ~350k objects and took 184 ms on this 2-core machine: almost
four control periods in which no thread of the node runs Python. So the node loads the model
with automatic collection off (`loading`), then moves everything that exists into the permanent
generation (``gc.freeze``): later collections only walk what was allocated since (measured:
0.002 ms for a full one). A collection right after loading found 5 unreachable objects and freed
no memory, so none is run (it would itself be the 184 ms pause). `GcPauses` times every
collection for diagnostics.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager


@contextmanager
def loading(freeze_after: bool = True):
    """No automatic collection inside; afterwards freeze the survivors (the loaded model)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze_after:
            gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


def unfreeze() -> None:
    """Undo the freeze (before releasing the model, so it can be collected)."""
    gc.unfreeze()


class GcPauses:
    """Times each collection through ``gc.callbacks``; the longest and the count."""

    def __init__(self):
        self.max_ms = 0.0
        self.count = 0
        self._t0 = 0.0

    def install(self) -> None:
        """Start measuring (idempotent)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Stop measuring."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.count += 1
            self.max_ms = max(self.max_ms, (time.perf_counter() - self._t0) * 1e3)
