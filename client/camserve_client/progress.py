"""A dependency-free progress bar on stderr (tqdm is not a client dependency).

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a line at most every
`log_every_s` seconds so logs stay short.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
    """Thread-safe counter with a rendered bar: `with Progress(total, "explain") as p: p.update()`."""

    def __init__(self, total: float | None, desc: str = "", *, unit: str = "it", stream: TextIO | None = None,
                 enabled: bool = True, width: int = 28, log_every_s: float = 5.0) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.log_every_s = log_every_s
        self.count = 0.0
        self.postfix = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: float = 1, postfix: str | None = None) -> None:
        with self._lock:
            self.count += n
            if postfix is not None:
                self.postfix = postfix
            self._draw(final=False)

    def set(self, value: float, postfix: str | None = None) -> None:
        """Set the absolute position (used for time-based bars)."""
        with self._lock:
            self.count = value
            if postfix is not None:
                self.postfix = postfix
            self._draw(final=False)

    def render(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {self.postfix}" if self.postfix else ""
        if self.total and self.unit == "s":  # a time-based bar: position is seconds
            frac = min(1.0, self.count / self.total)
            filled = round(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            return f"{head}[{bar}] {self.count:4.1f}/{self.total:g} s{tail}"
        if self.total:
            frac = min(1.0, self.count / self.total)
            filled = round(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            return (f"{head}[{bar}] {self.count:g}/{self.total:g} {self.unit} "
                    f"{elapsed:5.1f}s {rate:6.1f} {self.unit}/s{tail}")
        return f"{head}{self.count:g} {self.unit} {elapsed:5.1f}s {rate:6.1f} {self.unit}/s{tail}"

    def _draw(self, final: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if final or now - self._last_draw >= 0.1:
                self.stream.write("\r\x1b[K" + self.render() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
        elif final or now - self._last_draw >= self.log_every_s:
            self.stream.write(self.render() + "\n")
            self.stream.flush()
            self._last_draw = now

    def close(self) -> None:
        with self._lock:
            self._draw(final=True)
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
