"""A one-line, terminal-aware progress display with a rate and an ETA.

On a terminal the line is redrawn in place (at most ~10 times a second);
when the stream is not a terminal (a pipe, a CI log) it stays quiet, so logs
hold only the results. ``final()`` ends the line.
"""
from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total, label="", stream=None, enabled=None, clock=time.monotonic, initial=0):
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stdout
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self.start_done = initial  # steps already done before this run (a resume)
        self.last_draw = -1.0
        self.width = 0

    def line(self, done, **metrics):
        """The text of the line (also used by tests)."""
        now = self.clock()
        elapsed = now - self.start
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        parts = [f"{self.label} {done}/{self.total}".strip()]
        for key, value in metrics.items():
            if value is None:
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def update(self, done, **metrics):
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last_draw < 0.1 and done < self.total:
            return
        self.last_draw = now
        text = self.line(done, **metrics)
        pad = max(0, self.width - len(text))
        self.width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def final(self):
        if self.enabled and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
