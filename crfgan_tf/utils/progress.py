"""One progress reporter for every long loop (training steps, scans, samples, features):

  <what> <done>/<total> [=====>..............] 1.23 <unit>/s ETA 0:04:10 | <details>
"""

from __future__ import annotations

import math
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """H:MM:SS with as many hours as it takes ("27:24:00" for 27.4 h; time.strftime's %H
    wraps at 24 and would print 03:24:00)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Reports how far a loop of `total` items has come, its rate since the start (or since
    `start`, the items already done when this process began) and the time left.

    Args:
      total: items in the whole loop.
      log: where lines go.
      what: the line's first word ("step", "convert:", ...).
      unit: the items' name in the rate ("it", "scans", "volumes").
      start: items done before this process started (a resumed run).
      clock: seconds (time.time; tests pass their own).
    """

    def __init__(self, total: int, log: Callable[[str], None], what: str = "", unit: str = "it",
                 start: int = 0, clock: Callable[[], float] = time.time):
        self.total, self.log, self.what, self.unit, self.start = total, log, what, unit, start
        self.clock = clock
        self.t0 = clock()
        self.done = start  # callers that count as they go keep it here

    def rate(self, done: int) -> float:
        """Items per second since the start."""
        return (done - self.start) / max(self.clock() - self.t0, 1e-9)

    def line(self, done: int, details: str = "") -> str:
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        frac = min(done / max(self.total, 1), 1.0)
        bar = "=" * int(20 * frac) + ">" + "." * (20 - int(20 * frac))
        eta_s = format_duration(eta) if math.isfinite(eta) else "?"
        head = f"{self.what} " if self.what else ""
        tail = f" | {details}" if details else ""
        return f"{head}{done}/{self.total} [{bar}] {rate:.2f} {self.unit}/s ETA {eta_s}{tail}"

    def report(self, done: int, details: str = "") -> float:
        """Logs one line; returns the rate."""
        self.log(self.line(done, details))
        return self.rate(done)
