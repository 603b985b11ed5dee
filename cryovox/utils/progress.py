"""Progress reporting: a rich bar on a terminal, plain periodic log lines in batch jobs.

A rich bar redirected to a file prints only its final state, so when stdout is not a
terminal we log ``label: i/n (x%) elapsed, eta`` lines at most every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("cryovox")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """``with Progress("backproject", total=n) as p: ... p.advance(k)``."""

    def __init__(self, label: str, total: int | None, interval: float = 30.0, enabled: bool = True):
        self.label = label
        self.total = total
        self.interval = interval
        self.done = 0
        self.enabled = enabled
        self._rich = None
        self._task = None
        self._t0 = time.monotonic()
        self._last = self._t0

    def __enter__(self) -> "Progress":
        if self.enabled and sys.stdout.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                      transient=False)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int = 1, **info: float) -> None:
        self.done += n
        if self._rich is not None:
            desc = self.label + ("  " + "  ".join(f"{k}={v:.4g}" for k, v in info.items()) if info else "")
            self._rich.update(self._task, advance=n, description=desc)
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or (self.total and self.done >= self.total)):
            self._last = now
            elapsed = now - self._t0
            extra = "  " + "  ".join(f"{k}={v:.4g}" for k, v in info.items()) if info else ""
            if self.total:
                frac = self.done / self.total
                eta = elapsed / frac - elapsed if frac > 0 else 0.0
                log.info("%s: %d/%d (%.0f%%) elapsed %s eta %s%s", self.label, self.done, self.total,
                         100 * frac, _fmt(elapsed), _fmt(eta), extra)
            else:
                log.info("%s: %d elapsed %s%s", self.label, self.done, _fmt(elapsed), extra)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


def track(items: Iterable[T], label: str, total: int | None = None, interval: float = 30.0) -> Iterator[T]:
    """Iterate with progress reporting."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, interval) as p:
        for item in items:
            yield item
            p.advance()
