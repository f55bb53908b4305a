"""A progress bar for long loops over bag messages."""

from __future__ import annotations

import sys
import time


class Progress:
    """tqdm on a terminal (else a plain one-line counter); silent when stderr is no TTY."""

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
