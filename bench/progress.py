"""Progress on standard error while the bench runs: a ``tqdm`` bar on a
terminal, and a plain line every few seconds otherwise (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["Progress"]

PLAIN_EVERY_S = 2.0


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.bar: Any = None
        self.label = ""
        self.last_line = 0.0
        self.total = 0.0

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def start(self, label: str, total: float, unit: str) -> None:
        self.finish()
        self.label, self.total, self.last_line = label, total, 0.0
        if self.enabled and self.tty:
            self.bar = tqdm(
                total=total, desc=label, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )
        else:
            self.note(f"[{label}] started")

    def update(self, done: float, **postfix: Any) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = min(done, self.total)
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self.last_line = time.monotonic()
            details = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"[{self.label}] {done:.0f}/{self.total:.0f} {details}", file=sys.stderr, flush=True)

    def finish(self, summary: str = "") -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if summary:
            self.note(f"[{self.label}] {summary}")
