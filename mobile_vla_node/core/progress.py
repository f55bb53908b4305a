"""The one progress printer of the command-line tools (export, engine build, replay, bench).

`Progress` prints lines stamped with the time since it started, ``[   12.3 s] label: text``, and
times phases (``with progress.phase("exporting"):``); it may be called from several threads.
`CountBar` counts items done on a terminal (tqdm when installed).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time


def _print(text: str) -> None:
    print(text, flush=True)


class Progress:
    """Lines with the elapsed seconds and an optional label; ``emit`` gets each finished line."""

    def __init__(self, label: str = "", emit=_print, clock=time.monotonic):
        self.label, self.emit, self.clock = label, emit, clock
        self.start = clock()
        self._lock = threading.RLock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def line(self, text: str) -> None:
        """One line: ``[elapsed s] label: text``."""
        prefix = f"{self.label}: " if self.label else ""
        with self._lock:
            self.emit(f"[{self.elapsed():7.1f} s] {prefix}{text}")

    @contextlib.contextmanager
    def phase(self, what: str):
        """``what ...`` now and ``what: done in N s`` when the block ends without an error."""
        start = self.clock()
        self.line(f"{what} ...")
        yield
        self.line(f"{what}: done in {self.clock() - start:.2f} s")


class CountBar:
    """A count of items done: tqdm on a terminal (else a one-line counter); silent off a TTY."""

    def __init__(self, total: int, desc: str, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.done, self.bar = total, desc, 0, None
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, unit="msg", file=self.stream, leave=False)

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` messages."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last > 0.25:
            self._last = time.monotonic()
            pct = 100.0 * self.done / max(self.total, 1)
            self.stream.write(f"\r{self.desc}: {self.done}/{self.total} ({pct:.0f}%)")
            self.stream.flush()

    def close(self) -> None:
        """Remove the bar/line."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()
